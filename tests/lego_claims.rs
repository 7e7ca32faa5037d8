//! The LEGO claims of the ledger (`experiments/claims/lego.toml`) checked through
//! `attnlab::verify::check`, the code `attnlab verify` runs: at the quick scale every claim that
//! lists `quick` among its scales must hold (runs in a temporary directory, about two minutes on
//! 2 cores); at the CPU scale every claim is measured from the committed figures without error.

mod common;

use attnlab::verify::{Scale, Verdict};
use common::{assert_claims_hold_at, check_claims, claim_result};

#[test]
fn lego_claims_hold_at_quick_scale() {
    let (claims, results) = check_claims("lego", Scale::Quick);
    assert!(claims.len() >= 8, "only {} LEGO claims", claims.len());
    assert_claims_hold_at(&claims, &results, Scale::Quick, 4);
}

#[test]
fn lego_claims_are_measured_at_cpu_scale_from_the_committed_figures() {
    let (claims, results) = check_claims("lego", Scale::Cpu);
    for c in &claims {
        let r = claim_result(&results, &c.id);
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
        let r = claim_result(&results, id);
        assert_eq!(r.verdict, Verdict::Holds, "{id}: {}", r.summary);
    }
}
