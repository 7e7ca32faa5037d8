//! Bad flags on the commands shared by all papers (`bench`, `figures`, the top level): each is a
//! clean error naming the flag, with exit code 2 and no panic. Each paper's own subcommands have
//! their table in `tests/<paper>_bad_input.rs`.

mod common;

use common::{assert_clean_error, attnlab};

#[test]
fn bench_flags_out_of_range_are_named() {
    let table: &[(&[&str], &str)] = &[
        (
            &[
                "bench",
                "--seconds",
                "nan",
                "--no-torch",
                "--only",
                "decoder",
            ],
            "--seconds",
        ),
        (&["bench", "--seconds", "0", "--no-torch"], "--seconds"),
        (&["bench", "--seconds=-1", "--no-torch"], "--seconds"),
        (&["bench", "--seconds", "inf", "--no-torch"], "--seconds"),
        (&["bench", "--seconds", "1e9", "--no-torch"], "--seconds"),
        (&["bench", "--only", "zzz", "--no-torch"], "--only zzz"),
        (&["bench", "--rounds", "0", "--no-torch"], "--rounds"),
        (&["bench", "--threads", "0", "--no-torch"], "--threads"),
        (
            &["bench", "--threads", "99999999", "--no-torch"],
            "--threads",
        ),
        (&["bench", "--seconds", "two"], "--seconds"),
    ];
    for (args, needle) in table {
        assert_clean_error(&attnlab(args), 2, &[needle], &args.join(" "));
    }
}

#[test]
fn figures_and_top_level_usage_errors_are_named() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("figs");
    let out = out.to_str().unwrap();
    let table: &[(&[&str], &str)] = &[
        (&["figures", "--preset", "huge", "--out", out], "--preset"),
        (
            &[
                "figures", "--only", "sts/nope", "--preset", "tiny", "--out", out,
            ],
            "sts/nope",
        ),
        (
            &[
                "figures",
                "--preset",
                "tiny",
                "--experiments",
                "/nonexistent/dir",
                "--out",
                out,
            ],
            "/nonexistent/dir",
        ),
        (&["frobnicate"], "frobnicate"),
        (&["sts", "train", "--config"], "--config"),
    ];
    for (args, needle) in table {
        assert_clean_error(&attnlab(args), 2, &[needle], &args.join(" "));
    }
}
