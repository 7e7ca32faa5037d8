//! The structural-grokking claims of the ledger (`experiments/claims/grokking.toml`) checked
//! through `attnlab::verify::check`, the code `attnlab verify` runs: at the quick scale (the short
//! runs of `experiments/grokking/verify_quick.toml`, trained in a temporary directory; about a
//! minute on 2 cores) every claim listing `quick` must hold; at the cpu scale (the committed
//! per-run curves, nothing retrained) every claim listing `cpu` must be measured and decided.

use attnlab::verify::{self, ledger, Claim, ClaimResult, Ctx, Kind, Scale, Verdict};
use std::path::Path;

/// The real ledger, with an empty file for a paper whose claims are not written yet.
fn ledger_in(dir: &Path) -> Vec<(String, Claim)> {
    let claims = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/claims");
    for paper in ledger::PAPERS {
        let src = claims.join(format!("{paper}.toml"));
        let dst = dir.join(format!("{paper}.toml"));
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            assert_ne!(
                paper, "grokking",
                "experiments/claims/grokking.toml is missing"
            );
            std::fs::write(&dst, format!("paper = \"{paper}\"\nclaim = []\n")).unwrap();
        }
    }
    ledger::load(dir).unwrap()
}

fn check_at(scale: Scale) -> (Vec<(String, Claim)>, Vec<ClaimResult>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let all = ledger_in(dir.path());
    let runs = dir.path().join("runs");
    let ctx = Ctx {
        scale,
        runs: &runs,
        figures: &root.join("figures"),
        experiments: &root.join("experiments"),
        quiet: true,
    };
    let results = verify::check(&all, &["grokking".to_string()], &ctx).unwrap();
    (all, results)
}

fn grokking_claims(all: &[(String, Claim)]) -> Vec<&Claim> {
    all.iter()
        .map(|(_, c)| c)
        .filter(|c| c.paper() == "grokking")
        .collect()
}

#[test]
fn quick_scale_grokking_claims_hold() {
    let (all, results) = check_at(Scale::Quick);
    let quick: Vec<&Claim> = grokking_claims(&all)
        .into_iter()
        .filter(|c| c.scales.contains(&Scale::Quick))
        .collect();
    assert!(
        quick.len() >= 3,
        "only {} grokking claims at the quick scale",
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
    // Grokking itself is not claimed at this scale: those claims say why.
    for r in &results {
        if r.verdict == Verdict::NotShownAtThisScale {
            assert!(!r.summary.is_empty(), "{}: no reason", r.id);
        }
    }
}

#[test]
fn cpu_scale_grokking_claims_are_decided_from_the_committed_runs() {
    let (all, results) = check_at(Scale::Cpu);
    let claims = grokking_claims(&all);
    assert!(claims.len() >= 8, "only {} grokking claims", claims.len());
    for c in &claims {
        let r = results.iter().find(|r| r.id == c.id).unwrap();
        if c.scales.contains(&Scale::Cpu) {
            assert!(
                matches!(r.verdict, Verdict::Holds | Verdict::Fails),
                "{}: {:?} ({})",
                c.id,
                r.verdict,
                r.summary
            );
        } else {
            assert_eq!(r.verdict, Verdict::NotShownAtThisScale, "{}", c.id);
        }
    }
    // A consistency check (a property of the code) must hold wherever it is measured.
    for c in claims.iter().filter(|c| c.kind == Kind::Consistency) {
        let r = results.iter().find(|r| r.id == c.id).unwrap();
        assert_eq!(r.verdict, Verdict::Holds, "{}: {}", c.id, r.summary);
    }
    // The robust findings of the CPU runs (paper_notes.md section 3): Dyck groks structurally,
    // weight norm and sparsity grow in every run.
    for id in [
        "grokking/dyck-structural-grokking",
        "grokking/weight-norm-grows",
        "grokking/sparsity-grows",
    ] {
        let r = results.iter().find(|r| r.id == id).unwrap();
        assert_eq!(r.verdict, Verdict::Holds, "{id}: {}", r.summary);
    }
}

#[test]
fn every_section_4_finding_has_a_claim() {
    let dir = tempfile::tempdir().unwrap();
    let all = ledger_in(dir.path());
    let ids: Vec<&str> = grokking_claims(&all)
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    for want in [
        "structural-grokking",
        "early-stopping-underestimates",
        "inverted-u-shallow-side",
        "inverted-u-deep",
        "weight-norm-grows",
        "weight-norm-does-not-predict",
        "sparsity-grows",
        "sparsity-does-not-predict",
        "tscore-rises",
        "tscore-highest-at-best-depth",
        "tparseval",
    ] {
        assert!(
            ids.iter().any(|id| id.contains(want)),
            "no grokking claim for `{want}` in {ids:?}"
        );
    }
    for task in ["dyck", "qf", "ti"] {
        assert!(
            ids.contains(&format!("grokking/{task}-structural-grokking").as_str()),
            "no structural-grokking claim for {task}"
        );
    }
}
