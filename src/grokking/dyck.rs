//! Dyck-(k, m): balanced strings over `k` bracket types nested at most `m` deep, the sampler of the
//! official code, the split by structure, and the closing-bracket accuracy.
//!
//! **Tokens.** A string is a `Vec<u16>`: `t` opens type `t`, `k + t` closes type `t`
//! (`t < k`). A model vocabulary that appends its special tokens after these `2k` ids can use
//! the ids as columns of its score matrix.
//!
//! **Sampler** (`DyckPDFA` in `data_utils/dyck_helpers.py`): on an empty stack end with
//! probability 1/2, else open a uniformly chosen type; at depth `m` close the top; otherwise close
//! the top with probability 1/2 or open type `i` with probability `1/(2k)`. Strings shorter than
//! `min_len` (4) are resampled whole ([`ShortStrings::Resample`], the paper's wording); the code
//! instead rejects only the END draw and keeps sampling ([`ShortStrings::RejectEnd`]).
//!
//! **Structure.** The open/close pattern with types erased (`(a (b b) a)` -> `1100`). The split
//! ([`structure_split`]) draws the training set, then draws further strings: a string whose
//! structure occurs in training (and which is not itself a training string) goes to in-domain
//! validation, one whose structure does not goes to the generalisation set, until both are full.
//! [`SplitCriterion::Segments`] is the code's criterion instead: a string counts as seen when each
//! of its top-level segments (maximal balanced pieces returning to the empty stack) occurred as a
//! segment in training.
//!
//! ```
//! use attnlab::grokking::dyck::{sample_dyck, structure, DyckConfig};
//! let cfg = DyckConfig::default(); // k = 20, m = 10
//! let s = sample_dyck(&cfg, &mut attnlab::rng::seeded(0));
//! assert!(s.len() >= 4 && s.len() % 2 == 0);
//! assert_eq!(structure(&s, cfg.bracket_types).iter().filter(|&&o| o).count(), s.len() / 2);
//! ```

use super::SplitSizes;
use crate::rng::{stream, Rng};
use anyhow::{bail, Result};
use rand::Rng as _;
use std::collections::HashSet;

/// The paper's distance filter for the closing-bracket metric (the released code uses 0).
pub const PAPER_MIN_DIST: usize = 10;

/// What to do with strings shorter than `min_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortStrings {
    /// Discard the string and sample a new one (the paper's description).
    Resample,
    /// Reject only the END draw and keep extending the string (the official code).
    RejectEnd,
}

/// When a string's structure counts as seen in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitCriterion {
    /// The whole open/close pattern occurs in training (the paper).
    WholeString,
    /// Every top-level segment's pattern occurs as a segment in training (the official code).
    Segments,
}

/// Parameters of Dyck-(k, m).
#[derive(Clone, Debug, PartialEq)]
pub struct DyckConfig {
    /// `k`, the number of bracket types (paper: 20).
    pub bracket_types: usize,
    /// `m`, the maximum nesting depth (paper: 10).
    pub max_depth: usize,
    /// Minimum length in tokens (4).
    pub min_len: usize,
    pub short_strings: ShortStrings,
    /// Longer strings are resampled whole (`None`: no limit, as the paper and the code). A
    /// CPU-scale knob: unbounded strings reach ~1000 tokens.
    pub max_len: Option<usize>,
}

impl Default for DyckConfig {
    fn default() -> Self {
        DyckConfig {
            bracket_types: 20,
            max_depth: 10,
            min_len: 4,
            short_strings: ShortStrings::Resample,
            max_len: None,
        }
    }
}

impl DyckConfig {
    /// Checks the ranges, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.bracket_types == 0 || self.bracket_types > 1000 {
            bail!(
                "bracket_types must be in 1..=1000, got {}",
                self.bracket_types
            );
        }
        if self.max_depth == 0 {
            bail!("max_depth must be at least 1, got 0");
        }
        if self.min_len > 10_000 {
            bail!("min_len must be at most 10000, got {}", self.min_len);
        }
        if let Some(m) = self.max_len {
            if m < self.min_len.max(2) {
                bail!(
                    "max_len must be at least min_len = {} (and 2), got {m}",
                    self.min_len
                );
            }
        }
        Ok(())
    }

    /// Vocabulary size `2k` (open and close brackets; no special tokens).
    pub fn vocab_size(&self) -> usize {
        2 * self.bracket_types
    }
}

/// Whether token `tok` opens a bracket in Dyck-(k, .).
pub fn is_open(tok: u16, k: usize) -> bool {
    (tok as usize) < k
}

/// The name of token `tok` as the official code spells it: `(a` / `a)`, types past `z` doubled
/// (`(aa`), and so on.
pub fn token_name(tok: u16, k: usize) -> String {
    let t = tok as usize % k;
    let letter = (b'a' + (t % 26) as u8) as char;
    let id: String = std::iter::repeat_n(letter, t / 26 + 1).collect();
    if is_open(tok, k) {
        format!("({id}")
    } else {
        format!("{id})")
    }
}

/// One run of the sampler with no length condition (it may return the empty string).
pub fn sample_dyck_unconditioned(cfg: &DyckConfig, rng: &mut Rng) -> Vec<u16> {
    sample_with_min(cfg, 0, rng)
}

fn sample_with_min(cfg: &DyckConfig, min_len: usize, rng: &mut Rng) -> Vec<u16> {
    let k = cfg.bracket_types;
    let mut stack: Vec<u16> = Vec::new();
    let mut out: Vec<u16> = Vec::new();
    loop {
        let next = if stack.is_empty() {
            // END with 1/2, else open a uniform type.
            let r = rng.gen_range(0..2 * k);
            if r >= k {
                if out.len() >= min_len {
                    return out;
                }
                continue; // the code's RejectEnd: redraw at the same state
            }
            r as u16
        } else if stack.len() >= cfg.max_depth {
            (k + *stack.last().unwrap() as usize) as u16
        } else {
            let r = rng.gen_range(0..2 * k);
            if r >= k {
                (k + *stack.last().unwrap() as usize) as u16
            } else {
                r as u16
            }
        };
        if is_open(next, k) {
            stack.push(next);
        } else {
            stack.pop();
        }
        out.push(next);
    }
}

/// One Dyck string of length at least `cfg.min_len` (and at most `cfg.max_len`).
pub fn sample_dyck(cfg: &DyckConfig, rng: &mut Rng) -> Vec<u16> {
    loop {
        let s = match cfg.short_strings {
            ShortStrings::RejectEnd => sample_with_min(cfg, cfg.min_len, rng),
            ShortStrings::Resample => sample_with_min(cfg, 0, rng),
        };
        if s.len() >= cfg.min_len && cfg.max_len.is_none_or(|m| s.len() <= m) {
            return s;
        }
    }
}

/// The open/close pattern of `tokens` (`true` = open), bracket types erased.
pub fn structure(tokens: &[u16], k: usize) -> Vec<bool> {
    tokens.iter().map(|&t| is_open(t, k)).collect()
}

/// The top-level segments of a balanced pattern: maximal pieces that start and end on an empty
/// stack.
pub fn segments(pattern: &[bool]) -> Vec<&[bool]> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i64, 0usize);
    for (i, &open) in pattern.iter().enumerate() {
        depth += if open { 1 } else { -1 };
        if depth == 0 {
            out.push(&pattern[start..=i]);
            start = i + 1;
        }
    }
    out
}

/// Whether `tokens` is a balanced string over `k` types nested at most `max_depth` deep.
pub fn is_balanced(tokens: &[u16], k: usize, max_depth: usize) -> bool {
    let mut stack = Vec::new();
    for &t in tokens {
        if (t as usize) >= 2 * k {
            return false;
        }
        if is_open(t, k) {
            stack.push(t);
            if stack.len() > max_depth {
                return false;
            }
        } else if stack.pop() != Some(t - k as u16) {
            return false;
        }
    }
    stack.is_empty()
}

/// Maximum nesting depth of a balanced string.
pub fn max_nesting(tokens: &[u16], k: usize) -> usize {
    let (mut d, mut best) = (0usize, 0usize);
    for &t in tokens {
        if is_open(t, k) {
            d += 1;
            best = best.max(d);
        } else {
            d = d.saturating_sub(1);
        }
    }
    best
}

/// Training, in-domain validation and generalisation strings.
#[derive(Clone, Debug)]
pub struct DyckSplit {
    pub train: Vec<Vec<u16>>,
    pub val: Vec<Vec<u16>>,
    pub gen: Vec<Vec<u16>>,
}

/// The set of training structures (whole patterns, or top-level segments) for `criterion`.
fn seen_structures(train: &[Vec<u16>], k: usize, criterion: SplitCriterion) -> HashSet<Vec<bool>> {
    let mut seen = HashSet::new();
    for s in train {
        let p = structure(s, k);
        match criterion {
            SplitCriterion::WholeString => {
                seen.insert(p);
            }
            SplitCriterion::Segments => {
                for seg in segments(&p) {
                    seen.insert(seg.to_vec());
                }
            }
        }
    }
    seen
}

/// Whether `tokens`'s structure counts as seen in `seen` under `criterion`.
pub fn structure_seen(
    tokens: &[u16],
    k: usize,
    seen: &HashSet<Vec<bool>>,
    criterion: SplitCriterion,
) -> bool {
    let p = structure(tokens, k);
    match criterion {
        SplitCriterion::WholeString => seen.contains(&p),
        SplitCriterion::Segments => segments(&p).iter().all(|s| seen.contains(*s)),
    }
}

/// Draws the split deterministically from `seed`: the training set from stream
/// [`TRAIN_SET`](super::streams::TRAIN_SET), then the validation and generalisation sets from
/// [`HELD_OUT`](super::streams::HELD_OUT) (see the module doc). Fails if the
/// held-out sets cannot be filled within `100 * (val + gen) + 1e6` draws.
pub fn structure_split(
    cfg: &DyckConfig,
    sizes: SplitSizes,
    criterion: SplitCriterion,
    seed: u64,
) -> Result<DyckSplit> {
    cfg.validate()?;
    let k = cfg.bracket_types;
    let mut rng = stream(seed, super::streams::TRAIN_SET);
    let train: Vec<Vec<u16>> = (0..sizes.train)
        .map(|_| sample_dyck(cfg, &mut rng))
        .collect();
    let seen = seen_structures(&train, k, criterion);
    let train_strings: HashSet<&[u16]> = train.iter().map(|s| s.as_slice()).collect();
    let (mut val, mut gen) = (Vec::new(), Vec::new());
    let mut rng = stream(seed, super::streams::HELD_OUT);
    let budget = 100 * (sizes.val + sizes.gen) + 1_000_000;
    let mut draws = 0usize;
    while val.len() < sizes.val || gen.len() < sizes.gen {
        draws += 1;
        if draws > budget {
            bail!(
                "could not fill the held-out sets after {budget} draws ({} of {} validation, {} of {} \
                 generalisation strings): with {} training strings few structures are {}",
                val.len(),
                sizes.val,
                gen.len(),
                sizes.gen,
                sizes.train,
                if val.len() < sizes.val { "seen" } else { "unseen" }
            );
        }
        let s = sample_dyck(cfg, &mut rng);
        if structure_seen(&s, k, &seen, criterion) {
            if val.len() < sizes.val && !train_strings.contains(s.as_slice()) {
                val.push(s);
            }
        } else if gen.len() < sizes.gen {
            gen.push(s);
        }
    }
    Ok(DyckSplit { train, val, gen })
}

/// For each closing position of a balanced string, the position of its opening bracket:
/// `(close_pos, open_pos)` in order of closing.
pub fn closing_pairs(tokens: &[u16], k: usize) -> Vec<(usize, usize)> {
    let mut stack = Vec::new();
    let mut out = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if is_open(t, k) {
            stack.push(i);
        } else if let Some(o) = stack.pop() {
            out.push((i, o));
        }
    }
    out
}

/// Correct and scored closing positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClosingAccuracy {
    pub correct: usize,
    pub total: usize,
}

impl ClosingAccuracy {
    /// `correct / total` (0 when nothing was scored).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// Adds another string's counts.
    pub fn add(&mut self, other: ClosingAccuracy) {
        self.correct += other.correct;
        self.total += other.total;
    }
}

/// The closing-bracket metric on one string given `score_row(t)`, the scores for position `t`.
fn closing_accuracy_rows<'a, F: Fn(usize) -> &'a [f32]>(
    tokens: &[u16],
    k: usize,
    min_dist: usize,
    n_rows: usize,
    score_row: F,
) -> Result<ClosingAccuracy> {
    if n_rows != tokens.len() {
        bail!(
            "scores have {n_rows} rows but the string has {} tokens: pass one score row per token",
            tokens.len()
        );
    }
    let mut acc = ClosingAccuracy::default();
    for (close, open) in closing_pairs(tokens, k) {
        if close - open < min_dist {
            continue;
        }
        let row = score_row(close);
        if row.len() < 2 * k {
            bail!(
                "score row {close} has {} entries, fewer than the 2k = {} bracket tokens",
                row.len(),
                2 * k
            );
        }
        let closing = &row[k..2 * k];
        let mut best = 0;
        for (t, &v) in closing.iter().enumerate() {
            if v > closing[best] {
                best = t;
            }
        }
        acc.total += 1;
        if best + k == tokens[close] as usize {
            acc.correct += 1;
        }
    }
    Ok(acc)
}

/// Closing-bracket accuracy of one string from per-position scores, shape `(T, V)` with
/// `V >= 2k` and column `k + i` the closing bracket of type `i`.
///
/// `scores[t]` scores the token at position `t`, i.e. it is predicted from `tokens[..t]` (the LM
/// output one position earlier, after a start token at position 0). At each closing position
/// whose opening bracket is at least `min_dist` tokens before it (`close - open >= min_dist`;
/// paper [`PAPER_MIN_DIST`] = 10, official code 0), only the `k` closing brackets are ranked;
/// correct when the right one has the highest score (ties go to the lowest type, like `argmax`).
pub fn closing_bracket_accuracy(
    tokens: &[u16],
    scores: &[Vec<f32>],
    k: usize,
    min_dist: usize,
) -> Result<ClosingAccuracy> {
    closing_accuracy_rows(tokens, k, min_dist, scores.len(), |t| scores[t].as_slice())
}

/// [`closing_bracket_accuracy`] for an ndarray of scores, shape `(T, V)`, in standard layout.
pub fn closing_bracket_accuracy_nd(
    tokens: &[u16],
    scores: ndarray::ArrayView2<f32>,
    k: usize,
    min_dist: usize,
) -> Result<ClosingAccuracy> {
    let rows: Vec<&[f32]> = scores
        .rows()
        .into_iter()
        .map(|r| {
            r.to_slice()
                .ok_or_else(|| anyhow::anyhow!("scores must be in standard (row-major) layout"))
        })
        .collect::<Result<_>>()?;
    closing_accuracy_rows(tokens, k, min_dist, rows.len(), |t| rows[t])
}
