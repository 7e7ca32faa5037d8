//! Bad input on every `attnlab sts` subcommand: a clean error naming the flag or config field,
//! exit 2 for bad usage or config and 1 for a run that failed, never a panic, an abort or a
//! silently wrong result.

mod common;

use common::{assert_clean_error, attnlab};
use std::path::Path;

const MAX: &str = "18446744073709551615";

fn task(t: &str, d: &str, q: &str) -> Vec<String> {
    ["--t", t, "--d", d, "--q", q].map(String::from).to_vec()
}

fn run_table(prefix: &[&str], table: &[(Vec<String>, &str)]) {
    for (args, needle) in table {
        let mut all: Vec<&str> = prefix.to_vec();
        all.extend(args.iter().map(String::as_str));
        assert_clean_error(&attnlab(&all), 2, &[needle], &all.join(" "));
    }
}

fn with(base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.into_iter()
        .chain(more.iter().map(|s| s.to_string()))
        .collect()
}

#[test]
fn predict_refuses_bad_flags() {
    let ok = |c: &str| {
        with(
            task("8", "2", "2"),
            &["--de", "2", "--c", c, "--samples", "100"],
        )
    };
    run_table(
        &["sts", "predict"],
        &[
            // c = 1e308 used to overflow the scores: a panic, or `null` fields with exit 0.
            (
                with(task("8", "2", "4"), &["--de", "2", "--c", "1e308"]),
                "--c",
            ),
            (with(ok("1e308"), &["--json"]), "--c"),
            (ok("nan"), "--c"),
            (ok("-inf"), "--c"),
            (ok("0,2e6"), "--c"),
            (with(task("4", "2", "5"), &["--de", "8", "--c", "0"]), "--q"),
            (with(task("0", "2", "1"), &["--de", "8", "--c", "0"]), "--t"),
            (with(task("4", "0", "1"), &["--de", "8", "--c", "0"]), "--d"),
            (with(task("4", "2", "0"), &["--de", "8", "--c", "0"]), "--q"),
            (
                with(task("4", "2", "1"), &["--de", "0", "--c", "0"]),
                "--de",
            ),
            (
                with(task("4", "2", "1"), &["--de", "100000", "--c", "0"]),
                "--de",
            ),
            (with(task(MAX, "2", "1"), &["--de", "8", "--c", "0"]), "--t"),
            (
                with(task("100000000", "2", "1"), &["--de", "8", "--c", "0"]),
                "--t",
            ),
            (
                with(
                    task("8", "2", "2"),
                    &["--de", "2", "--c", "1", "--samples", "1"],
                ),
                "--samples",
            ),
            (
                with(
                    task("8", "2", "2"),
                    &["--de", "2", "--c", "1", "--samples", MAX],
                ),
                "--samples",
            ),
            (
                with(
                    task("8", "2", "2"),
                    &["--de", "2", "--c", "1", "--samples", "100000000000"],
                ),
                "--samples",
            ),
            (with(ok("1"), &["--encoding", "fixed"]), "--encoding"),
            (with(ok("1"), &["--seed=-3"]), "--seed"),
        ],
    );
}

#[test]
fn fcn_bound_refuses_sizes_past_its_limit() {
    let m = |t: &str, d: &str, q: &str| with(task(t, d, q), &["--m", "3"]);
    run_table(
        &["sts", "fcn-bound"],
        &[
            // An (T d)^2 matrix: 80 GB at T d = 10^5 used to abort the process.
            (m("100000", "1", "1"), "--t"),
            (m("1000000", "1", "1"), "--t"),
            (m("65536", "65536", "1"), "--t"),
            (m(MAX, "2", "1"), "--t"),
            (m("4", "2", "9"), "--q"),
            (m("4", "2", "0"), "--q"),
            (m("4", "0", "1"), "--d"),
            (with(task("4", "2", "1"), &["--m=-1"]), "--m"),
        ],
    );
}

#[test]
fn bench_refuses_bad_flags() {
    run_table(
        &["sts", "bench"],
        &[
            // `--seconds 0` used to print NaN ratios; huge or infinite values never finished.
            (vec!["--seconds".into(), "0".into()], "--seconds"),
            (vec!["--seconds".into(), "nan".into()], "--seconds"),
            (vec!["--seconds=-1".into()], "--seconds"),
            (vec!["--seconds".into(), "inf".into()], "--seconds"),
            (vec!["--seconds".into(), "1e300".into()], "--seconds"),
            (vec!["--batch".into(), "0".into()], "--batch"),
            (vec!["--batch".into(), MAX.into()], "--batch"),
            (vec!["--q".into(), "99".into()], "--q"),
            (vec!["--de".into(), "1000000000".into()], "--de"),
        ],
    );
}

fn train(config: &Path, more: &[&str]) -> Vec<String> {
    let mut v = vec![
        "sts".to_string(),
        "train".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
    ];
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

#[test]
fn train_refuses_bad_configs_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string("experiments/sts/train.toml").unwrap();
    let file = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let typo = file("typo.toml", good.replacen("lr = ", "lrr = ", 1));
    let inf = file("inf.toml", good.replace("lr = 4.0", "lr = inf"));
    let nan = file("nan.toml", good.replace("lr = 4.0", "lr = nan"));
    let q99 = file("q.toml", good.replace("q = 3", "q = 99"));
    let only_cpu = file(
        "only_cpu.toml",
        "[cpu]\nseed = 0\n[cpu.task]\nt = 4\nd = 2\nq = 1\nde = 8\n[cpu.transformer]\nsteps = 5\nlr = 1.0\nbatch = 8\n".into(),
    );
    let nothing = file(
        "nothing.toml",
        "[cpu]\nseed = 0\n[cpu.task]\nt = 4\nd = 2\nq = 1\nde = 8\n".into(),
    );
    let fcn_td = file(
        "fcn.toml",
        "[cpu]\nseed = 0\n[cpu.task]\nt = 4096\nd = 2\nq = 1\nde = 8\n[cpu.fcn]\nwidth = 4\noptimizer = \"adam\"\nlr = 1e-3\nsteps = 5\nbatch = 8\n".into(),
    );
    let train_toml = Path::new("experiments/sts/train.toml");
    let out = dir.path().join("never");
    let o = out.to_str().unwrap();
    let table: Vec<(Vec<String>, &str)> = vec![
        (
            train(Path::new("no/such/file.toml"), &[]),
            "no/such/file.toml",
        ),
        (train(&typo, &["--out", o]), "unknown field `lrr`"),
        (train(&inf, &["--out", o]), "transformer.lr"),
        (train(&nan, &["--out", o]), "transformer.lr"),
        (train(&q99, &["--out", o]), "`q`"),
        (
            train(&only_cpu, &["--preset", "paper", "--out", o]),
            "[paper]",
        ),
        (
            train(&only_cpu, &["--preset", "huge", "--out", o]),
            "--preset",
        ),
        (train(&nothing, &["--out", o]), "trains nothing"),
        (train(&fcn_td, &["--out", o]), "task.t"),
        (
            train(train_toml, &["--set", "transformer.lr=inf", "--out", o]),
            "transformer.lr",
        ),
        (
            train(train_toml, &["--set", "transformer.lr=nan", "--out", o]),
            "transformer.lr",
        ),
        (
            train(train_toml, &["--set", "transformer.lr=-1", "--out", o]),
            "transformer.lr",
        ),
        (
            train(train_toml, &["--set", "transformer.lrr=1", "--out", o]),
            "lrr",
        ),
        (
            train(train_toml, &["--set", "transformer.lr", "--out", o]),
            "--set",
        ),
        (
            train(
                train_toml,
                &["--set", "transformer.init_c=1e308", "--out", o],
            ),
            "transformer.init_c",
        ),
        (
            train(train_toml, &["--set", "transformer.steps=0", "--out", o]),
            "transformer.steps",
        ),
        (
            train(
                train_toml,
                &["--set", "transformer.steps=100000000000", "--out", o],
            ),
            "transformer.steps",
        ),
        (
            train(
                train_toml,
                &["--set", "transformer.batch=1000000000", "--out", o],
            ),
            "transformer.batch",
        ),
        (
            train(train_toml, &["--set", "transformer.dataset=0", "--out", o]),
            "transformer.dataset",
        ),
        (
            train(train_toml, &["--set", "eval.points=1000000000", "--out", o]),
            "eval.points",
        ),
        (
            train(train_toml, &["--set", "eval.samples=1", "--out", o]),
            "eval.samples",
        ),
        (
            train(
                train_toml,
                &["--set", "eval.theory_samples=10000000000", "--out", o],
            ),
            "eval.theory_samples",
        ),
        (
            train(train_toml, &["--set", "task.q=99", "--out", o]),
            "`q`",
        ),
        (
            train(train_toml, &["--set", "task.de=1000000", "--out", o]),
            "`de`",
        ),
        (train(train_toml, &["--seed", "x", "--out", o]), "--seed"),
    ];
    for (args, needle) in &table {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_clean_error(&attnlab(&a), 2, &[needle], &a.join(" "));
    }
    assert!(!out.exists(), "a refused run created its directory");
}

fn tiny(out: &Path, more: &[&str]) -> Vec<String> {
    let mut v = train(
        Path::new("experiments/sts/train.toml"),
        &["--preset", "tiny", "--out", out.to_str().unwrap()],
    );
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

fn run(args: &[String]) -> std::process::Output {
    attnlab(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_diverging_run_fails_naming_the_step_and_writes_no_nan() {
    let dir = tempfile::tempdir().unwrap();
    // lr = 1e6 used to finish "done" with exit 0 and a loss above L(0).
    for (name, more) in [
        ("set", vec!["--set", "transformer.lr=1e6"]),
        ("file", vec![]),
    ] {
        let out = dir.path().join(name);
        let args = if name == "file" {
            let good = std::fs::read_to_string("experiments/sts/train.toml").unwrap();
            let cfg = dir.path().join("lr.toml");
            std::fs::write(&cfg, good.replacen("lr = 1.0", "lr = 1e6", 1)).unwrap();
            train(&cfg, &["--preset", "tiny", "--out", out.to_str().unwrap()])
        } else {
            tiny(&out, &more)
        };
        let o = run(&args);
        assert_clean_error(
            &o,
            1,
            &[
                "diverged at step",
                "transformer.lr",
                "checkpoint.safetensors",
            ],
            name,
        );
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        assert!(
            !csv.to_lowercase().contains("nan") && !csv.contains("inf"),
            "{csv}"
        );
        assert!(
            !out.join("summary.json").exists(),
            "a failed run wrote a summary"
        );
    }
}

#[test]
fn a_run_directory_holds_one_run_and_a_damaged_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = run(&tiny(&out, &["--seed", "0", "--json"]));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Another seed into the same directory used to overwrite the first run with exit 0.
    assert_clean_error(
        &run(&tiny(&out, &["--seed", "1", "--json"])),
        2,
        &["holds another run", "run"],
        "second seed",
    );
    assert_clean_error(
        &run(&tiny(&out, &["--set", "transformer.lr=2", "--json"])),
        2,
        &["holds another run"],
        "another config",
    );
    // The first run's results are untouched and its command still resumes.
    let again = run(&tiny(&out, &["--seed", "0", "--json"]));
    assert_eq!(first.stdout, again.stdout);
    let ck = out.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    std::fs::write(&ck, &bytes).unwrap();
    assert_clean_error(
        &run(&tiny(&out, &["--seed", "0", "--json"])),
        1,
        &["checkpoint.safetensors", "damaged"],
        "damaged checkpoint",
    );
}
