//! Bad input to every `lego` and `program` subcommand ends in a clear error, never a panic:
//! usage and config errors exit 2 naming the flag or field, a failed run (divergence, a damaged
//! checkpoint) exits 1, an interrupted run exits 130 and resumes, samplers stream any count, and
//! a run directory is locked and identity-checked.

mod common;

use common::{assert_clean_error, attnlab};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const LE: &str = "experiments/lego/length_extrapolation.toml";
const MIMIC: &str = "experiments/lego/mimicking.toml";

/// `lego train` of the tiny length-extrapolation study's BERT run into `out`, with `extra` flags.
fn train_args<'a>(config: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "lego",
        "train",
        "--config",
        config,
        "--preset",
        "tiny",
        "--only",
        "bert-random",
        "--out",
        out,
        "--json",
    ];
    a.extend_from_slice(extra);
    a
}

/// `path` holding `text` with the first line starting `key =` after `[table]` set to `value`.
fn edited(dir: &Path, name: &str, config: &str, table: &str, key: &str, value: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(config)).unwrap();
    let mut in_table = false;
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with('[') {
                in_table = l.trim() == format!("[{table}]");
            }
            if in_table && !done && l.starts_with(&format!("{key} =")) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(done, "{config} has no `{key}` in [{table}]");
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_flags_are_usage_errors_naming_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["lego", "sample", "--count", "0"], &["--count"]),
        (
            vec!["lego", "sample", "--n-var", "27"],
            &["--n-var", "1..=26"],
        ),
        (vec!["lego", "sample", "--n-var", "0"], &["--n-var"]),
        (
            vec!["lego", "sample", "--variant", "zzz"],
            &["--variant", "shuffled"],
        ),
        (vec!["program", "sample", "--count", "0"], &["--count"]),
        (vec!["program", "sample", "--vars", "27"], &["--vars"]),
        (vec!["program", "sample", "--modulus", "11"], &["--modulus"]),
        (
            vec!["program", "sample", "--prints", "18446744073709551615"],
            &["--prints", "10000"],
        ),
        (
            vec!["program", "sample", "--statements", "10001"],
            &["--statements", "10000"],
        ),
        (
            vec!["lego", "flops", "--preset", "zzz"],
            &["--preset", "tiny"],
        ),
        (
            vec![
                "lego",
                "flops",
                "--config",
                "experiments/lego/shortcuts.toml",
            ],
            &["--config"],
        ),
        (
            vec!["lego", "flops", "--config", "no/such.toml"],
            &["no/such.toml", "does not exist"],
        ),
        (
            vec!["lego", "flops", "--set", "model.heads=0"],
            &["model.heads"],
        ),
        (
            vec!["lego", "check-config", "no/such.toml"],
            &["does not exist"],
        ),
        (
            vec!["lego", "train", "--config", "no/such.toml"],
            &["does not exist"],
        ),
        (
            vec!["lego", "train", "--config", LE, "--preset", "huge"],
            &["--preset", "tiny"],
        ),
        (
            vec![
                "lego", "train", "--config", LE, "--preset", "tiny", "--only", "zzz", "--out", out,
            ],
            &["--only", "bert-random"],
        ),
        (
            train_args(LE, out, &["--set", "train.optim.lr"]),
            &["--set", "key.path=value"],
        ),
        (
            train_args(LE, out, &["--set", "train.optim.lr=nan"]),
            &["--set train.optim.lr", "finite"],
        ),
        (
            train_args(LE, out, &["--set", "train.optim.lrr=1"]),
            &["lrr"],
        ),
        (
            train_args(LE, out, &["--set", "train.optim.lr=-1"]),
            &["train.optim", "`lr`"],
        ),
        (
            train_args(LE, out, &["--set", "train.optim.kind=\"adamm\""]),
            &["adamm"],
        ),
        (
            train_args(LE, out, &["--set", "task.n_var=27"]),
            &["task.n_var"],
        ),
        (
            train_args(LE, out, &["--set", "task.train_vars=4"]),
            &["task.train_vars"],
        ),
        (
            train_args(LE, out, &["--set", "task.n_train=0"]),
            &["task.n_train"],
        ),
        (
            train_args(LE, out, &["--set", "task.n_train=100000000000"]),
            &["task.n_train", "limit"],
        ),
        (
            train_args(LE, out, &["--set", "train.batch_size=0"]),
            &["train.batch_size"],
        ),
        (
            train_args(LE, out, &["--set", "train.epochs=0"]),
            &["train.epochs"],
        ),
        (
            train_args(LE, out, &["--set", "train.eval_every=0"]),
            &["train.eval_every"],
        ),
        (
            train_args(LE, out, &["--set", "train.loss=\"cross_entropy\""]),
            &["train.loss"],
        ),
        (
            train_args(LE, out, &["--set", "model.max_positions=100000000000"]),
            &["model.max_positions", "limit"],
        ),
        (
            train_args(LE, out, &["--set", "model.max_positions=5"]),
            &["model.max_positions"],
        ),
        (
            train_args(LE, out, &["--set", "model.hidden=7"]),
            &["model.heads"],
        ),
        (
            train_args(
                LE,
                out,
                &[
                    "--set",
                    "model.hidden=16384",
                    "--set",
                    "model.ffn=65536",
                    "--set",
                    "model.layers=200",
                ],
            ),
            &["model", "GiB"],
        ),
        (
            train_args(MIMIC, out, &["--set", "mimic.local_head=5"]),
            &["mimic.local_head"],
        ),
        (
            train_args(MIMIC, out, &["--set", "mimic.steps_per_epoch=0"]),
            &["mimic.steps_per_epoch"],
        ),
        (
            train_args(MIMIC, out, &["--set", "mimic.optim.beta1=1.5"]),
            &["mimic.optim", "`beta1`"],
        ),
    ];
    for (args, needles) in &cases {
        assert_clean_error(&attnlab(args), 2, needles, &args.join(" "));
    }
    assert!(
        std::fs::read_dir(d.path()).unwrap().next().is_none(),
        "a refused run wrote files"
    );
}

#[test]
fn non_finite_config_numbers_are_errors_naming_the_field() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let out = out.to_str().unwrap();
    let cases = [
        (LE, "tiny.train.optim", "lr", "nan", "`lr`"),
        (LE, "tiny.train.optim", "lr", "inf", "`lr`"),
        (
            LE,
            "tiny.train.optim",
            "weight_decay",
            "nan",
            "`weight_decay`",
        ),
        (LE, "tiny.model", "dropout", "nan", "model.dropout"),
        (MIMIC, "tiny.mimic.optim", "lr", "inf", "mimic.optim"),
    ];
    for (i, (config, table, key, value, field)) in cases.into_iter().enumerate() {
        let path = edited(d.path(), &format!("c{i}.toml"), config, table, key, value);
        let what = format!("{table}.{key} = {value}");
        let o = attnlab(&train_args(&path, out, &[]));
        assert_clean_error(&o, 2, &[field, "finite"], &what);
    }
    // eps is not in the files: the optimiser's own key, set in the file's table
    let path = edited(
        d.path(),
        "eps.toml",
        LE,
        "tiny.train.optim",
        "lr",
        "3e-3\neps = inf",
    );
    assert_clean_error(
        &attnlab(&train_args(&path, out, &[])),
        2,
        &["`eps`"],
        "eps = inf",
    );
    let path = d.path().join("w.toml");
    let text = std::fs::read_to_string("experiments/lego/shortcuts.toml").unwrap();
    std::fs::write(
        &path,
        text.replacen("weights = [0.9, 0.1]", "weights = [nan, 0.1]", 1),
    )
    .unwrap();
    let out2 = attnlab(&["lego", "check-config", path.to_str().unwrap()]);
    assert_clean_error(
        &out2,
        2,
        &["shortcuts.regimes.weights"],
        "weights = [nan, 0.1]",
    );
    assert!(!Path::new(out).exists(), "a refused config started a run");
}

#[test]
fn text_pretraining_settings_and_a_missing_corpus_are_errors_naming_the_field() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("runs");
    let out = out.to_str().unwrap();
    let text_run = |path: &str| {
        let mut a = train_args(path, out, &[]);
        a[7] = "bert-text";
        attnlab(&a)
    };
    let cases = [
        ("mask_prob", "1.5", "pretrain.mask_prob"),
        ("mask_prob", "0", "pretrain.mask_prob"),
        ("steps", "0", "pretrain.steps"),
        ("vocab_words", "0", "pretrain.vocab_words"),
    ];
    for (i, (key, value, field)) in cases.into_iter().enumerate() {
        let path = edited(
            d.path(),
            &format!("p{i}.toml"),
            LE,
            "tiny.pretrain",
            key,
            value,
        );
        assert_clean_error(&text_run(&path), 2, &[field], &format!("{key} = {value}"));
    }
    assert!(!Path::new(out).exists(), "a refused config started a run");
    let path = edited(
        d.path(),
        "nocorpus.toml",
        LE,
        "tiny.pretrain",
        "corpus",
        "\"no/such/corpus\"",
    );
    assert_clean_error(
        &text_run(&path),
        2,
        &[
            "pretrain.corpus",
            "no/such/corpus",
            "scripts/install-text-corpus",
        ],
        "a missing corpus",
    );
    // a text-pretrained run needs the section in every preset
    let full = std::fs::read_to_string(LE).unwrap();
    let start = full.find("[tiny.pretrain]").unwrap();
    let end = start + full[start..].find("# ----").unwrap();
    let path = d.path().join("nosection.toml");
    std::fs::write(&path, format!("{}{}", &full[..start], &full[end..])).unwrap();
    let o = attnlab(&["lego", "check-config", path.to_str().unwrap()]);
    assert_clean_error(&o, 2, &["tiny.pretrain"], "no [tiny.pretrain]");
}

#[test]
fn a_huge_learning_rate_fails_the_run_without_nan_in_results() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let o = attnlab(&train_args(LE, out, &["--set", "train.optim.lr=1e6"]));
    assert_clean_error(
        &o,
        1,
        &["diverged at step", "lower the learning rate"],
        "lr = 1e6",
    );
    let run = d.path().join("tiny/bert-random-seed0");
    assert!(
        !run.join("result.json").exists(),
        "a diverged run wrote a result"
    );
    if let Ok(csv) = std::fs::read_to_string(run.join("metrics.csv")) {
        assert!(
            !csv.to_lowercase().contains("nan") && !csv.contains("inf"),
            "{csv}"
        );
    }
}

/// Runs `args` with stdout piped, reads `n` lines and closes the pipe: the sampler must stop
/// quietly (exit 0) however large its count.
fn first_lines(args: &[&str], n: usize) -> (Vec<String>, std::process::Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(n)
        .map(|l| l.unwrap())
        .collect();
    (lines, child.wait_with_output().unwrap())
}

#[test]
fn samplers_stream_any_count() {
    let max = u64::MAX.to_string();
    for args in [
        vec!["lego", "sample", "--count", &max, "--json"],
        vec!["program", "sample", "--count", &max, "--json"],
    ] {
        let (lines, out) = first_lines(&args, 5);
        assert_eq!(lines.len(), 5, "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // the stream starts with what a small count prints
        let small = attnlab(&[args[0], "sample", "--count", "5", "--json"]);
        let small: Vec<String> = String::from_utf8(small.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines, small, "{args:?}");
    }
}

/// The run directory of the tiny BERT run under `out`.
fn run_dir(out: &Path) -> PathBuf {
    out.join("tiny/bert-random-seed0")
}

#[test]
fn run_directories_are_locked_checked_and_verified() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let first = attnlab(&train_args(LE, out, &[]));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let dir = run_dir(d.path());
    std::fs::remove_file(dir.join("result.json")).unwrap();
    // a second process on the same directory is refused, naming the holder
    {
        let _held = attnlab::run::Lock::acquire(&dir).unwrap();
        let pid = std::process::id().to_string();
        let o = attnlab(&train_args(LE, out, &[]));
        assert_clean_error(&o, 2, &["in use by process", &pid], "a held run directory");
    }
    // another config into the same directory is refused
    let o = attnlab(&train_args(LE, out, &["--set", "train.optim.lr=1e-3"]));
    assert_clean_error(&o, 2, &["holds another run"], "another run's directory");
    // a finished run's checkpoint reproduces its result
    let again = attnlab(&train_args(LE, out, &[]));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let strip = |o: &std::process::Output| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["seconds"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&first), strip(&again));
    // a damaged checkpoint fails the run, naming the file
    std::fs::remove_file(dir.join("result.json")).unwrap();
    let ck = dir.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x10;
    std::fs::write(&ck, &bytes).unwrap();
    let o = attnlab(&train_args(LE, out, &[]));
    assert_clean_error(
        &o,
        1,
        &["checkpoint.safetensors", "damaged"],
        "a damaged checkpoint",
    );
}

#[test]
fn an_interrupted_run_exits_130_and_resumes_to_the_same_result() {
    let d = tempfile::tempdir().unwrap();
    let long = ["--set", "train.epochs=300"];
    let whole_out = d.path().join("whole");
    let whole = attnlab(&train_args(LE, whole_out.to_str().unwrap(), &long));
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let out = d.path().join("cut");
    let args = train_args(LE, out.to_str().unwrap(), &long);
    let child = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the first evaluation (after epoch 1 of 300) is written: training is under way
    let metrics = run_dir(&out).join("metrics.csv");
    while !metrics.exists() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: sends SIGINT to the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_clean_error(
        &o,
        130,
        &["interrupted after step", "rerun the same command"],
        "Ctrl-C",
    );
    assert!(run_dir(&out).join("checkpoint.safetensors").exists());
    assert!(!run_dir(&out).join("result.json").exists());
    let resumed = attnlab(&args);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let strip = |o: &std::process::Output| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0]["seconds"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&resumed), strip(&whole));
}
