//! The LEGO claims of the ledger (`experiments/claims/lego.toml`) checked through
//! `attnlab::verify::check`, the code `attnlab verify` runs: at the quick scale every claim that
//! lists `quick` among its scales must hold (runs in a temporary directory, about two minutes on
//! 2 cores); at the CPU scale every claim is measured from the committed figures without error.

use attnlab::verify::{self, ledger, ClaimResult, Ctx, Scale, Verdict};
use std::path::Path;

/// Checks the LEGO claims at `scale` on a copy of the ledger (a paper file not written yet is an
/// empty stand-in); returns the ledger's LEGO claims and their results.
fn check(scale: Scale) -> (Vec<ledger::Claim>, Vec<ClaimResult>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let claims = root.join("experiments/claims");
    let dir = tempfile::tempdir().unwrap();
    for paper in ledger::PAPERS {
        let src = claims.join(format!("{paper}.toml"));
        let dst = dir.path().join(format!("{paper}.toml"));
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            assert_ne!(paper, "lego", "experiments/claims/lego.toml is missing");
            std::fs::write(&dst, format!("paper = \"{paper}\"\nclaim = []\n")).unwrap();
        }
    }
    let all = ledger::load(dir.path()).unwrap();
    let runs = dir.path().join("runs");
    let ctx = Ctx {
        scale,
        runs: &runs,
        figures: &root.join("figures"),
        experiments: &root.join("experiments"),
        quiet: true,
    };
    let results = verify::check(&all, &["lego".to_string()], &ctx).unwrap();
    let lego = all
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.paper() == "lego")
        .collect();
    (lego, results)
}

#[test]
fn lego_claims_hold_at_quick_scale() {
    let (claims, results) = check(Scale::Quick);
    assert!(claims.len() >= 8, "only {} LEGO claims", claims.len());
    let quick: Vec<_> = claims
        .iter()
        .filter(|c| c.scales.contains(&Scale::Quick))
        .collect();
    assert!(
        quick.len() >= 5,
        "only {} LEGO claims at the quick scale",
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
fn lego_claims_are_measured_at_cpu_scale_from_the_committed_figures() {
    let (claims, results) = check(Scale::Cpu);
    for c in &claims {
        let r = results.iter().find(|r| r.id == c.id).unwrap();
        assert_ne!(r.verdict, Verdict::NotRun, "{}: {}", c.id, r.summary);
        if c.scales.contains(&Scale::Cpu) {
            assert!(
                !r.values.is_empty() || r.verdict == Verdict::NotShownAtThisScale,
                "{}: no values",
                c.id
            );
        }
    }
    // the exact FLOP count and the shortcut hold at the CPU preset (paper_notes 2.8)
    for id in ["lego/attention-module-flops", "lego/shortcut-chain-order"] {
        let r = results.iter().find(|r| r.id == id).unwrap();
        assert_eq!(r.verdict, Verdict::Holds, "{id}: {}", r.summary);
    }
}
