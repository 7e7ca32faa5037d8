//! Helpers shared by the integration tests: running the binary and checking its errors.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `attnlab` binary with `args` in the repository root.
pub fn attnlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the attnlab binary runs")
}

/// Runs the binary with `args` in `dir`.
pub fn attnlab_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the attnlab binary runs")
}

/// Asserts that `out` is a clean failure: exit `code`, stderr naming every one of `needles`,
/// and no panic.
pub fn assert_clean_error(out: &Output, code: i32, needles: &[&str], what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr lacks `{n}`\n{err}");
    }
}

/// The rows of a numeric CSV with a header (empty fields read as NaN).
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| {
            l.split(',')
                .map(|f| {
                    if f.is_empty() {
                        f64::NAN
                    } else {
                        f.parse().unwrap_or(f64::NAN)
                    }
                })
                .collect()
        })
        .collect();
    (header, rows)
}

/// Metrics rows as bit patterns without the wall-clock column (index 1), the only column that
/// may differ between two runs of the same seed.
pub fn bits_without_wall(rows: &[Vec<f64>]) -> Vec<Vec<u64>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, x)| x.to_bits())
                .collect()
        })
        .collect()
}
