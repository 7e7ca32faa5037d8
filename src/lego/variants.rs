//! Task variants for the shortcut study: each is a LEGO distribution with the same sentence
//! shape (`5n + 2` tokens, `n` labels in chain order) but a different way of writing the
//! chain, so a model trained on one can be tested on every other without change.
//!
//! A shortcut is a rule that solves the training distribution without following the chain.
//! Each variant below breaks (or invites) one such rule:
//!
//! | variant | what changes | shortcut it exposes |
//! |---|---|---|
//! | `shuffled` | nothing (official task) | reference |
//! | `chain_order` | clauses in chain order, root first | "read the previous clause": position stands in for association |
//! | `reversed` | clauses in reverse chain order, root last | a positional rule learnt on `chain_order` |
//! | `all_val` | every relation is `val` | "copy the root literal" (labels constant within a sentence) |
//! | `all_not` | every relation is `not` | values alternate: parity of the depth suffices |
//! | `alphabetical` | chain position `k` is named by the `k`-th letter | the name gives the depth away |
//! | `rotated` | chain order cyclically rotated by a random offset | locally ordered but the root is anywhere |
//! | `biased_not` | `not` with probability 0.2 | label statistics differ from training |
//!
//! `rotated` is the one variant [`crate::lego::task::TaskSpec`] cannot express; it is generated
//! here by rotating a chain-ordered sentence.
//!
//! ```
//! use attnlab::lego::variants::Variant;
//! let s = &Variant::Reversed.sample(6, 1, 7).unwrap()[0];
//! assert_eq!(s.order, vec![5, 4, 3, 2, 1, 0]);
//! ```

use crate::lego::task::{ClauseOrder, LegoSentence, Naming, Relations, TaskSpec};
use crate::rng::{seeded, Rng};
use anyhow::{bail, Result};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// A named LEGO distribution for the shortcut study (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Shuffled,
    ChainOrder,
    Reversed,
    AllVal,
    AllNot,
    Alphabetical,
    Rotated,
    BiasedNot,
}

/// Probability of `not` in the `biased_not` variant.
pub const BIASED_P_NOT: f64 = 0.2;

impl Variant {
    /// Every variant, in the order of the module table.
    pub const ALL: [Variant; 8] = [
        Variant::Shuffled,
        Variant::ChainOrder,
        Variant::Reversed,
        Variant::AllVal,
        Variant::AllNot,
        Variant::Alphabetical,
        Variant::Rotated,
        Variant::BiasedNot,
    ];

    /// The name used in configs and on the command line (snake_case).
    pub fn name(self) -> &'static str {
        match self {
            Variant::Shuffled => "shuffled",
            Variant::ChainOrder => "chain_order",
            Variant::Reversed => "reversed",
            Variant::AllVal => "all_val",
            Variant::AllNot => "all_not",
            Variant::Alphabetical => "alphabetical",
            Variant::Rotated => "rotated",
            Variant::BiasedNot => "biased_not",
        }
    }

    /// The variant called `name` (snake_case or kebab-case); the error lists the names.
    pub fn parse(name: &str) -> Result<Self> {
        let norm = name.replace('-', "_");
        match Self::ALL.iter().find(|v| v.name() == norm) {
            Some(&v) => Ok(v),
            None => {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                bail!(
                    "unknown LEGO variant `{name}`: expected one of {}",
                    names.join(", ")
                )
            }
        }
    }

    /// The task spec this variant draws from (for `rotated`, the chain-ordered spec that is
    /// then rotated).
    pub fn spec(self, n_var: usize) -> TaskSpec {
        let base = TaskSpec::shuffled(n_var);
        match self {
            Variant::Shuffled => base,
            Variant::ChainOrder | Variant::Rotated => TaskSpec {
                order: ClauseOrder::Chain,
                ..base
            },
            Variant::Reversed => TaskSpec {
                order: ClauseOrder::Reversed,
                ..base
            },
            Variant::AllVal => TaskSpec {
                relations: Relations::AllVal,
                ..base
            },
            Variant::AllNot => TaskSpec {
                relations: Relations::AllNot,
                ..base
            },
            Variant::Alphabetical => TaskSpec {
                naming: Naming::Alphabetical,
                ..base
            },
            Variant::BiasedNot => TaskSpec {
                relations: Relations::Random {
                    p_not: BIASED_P_NOT,
                },
                ..base
            },
        }
    }

    /// Draws one sentence of this variant with chain length `n_var` (1..=26).
    pub fn generate(self, n_var: usize, rng: &mut Rng) -> LegoSentence {
        let s = LegoSentence::generate(&self.spec(n_var), rng);
        match self {
            Variant::Rotated => {
                // Chain order rotated left by `shift`: clause s holds chain index (s + shift) mod n.
                let shift = rng.gen_range(0..n_var);
                let order = (0..n_var).map(|s| (s + shift) % n_var).collect();
                LegoSentence::from_parts(s.names, s.values, order)
            }
            _ => s,
        }
    }

    /// `count` sentences of this variant, determined by `seed` alone.
    pub fn sample(self, n_var: usize, count: usize, seed: u64) -> Result<Vec<LegoSentence>> {
        Ok(self.stream(n_var, seed)?.take(count).collect())
    }

    /// Sentences of this variant one after another, determined by `seed` alone (the first
    /// `count` are [`Variant::sample`]).
    pub fn stream(self, n_var: usize, seed: u64) -> Result<impl Iterator<Item = LegoSentence>> {
        self.spec(n_var).validate()?;
        let mut rng = seeded(seed);
        Ok(std::iter::repeat_with(move || {
            self.generate(n_var, &mut rng)
        }))
    }
}

/// `count` sentences drawn from a mixture of variants: each sentence picks its variant with
/// probability proportional to its weight (the training regimes of the shortcut study).
pub fn sample_mixture(
    mix: &[(Variant, f64)],
    n_var: usize,
    count: usize,
    seed: u64,
) -> Result<Vec<LegoSentence>> {
    if mix.is_empty() {
        bail!("a mixture needs at least one variant");
    }
    if mix.iter().any(|&(_, w)| !(w >= 0.0 && w.is_finite())) {
        bail!("mixture weights must be finite and >= 0");
    }
    let total: f64 = mix.iter().map(|&(_, w)| w).sum();
    if total <= 0.0 {
        bail!("mixture weights sum to 0");
    }
    for &(v, _) in mix {
        v.spec(n_var).validate()?;
    }
    let mut rng = seeded(seed);
    Ok((0..count)
        .map(|_| {
            let mut u = rng.gen::<f64>() * total;
            // the last variant with positive weight absorbs rounding at the top end
            let mut pick = mix.iter().rev().find(|&&(_, w)| w > 0.0).unwrap().0;
            for &(v, w) in mix {
                if u < w {
                    pick = v;
                    break;
                }
                u -= w;
            }
            pick.generate(n_var, &mut rng)
        })
        .collect())
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}
