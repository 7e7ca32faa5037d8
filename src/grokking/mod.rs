//! Structural grokking (Murty, Sharma, Andreas, Manning, ACL 2023): the Dyck, question-formation
//! and tense-inflection data with their splits and metrics, tree projections (Murty et al., ICLR
//! 2023), weight norm and attention sparsity, decoder LMs trained on the run engine, and the
//! experiment configs and figures.
//!
//! | file | holds |
//! | --- | --- |
//! | `task.rs` (with `dyck.rs`, `grammar.rs`, `vocab.rs`, `tree.rs`) | the three tasks' data: samplers, splits, token encoding |
//! | `model.rs` | the decoder LM's config and its forward helpers (logits, greedy decoding) |
//! | `measure.rs` (with `internals.rs`, `tree_projection.rs`) | accuracy, weight norm, sparsity, SCI charts, tree metrics |
//! | `train.rs` | the run engine's [`crate::run::Trainer`] for one (depth, seed) run |
//! | `experiments.rs` | which runs a study needs, their results, early stopping, grokking onset |
//! | `figures.rs` | charts built from finished runs |
//! | `config.rs`, `cli.rs` | the experiment files and `attnlab grokking ...` |

pub mod claims;
pub mod cli;
pub mod config;
pub mod dyck;
pub mod experiments;
pub mod figures;
pub mod grammar;
pub mod internals;
pub mod measure;
pub mod model;
pub mod task;
pub mod train;
pub mod tree;
pub mod tree_projection;
pub mod vocab;

use anyhow::{bail, Result};

/// Sizes of the training, in-domain validation and generalisation sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitSizes {
    pub train: usize,
    pub val: usize,
    pub gen: usize,
}

/// Largest size of one set of a split (ten times the paper's largest): a split is drawn whole in
/// memory, and beyond this a typo would take minutes and gigabytes before failing.
pub const MAX_SPLIT: usize = 2_000_000;

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

    /// Checks every size is in `1..=MAX_SPLIT`; `names` are what the caller calls the three
    /// sizes (config fields or flags), so the error names the one to fix.
    pub fn validate(&self, names: [&str; 3]) -> Result<()> {
        for (n, name) in [self.train, self.val, self.gen].into_iter().zip(names) {
            if n == 0 || n > MAX_SPLIT {
                bail!("invalid value for `{name}`: must be in 1..={MAX_SPLIT}, got {n}");
            }
        }
        Ok(())
    }
}

/// The random streams of the replication, each drawn as [`crate::rng::stream`]`(seed, id)`.
/// The values are fixed: every committed result depends on them.
pub mod streams {
    /// Training set of a split, from the config's data seed.
    pub const TRAIN_SET: u64 = 0;
    /// Held-out strings of a Dyck split (validation and generalisation), or the validation set
    /// of a grammar split, from the data seed.
    pub const HELD_OUT: u64 = 1;
    /// Generalisation set of a grammar split, from the data seed.
    pub const GRAMMAR_GEN: u64 = 2;
    /// Which training lines make each batch, from the run's seed.
    pub const BATCHES: u64 = 100;
    /// Dropout masks, from the run's seed.
    pub const DROPOUT: u64 = 101;
    /// The official code's one-split tscore estimate in the projection check, from seed
    /// [`TSCORE_ESTIMATE_SEED`] (the same draws for every run, so runs compare).
    pub const TSCORE_ESTIMATE: u64 = 102;
    /// Seed of [`TSCORE_ESTIMATE`].
    pub const TSCORE_ESTIMATE_SEED: u64 = 0;
}
