//! One transformer block: self-attention and a two-layer FFN, each a residual branch with
//! dropout, LayerNorm before (pre-LN) or after (post-LN) the residual sum.

use crate::nn::attention::{Attention, AttnContext};
use crate::nn::config::{Activation, NormPlacement, TransformerConfig};
use crate::nn::layers::{dropout, LayerNorm, Linear};
use crate::nn::ops;
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
        let h = self.ff1.forward(x)?;
        let h = match self.act {
            Activation::Gelu => ops::gelu_erf(&h)?,
            Activation::Relu => h.relu()?,
        };
        self.ff2.forward(&h)
    }

    /// `(batch, T, d) -> ((batch, T, d), attention probabilities if captured)`.
    pub fn forward(&self, x: &Tensor, ctx: &mut AttnContext) -> Result<(Tensor, Option<Tensor>)> {
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
