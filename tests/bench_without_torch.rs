//! The benchmarks without torch: a python that cannot be run, or `--no-torch`, leaves the
//! PyTorch columns empty with a message and never fails the run. Nothing here is timed against
//! anything: the measurements are a few milliseconds on the smallest shapes.

use std::process::Command;

fn attnlab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .output()
        .expect("run attnlab");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TINY_STS: [&str; 12] = [
    "sts", "bench", "--t", "6", "--d", "2", "--q", "2", "--de", "16", "--batch", "4",
];

#[test]
fn sts_bench_with_a_missing_python_skips_the_pytorch_side() {
    let mut args = TINY_STS.to_vec();
    args.extend([
        "--seconds",
        "0.01",
        "--json",
        "--python",
        "/nonexistent/python",
    ]);
    let (ok, stdout, stderr) = attnlab(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("PyTorch side skipped"), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for r in rows {
        assert!(r["pytorch_steps_per_sec"].is_null(), "{r}");
        assert!(r["analytic_ndarray_steps_per_sec"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn sts_bench_with_no_torch_prints_no_message() {
    let mut args = TINY_STS.to_vec();
    args.extend(["--seconds", "0.01", "--no-torch"]);
    let (ok, stdout, stderr) = attnlab(&args);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("PyTorch side skipped"), "{stderr}");
    assert!(stdout.contains("PyTorch n/a"), "{stdout}");
}

#[test]
fn bench_rejects_zero_rounds_before_any_work() {
    let (ok, _, stderr) = attnlab(&["bench", "--rounds", "0", "--no-torch"]);
    assert!(!ok);
    assert!(stderr.contains("--rounds"), "{stderr}");
}
