//! The `attnlab sts` command-line contract: JSON fields outside checks rely on, and bad input that
//! gets a clear error naming the field, never a panic.

use std::process::{Command, Output};

fn attnlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Fails cleanly (exit code 2, no panic) with a message containing every `needles`.
fn assert_clean_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
}

const PREDICT: &[&str] = &[
    "sts",
    "predict",
    "--t",
    "8",
    "--d",
    "4",
    "--q",
    "2",
    "--de",
    "32",
    "--c",
    "0,1,3",
    "--samples",
    "4000",
    "--seed",
    "1",
    "--json",
];

#[test]
fn predict_prints_the_contracted_fields() {
    let v = json(&attnlab(PREDICT));
    assert_eq!(
        v["loss_at_zero_exact"].as_f64().unwrap(),
        4.0 * (0.5 - 0.125)
    );
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 3);
    let losses: Vec<f64> = pts.iter().map(|p| p["loss"].as_f64().unwrap()).collect();
    for p in pts {
        assert!(p["stderr"].as_f64().unwrap() > 0.0);
    }
    let best = losses.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(v["floor"].as_f64().unwrap(), best);
    assert_eq!(
        v["argmin_c"].as_f64().unwrap(),
        [0.0, 1.0, 3.0][losses.iter().position(|&l| l == best).unwrap()]
    );
    // Same seed, same numbers.
    let again = json(&attnlab(PREDICT));
    assert_eq!(v, again);
}

#[test]
fn fcn_bound_prints_both_forms() {
    let v = json(&attnlab(&[
        "sts",
        "fcn-bound",
        "--t",
        "16",
        "--d",
        "8",
        "--q",
        "3",
        "--m",
        "16",
        "--json",
    ]));
    let closed = v["closed_form"].as_f64().unwrap();
    assert!((closed - (128.0 - 16.0) * 13.0 / (3.0 * 16.0 * 15.0)).abs() < 1e-12);
    assert!((closed - v["eigh"].as_f64().unwrap()).abs() < 1e-9);
}

#[test]
fn train_prints_final_metrics_and_writes_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    let preset = "seed = 3\n[TAG.task]\nt = 6\nd = 2\nq = 2\nde = 16\n[TAG.transformer]\nsteps = 20\nlr = 1.0\nbatch = 256\n[TAG.eval]\nsamples = 256\npoints = 5\ntheory_samples = 256\n";
    let text = format!(
        "[cpu]\n{}\n[paper]\n{}",
        preset.replace("TAG", "cpu"),
        preset.replace("TAG", "paper")
    );
    std::fs::write(&cfg, text).unwrap();
    let out_dir = dir.path().join("run");
    let v = json(&attnlab(&[
        "sts",
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]));
    let t = &v["transformer"];
    for k in [
        "loss",
        "attention_mass_selected",
        "off_identity_fraction",
        "c",
    ] {
        assert!(t[k].as_f64().is_some(), "missing {k}: {v}");
    }
    assert!(t["loss"].as_f64().unwrap() < t["loss_at_zero"].as_f64().unwrap());
    let curve = std::fs::read_to_string(out_dir.join("transformer_curve.csv")).unwrap();
    assert!(curve.starts_with("step,loss,"));
    assert!(curve.lines().count() >= 5);
}

#[test]
fn bad_input_gets_a_clear_error() {
    assert_clean_error(
        &attnlab(&[
            "sts", "predict", "--t", "4", "--d", "2", "--q", "5", "--de", "8", "--c", "0",
        ]),
        &["q", "cannot exceed", "T = 4"],
    );
    assert_clean_error(
        &attnlab(&[
            "sts", "predict", "--t", "0", "--d", "2", "--q", "1", "--de", "8", "--c", "0",
        ]),
        &["`t`"],
    );
    assert_clean_error(
        &attnlab(&[
            "sts", "predict", "--t", "4", "--d", "2", "--q", "1", "--de", "0", "--c", "0",
        ]),
        &["`de`"],
    );
    assert_clean_error(
        &attnlab(&[
            "sts",
            "predict",
            "--t",
            "4",
            "--d",
            "2",
            "--q",
            "1",
            "--de",
            "8",
            "--c",
            "0",
            "--samples",
            "1",
        ]),
        &["samples"],
    );
    assert_clean_error(
        &attnlab(&[
            "sts",
            "fcn-bound",
            "--t",
            "4",
            "--d",
            "2",
            "--q",
            "9",
            "--m",
            "3",
        ]),
        &["q"],
    );
    assert_clean_error(
        &attnlab(&["sts", "train", "--config", "no/such/file.toml"]),
        &["no/such/file.toml", "does not exist"],
    );

    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string("experiments/sts/train.toml").unwrap();
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, good.replacen("lr = ", "lrr = ", 1)).unwrap();
    assert_clean_error(
        &attnlab(&["sts", "train", "--config", typo.to_str().unwrap()]),
        &["unknown field `lrr`", "typo.toml"],
    );
    let impossible = dir.path().join("impossible.toml");
    std::fs::write(&impossible, good.replacen("q = 3", "q = 99", 1)).unwrap();
    assert_clean_error(
        &attnlab(&["sts", "train", "--config", impossible.to_str().unwrap()]),
        &["`q`", "[cpu]"],
    );
    let nothing = dir.path().join("nothing.toml");
    std::fs::write(
        &nothing,
        "[cpu]\nseed = 0\n[cpu.task]\nt = 4\nd = 2\nq = 1\nde = 8\n",
    )
    .unwrap();
    assert_clean_error(
        &attnlab(&["sts", "train", "--config", nothing.to_str().unwrap()]),
        &["paper"],
    );
}

#[test]
fn every_sts_experiment_config_parses() {
    // Run configs (`sts train`) directly under experiments/sts/ ...
    let mut runs = 0;
    for entry in std::fs::read_dir("experiments/sts").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            attnlab::sts::train::RunFile::load(&p)
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            runs += 1;
        }
    }
    assert!(runs >= 1);
    // ... and figure configs under experiments/sts/figures/, each with its figure's own schema:
    // every file belongs to a registered figure and every STS figure has its file.
    let figures = attnlab::figures::registry();
    let experiments = std::path::Path::new("experiments");
    for entry in std::fs::read_dir("experiments/sts/figures").unwrap() {
        let p = entry.unwrap().path();
        let fig = figures
            .iter()
            .find(|f| f.config_path(experiments) == p)
            .unwrap_or_else(|| panic!("{}: no registered figure uses it", p.display()));
        (fig.check)(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    }
    for f in figures.iter().filter(|f| f.name.starts_with("sts/")) {
        assert!(
            f.config_path(experiments).exists(),
            "{} has no config",
            f.name
        );
    }
}
