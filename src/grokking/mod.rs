//! Structural grokking (Murty, Sharma, Andreas, Manning, ACL 2023): the Dyck, question-formation
//! and tense-inflection data with their splits and metrics, tree projections (Murty et al., ICLR
//! 2023), weight norm and attention sparsity, and the experiment configs. Model training comes
//! with the transformer toolkit.

pub mod cli;
pub mod config;
pub mod dyck;
pub mod figures;
pub mod grammar;
pub mod internals;
pub mod train;
pub mod tree;
pub mod tree_projection;

/// Sizes of the training, in-domain validation and generalisation sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitSizes {
    pub train: usize,
    pub val: usize,
    pub gen: usize,
}

impl SplitSizes {
    /// The paper's Dyck sizes: 200k / 20k / 20k.
    pub const DYCK_PAPER: SplitSizes = SplitSizes {
        train: 200_000,
        val: 20_000,
        gen: 20_000,
    };
    /// The paper's question-formation and tense-inflection sizes: 100k / 1k / 10k.
    pub const GRAMMAR_PAPER: SplitSizes = SplitSizes {
        train: 100_000,
        val: 1_000,
        gen: 10_000,
    };
}
