//! Attention-head analysis that needs no model: association and locality scores of an
//! attention map, the mimicking target maps of the official code, and KL divergences.
//!
//! An attention map `A` is `(T, T)`: row `i` is the distribution of query position `i` over
//! key positions, each row summing to 1. It covers one sentence's real tokens (strip padding
//! before calling).
//!
//! **Association score** (does a head look at other copies of the query's token?):
//! with `S_i = { j != i : tok_j == tok_i }` and `Q = { i : S_i non-empty }`,
//! `assoc(A) = (1/|Q|) sum_{i in Q} sum_{j in S_i} A[i, j]` (`None` if `Q` is empty).
//! [`association_score_where`] restricts `Q` to query tokens passing a filter; for LEGO,
//! [`variable_association_score`] keeps variable names only (each name occurs exactly twice,
//! except the chain's last variable, which occurs once and so drops out of `Q`).
//!
//! **Clause locality** (does a head stay inside the query's clause?): positions `1..=5n` form
//! clauses `c(p) = (p - 1) / 5`; `[CLS]` and `[SEP]` belong to none and are not queries.
//! `clause_loc(A) = mean_{i in clauses} sum_{j : c(j) = c(i)} A[i, j]` (the query itself counts).
//!
//! **Window locality** with radius `r` (2 matches the 1,2,4,2,1 mimicking kernel):
//! `window_loc(A) = mean_{i in 0..T} sum_{j : |i - j| <= r} A[i, j]`.
//!
//! Uniform attention scores `5/T` on clause locality and about `(2r + 1)/T` on window
//! locality; compare against [`uniform_attention`] rather than against 0.
//!
//! ```
//! use attnlab::lego::measure::{association_target, association_score};
//! let tokens = [7, 1, 7, 2];
//! let target = association_target(&tokens);
//! // row 0 puts (1 + 1e-3) / (1 + 4e-3) on position 2, the other `7`
//! assert!((target[[0, 2]] - 1.001 / 1.004).abs() < 1e-6);
//! let score = association_score(target.view(), &tokens).unwrap().unwrap();
//! assert!((score - 1.001 / 1.004).abs() < 1e-6);
//! ```

use crate::lego::task::{is_name, CLAUSE_LEN};
use anyhow::{bail, Result};
use ndarray::{Array2, Array3, ArrayView2, ArrayView4};
use serde::{Deserialize, Serialize};

/// Weights of the official local mimicking kernel, centred on the diagonal (offsets -2..=2).
pub const LOCAL_KERNEL: [f32; 5] = [1.0, 2.0, 4.0, 2.0, 1.0];
/// Smoothing added to every entry of the mimicking maps before row normalisation (official).
pub const MIMIC_EPS: f32 = 1e-3;

fn check_square(attn: &ArrayView2<f32>, tokens: &[u32]) -> Result<usize> {
    let (r, c) = attn.dim();
    if r != c || r != tokens.len() {
        bail!(
            "attention map has shape ({r}, {c}) but {} tokens were given: expected ({t}, {t})",
            tokens.len(),
            t = tokens.len()
        );
    }
    Ok(r)
}

/// Association score over every query position whose token occurs elsewhere (module doc).
pub fn association_score(attn: ArrayView2<f32>, tokens: &[u32]) -> Result<Option<f64>> {
    association_score_where(attn, tokens, |_| true)
}

/// Association score over query positions holding a variable name (module doc).
pub fn variable_association_score(attn: ArrayView2<f32>, tokens: &[u32]) -> Result<Option<f64>> {
    association_score_where(attn, tokens, is_name)
}

/// Association score over query positions whose token passes `include` and occurs elsewhere.
pub fn association_score_where(
    attn: ArrayView2<f32>,
    tokens: &[u32],
    include: impl Fn(u32) -> bool,
) -> Result<Option<f64>> {
    let t = check_square(&attn, tokens)?;
    let mut total = 0.0;
    let mut queries = 0usize;
    for i in 0..t {
        if !include(tokens[i]) {
            continue;
        }
        let others: Vec<usize> = (0..t)
            .filter(|&j| j != i && tokens[j] == tokens[i])
            .collect();
        if others.is_empty() {
            continue;
        }
        total += others.iter().map(|&j| attn[[i, j]] as f64).sum::<f64>();
        queries += 1;
    }
    Ok((queries > 0).then(|| total / queries as f64))
}

/// Clause of token position `p` in a LEGO sentence of `t = 5n + 2` tokens (`None` for
/// `[CLS]` and `[SEP]`).
pub fn clause_of(p: usize, t: usize) -> Option<usize> {
    (p >= 1 && p + 1 < t).then(|| (p - 1) / CLAUSE_LEN)
}

/// Clause locality of a LEGO attention map `(5n + 2, 5n + 2)` (module doc); `None` if the
/// sentence has no clause.
pub fn clause_locality_score(attn: ArrayView2<f32>, tokens: &[u32]) -> Result<Option<f64>> {
    let t = check_square(&attn, tokens)?;
    if t < 2 || !(t - 2).is_multiple_of(CLAUSE_LEN) {
        bail!("clause locality needs a LEGO sentence of 5n + 2 tokens, got {t} tokens");
    }
    let mut total = 0.0;
    let mut queries = 0usize;
    for i in 0..t {
        let Some(c) = clause_of(i, t) else { continue };
        let start = 1 + CLAUSE_LEN * c;
        total += (start..start + CLAUSE_LEN)
            .map(|j| attn[[i, j]] as f64)
            .sum::<f64>();
        queries += 1;
    }
    Ok((queries > 0).then(|| total / queries as f64))
}

/// Window locality with radius `radius` (module doc); `None` for an empty map.
pub fn window_locality_score(attn: ArrayView2<f32>, radius: usize) -> Result<Option<f64>> {
    let (t, c) = attn.dim();
    if t != c {
        bail!("attention map must be square, got ({t}, {c})");
    }
    let mut total = 0.0;
    for i in 0..t {
        let lo = i.saturating_sub(radius);
        let hi = (i + radius).min(t.saturating_sub(1));
        total += (lo..=hi).map(|j| attn[[i, j]] as f64).sum::<f64>();
    }
    Ok((t > 0).then(|| total / t as f64))
}

/// The scores of one head on one sentence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadScores {
    /// [`variable_association_score`].
    pub association: Option<f64>,
    /// [`clause_locality_score`].
    pub clause_locality: Option<f64>,
    /// [`window_locality_score`] with radius 2.
    pub window_locality: Option<f64>,
}

/// All scores of one head's map `(T, T)` on a LEGO sentence.
pub fn score_head(attn: ArrayView2<f32>, tokens: &[u32]) -> Result<HeadScores> {
    Ok(HeadScores {
        association: variable_association_score(attn, tokens)?,
        clause_locality: clause_locality_score(attn, tokens)?,
        window_locality: window_locality_score(attn, 2)?,
    })
}

/// Scores of every head of a model's maps `(layers, heads, T, T)`, as `[layer][head]`.
pub fn score_heads(maps: ArrayView4<f32>, tokens: &[u32]) -> Result<Vec<Vec<HeadScores>>> {
    let (layers, heads, _, _) = maps.dim();
    (0..layers)
        .map(|l| {
            (0..heads)
                .map(|h| score_head(maps.slice(ndarray::s![l, h, .., ..]), tokens))
                .collect()
        })
        .collect()
}

/// Uniform attention `(t, t)`, every entry `1/t`: the baseline the scores are read against.
pub fn uniform_attention(t: usize) -> Array2<f32> {
    Array2::from_elem((t, t), 1.0 / t as f32)
}

/// Adds `eps` to every entry and renormalises every row to sum to 1, `(T, T) -> (T, T)`.
/// The official mimicking loss applies this (eps = 1e-3) to the model's attention as well.
pub fn smooth_rows(map: ArrayView2<f32>, eps: f32) -> Array2<f32> {
    let mut out = map.mapv(|x| x + eps);
    for mut row in out.rows_mut() {
        let sum: f32 = row.sum();
        row.mapv_inplace(|x| x / sum);
    }
    out
}

/// The official local mimicking target `(t, t)`: weights 1,2,4,2,1 at offsets -2..=2 from the
/// diagonal (cut at the borders), plus 1e-3 everywhere, each row normalised to sum to 1.
pub fn local_target(t: usize) -> Array2<f32> {
    let mut raw = Array2::<f32>::zeros((t, t));
    for i in 0..t {
        for (o, &w) in LOCAL_KERNEL.iter().enumerate() {
            // offset o - 2 from the diagonal
            if let Some(j) = (i + o).checked_sub(2).filter(|&j| j < t) {
                raw[[i, j]] = w;
            }
        }
    }
    smooth_rows(raw.view(), MIMIC_EPS)
}

/// The official association mimicking target `(T, T)` for `tokens`: 1 where
/// `tok_i == tok_j`, 0 on the diagonal and elsewhere, plus 1e-3, rows normalised to 1.
/// (A token that occurs once gets a uniform row.)
pub fn association_target(tokens: &[u32]) -> Array2<f32> {
    let t = tokens.len();
    let raw = Array2::from_shape_fn((t, t), |(i, j)| {
        if i != j && tokens[i] == tokens[j] {
            1.0
        } else {
            0.0
        }
    });
    smooth_rows(raw.view(), MIMIC_EPS)
}

/// `mean_i KL(p_i || q_i) = mean_i sum_j p[i, j] ln(p[i, j] / q[i, j])` over the rows of two
/// `(T, T)` maps, in nats. Terms with `p = 0` are 0; `p > 0` where `q = 0` gives infinity.
pub fn row_kl(p: ArrayView2<f32>, q: ArrayView2<f32>) -> Result<f64> {
    if p.dim() != q.dim() {
        bail!(
            "KL needs maps of one shape, got {:?} and {:?}",
            p.dim(),
            q.dim()
        );
    }
    let rows = p.nrows();
    if rows == 0 {
        bail!("KL of empty maps");
    }
    let mut total = 0.0f64;
    for (pr, qr) in p.rows().into_iter().zip(q.rows()) {
        for (&a, &b) in pr.iter().zip(qr.iter()) {
            let (a, b) = (a as f64, b as f64);
            if a > 0.0 {
                total += if b > 0.0 {
                    a * (a / b).ln()
                } else {
                    f64::INFINITY
                };
            }
        }
    }
    Ok(total / rows as f64)
}

/// `KL(target || attention)`, mean over rows: how much of the target a head's map misses.
/// Softmax attention is positive everywhere; an exact 0 where the target is positive gives
/// infinity (smooth with [`smooth_rows`] first if the map comes from elsewhere).
pub fn kl_target_attention(target: ArrayView2<f32>, attn: ArrayView2<f32>) -> Result<f64> {
    row_kl(target, attn)
}

/// The official mimicking loss for one head on one sentence: `KL(smooth(attention) || target)`,
/// mean over rows. (The official code, `pretrain_mimic.py`, puts the smoothed attention first;
/// it sums this over layers and averages over the batch.) The loss has a positive floor: the
/// smoothed attention keeps at least `eps / (1 + T eps)` on every entry, where the local target
/// has about a tenth of that (the bare row-normalised kernel, nearly optimal, still scores
/// 0.010 nats a row for T = 12 and 0.073 for T = 62).
pub fn mimicking_loss(attn: ArrayView2<f32>, target: ArrayView2<f32>) -> Result<f64> {
    row_kl(smooth_rows(attn, MIMIC_EPS).view(), target)
}

/// Mimicking targets for a batch of equal-length sentences `tokens` `(B, T)`: the local map
/// `(T, T)` shared by all, and one association map per sentence `(B, T, T)`.
pub fn mimic_targets(tokens: ArrayView2<u32>) -> (Array2<f32>, Array3<f32>) {
    let (b, t) = tokens.dim();
    let mut association = Array3::<f32>::zeros((b, t, t));
    for (i, row) in tokens.rows().into_iter().enumerate() {
        let ids: Vec<u32> = row.to_vec();
        association
            .slice_mut(ndarray::s![i, .., ..])
            .assign(&association_target(&ids));
    }
    (local_target(t), association)
}
