//! Multi-head self-attention with pluggable heads.
//!
//! Heads `0..fixed` take a caller-supplied pattern `(batch, fixed, T, T)` as their attention
//! probabilities (no query/key projection and no QK^T for them); the rest are learned,
//! `softmax(q k^T / sqrt(d_head) + bias)`. One fused projection produces `[q | k | v]`
//! (q and k for learned heads only), optionally followed by a depthwise convolution over time
//! of q, k and v, or of the subset `qkv_conv_maps` names. The convolution acts on the projected
//! tensor before the attention core, so the fused kernel and the composed ops see the same q/k/v.

use crate::nn::config::TransformerConfig;
use crate::nn::layers::{dropout, DepthwiseConv, Linear};
use crate::nn::{fused, ops};
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// What one forward pass shares across layers.
pub struct AttnContext<'a> {
    /// Additive bias on the scores, `(batch or 1, 1, T, T)`: causal and caller masks combined.
    pub bias: Option<Tensor>,
    /// Fixed-head patterns `(batch, fixed_heads, T, T)`.
    pub patterns: Option<Tensor>,
    /// Return each layer's probabilities `(batch, heads, T, T)`.
    pub capture: bool,
    /// Dropout generator; `None` in evaluation.
    pub rng: Option<&'a mut Rng>,
}

#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    conv: Option<DepthwiseConv>,
    /// `(offset, width, convolved)` runs of channels of `[q | k | v]`, in order; empty when the
    /// convolution covers every channel (then it is applied to the whole tensor at once).
    conv_runs: Vec<(usize, usize, bool)>,
    out: Linear,
    n_heads: usize,
    n_fixed: usize,
    d_head: usize,
    dropout: f64,
}

impl Attention {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (d, dh) = (cfg.d_model, cfg.d_head());
        let width = (2 * cfg.learned_heads() + cfg.n_heads) * dh;
        let qkv = Linear::new(d, width, true, vb.pp("qkv"))?;
        let qk = cfg.learned_heads() * dh;
        let m = cfg.qkv_conv_maps;
        let conv_runs = if cfg.qkv_conv > 0 {
            channel_runs(&[(qk, m.query), (qk, m.key), (cfg.n_heads * dh, m.value)])
        } else {
            Vec::new()
        };
        let conv = if cfg.qkv_conv > 0 {
            Some(DepthwiseConv::new(
                cfg.qkv_conv_channels(),
                cfg.qkv_conv,
                cfg.causal,
                vb.pp("conv"),
            )?)
        } else {
            None
        };
        let out = Linear::new(cfg.n_heads * dh, d, true, vb.pp("out"))?;
        Ok(Self {
            qkv,
            conv,
            conv_runs,
            out,
            n_heads: cfg.n_heads,
            n_fixed: cfg.fixed_heads,
            d_head: dh,
            dropout: cfg.dropout,
        })
    }

    /// The q/k/v convolution of `qkv` `(batch, T, width)`: of every channel at once, or of the
    /// chosen maps' channels (gathered, convolved, and put back in place).
    fn convolve(&self, qkv: Tensor) -> Result<Tensor> {
        let Some(c) = &self.conv else {
            return Ok(qkv);
        };
        if self.conv_runs.is_empty() {
            return c.forward(&qkv);
        }
        let chosen: Vec<Tensor> = self
            .conv_runs
            .iter()
            .filter(|r| r.2)
            .map(|&(off, n, _)| qkv.narrow(2, off, n))
            .collect::<Result<_>>()?;
        let conv = c.forward(&Tensor::cat(&chosen, 2)?)?;
        let mut at = 0;
        let mut parts = Vec::with_capacity(self.conv_runs.len());
        for &(off, n, convolved) in &self.conv_runs {
            if convolved {
                parts.push(conv.narrow(2, at, n)?);
                at += n;
            } else {
                parts.push(qkv.narrow(2, off, n)?);
            }
        }
        Tensor::cat(&parts, 2)?.contiguous()
    }

    /// The `[q | k | v]` and output projections and the head shape, for the fused block;
    /// `None` with a q/k/v convolution, which the fused block does not compute.
    pub(crate) fn fusable(&self) -> Option<(&Linear, &Linear, fused::AttnShape)> {
        self.conv.is_none().then_some((
            &self.qkv,
            &self.out,
            fused::AttnShape {
                heads: self.n_heads,
                fixed: self.n_fixed,
                d_head: self.d_head,
            },
        ))
    }

    /// `(batch, T, d) -> ((batch, T, d), probabilities (batch, heads, T, T) if captured)`.
    pub fn forward(&self, x: &Tensor, ctx: &mut AttnContext) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.dims3()?;
        let (h, nf, dh) = (self.n_heads, self.n_fixed, self.d_head);
        let nl = h - nf;
        let qkv = self.convolve(self.qkv.forward(x)?)?;
        if fused::supported(&qkv) && (self.dropout == 0.0 || ctx.rng.is_none()) {
            let bias = match &ctx.bias {
                Some(b) => b.clone(),
                None => Tensor::zeros((1, 1, t, t), qkv.dtype(), qkv.device())?,
            };
            let pat = match &ctx.patterns {
                Some(p) => p.clone(),
                None => Tensor::zeros(1, qkv.dtype(), qkv.device())?,
            };
            let shape = fused::AttnShape {
                heads: h,
                fixed: nf,
                d_head: dh,
            };
            if nf > 0 && ctx.patterns.is_none() {
                candle_core::bail!("the config has fixed_heads = {nf}: pass `patterns` of shape (batch, {nf}, {t}, {t})");
            }
            let (y, probs) = fused::attention(&qkv, &bias, &pat, shape, ctx.capture)?;
            return Ok((self.out.forward(&y)?, probs));
        }
        // (batch, T, heads*dh) slice -> (batch, heads, T, dh)
        let heads = |off: usize, n: usize| -> Result<Tensor> {
            qkv.narrow(2, off * dh, n * dh)?
                .reshape((b, t, n, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let v = heads(2 * nl, h)?;
        let mut parts = Vec::with_capacity(2);
        if nf > 0 {
            let p = ctx.patterns.as_ref().ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "the config has fixed_heads = {nf}: pass `patterns` of shape (batch, {nf}, {t}, {t})"
                ))
            })?;
            parts.push(p.to_dtype(x.dtype())?);
        }
        if nl > 0 {
            let q = (heads(0, nl)? * (1.0 / (dh as f64).sqrt()))?;
            let k = heads(nl, nl)?;
            let mut s = q.matmul(&k.t()?)?;
            if let Some(bias) = &ctx.bias {
                s = s.broadcast_add(bias)?;
            }
            parts.push(ops::softmax_last_dim(&s)?);
        }
        let probs = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(&parts, 1)?
        };
        let dropped = dropout(&probs, self.dropout, ctx.rng.as_deref_mut())?;
        let y = dropped
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, h * dh))?;
        let y = self.out.forward(&y)?;
        Ok((y, ctx.capture.then_some(probs)))
    }
}

/// Maximal runs of adjacent channel blocks `(width, convolved)` with the same flag, as
/// `(offset, width, convolved)`; empty when one run covers everything and it is convolved.
fn channel_runs(blocks: &[(usize, bool)]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut off = 0;
    for &(n, on) in blocks.iter().filter(|b| b.0 > 0) {
        match runs.last_mut() {
            Some(last) if last.2 == on => last.1 += n,
            _ => runs.push((off, n, on)),
        }
        off += n;
    }
    if runs.len() == 1 && runs[0].2 {
        runs.clear();
    }
    runs
}
