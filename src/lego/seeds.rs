//! Every random stream of a LEGO or program run, derived from the run's seed in this one place
//! and drawn through [`crate::rng`]. The constants are the values the runs have always used, so
//! results for the same seed stay bit-identical; a new stream takes a new constant here.
//!
//! Samplers that take a plain seed ([`crate::lego::variants::Variant::sample`],
//! [`crate::lego::program::sample_programs`]) get the derived `u64`; the rest get a generator.

use crate::rng::{stream, Rng};

/// Offset of the training sentences' seed (`2 seed + 11`).
const LEGO_TRAIN: u64 = 11;
/// Offset of the run's own test sentences' seed (`2 seed + 12`).
const LEGO_TEST: u64 = 12;
/// Offset of the training programs' seed (`2 seed + 21`).
const PROGRAM_TRAIN: u64 = 21;
/// Offset of the test programs' seed (`2 seed + 22`).
const PROGRAM_TEST: u64 = 22;
/// XOR mask of the head-score sentences ("HEADS" in ASCII).
const HEAD_SENTENCES: u64 = 0x4845414453;
/// XOR mask of the mimicking sentences ("mim" in ASCII, shifted clear of the step bits).
const MIMIC_SENTENCES: u64 = 0x6d696d << 20;
/// First stream index of the mimicking dropout generators (one stream per step after it).
const MIMIC_DROPOUT: u64 = 1000;
/// Base of the variant test sets' seeds ("test" in ASCII, plus the variant's index).
const VARIANT_TEST: u64 = 0x7465_7374;
/// Stream index of the LEGO training-set shuffle.
const LEGO_SHUFFLE: u64 = 7;
/// Stream index of the program training-set shuffle.
const PROGRAM_SHUFFLE: u64 = 8;
/// XOR mask of the text-pretraining batches ("txt" in ASCII, shifted clear of the step bits).
const TEXT_BATCHES: u64 = 0x747874 << 20;
/// Seed of the held-out text windows and their masks ("txte"): the same for every run.
const TEXT_EVAL: u64 = 0x7478_7465;
/// Seed of the sentences the uniform-attention reference scores are averaged over ("UNI").
pub const UNIFORM_REFERENCE: u64 = 0x554e49;

/// Seed of the model's initial parameters: the run's seed itself.
pub fn model_init(seed: u64) -> u64 {
    seed
}

/// Seed of a LEGO run's training sentences.
pub fn lego_train(seed: u64) -> u64 {
    seed.wrapping_mul(2).wrapping_add(LEGO_TRAIN)
}

/// Seed of a LEGO run's own test sentences.
pub fn lego_test(seed: u64) -> u64 {
    seed.wrapping_mul(2).wrapping_add(LEGO_TEST)
}

/// Seed of the sentences a run's head scores are averaged over.
pub fn head_sentences(seed: u64) -> u64 {
    seed ^ HEAD_SENTENCES
}

/// Seed of the fresh sentences of mimicking step `step`.
pub fn mimic_sentences(seed: u64, step: u64) -> u64 {
    seed ^ MIMIC_SENTENCES ^ step
}

/// Dropout generator of mimicking step `step`.
pub fn mimic_dropout(seed: u64, step: u64) -> Rng {
    stream(seed, MIMIC_DROPOUT + step)
}

/// Seed of the test sentences of the `i`-th test variant of a run.
pub fn variant_test(seed: u64, i: usize) -> u64 {
    seed ^ (VARIANT_TEST + i as u64)
}

/// The generator that shuffles a LEGO run's training set, epoch after epoch.
pub fn lego_shuffle(seed: u64) -> Rng {
    stream(seed, LEGO_SHUFFLE)
}

/// Seed of a program run's training programs.
pub fn program_train(seed: u64) -> u64 {
    seed.wrapping_mul(2).wrapping_add(PROGRAM_TRAIN)
}

/// Seed of a program run's test programs.
pub fn program_test(seed: u64) -> u64 {
    seed.wrapping_mul(2).wrapping_add(PROGRAM_TEST)
}

/// The generator that shuffles a program run's training set.
pub fn program_shuffle(seed: u64) -> Rng {
    stream(seed, PROGRAM_SHUFFLE)
}

/// The generator of text-pretraining step `step`'s windows and masks.
pub fn text_batch(seed: u64, step: u64) -> Rng {
    stream(seed ^ TEXT_BATCHES, step)
}

/// The generator of the held-out text windows and their masks.
pub fn text_eval() -> Rng {
    crate::rng::seeded(TEXT_EVAL)
}
