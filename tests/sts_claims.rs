//! The sparse-token-selection claims of the ledger (`experiments/claims/sts.toml`) checked at the
//! quick scale through `attnlab::verify::check`, the code `attnlab verify` runs: every claim that
//! lists `quick` among its scales must hold. Runs go to a temporary directory.

use attnlab::verify::{self, ledger, Ctx, Scale, Verdict};
use std::path::Path;

#[test]
fn sts_claims_hold_at_quick_scale() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let claims = root.join("experiments/claims");
    // The ledger loads every paper's file; one not written yet does not stop this paper's check.
    let dir = tempfile::tempdir().unwrap();
    for paper in ledger::PAPERS {
        let src = claims.join(format!("{paper}.toml"));
        let dst = dir.path().join(format!("{paper}.toml"));
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            assert_ne!(paper, "sts", "experiments/claims/sts.toml is missing");
            std::fs::write(&dst, format!("paper = \"{paper}\"\nclaim = []\n")).unwrap();
        }
    }
    let all = ledger::load(dir.path()).unwrap();
    let runs = dir.path().join("runs");
    let ctx = Ctx {
        scale: Scale::Quick,
        runs: &runs,
        figures: &root.join("figures"),
        experiments: &root.join("experiments"),
        quiet: true,
    };
    let results = verify::check(&all, &["sts".to_string()], &ctx).unwrap();
    let quick: Vec<_> = all
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c.paper() == "sts" && c.scales.contains(&Scale::Quick))
        .collect();
    assert!(
        quick.len() >= 8,
        "only {} STS claims at the quick scale",
        quick.len()
    );
    for c in quick {
        let r = results.iter().find(|r| r.id == c.id).unwrap();
        assert_eq!(
            r.verdict,
            Verdict::Holds,
            "{}: {} ({}; rule {})",
            c.id,
            r.summary,
            r.note,
            r.rule
        );
    }
}

#[test]
fn sts_claims_hold_at_cpu_scale_from_the_committed_figures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    for paper in ledger::PAPERS {
        let src = root.join(format!("experiments/claims/{paper}.toml"));
        let dst = dir.path().join(format!("{paper}.toml"));
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            std::fs::write(&dst, format!("paper = \"{paper}\"\nclaim = []\n")).unwrap();
        }
    }
    let all = ledger::load(dir.path()).unwrap();
    let runs = dir.path().join("runs");
    let ctx = Ctx {
        scale: Scale::Cpu,
        runs: &runs,
        figures: &root.join("figures"),
        experiments: &root.join("experiments"),
        quiet: true,
    };
    for r in verify::check(&all, &["sts".to_string()], &ctx).unwrap() {
        let c = &all.iter().find(|(_, c)| c.id == r.id).unwrap().1;
        if c.scales.contains(&Scale::Cpu) {
            assert_eq!(
                r.verdict,
                Verdict::Holds,
                "{}: {} ({})",
                r.id,
                r.summary,
                r.note
            );
        }
    }
}
