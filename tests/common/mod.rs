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

/// `paper`'s claims of the ledger (`experiments/claims/`) checked at `scale` through
/// `verify::check`, the code `attnlab verify` runs, training in a temporary directory: the
/// paper's claims and their results.
pub fn check_claims(
    paper: &str,
    scale: attnlab::verify::Scale,
) -> (
    Vec<attnlab::verify::Claim>,
    Vec<attnlab::verify::ClaimResult>,
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = attnlab::verify::ledger::load(&root.join("experiments/claims")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let ctx = attnlab::verify::Ctx {
        scale,
        runs: &runs,
        figures: &root.join("figures"),
        experiments: &root.join("experiments"),
        quiet: true,
    };
    let results = attnlab::verify::check(&all, &[paper.to_string()], &ctx).unwrap();
    let claims = all
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.paper() == paper)
        .collect();
    (claims, results)
}

/// The result of claim `id`.
pub fn claim_result<'a>(
    results: &'a [attnlab::verify::ClaimResult],
    id: &str,
) -> &'a attnlab::verify::ClaimResult {
    results
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no result for `{id}`"))
}

/// Asserts that at least `min` of `claims` list `scale` and that every one of them holds.
pub fn assert_claims_hold_at(
    claims: &[attnlab::verify::Claim],
    results: &[attnlab::verify::ClaimResult],
    scale: attnlab::verify::Scale,
    min: usize,
) {
    let at: Vec<_> = claims
        .iter()
        .filter(|c| c.scales.contains(&scale))
        .collect();
    assert!(
        at.len() >= min,
        "only {} claims at the {} scale",
        at.len(),
        scale.name()
    );
    for c in at {
        let r = claim_result(results, &c.id);
        assert_eq!(
            r.verdict,
            attnlab::verify::Verdict::Holds,
            "{}: {} ({}; rule {})",
            c.id,
            r.summary,
            r.note,
            r.rule
        );
    }
}

pub mod fused;

/// Adam without weight decay, cosine over the whole run (the LEGO experiment files' optimiser).
pub fn adam_cosine(lr: f64) -> attnlab::train::OptimConfig {
    use attnlab::train::{OptimConfig, OptimKind, Schedule, ScheduleKind};
    OptimConfig {
        kind: OptimKind::Adam,
        lr,
        weight_decay: 0.0,
        schedule: Schedule {
            kind: ScheduleKind::Cosine,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The small LEGO encoder of the training tests: 2 layers, 2 heads, d 32.
pub fn small_lego_model(max_positions: usize) -> attnlab::lego::config::ModelConfig {
    attnlab::lego::config::ModelConfig {
        layers: 2,
        heads: 2,
        hidden: 32,
        ffn: 64,
        dropout: 0.0,
        max_positions,
    }
}

fn never() -> bool {
    false
}

/// Options of a LEGO or program run kept in memory only, never stopped.
pub fn unsaved_run(dev: &candle_core::Device) -> attnlab::lego::train::RunOpts<'_> {
    attnlab::lego::train::RunOpts {
        dir: None,
        stop: &never,
        progress: None,
        dev,
    }
}
