//! Ctrl-C on a real run of each paper: two SIGINTs in quick succession (a terminal and a wrapper
//! such as `timeout` both forward one) still save the state, the process exits 130, the
//! checkpoint reads back with a valid checksum, and the same command resumes to the last step,
//! keeping the evaluations made before the interrupt.

mod common;

use attnlab::run::State;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows of a metrics log without the wall-clock column, as bit patterns.
fn rows(metrics: &Path) -> Vec<Vec<u64>> {
    let (header, rows) = common::read_csv(metrics);
    assert_eq!(&header[..4], ["step", "wall_s", "lr", "train_loss"]);
    common::bits_without_wall(&rows)
}

fn interrupt_twice_then_resume(args: &[&str], run_dir: &Path, total_steps: f64) {
    let ck = run_dir.join("checkpoint.safetensors");
    let metrics = run_dir.join("metrics.csv");
    let child = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ck, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(150));
    let pid = child.id() as libc::pid_t;
    for _ in 0..2 {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        std::thread::sleep(Duration::from_millis(3));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{args:?}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("rerun the same command"), "{err}");
    State::read(&ck).expect("the saved checkpoint reads back");
    let before = rows(&metrics);
    let last = f64::from_bits(before.last().unwrap()[0]);
    assert!(last < total_steps, "the run finished before the signal");

    let out = common::attnlab(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}\n{err}");
    let after = rows(&metrics);
    assert_eq!(
        after[..before.len()],
        before[..],
        "resuming rewrote earlier rows"
    );
    assert_eq!(f64::from_bits(after.last().unwrap()[0]), total_steps);
}

#[test]
fn sts_run_survives_a_double_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("sts");
    let dir_s = dir.to_str().unwrap();
    interrupt_twice_then_resume(
        &[
            "sts",
            "train",
            "--config",
            "experiments/sts/train.toml",
            "--preset",
            "tiny",
            "--set",
            "transformer.steps=20000",
            "--set",
            "eval.points=40",
            "--out",
            dir_s,
        ],
        &dir,
        20000.0,
    );
}

#[test]
fn grokking_run_survives_a_double_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    interrupt_twice_then_resume(
        &[
            "grokking",
            "train",
            "--config",
            "experiments/grokking/dyck.toml",
            "--preset",
            "tiny",
            "--depth",
            "1",
            "--seed",
            "0",
            "--set",
            "train.steps=4000",
            "--out",
            root,
        ],
        &d.path().join("dyck/tiny/depth1_seed0"),
        4000.0,
    );
}

#[test]
fn lego_run_survives_a_double_ctrl_c() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_str().unwrap();
    // 4 steps per epoch (200 sentences, batch 50)
    interrupt_twice_then_resume(
        &[
            "lego",
            "train",
            "--config",
            "experiments/lego/length_extrapolation.toml",
            "--preset",
            "tiny",
            "--only",
            "bert-random",
            "--seed",
            "0",
            "--set",
            "train.epochs=1500",
            "--out",
            root,
        ],
        &d.path().join("tiny/bert-random-seed0"),
        6000.0,
    );
}
