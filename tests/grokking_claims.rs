//! The structural-grokking claims of the ledger (`experiments/claims/grokking.toml`) checked
//! through `attnlab::verify::check`, the code `attnlab verify` runs: at the quick scale (the short
//! runs of `experiments/grokking/verify/quick.toml`, trained in a temporary directory; about a
//! minute on 2 cores) every claim listing `quick` must hold; at the cpu scale (the committed
//! per-run curves, nothing retrained) every claim listing `cpu` must be measured and decided.

mod common;

use attnlab::verify::{Kind, Scale, Verdict};
use common::{assert_claims_hold_at, check_claims, claim_result};

#[test]
fn quick_scale_grokking_claims_hold() {
    let (claims, results) = check_claims("grokking", Scale::Quick);
    assert_claims_hold_at(&claims, &results, Scale::Quick, 2);
    // Grokking itself is not claimed at this scale: those claims say why.
    for r in &results {
        if r.verdict == Verdict::NotShownAtThisScale {
            assert!(!r.summary.is_empty(), "{}: no reason", r.id);
        }
    }
}

#[test]
fn cpu_scale_grokking_claims_are_decided_from_the_committed_runs() {
    let (claims, results) = check_claims("grokking", Scale::Cpu);
    assert!(claims.len() >= 8, "only {} grokking claims", claims.len());
    for c in &claims {
        let r = claim_result(&results, &c.id);
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
        let r = claim_result(&results, &c.id);
        assert_eq!(r.verdict, Verdict::Holds, "{}: {}", c.id, r.summary);
    }
    // The robust findings of the CPU runs (paper_notes.md section 3): Dyck groks structurally,
    // weight norm and sparsity grow in every run.
    for id in [
        "grokking/dyck-structural-grokking",
        "grokking/weight-norm-grows",
        "grokking/sparsity-grows",
    ] {
        let r = claim_result(&results, id);
        assert_eq!(r.verdict, Verdict::Holds, "{id}: {}", r.summary);
    }
}

#[test]
fn every_section_4_finding_has_a_claim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let all = attnlab::verify::ledger::load(&root.join("experiments/claims")).unwrap();
    let ids: Vec<&str> = all
        .iter()
        .map(|(_, c)| c.id.as_str())
        .filter(|id| id.starts_with("grokking/"))
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
