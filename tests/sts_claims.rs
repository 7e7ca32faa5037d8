//! The sparse-token-selection claims of the ledger (`experiments/claims/sts.toml`) checked
//! through `attnlab::verify::check`, the code `attnlab verify` runs: every claim that lists
//! `quick` holds at the quick scale (runs in a temporary directory), and every claim that lists
//! `cpu` holds on the committed CPU-preset figures.

mod common;

use attnlab::verify::Scale;
use common::{assert_claims_hold_at, check_claims};

#[test]
fn sts_claims_hold_at_quick_scale() {
    let (claims, results) = check_claims("sts", Scale::Quick);
    assert_claims_hold_at(&claims, &results, Scale::Quick, 8);
}

#[test]
fn sts_claims_hold_at_cpu_scale_from_the_committed_figures() {
    let (claims, results) = check_claims("sts", Scale::Cpu);
    assert_claims_hold_at(&claims, &results, Scale::Cpu, 8);
}
