//! The structural-grokking model: a decoder-only transformer LM over whole lines (`BOS` +
//! tokens), built by the toolkit ([`crate::nn::Transformer`]) from the experiment's
//! [`ModelConfig`], with the forward helpers the measures need (padded batches, per-line logits,
//! greedy decoding).

use super::config::Settings;
use super::task::RunData;
use crate::nn::{Activation, Transformer, TransformerConfig};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use ndarray::Array2;

/// Lines per forward pass during evaluation.
pub const EVAL_BATCH: usize = 64;

/// The transformer config of `settings` at `depth` for the vocabulary and lengths of `data`.
pub fn model_config(settings: &Settings, depth: usize, data: &RunData) -> TransformerConfig {
    let m = &settings.model;
    TransformerConfig {
        vocab_size: data.vocab_size,
        max_len: data.max_len,
        d_model: m.d_model,
        n_layers: depth,
        n_heads: m.heads,
        d_ff: m.ffn,
        causal: true,
        norm: m.norm,
        activation: Activation::Relu,
        dropout: m.dropout,
        positions: m.positions,
        tie_embeddings: m.tied_embeddings,
        emb_init_std: m.embedding_init_std,
        emb_scale: if m.embedding_scale_sqrt_d {
            (m.d_model as f64).sqrt()
        } else {
            1.0
        },
        ..Default::default()
    }
}

/// `lines` padded with `pad` to the longest, as a `(lines, T)` tensor; returns `T` too.
pub fn pad_batch(lines: &[&[u32]], pad: u32, dev: &Device) -> Result<(Tensor, usize)> {
    let t = lines.iter().map(|l| l.len()).max().unwrap_or(1);
    let mut v = Vec::with_capacity(lines.len() * t);
    for l in lines {
        v.extend_from_slice(l);
        v.extend(std::iter::repeat_n(pad, t - l.len()));
    }
    Ok((Tensor::from_vec(v, (lines.len(), t), dev)?, t))
}

/// Logits of every line, `(len, vocab)` per line.
pub fn logits_of(
    model: &Transformer,
    lines: &[Vec<u32>],
    pad: u32,
    dev: &Device,
) -> Result<Vec<Array2<f32>>> {
    let mut out = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(EVAL_BATCH) {
        let refs: Vec<&[u32]> = chunk.iter().map(|l| l.as_slice()).collect();
        let (x, t) = pad_batch(&refs, pad, dev)?;
        let logits = model.forward(&x)?.to_dtype(DType::F32)?;
        let c = logits.dim(2)?;
        let flat = logits.flatten_all()?.to_vec1::<f32>()?;
        for (b, l) in chunk.iter().enumerate() {
            let rows = flat[b * t * c..(b * t + l.len()) * c].to_vec();
            out.push(Array2::from_shape_vec((l.len(), c), rows)?);
        }
    }
    Ok(out)
}

/// Greedy continuations of `prompts` for `steps` tokens (never `pad` or the ids after it; a line
/// stops growing at the model's `max_len`).
pub fn greedy(
    model: &Transformer,
    prompts: &[Vec<u32>],
    steps: usize,
    pad: u32,
    dev: &Device,
) -> Result<Vec<Vec<u32>>> {
    let mut seqs = prompts.to_vec();
    let max_len = model.cfg.max_len;
    for _ in 0..steps {
        let logits = logits_of(model, &seqs, pad, dev)?;
        for (s, l) in seqs.iter_mut().zip(&logits) {
            if s.len() >= max_len {
                continue;
            }
            let last = l.row(l.nrows() - 1);
            let mut best = 0;
            for (i, &v) in last.iter().enumerate().take(pad as usize) {
                if v > last[best] {
                    best = i;
                }
            }
            s.push(best as u32);
        }
    }
    Ok(seqs
        .into_iter()
        .zip(prompts)
        .map(|(s, p)| s[p.len()..].to_vec())
        .collect())
}
