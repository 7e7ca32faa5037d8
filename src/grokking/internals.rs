//! Model-internal measures the paper tracks over training beside tree projections: the weight
//! norm and attention sparsity. They take plain slices and arrays, so the model code only has to
//! hand over its parameters and attention probabilities.
//!
//! - **Weight norm**: `||theta||_2 / L`, the L2 norm of all parameters divided by the number of
//!   layers (paper). The official `get_norm` reports the unnormalised norm.
//! - **Attention sparsity**: minus the mean entropy (nats) of the attention distributions, over
//!   every layer, head and causal query row (row `t` of a `(T, T)` map spreads over keys `0..=t`).
//!   The official `get_attention_sparsity` instead sums the row entropies of a sentence, divides by
//!   the number of layers and averages over sentences (a length-dependent total, reported without
//!   the minus sign).
//!
//! ```
//! use attnlab::grokking::internals::AttentionSparsity;
//! use ndarray::Array2;
//! let one_hot = Array2::from_shape_fn((4, 4), |(q, k)| if k == q { 1.0f32 } else { 0.0 });
//! let mut s = AttentionSparsity::default();
//! s.add_map(one_hot.view()).unwrap();
//! assert_eq!(s.value(), 0.0); // every row puts all its mass on one key: maximally sparse
//! ```

use anyhow::{bail, Result};
use ndarray::ArrayView2;

/// `||theta||_2 / n_layers` over the given parameter tensors (flattened). Panics if
/// `n_layers == 0`.
pub fn weight_norm<'a, I: IntoIterator<Item = &'a [f32]>>(params: I, n_layers: usize) -> f64 {
    assert!(
        n_layers > 0,
        "the weight norm is normalised by a layer count >= 1"
    );
    let sq: f64 = params
        .into_iter()
        .flat_map(|p| p.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum();
    sq.sqrt() / n_layers as f64
}

/// Running attention sparsity over many attention maps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionSparsity {
    /// Sum of row entropies (nats).
    pub entropy_sum: f64,
    /// Number of rows summed.
    pub rows: usize,
}

impl AttentionSparsity {
    /// Adds one `(T, T)` causal attention map (one layer, one head, one sentence of `T` tokens,
    /// padding already cut off). Row `t` must be a distribution over keys `0..=t`; entries past
    /// the diagonal are ignored.
    pub fn add_map(&mut self, probs: ArrayView2<f32>) -> Result<()> {
        let (t, k) = probs.dim();
        if t != k {
            bail!("an attention map must be square (T, T), got ({t}, {k})");
        }
        for (q, row) in probs.rows().into_iter().enumerate() {
            let mut h = 0.0f64;
            for &p in row.iter().take(q + 1) {
                if p > 0.0 {
                    let p = p as f64;
                    h -= p * p.ln();
                }
            }
            self.entropy_sum += h;
            self.rows += 1;
        }
        Ok(())
    }

    /// Minus the mean row entropy (0 when nothing was added); higher is sparser.
    pub fn value(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            -self.entropy_sum / self.rows as f64
        }
    }
}
