//! Exact FLOP count of a configuration: every matrix product and depthwise convolution the model
//! performs, 2 FLOPs per multiply-add. Elementwise work (softmax, LayerNorm, GELU, bias adds,
//! residual sums) is not counted, the convention of Kaplan et al. (2020) and of MFU figures.
//!
//! Backward costs two products per forward product (gradient wrt each operand), except where the
//! second operand is a constant: the fixed-pattern heads' probabilities have no gradient.

use crate::nn::config::TransformerConfig;
use serde::Serialize;

/// FLOPs per token of a length-`T` sequence.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlopCount {
    pub forward_per_token: u64,
    pub backward_per_token: u64,
    /// Of `forward_per_token`: Q/K projections and QK^T, the part fixed-pattern heads skip.
    pub qk_forward_per_token: u64,
}

impl FlopCount {
    /// Counts for `cfg` at sequence length `t` (scores are computed for all `t` keys, masked
    /// or not, as the implementation does).
    pub fn new(cfg: &TransformerConfig, t: usize) -> Self {
        let (d, dh, h, nl) = (
            cfg.d_model as u64,
            cfg.d_head() as u64,
            cfg.n_heads as u64,
            cfg.learned_heads() as u64,
        );
        let nf = h - nl;
        let (ff, v, t, l) = (
            cfg.ff() as u64,
            cfg.out() as u64,
            t as u64,
            cfg.n_layers as u64,
        );
        let qk_proj = 2 * d * 2 * nl * dh;
        let v_proj = 2 * d * h * dh;
        let conv = 2 * cfg.qkv_conv as u64 * cfg.qkv_conv_channels() as u64;
        let scores = 2 * t * dh * nl;
        let pv_learned = 2 * t * dh * nl;
        let pv_fixed = 2 * t * dh * nf;
        let out_proj = 2 * h * dh * d;
        let ffn = 2 * 2 * d * ff;
        let head = 2 * d * v;
        let layer_fwd = qk_proj + v_proj + conv + scores + pv_learned + pv_fixed + out_proj + ffn;
        let layer_bwd =
            2 * (qk_proj + v_proj + conv + scores + pv_learned + out_proj + ffn) + pv_fixed; // only dV for fixed heads
        Self {
            forward_per_token: l * layer_fwd + head,
            backward_per_token: l * layer_bwd + 2 * head,
            qk_forward_per_token: l * (qk_proj + scores),
        }
    }

    /// FLOPs of one training step (forward + backward) on `batch` sequences of length `t`.
    pub fn train_step(&self, batch: usize, t: usize) -> u64 {
        (self.forward_per_token + self.backward_per_token) * (batch * t) as u64
    }
}
