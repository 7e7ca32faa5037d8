//! Seeded random number generation: every run takes a seed and the same seed gives the same numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator used everywhere in attnlab.
pub type Rng = ChaCha8Rng;

/// A generator for `seed`.
pub fn seeded(seed: u64) -> Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// An independent stream for (`seed`, `stream`), e.g. the test set of a run, or one seed of a sweep,
/// so adding draws to one stream never shifts another.
pub fn stream(seed: u64, stream: u64) -> Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}
