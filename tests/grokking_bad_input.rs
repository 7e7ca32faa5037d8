//! Bad input to `attnlab grokking ...` and `attnlab figures` on the grokking figures: every one
//! ends with a clear error naming the flag, field or file (exit 2 for usage and config, 1 for a
//! run that failed), never a panic; a diverging run keeps its last good checkpoint and writes no
//! NaN; an interrupted run saves and exits 130, and `project` reports its checkpoint's real step.

mod common;

use common::{assert_clean_error, attnlab};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const DYCK: &str = "experiments/grokking/dyck.toml";

/// `grokking <cmd> --config <config> --preset tiny --depth 1 --seed 0 --out <out> <extra>`.
fn grok(cmd: &str, config: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "grokking",
        cmd,
        "--config",
        config,
        "--preset",
        "tiny",
        "--depth",
        "1",
        "--seed",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    attnlab(&args)
}

fn run_dir(out: &Path) -> PathBuf {
    out.join("dyck/tiny/depth1_seed0")
}

/// The Dyck experiment file with `from` replaced by `to` (which must occur), written into `dir`.
fn edited_config(dir: &Path, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(DYCK).unwrap();
    assert!(text.contains(from), "{DYCK} lacks `{from}`");
    let p = dir.join(name);
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn bad_flags_and_configs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let eps_inf = edited_config(
        tmp.path(),
        "eps_inf.toml",
        "[tiny.optim]\nkind = \"adamw\"\nlr = 3e-3\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-7",
        "[tiny.optim]\nkind = \"adamw\"\nlr = 3e-3\nbeta1 = 0.9\nbeta2 = 0.999\neps = inf",
    );
    let dropout_nan = edited_config(
        tmp.path(),
        "dropout_nan.toml",
        "[tiny.model]\nd_model = 16\nheads = 2\nffn = 32\ndropout = 0.1",
        "[tiny.model]\nd_model = 16\nheads = 2\nffn = 32\ndropout = nan",
    );
    let runs_up = edited_config(
        tmp.path(),
        "runs_up.toml",
        "task = \"dyck\"",
        "task = \"dyck\"\nruns = \"../elsewhere\"",
    );
    let text = std::fs::read_to_string(DYCK).unwrap();
    let no_tiny = tmp.path().join("no_tiny.toml");
    std::fs::write(&no_tiny, text.split_once("[tiny]").unwrap().0).unwrap();
    let no_tiny = no_tiny.to_str().unwrap();
    let missing = tmp.path().join("missing.toml");
    let missing = missing.to_str().unwrap();

    type Row<'a> = (&'a str, &'a str, Vec<&'a str>, &'a [&'a str]);
    let train_rows: Vec<Row> = vec![
        (
            "train",
            DYCK,
            vec!["--set", "optim.eps=inf"],
            &["--set optim.eps", "finite"],
        ),
        (
            "train",
            &eps_inf,
            vec![],
            &["optim.eps", "finite", "eps_inf.toml"],
        ),
        ("train", &dropout_nan, vec![], &["model.dropout", "finite"]),
        (
            "train",
            &runs_up,
            vec![],
            &["`runs`", "folder name", "runs_up.toml"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "optim.lrr=1"],
            &["lrr", "--set"],
        ),
        ("train", DYCK, vec!["--set", "nosuch.key=1"], &["nosuch"]),
        (
            "train",
            DYCK,
            vec!["--set", "optim.lr"],
            &["--set", "key.path=value"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "optim.lr=-1"],
            &["lr", "positive"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "eval.every=0"],
            &["eval.every"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "data.train=1000000000"],
            &["data.train", "2000000"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "train.batch=1000000000"],
            &["train.batch"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "model.d_model=100000000"],
            &["model.d_model"],
        ),
        (
            "train",
            DYCK,
            vec!["--set", "optim.schedule.total_steps=50"],
            &["optim.schedule.total_steps", "decaying"],
        ),
        ("train", DYCK, vec!["--steps", "0"], &["train.steps"]),
        ("train", DYCK, vec!["--depth", "0"], &["--depth"]),
        ("train", no_tiny, vec![], &["[tiny]", "no_tiny.toml"]),
        (
            "train",
            no_tiny,
            vec!["--set", "optim.lr=1e-3"],
            &["[tiny]"],
        ),
        (
            "train",
            missing,
            vec![],
            &["missing.toml", "does not exist"],
        ),
        ("project", DYCK, vec!["--sentences", "0"], &["--sentences"]),
        (
            "project",
            DYCK,
            vec!["--set", "optim.eps=nan"],
            &["--set optim.eps"],
        ),
    ];
    for (cmd, config, extra, needles) in &train_rows {
        let o = grok(cmd, config, &out, extra);
        assert_clean_error(&o, 2, needles, &format!("{cmd} {config} {extra:?}"));
    }
    assert!(!run_dir(&out).join("checkpoint.safetensors").exists());

    let other_rows: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec![
                "sample",
                "--task",
                "dyck",
                "--count",
                "18446744073709551615",
            ],
            &["--count"],
        ),
        (
            vec!["sample", "--task", "qf", "--train-size", "0"],
            &["--train-size"],
        ),
        (
            vec![
                "sample",
                "--task",
                "dyck",
                "--count",
                "3",
                "--train-size",
                "18446744073709551615",
            ],
            &["--train-size", "2000000"],
        ),
        (
            vec![
                "sample",
                "--task",
                "qf",
                "--split",
                "val",
                "--count",
                "0",
                "--val-size",
                "0",
            ],
            &["--val-size"],
        ),
        (
            vec![
                "sample",
                "--task",
                "dyck",
                "--count",
                "3",
                "--bracket-types",
                "0",
            ],
            &["--bracket-types"],
        ),
        (
            vec!["check-configs", missing],
            &["missing.toml", "does not exist"],
        ),
        (
            vec!["check-configs", &eps_inf],
            &["optim.eps", "eps_inf.toml"],
        ),
    ];
    for (args, needles) in &other_rows {
        let mut a = vec!["grokking"];
        a.extend(args);
        assert_clean_error(&attnlab(&a), 2, needles, &format!("{args:?}"));
    }
}

/// A variant of a task file (`runs = "<folder>"`) trains into its own folder, so its runs and
/// the task file's never take each other's place.
#[test]
fn a_variant_file_keeps_its_runs_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("runs");
    let variant = edited_config(
        tmp.path(),
        "variant.toml",
        "task = \"dyck\"",
        "task = \"dyck\"\nruns = \"dyck_variant\"",
    );
    let o = grok("train", &variant, &out, &["--steps", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out
        .join("dyck_variant/tiny/depth1_seed0/metrics.csv")
        .exists());
    assert!(!run_dir(&out).exists(), "the task's own folder stays empty");
}

#[test]
fn a_diverging_run_fails_naming_the_step_and_keeps_its_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    // lr = 1e6 reached slowly (warmup over 1e9 steps: 1e-3 more per step) passes several
    // evaluations before the loss explodes.
    let o = grok(
        "train",
        DYCK,
        tmp.path(),
        &[
            "--set",
            "optim.lr=1e6",
            "--set",
            "optim.schedule.warmup_steps=1000000000",
            "--set",
            "model.dropout=0.0",
            "--steps",
            "100000",
        ],
    );
    assert_clean_error(
        &o,
        1,
        &[
            "diverged at step",
            "training loss",
            "lower the learning rate",
            "is kept",
        ],
        "lr 1e6 with a long warmup",
    );
    let dir = run_dir(tmp.path());
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.lines().count() >= 3, "{csv}");
    let lower = csv.to_lowercase();
    assert!(!lower.contains("nan") && !lower.contains("inf"), "{csv}");
    assert!(
        !dir.join("summary.json").exists(),
        "a failed run has no summary"
    );
    // The kept checkpoint is whole: `project` reads it.
    let p = grok(
        "project",
        DYCK,
        tmp.path(),
        &[
            "--set",
            "optim.lr=1e6",
            "--set",
            "optim.schedule.warmup_steps=1000000000",
            "--set",
            "model.dropout=0.0",
            "--steps",
            "100000",
            "--sentences",
            "2",
        ],
    );
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));

    // lr = 1e6 from the first step: stops at once, with no checkpoint to keep.
    let tmp = tempfile::tempdir().unwrap();
    let o = grok(
        "train",
        DYCK,
        tmp.path(),
        &[
            "--set",
            "optim.lr=1e6",
            "--set",
            "optim.schedule.warmup_steps=0",
        ],
    );
    assert_clean_error(&o, 1, &["diverged at step"], "lr 1e6");
    let csv = std::fs::read_to_string(run_dir(tmp.path()).join("metrics.csv")).unwrap();
    assert!(!csv.to_lowercase().contains("nan"), "{csv}");
}

#[test]
fn another_configs_run_dir_and_a_damaged_checkpoint_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let o = grok("train", DYCK, out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other = ["--set", "optim.lr=2e-3"];
    assert_clean_error(
        &grok("train", DYCK, out, &other),
        2,
        &["holds another run", "depth1_seed0"],
        "train under another config",
    );
    assert_clean_error(
        &grok(
            "project",
            DYCK,
            out,
            &[&other[..], &["--sentences", "2"]].concat(),
        ),
        2,
        &["written by another run", "checkpoint.safetensors"],
        "project under another config",
    );
    let ck = run_dir(out).join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40; // inside the tensor data
    std::fs::write(&ck, &bytes).unwrap();
    for cmd in ["train", "project"] {
        let extra: &[&str] = if cmd == "project" {
            &["--sentences", "2"]
        } else {
            &[]
        };
        assert_clean_error(
            &grok(cmd, DYCK, out, extra),
            1,
            &["checkpoint.safetensors", "damaged"],
            &format!("{cmd} on a damaged checkpoint"),
        );
    }
}

#[test]
fn a_second_process_on_a_run_dir_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_dir(tmp.path());
    std::fs::create_dir_all(&dir).unwrap();
    let _held = attnlab::run::Lock::acquire(&dir).unwrap();
    assert_clean_error(
        &grok("train", DYCK, tmp.path(), &[]),
        2,
        &["in use by process", &std::process::id().to_string()],
        "train on a locked run directory",
    );
}

/// Starts `attnlab args` and sends it SIGINT once `ready` exists (polled; the deadline only
/// guards against a hang), then waits for it.
fn interrupt_when(args: &[&str], ready: &Path) -> Output {
    let child: Child = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            ready.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signals a child process this test started and has not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait_with_output().unwrap()
}

#[test]
fn an_interrupted_run_exits_130_and_project_reports_its_checkpoint_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let long = ["--steps", "1000000", "--set", "eval.every=5"];
    let mut args = vec![
        "grokking", "train", "--config", DYCK, "--preset", "tiny", "--depth", "1", "--seed", "0",
        "--out", out,
    ];
    args.extend(long);
    let ck = run_dir(tmp.path()).join("checkpoint.safetensors");
    let o = interrupt_when(&args, &ck);
    assert_clean_error(
        &o,
        130,
        &["interrupted after step", "rerun the same command"],
        "train",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let step: u64 = err
        .split("interrupted after step ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step in {err}"));
    assert!(step >= 5, "{err}");
    let p = grok(
        "project",
        DYCK,
        tmp.path(),
        &[&long[..], &["--sentences", "2"]].concat(),
    );
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(v["step"], step, "project must report the checkpoint's step");
}

#[test]
fn interrupted_grokking_figures_exit_130_after_saving() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("exp");
    std::fs::create_dir_all(exp.join("grokking")).unwrap();
    let text = std::fs::read_to_string(DYCK).unwrap();
    let (head, tiny) = text.split_once("[tiny]").unwrap();
    let tiny = tiny.replacen("steps = 30", "steps = 1000000", 1);
    std::fs::write(
        exp.join("grokking/dyck.toml"),
        format!("{head}[tiny]{tiny}"),
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let out = tmp.path().join("out");
    let args = [
        "figures",
        "--preset",
        "tiny",
        "--quiet",
        "--only",
        "grokking/dyck_accuracy",
        "--experiments",
        exp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--runs",
        runs.to_str().unwrap(),
    ];
    let ck = runs.join("grokking/dyck/tiny/depth1_seed0/checkpoint.safetensors");
    let o = interrupt_when(&args, &ck);
    assert_clean_error(&o, 130, &["rerun the same command"], "figures");
    assert!(ck.exists());
    assert!(!out.join("grokking/dyck_accuracy.png").exists());
}
