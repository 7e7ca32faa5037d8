//! One transformer block: self-attention and a two-layer FFN, each a residual branch with
//! dropout, LayerNorm before (pre-LN) or after (post-LN) the residual sum.

use crate::nn::attention::{Attention, AttnContext};
use crate::nn::config::{Activation, NormPlacement, TransformerConfig};
use crate::nn::fused;
use crate::nn::fused_block::{self, BlockParams, BlockShape};
use crate::nn::layers::{dropout, LayerNorm, Linear};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct Block {
    pub attn: Attention,
    ln1: LayerNorm,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
    norm: NormPlacement,
    act: Activation,
    dropout: f64,
}

impl Block {
    pub fn new(cfg: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln1: LayerNorm::new(cfg.d_model, cfg.ln_eps, vb.pp("ln1"))?,
            ln2: LayerNorm::new(cfg.d_model, cfg.ln_eps, vb.pp("ln2"))?,
            ff1: Linear::new(cfg.d_model, cfg.ff(), true, vb.pp("ff1"))?,
            ff2: Linear::new(cfg.ff(), cfg.d_model, true, vb.pp("ff2"))?,
            norm: cfg.norm,
            act: cfg.activation,
            dropout: cfg.dropout,
        })
    }

    fn ffn(&self, x: &Tensor) -> Result<Tensor> {
        let h = match self.act {
            Activation::Gelu => self.ff1.forward_gelu(x)?,
            Activation::Relu => self.ff1.forward(x)?.relu()?,
        };
        self.ff2.forward(&h)
    }

    /// The whole block as one fused node ([`fused_block`]) where the kernels allow: CPU f32/f64,
    /// no q/k/v convolution, no dropout being drawn. `None` otherwise.
    fn forward_fused(
        &self,
        x: &Tensor,
        ctx: &AttnContext,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        if !fused::supported(x) || (self.dropout > 0.0 && ctx.rng.is_some()) {
            return Ok(None);
        }
        let Some((qkv, out, attn)) = self.attn.fusable() else {
            return Ok(None);
        };
        let (Some(bq), Some(bo), Some(b1), Some(b2)) = (&qkv.b, &out.b, &self.ff1.b, &self.ff2.b)
        else {
            return Ok(None);
        };
        let (_, t, d) = x.dims3()?;
        let nf = attn.fixed;
        if nf > 0 && ctx.patterns.is_none() {
            candle_core::bail!("the config has fixed_heads = {nf}: pass `patterns` of shape (batch, {nf}, {t}, {t})");
        }
        let bias = match &ctx.bias {
            Some(b) => b.clone(),
            None => Tensor::zeros((1, 1, t, t), x.dtype(), x.device())?,
        };
        let pat = match &ctx.patterns {
            Some(p) => p.clone(),
            None => Tensor::zeros(1, x.dtype(), x.device())?,
        };
        let params = BlockParams {
            ln1: (&self.ln1.gamma, &self.ln1.beta),
            qkv: (&qkv.w, bq),
            out: (&out.w, bo),
            ln2: (&self.ln2.gamma, &self.ln2.beta),
            ff1: (&self.ff1.w, b1),
            ff2: (&self.ff2.w, b2),
        };
        let s = BlockShape {
            d,
            ff: self.ff1.w.dim(0)?,
            attn,
            eps: self.ln1.eps,
            pre_ln: matches!(self.norm, NormPlacement::Pre),
            gelu: matches!(self.act, Activation::Gelu),
        };
        fused_block::block(x, &params, &bias, &pat, s, ctx.capture).map(Some)
    }

    /// `(batch, T, d) -> ((batch, T, d), attention probabilities if captured)`.
    pub fn forward(&self, x: &Tensor, ctx: &mut AttnContext) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(r) = self.forward_fused(x, ctx)? {
            return Ok(r);
        }
        let p = self.dropout;
        match self.norm {
            NormPlacement::Pre => {
                let (a, probs) = self.attn.forward(&self.ln1.forward(x)?, ctx)?;
                let x = (x + dropout(&a, p, ctx.rng.as_deref_mut())?)?;
                let f = self.ffn(&self.ln2.forward(&x)?)?;
                let x = (&x + dropout(&f, p, ctx.rng.as_deref_mut())?)?;
                Ok((x, probs))
            }
            NormPlacement::Post => {
                let (a, probs) = self.attn.forward(x, ctx)?;
                let x = self
                    .ln1
                    .forward(&(x + dropout(&a, p, ctx.rng.as_deref_mut())?)?)?;
                let f = self.ffn(&x)?;
                let x = self
                    .ln2
                    .forward(&(&x + dropout(&f, p, ctx.rng.as_deref_mut())?)?)?;
                Ok((x, probs))
            }
        }
    }
}
