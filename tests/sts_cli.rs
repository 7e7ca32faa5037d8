//! The `attnlab sts` command-line contract: the JSON fields outside checks rely on, the metrics log
//! of `sts train` and its resume, and every config under `experiments/sts/` parsing. Bad input is
//! in `sts_bad_input.rs`.

mod common;

use common::{attnlab, read_csv};
use std::process::Output;

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
fn train_prints_final_metrics_writes_the_metrics_log_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let out = out_dir.to_str().unwrap();
    let args = [
        "sts",
        "train",
        "--config",
        "experiments/sts/train.toml",
        "--preset",
        "tiny",
        "--set",
        "transformer.steps=30",
        "--out",
        out,
        "--json",
    ];
    let v = json(&attnlab(&args));
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
    let (header, rows) = read_csv(&out_dir.join("metrics.csv"));
    assert_eq!(
        header[..5],
        ["step", "wall_s", "lr", "train_loss", "test_loss"]
    );
    assert!(rows.len() >= 5);
    assert_eq!(rows.last().unwrap()[0], 30.0);
    // The last row is what the summary reports.
    let loss_col = header.iter().position(|h| h == "test_loss").unwrap();
    assert_eq!(rows.last().unwrap()[loss_col], t["loss"].as_f64().unwrap());
    // The same command again finds the finished run and reports the same numbers.
    let again = json(&attnlab(&args));
    assert_eq!(v, again);
}

#[test]
fn every_sts_experiment_config_parses() {
    // Run configs (`sts train`) directly under experiments/sts/ ...
    let mut runs = 0;
    for entry in std::fs::read_dir("experiments/sts").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            attnlab::sts::config::RunFile::load(&p)
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
