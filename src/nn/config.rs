//! The one configuration struct of a transformer stack: depth, width, heads, norms, positions,
//! tying, fixed-pattern heads and depthwise q/k/v convolutions. Validated before any tensor exists.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Where the LayerNorm sits in a block.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// `x + f(LN(x))`, with a final LayerNorm after the stack (GPT-2 style).
    Pre,
    /// `LN(x + f(x))`, no final LayerNorm (original Transformer / BERT style).
    Post,
}

/// How token positions enter the model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A trained `(max_len, d)` table.
    Learned,
    /// The fixed sine/cosine table of Vaswani et al.
    Sinusoidal,
    /// No position information (attention masks or convolutions must supply it).
    None,
}

/// The FFN non-linearity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU, PyTorch's `nn.GELU()` default.
    Gelu,
    Relu,
}

/// Which of the query, key and value projections `qkv_conv` convolves (all three by default, so
/// configs written before the field existed keep their models and results).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QkvConvMaps {
    pub query: bool,
    pub key: bool,
    pub value: bool,
}

impl QkvConvMaps {
    /// All three maps (the default).
    pub const ALL: Self = Self {
        query: true,
        key: true,
        value: true,
    };

    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }

    pub fn any(&self) -> bool {
        self.query || self.key || self.value
    }
}

impl Default for QkvConvMaps {
    fn default() -> Self {
        Self::ALL
    }
}

/// A transformer stack: encoder (`causal = false`) or decoder (`causal = true`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Input vocabulary size.
    pub vocab_size: usize,
    /// Output classes per position; 0 means `vocab_size`.
    pub n_out: usize,
    /// Longest sequence the position table covers.
    pub max_len: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// FFN hidden width; 0 means `4 * d_model`.
    pub d_ff: usize,
    /// Causal (decoder) attention.
    pub causal: bool,
    pub norm: NormPlacement,
    pub activation: Activation,
    /// Dropout on attention probabilities and on each residual branch; 0 disables it.
    pub dropout: f64,
    pub positions: Positions,
    /// Output projection shares the token embedding matrix.
    pub tie_embeddings: bool,
    /// ALBERT-style: one block's parameters applied `n_layers` times.
    pub share_layers: bool,
    /// The first `fixed_heads` heads of every layer take a caller-supplied attention pattern
    /// `(batch, fixed_heads, T, T)` instead of softmax(QK^T); they have no query/key weights.
    pub fixed_heads: usize,
    /// Kernel width of depthwise 1-D convolutions over time on the q, k and v projections
    /// (Primer-style); 0 disables them. Causal padding in a decoder, centred in an encoder.
    pub qkv_conv: usize,
    /// Which of q, k, v the `qkv_conv` convolution applies to; the others pass through the
    /// projection alone. Left out of the serialized config when it is all three, so the
    /// configs recorded before it existed read back unchanged.
    #[serde(skip_serializing_if = "QkvConvMaps::is_all")]
    pub qkv_conv_maps: QkvConvMaps,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Standard deviation of the normal initialisation of weight matrices and embeddings.
    pub init_std: f64,
    /// Standard deviation of the token embedding's initialisation; `None` uses `init_std`.
    /// PyTorch's `nn.Embedding` default is 1.
    pub emb_init_std: Option<f64>,
    /// Token embeddings are multiplied by this before positions are added (OpenNMT's
    /// `sqrt(d_model)`); a tied output layer reads the unscaled matrix. With small embeddings
    /// and sinusoidal positions of norm sqrt(d/2), a scale of 1 leaves tokens drowned by positions.
    pub emb_scale: f64,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32,
            n_out: 0,
            max_len: 64,
            d_model: 128,
            n_layers: 2,
            n_heads: 4,
            d_ff: 0,
            causal: false,
            norm: NormPlacement::Pre,
            activation: Activation::Gelu,
            dropout: 0.0,
            positions: Positions::Learned,
            tie_embeddings: false,
            share_layers: false,
            fixed_heads: 0,
            qkv_conv: 0,
            qkv_conv_maps: QkvConvMaps::ALL,
            ln_eps: 1e-5,
            init_std: 0.02,
            emb_init_std: None,
            emb_scale: 1.0,
        }
    }
}

impl TransformerConfig {
    /// FFN width after resolving the `0 = 4 d` default.
    pub fn ff(&self) -> usize {
        if self.d_ff == 0 {
            4 * self.d_model
        } else {
            self.d_ff
        }
    }

    /// Output classes after resolving the `0 = vocab_size` default.
    pub fn out(&self) -> usize {
        if self.n_out == 0 {
            self.vocab_size
        } else {
            self.n_out
        }
    }

    /// Width of one head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Heads with learned query/key weights.
    pub fn learned_heads(&self) -> usize {
        self.n_heads.saturating_sub(self.fixed_heads)
    }

    /// Channels of the fused `[q | k | v]` projection that the `qkv_conv` convolution covers
    /// (its weight is `(channels, qkv_conv)`); 0 when there is no convolution.
    pub fn qkv_conv_channels(&self) -> usize {
        if self.qkv_conv == 0 {
            return 0;
        }
        let qk = self.learned_heads() * self.d_head();
        let m = self.qkv_conv_maps;
        (m.query as usize) * qk + (m.key as usize) * qk + (m.value as usize) * self.d_model
    }

    /// Checks every field; the error names the field and the fix.
    pub fn validate(&self) -> Result<()> {
        let need = |ok: bool, field: &str, fix: String| -> Result<()> {
            if !ok {
                bail!("invalid transformer config field `{field}`: {fix}");
            }
            Ok(())
        };
        need(
            self.vocab_size > 0,
            "vocab_size",
            "must be at least 1".into(),
        )?;
        need(self.max_len > 0, "max_len", "must be at least 1".into())?;
        need(self.d_model > 0, "d_model", "must be at least 1".into())?;
        need(self.n_layers > 0, "n_layers", "must be at least 1".into())?;
        need(self.n_heads > 0, "n_heads", "must be at least 1".into())?;
        need(
            self.d_model.is_multiple_of(self.n_heads),
            "n_heads",
            format!(
                "must divide d_model = {} (got {})",
                self.d_model, self.n_heads
            ),
        )?;
        need(
            self.fixed_heads <= self.n_heads,
            "fixed_heads",
            format!(
                "must be at most n_heads = {} (got {})",
                self.n_heads, self.fixed_heads
            ),
        )?;
        need(
            (0.0..1.0).contains(&self.dropout),
            "dropout",
            format!("must be in [0, 1) (got {})", self.dropout),
        )?;
        need(
            !self.tie_embeddings || self.out() == self.vocab_size,
            "tie_embeddings",
            format!(
                "needs n_out = vocab_size (got n_out = {}, vocab_size = {}); set n_out = 0 or untie",
                self.out(),
                self.vocab_size
            ),
        )?;
        need(
            self.ln_eps > 0.0 && self.ln_eps.is_finite(),
            "ln_eps",
            "must be positive, e.g. 1e-5".into(),
        )?;
        need(
            self.init_std > 0.0 && self.init_std.is_finite(),
            "init_std",
            "must be positive, e.g. 0.02".into(),
        )?;
        need(
            self.emb_init_std.is_none_or(|s| s > 0.0 && s.is_finite()),
            "emb_init_std",
            "must be positive (or absent to use init_std), e.g. 1.0".into(),
        )?;
        need(
            self.emb_scale > 0.0 && self.emb_scale.is_finite(),
            "emb_scale",
            "must be positive, e.g. 1.0 or sqrt(d_model)".into(),
        )?;
        need(
            self.qkv_conv <= self.max_len,
            "qkv_conv",
            format!("kernel width must be at most max_len = {}", self.max_len),
        )?;
        need(
            self.qkv_conv == 0 || self.qkv_conv_maps.any(),
            "qkv_conv_maps",
            format!(
                "convolves none of query, key, value while qkv_conv = {}: set at least one of \
                 query, key, value to true, or qkv_conv = 0 for plain attention",
                self.qkv_conv
            ),
        )?;
        Ok(())
    }
}
