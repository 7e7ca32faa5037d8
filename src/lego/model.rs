//! The LEGO model on the `src/nn` toolkit: BERT-like (independent layers) and ALBERT-like
//! (`share_layers`) encoders with one output logit, read at each clause's left-hand variable,
//! and the losses they train on.
//!
//! - Loss: binary cross-entropy with logits (`n_out = 1`, the official `demo.ipynb` head),
//!   averaged over the supervised chain positions; accuracy (`logit > 0` vs label) is measured
//!   at every chain position.
//! - Mimicking loss (official `pretrain_mimic.py`): `KL(smoothed attention || target)`.
//! - LEGO attention module: the first `local + association` heads of every layer take fixed
//!   patterns (local maps first, then association maps) through the toolkit's `fixed_heads`.
//!
//! Tensors live on the device the caller passes in (chosen once, by [`crate::nn::device`]).

use crate::lego::config::{Arch, Init, ModelConfig};
use crate::lego::measure::{association_target, local_target, score_heads, HeadScores, MIMIC_EPS};
use crate::lego::task::{LegoBatch, LegoSentence, VOCAB_SIZE};
use crate::lego::variants::Variant;
use crate::nn::config::QkvConvMaps;
use crate::nn::{
    Activation, ForwardOpts, NormPlacement, Positions, Transformer, TransformerConfig,
};
use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use ndarray::{s, Array4};
use serde::{Deserialize, Serialize};

/// One model to train: architecture, initialisation, fixed heads, data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LegoRun {
    pub label: String,
    pub arch: Arch,
    pub init: Init,
    /// Heads per layer fixed to the local map (LEGO attention module).
    pub fixed_local: usize,
    /// Heads per layer fixed to the association map (after the local ones).
    pub fixed_association: usize,
    /// Depthwise convolution width on q/k/v (0 = plain attention).
    pub qkv_conv: usize,
    /// Which of q, k, v the convolution covers (left out when all three: run identities of the
    /// all-three studies unchanged).
    #[serde(default, skip_serializing_if = "QkvConvMaps::is_all")]
    pub qkv_conv_maps: QkvConvMaps,
    /// Training distribution as a mixture of variants.
    pub train_mix: Vec<(Variant, f64)>,
    /// Variants the trained model is tested on besides its own test split.
    pub test_variants: Vec<Variant>,
    pub seed: u64,
}

impl LegoRun {
    /// A run on the official shuffled task.
    pub fn new(label: &str, arch: Arch, init: Init, seed: u64) -> Self {
        Self {
            label: label.to_string(),
            arch,
            init,
            fixed_local: 0,
            fixed_association: 0,
            qkv_conv: 0,
            qkv_conv_maps: QkvConvMaps::default(),
            train_mix: vec![(Variant::Shuffled, 1.0)],
            test_variants: Vec::new(),
            seed,
        }
    }

    fn fixed(&self) -> usize {
        self.fixed_local + self.fixed_association
    }
}

/// The toolkit config of a LEGO model. Pre-LN (more forgiving from scratch than BERT's post-LN),
/// learned positions, GELU, one output logit; ALBERT = one block applied `layers` times.
pub fn transformer_config(m: &ModelConfig, run: &LegoRun) -> TransformerConfig {
    TransformerConfig {
        vocab_size: VOCAB_SIZE,
        n_out: 1,
        share_layers: run.arch == Arch::Albert,
        fixed_heads: run.fixed(),
        qkv_conv: run.qkv_conv,
        qkv_conv_maps: run.qkv_conv_maps,
        ..encoder_config(m)
    }
}

/// The encoder shared by the LEGO and program models, before vocabulary, outputs and variants.
pub fn encoder_config(m: &ModelConfig) -> TransformerConfig {
    TransformerConfig {
        max_len: m.max_positions,
        d_model: m.hidden,
        n_layers: m.layers,
        n_heads: m.heads,
        d_ff: m.ffn,
        causal: false,
        norm: NormPlacement::Pre,
        activation: Activation::Gelu,
        dropout: m.dropout,
        positions: Positions::Learned,
        tie_embeddings: false,
        ..Default::default()
    }
}

/// Fixed-head patterns `(B, local + association, T, T)` for equal-length `tokens` `(B, T)`:
/// `local` copies of the local map, then `association` copies of each sentence's association map.
pub fn fixed_patterns(
    tokens: &ndarray::Array2<u32>,
    local: usize,
    association: usize,
    dev: &Device,
) -> Result<Tensor> {
    let (b, t) = tokens.dim();
    let k = local + association;
    let mut out = Array4::<f32>::zeros((b, k, t, t));
    let loc = local_target(t);
    for i in 0..b {
        for h in 0..local {
            out.slice_mut(s![i, h, .., ..]).assign(&loc);
        }
        if association > 0 {
            let ids: Vec<u32> = tokens.row(i).to_vec();
            let a = association_target(&ids);
            for h in local..k {
                out.slice_mut(s![i, h, .., ..]).assign(&a);
            }
        }
    }
    let v: Vec<f32> = out.into_raw_vec_and_offset().0;
    Ok(Tensor::from_vec(v, (b, k, t, t), dev)?)
}

/// A model and its parameters.
pub struct LegoModel {
    pub cfg: TransformerConfig,
    pub model: Transformer,
    pub varmap: VarMap,
    pub local: usize,
    pub association: usize,
    pub dev: Device,
}

/// Tensors of one batch.
pub(crate) struct BatchTensors {
    pub(crate) tokens: Tensor,
    pub(crate) labels: Tensor,
    pub(crate) supervised: Tensor,
    query: Tensor,
    patterns: Option<Tensor>,
}

impl LegoModel {
    /// The model of `run` at its initialisation (seeded by the run's seed), on `dev`.
    pub fn build(m: &ModelConfig, run: &LegoRun, dev: &Device) -> Result<Self> {
        let cfg = transformer_config(m, run);
        let seed = crate::lego::seeds::model_init(run.seed);
        let (model, varmap) = Transformer::build(&cfg, seed, DType::F32, dev)?;
        Ok(Self {
            cfg,
            model,
            varmap,
            local: run.fixed_local,
            association: run.fixed_association,
            dev: dev.clone(),
        })
    }

    pub(crate) fn tensors(&self, batch: &LegoBatch) -> Result<BatchTensors> {
        let (b, t) = batch.tokens.dim();
        let n = batch.labels.ncols();
        let to = |a: &ndarray::Array2<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                a.iter().copied().collect::<Vec<_>>(),
                (b, n),
                &self.dev,
            )?)
        };
        Ok(BatchTensors {
            tokens: Tensor::from_vec(
                batch.tokens.iter().copied().collect::<Vec<_>>(),
                (b, t),
                &self.dev,
            )?,
            labels: to(&batch.labels)?,
            supervised: to(&batch.supervised)?,
            query: Tensor::from_vec(
                batch.query_positions.iter().copied().collect::<Vec<_>>(),
                (b, n),
                &self.dev,
            )?,
            patterns: if self.local + self.association > 0 {
                Some(fixed_patterns(
                    &batch.tokens,
                    self.local,
                    self.association,
                    &self.dev,
                )?)
            } else {
                None
            },
        })
    }

    /// Logits at the chain variables, `(B, N)`, and the attention maps if `capture`.
    pub(crate) fn chain_logits(
        &self,
        bt: &BatchTensors,
        capture: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let out = self.model.forward_with(
            &bt.tokens,
            ForwardOpts {
                patterns: bt.patterns.as_ref(),
                capture_attention: capture,
                ..Default::default()
            },
        )?;
        let logits = out.logits.squeeze(D::Minus1)?;
        Ok((logits.gather(&bt.query.contiguous()?, 1)?, out.attention))
    }

    /// Test accuracy per chain position over `sentences` (evaluated in chunks of 500).
    pub fn accuracy(&self, sentences: &[LegoSentence]) -> Result<Vec<f64>> {
        let mut hit: Vec<f64> = Vec::new();
        let mut cnt: Vec<f64> = Vec::new();
        for chunk in sentences.chunks(500) {
            let batch = LegoBatch::new(chunk, 0)?;
            let bt = self.tensors(&batch)?;
            let (z, _) = self.chain_logits(&bt, false)?;
            let z = z.to_vec2::<f32>()?;
            let n = batch.labels.ncols();
            if hit.len() < n {
                hit.resize(n, 0.0);
                cnt.resize(n, 0.0);
            }
            for (i, row) in z.iter().enumerate() {
                for k in 0..n {
                    if batch.present[[i, k]] > 0.0 {
                        let pred = if row[k] > 0.0 { 1.0 } else { 0.0 };
                        hit[k] += (pred == batch.labels[[i, k]]) as u8 as f64;
                        cnt[k] += 1.0;
                    }
                }
            }
        }
        Ok(hit.iter().zip(&cnt).map(|(h, c)| h / c.max(1.0)).collect())
    }

    /// Mean association / locality scores of every layer and head over `sentences`.
    pub fn head_scores(&self, sentences: &[LegoSentence]) -> Result<Vec<Vec<HeadScores>>> {
        let (l, h) = (self.cfg.n_layers, self.cfg.n_heads);
        let mut sum = vec![vec![[0.0f64; 3]; h]; l];
        let mut cnt = vec![vec![[0.0f64; 3]; h]; l];
        for chunk in sentences.chunks(100) {
            let batch = LegoBatch::new(chunk, 0)?;
            let bt = self.tensors(&batch)?;
            let (_, att) = self.chain_logits(&bt, true)?;
            let (b, t) = batch.tokens.dim();
            let maps: Vec<Vec<f32>> = att
                .iter()
                .map(|a| Ok(a.flatten_all()?.to_vec1::<f32>()?))
                .collect::<Result<_>>()?;
            for i in 0..b {
                let mut one = Array4::<f32>::zeros((l, h, t, t));
                for (li, m) in maps.iter().enumerate() {
                    let off = i * h * t * t;
                    let view =
                        ndarray::ArrayView3::from_shape((h, t, t), &m[off..off + h * t * t])?;
                    one.slice_mut(s![li, .., .., ..]).assign(&view);
                }
                let ids: Vec<u32> = batch.tokens.row(i).to_vec();
                let sc = score_heads(one.view(), &ids)?;
                for li in 0..l {
                    for hi in 0..h {
                        let x = sc[li][hi];
                        for (j, v) in [x.association, x.clause_locality, x.window_locality]
                            .into_iter()
                            .enumerate()
                        {
                            if let Some(v) = v {
                                sum[li][hi][j] += v;
                                cnt[li][hi][j] += 1.0;
                            }
                        }
                    }
                }
            }
        }
        let avg = |s: f64, c: f64| (c > 0.0).then(|| s / c);
        Ok((0..l)
            .map(|li| {
                (0..h)
                    .map(|hi| HeadScores {
                        association: avg(sum[li][hi][0], cnt[li][hi][0]),
                        clause_locality: avg(sum[li][hi][1], cnt[li][hi][1]),
                        window_locality: avg(sum[li][hi][2], cnt[li][hi][2]),
                    })
                    .collect()
            })
            .collect())
    }
}

/// Binary cross-entropy with logits `z` against 0/1 `y`, averaged where `w` is 1 (all `(B, N)`):
/// `max(z, 0) - y z + ln(1 + e^{-|z|})`, the stable form of PyTorch's `BCEWithLogitsLoss`.
pub fn bce_with_logits(z: &Tensor, y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let l = ((z.relu()? - z.mul(y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let denom = w.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64;
    Ok((l.mul(w)?.sum_all()? / denom)?)
}

/// The official mimicking loss of one head's maps `attn (B, T, T)` against `target`
/// (`(T, T)` or `(B, T, T)`): `KL(smooth(attn) || target)` summed over keys, mean over queries
/// and sentences, with `smooth(a) = (a + 1e-3) / rowsum`.
pub fn mimic_loss_tensor(attn: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (b, t, _) = attn.dims3()?;
    let a = (attn + MIMIC_EPS as f64)?;
    let m = a.broadcast_div(&a.sum_keepdim(D::Minus1)?)?;
    let lt = target.log()?;
    let kl = m.mul(&m.log()?.broadcast_sub(&lt)?)?.sum_all()?;
    Ok((kl / (b * t) as f64)?)
}
