//! Every random stream of an STS run, each `crate::rng::stream(seed, <stream>)` for the run's
//! seed, so adding draws to one never shifts another. The numbers are the ones every committed
//! result was made with: changing one changes those results; a new stream takes a new constant.

/// Transformer training batches (or the fixed dataset).
pub const TRAIN: u64 = 1;
/// The transformer's test set.
pub const TEST: u64 = 2;
/// The FCN's initial weights.
pub const FCN_INIT: u64 = 3;
/// The FCN's training batches.
pub const FCN_TRAIN: u64 = 4;
/// The FCN's test set.
pub const FCN_TEST: u64 = 5;
/// Test sets at other lengths (length generalisation).
pub const LENGTH_TEST: u64 = 6;
/// Plain Monte-Carlo loss estimates (`theory::model_loss_mc`).
pub const MONTE_CARLO: u64 = 11;
/// Encoding samples behind the x-integrated estimates (`theory::EncodingSample`).
pub const ENCODING_SAMPLE: u64 = 12;

/// Seed of a run's own encoding sample (the prediction tracked beside training): the run's
/// seed plus one, so it never shares draws with the run's data.
pub fn run_theory_seed(seed: u64) -> u64 {
    seed.wrapping_add(1)
}

/// Seed of a fixed encoding table's rows: the run's seed under this key, row i in stream i.
pub fn table_seed(seed: u64) -> u64 {
    const TABLE_KEY: u64 = 0x7ab1e;
    seed ^ TABLE_KEY
}

/// Seed of the encoding sample behind every theory curve of the figures (fixed, so a curve can be
/// recomputed from the config alone).
pub const THEORY_SEED: u64 = 1_000_003;
/// Seed of the theory sample as large as a test set (the predicted worst-case attention mass,
/// which depends on how many examples it is taken over).
pub const THEORY_TEST_SIZED: u64 = THEORY_SEED + 1;
/// Seed of `sts bench`'s one batch.
pub const BENCH: u64 = 0;
