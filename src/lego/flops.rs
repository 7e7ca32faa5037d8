//! Exact forward-pass FLOP counts of a BERT-style encoder in which some heads per layer are
//! LEGO fixed heads (a local or an association map given, not computed), for the LEGO
//! attention-module study.
//!
//! Convention: a product of an `(m, k)` and a `(k, n)` matrix costs `2 m k n` FLOPs (one
//! multiply and one add per term); only matrix products are counted (biases, softmax,
//! layer norm, activations and embeddings are lower order and left out). Per layer, with `T`
//! tokens, width `d`, `h` heads of width `d_h = d / h`, of which `f` are fixed, and
//! feed-forward width `d_ff`:
//!
//! | part | FLOPs |
//! |---|---|
//! | query and key projections | `2 * 2 T d d_h (h - f)` |
//! | value projection | `2 T d d_h h` |
//! | scores `Q K^T` | `2 T^2 d_h (h - f)` |
//! | attention times values | `2 T^2 d_h h` |
//! | output projection | `2 T d^2` |
//! | feed-forward | `4 T d d_ff` |
//!
//! A fixed head keeps its value projection and its product with the values; it drops its
//! query/key projections and its score product. The association map needs only token-id
//! comparisons (no floating-point work), so it adds nothing here.
//!
//! ```
//! use attnlab::lego::flops::{layer_flops, EncoderShape};
//! let bert = EncoderShape { layers: 12, hidden: 768, heads: 12, ffn: 3072 };
//! let t = 62;
//! // vanilla layer: 24 T d^2 + 4 T^2 d
//! assert_eq!(layer_flops(&bert, t, 0).unwrap().total(), 24 * 62 * 768 * 768 + 4 * 62 * 62 * 768);
//! ```

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Sizes that determine the FLOPs of an encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderShape {
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub ffn: u64,
}

/// FLOPs of one encoder layer on one sequence, by part (module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFlops {
    pub query_key_projection: u64,
    pub value_projection: u64,
    pub scores: u64,
    pub attention_values: u64,
    pub output_projection: u64,
    pub feed_forward: u64,
}

impl LayerFlops {
    /// Sum of all parts.
    pub fn total(&self) -> u64 {
        self.query_key_projection
            + self.value_projection
            + self.scores
            + self.attention_values
            + self.output_projection
            + self.feed_forward
    }
}

/// FLOPs of one layer on a sequence of `t` tokens with `fixed_heads` LEGO fixed heads.
pub fn layer_flops(shape: &EncoderShape, t: u64, fixed_heads: u64) -> Result<LayerFlops> {
    let EncoderShape {
        hidden: d,
        heads: h,
        ffn,
        ..
    } = *shape;
    if h == 0 || !d.is_multiple_of(h) {
        bail!("heads = {h} must divide hidden = {d}");
    }
    if fixed_heads > h {
        bail!("fixed_heads = {fixed_heads} exceeds heads = {h}");
    }
    let dh = d / h;
    let learned = h - fixed_heads;
    Ok(LayerFlops {
        query_key_projection: 2 * 2 * t * d * dh * learned,
        value_projection: 2 * t * d * dh * h,
        scores: 2 * t * t * dh * learned,
        attention_values: 2 * t * t * dh * h,
        output_projection: 2 * t * d * d,
        feed_forward: 4 * t * d * ffn,
    })
}

/// FLOPs of the whole encoder (all layers alike) on one sequence of `t` tokens.
pub fn encoder_flops(shape: &EncoderShape, t: u64, fixed_heads_per_layer: u64) -> Result<u64> {
    Ok(shape.layers * layer_flops(shape, t, fixed_heads_per_layer)?.total())
}

/// Fraction of the vanilla encoder's FLOPs saved by `fixed_heads_per_layer` fixed heads.
pub fn flop_saving(shape: &EncoderShape, t: u64, fixed_heads_per_layer: u64) -> Result<f64> {
    let vanilla = encoder_flops(shape, t, 0)? as f64;
    let fixed = encoder_flops(shape, t, fixed_heads_per_layer)? as f64;
    Ok(1.0 - fixed / vanilla)
}
