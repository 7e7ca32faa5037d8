//! Training a decoder-only LM on Dyck and tracking what structural grokking is about: in-domain
//! and generalisation closing-bracket accuracy, training loss, weight norm per layer and attention
//! sparsity, evaluated every `eval.every` steps. Runs checkpoint (safetensors, with optimiser and
//! data RNG) and resume to identical metrics; Ctrl-C saves and stops.
//!
//! Sequences are `[BOS] tokens [EOS]`, the loss is next-token cross-entropy on every position of
//! the line (padding excluded), as in the paper.

use super::config::{GrokkingExperiment, Norm, Positions, Preset, Schedule, Task};
use super::dyck::{
    closing_bracket_accuracy_nd, structure_split, ClosingAccuracy, DyckConfig, DyckSplit,
};
use super::internals::{weight_norm, AttentionSparsity};
use super::SplitSizes;
use crate::nn::{self, ForwardOpts, Transformer, TransformerConfig};
use crate::train::{
    load_checkpoint, save_checkpoint, OptimConfig, OptimKind, Optimizer, ScheduleKind,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One evaluation during training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    pub step: usize,
    /// Mean training loss over the steps since the previous evaluation (none at step 0).
    pub train_loss: Option<f64>,
    /// Closing-bracket accuracy on in-domain validation strings.
    pub val_acc: f64,
    /// Closing-bracket accuracy on the structure-held-out generalisation strings.
    pub gen_acc: f64,
    /// Closings scored (after the distance filter) in each set.
    pub val_scored: usize,
    pub gen_scored: usize,
    /// `||theta|| / n_layers`.
    pub weight_norm: f64,
    /// Minus the mean entropy of every causal attention row (layers, heads, positions).
    pub sparsity: f64,
}

/// Where a run checkpoints, and when to stop early.
pub struct RunControl<'a> {
    pub checkpoint: Option<PathBuf>,
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

/// The pieces of one Dyck run.
struct DyckData {
    sampler: DyckConfig,
    split: DyckSplit,
    min_dist: usize,
}

fn bos(k: usize) -> u32 {
    2 * k as u32
}
fn eos(k: usize) -> u32 {
    2 * k as u32 + 1
}

/// The decoder for a preset at a depth.
pub fn model_config(p: &Preset, depth: usize, vocab: usize, max_len: usize) -> TransformerConfig {
    TransformerConfig {
        vocab_size: vocab,
        n_out: 0,
        max_len,
        d_model: p.model.d_model,
        n_layers: depth,
        n_heads: p.model.heads,
        d_ff: p.model.ffn,
        causal: true,
        norm: match p.model.norm {
            Norm::Pre => nn::NormPlacement::Pre,
            Norm::Post => nn::NormPlacement::Post,
        },
        activation: nn::Activation::Relu,
        dropout: p.model.dropout,
        positions: match p.model.positions {
            Positions::Sinusoidal => nn::Positions::Sinusoidal,
            Positions::Learned => nn::Positions::Learned,
        },
        tie_embeddings: p.model.tied_embeddings,
        ..Default::default()
    }
}

fn optim_config(p: &Preset) -> OptimConfig {
    let o = &p.optim;
    OptimConfig {
        kind: OptimKind::AdamW,
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
        momentum: 0.0,
        clip_norm: o.clip_norm,
        schedule: crate::train::Schedule {
            kind: match o.schedule {
                Schedule::Constant => ScheduleKind::Constant,
                Schedule::LinearDecay => ScheduleKind::Linear,
            },
            warmup_steps: o.warmup_steps as u64,
            total_steps: o.decay_steps.unwrap_or(p.train.steps) as u64,
            final_ratio: 0.0,
        },
    }
}

/// `(inputs, targets, weights)` for a batch of strings: inputs `[BOS] s`, targets `s [EOS]`,
/// padded with EOS and weight 0, each `(batch, T)`.
fn lm_batch(strings: &[&Vec<u16>], k: usize, dev: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let t = strings.iter().map(|s| s.len() + 1).max().unwrap_or(1);
    let (mut x, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for s in strings {
        let mut inp = vec![bos(k)];
        inp.extend(s.iter().map(|&v| v as u32));
        let mut tgt: Vec<u32> = s.iter().map(|&v| v as u32).collect();
        tgt.push(eos(k));
        let n = inp.len();
        inp.resize(t, eos(k));
        tgt.resize(t, eos(k));
        x.extend(inp);
        y.extend(tgt);
        w.extend((0..t).map(|i| if i < n { 1f32 } else { 0.0 }));
    }
    let b = strings.len();
    Ok((
        Tensor::from_vec(x, (b, t), dev)?,
        Tensor::from_vec(y, (b, t), dev)?,
        Tensor::from_vec(w, (b, t), dev)?,
    ))
}

/// Closing-bracket accuracy of `model` over `strings`, in batches.
fn closing_accuracy(
    model: &Transformer,
    strings: &[Vec<u16>],
    k: usize,
    min_dist: usize,
    dev: &Device,
) -> Result<ClosingAccuracy> {
    let mut acc = ClosingAccuracy::default();
    for chunk in strings.chunks(64) {
        let refs: Vec<&Vec<u16>> = chunk.iter().collect();
        let (x, _, _) = lm_batch(&refs, k, dev)?;
        let logits = model.forward(&x)?.to_dtype(DType::F32)?;
        for (i, s) in chunk.iter().enumerate() {
            let rows = logits.get(i)?.narrow(0, 0, s.len())?;
            let (r, c) = rows.dims2()?;
            let arr =
                ndarray::Array2::from_shape_vec((r, c), rows.flatten_all()?.to_vec1::<f32>()?)?;
            acc.add(closing_bracket_accuracy_nd(s, arr.view(), k, min_dist)?);
        }
    }
    Ok(acc)
}

/// Attention sparsity over `strings` (each map cut to the string's own length).
pub fn attention_sparsity(
    model: &Transformer,
    strings: &[Vec<u16>],
    k: usize,
    dev: &Device,
) -> Result<f64> {
    let mut sp = AttentionSparsity::default();
    for chunk in strings.chunks(32) {
        let refs: Vec<&Vec<u16>> = chunk.iter().collect();
        let (x, _, _) = lm_batch(&refs, k, dev)?;
        let out = model.forward_with(
            &x,
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )?;
        for layer in &out.attention {
            let layer = layer.to_dtype(DType::F32)?;
            let (_, heads, _, _) = layer.dims4()?;
            for (i, s) in chunk.iter().enumerate() {
                let n = s.len() + 1;
                for h in 0..heads {
                    let m = layer.get(i)?.get(h)?.narrow(0, 0, n)?.narrow(1, 0, n)?;
                    let arr = ndarray::Array2::from_shape_vec(
                        (n, n),
                        m.flatten_all()?.to_vec1::<f32>()?,
                    )?;
                    sp.add_map(arr.view())?;
                }
            }
        }
    }
    Ok(sp.value())
}

fn model_weight_norm(vm: &VarMap, n_layers: usize) -> Result<f64> {
    let data = vm.data().lock().expect("VarMap lock poisoned");
    // Sorted by name: the map's own order is random, and the sum must not depend on it.
    let mut named: Vec<_> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let mut flat = Vec::new();
    for (_, v) in named {
        flat.push(
            v.as_tensor()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(weight_norm(flat.iter().map(|v| v.as_slice()), n_layers))
}

/// What the checkpoint's JSON side holds.
#[derive(Serialize, Deserialize)]
struct RunState {
    config: String,
    history: Vec<EvalPoint>,
    loss_sum: f64,
    loss_n: usize,
}

/// Trains one Dyck model of `depth` layers with `seed`, evaluating every `eval.every` steps.
pub fn train_dyck(
    exp: &GrokkingExperiment,
    preset: &Preset,
    depth: usize,
    seed: u64,
    control: &RunControl,
    on_eval: &mut dyn FnMut(&EvalPoint),
) -> Result<Vec<EvalPoint>> {
    if exp.task != Task::Dyck {
        bail!("`grokking train` trains Dyck models only so far (task = {:?}); QF/TI training is not built yet", exp.task);
    }
    let dd = preset
        .data
        .dyck
        .as_ref()
        .context("[data.dyck] is required for Dyck")?;
    let sampler = dd.sampler();
    let sizes = SplitSizes {
        train: preset.data.train,
        val: preset.data.val,
        gen: preset.data.gen,
    };
    let data = DyckData {
        split: structure_split(&sampler, sizes, dd.split, preset.data.seed)?,
        min_dist: preset.eval.min_dist.unwrap_or(super::dyck::PAPER_MIN_DIST),
        sampler,
    };
    train_dyck_on(&data, preset, depth, seed, control, on_eval)
}

fn train_dyck_on(
    data: &DyckData,
    p: &Preset,
    depth: usize,
    seed: u64,
    control: &RunControl,
    on_eval: &mut dyn FnMut(&EvalPoint),
) -> Result<Vec<EvalPoint>> {
    let k = data.sampler.bracket_types;
    let dev = nn::device()?;
    let longest = data
        .split
        .train
        .iter()
        .chain(&data.split.val)
        .chain(&data.split.gen)
        .map(|s| s.len())
        .max()
        .unwrap_or(1);
    let cfg = model_config(p, depth, 2 * k + 2, longest + 2);
    cfg.validate()?;
    let (model, vm) = Transformer::build(&cfg, seed, DType::F32, &dev)?;
    let mut opt = Optimizer::new(optim_config(p), &vm)?;
    let mut data_rng = crate::rng::stream(seed, 21);
    let mut dropout_rng = crate::rng::stream(seed, 22);
    let config = serde_json::to_string(&(
        format!("{cfg:?}"),
        format!("{:?}", optim_config(p)),
        p.train.steps,
        p.train.batch,
        p.eval.every,
        seed,
    ))?;
    let mut state = RunState {
        config: config.clone(),
        history: Vec::new(),
        loss_sum: 0.0,
        loss_n: 0,
    };
    let mut start = 0usize;
    if let Some(path) = control.checkpoint.as_ref().filter(|p| p.exists()) {
        let r = load_checkpoint(path, &vm, &mut opt)
            .with_context(|| format!("resuming from `{}`", path.display()))?;
        let saved: RunState = serde_json::from_str(&r.extra)?;
        if saved.config != config {
            bail!("checkpoint `{}` belongs to a different run: use another --out directory or delete it", path.display());
        }
        state = saved;
        start = r.step as usize;
        data_rng = r
            .rngs
            .get("data")
            .cloned()
            .context("checkpoint lacks the data RNG")?;
        dropout_rng = r
            .rngs
            .get("dropout")
            .cloned()
            .context("checkpoint lacks the dropout RNG")?;
    }
    let sparsity_set: Vec<Vec<u16>> = data
        .split
        .train
        .iter()
        .take(p.eval.train_examples)
        .cloned()
        .collect();
    let evaluate = |step: usize, state: &mut RunState| -> Result<EvalPoint> {
        let val = closing_accuracy(&model, &data.split.val, k, data.min_dist, &dev)?;
        let gen = closing_accuracy(&model, &data.split.gen, k, data.min_dist, &dev)?;
        let pt = EvalPoint {
            step,
            train_loss: (state.loss_n > 0).then(|| state.loss_sum / state.loss_n as f64),
            val_acc: val.accuracy(),
            gen_acc: gen.accuracy(),
            val_scored: val.total,
            gen_scored: gen.total,
            weight_norm: model_weight_norm(&vm, depth)?,
            sparsity: attention_sparsity(&model, &sparsity_set, k, &dev)?,
        };
        state.loss_sum = 0.0;
        state.loss_n = 0;
        state.history.push(pt.clone());
        Ok(pt)
    };
    if start == 0 && state.history.is_empty() {
        let pt = evaluate(0, &mut state)?;
        on_eval(&pt);
    }
    for step in start..p.train.steps {
        let idx: Vec<usize> = (0..p.train.batch)
            .map(|_| data_rng.gen_range(0..data.split.train.len()))
            .collect();
        let batch: Vec<&Vec<u16>> = idx.iter().map(|&i| &data.split.train[i]).collect();
        let (x, y, w) = lm_batch(&batch, k, &dev)?;
        let out = model.forward_with(
            &x,
            ForwardOpts {
                dropout_rng: Some(&mut dropout_rng),
                ..Default::default()
            },
        )?;
        let loss = nn::cross_entropy(&out.logits, &y, Some(&w))?;
        state.loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        state.loss_n += 1;
        crate::train::backward_step(&loss, &mut opt)?;
        let done = step + 1;
        let stop = (control.stop)();
        if done % p.eval.every == 0 || done == p.train.steps {
            let pt = evaluate(done, &mut state)?;
            on_eval(&pt);
        }
        if let Some(path) = &control.checkpoint {
            if stop || done % p.eval.every == 0 || done == p.train.steps {
                save_checkpoint(
                    path,
                    &vm,
                    &opt,
                    &[("data", &data_rng), ("dropout", &dropout_rng)],
                    &serde_json::to_string(&state)?,
                )?;
            }
        }
        if stop {
            bail!(
                "interrupted after step {done}; checkpoint saved: rerun the same command to resume"
            );
        }
    }
    Ok(state.history)
}

/// Writes a run's metrics as CSV.
pub fn write_history(path: &Path, history: &[EvalPoint]) -> Result<()> {
    let rows: Vec<Vec<f64>> = history
        .iter()
        .map(|p| {
            vec![
                p.step as f64,
                p.train_loss.unwrap_or(f64::NAN),
                p.val_acc,
                p.gen_acc,
                p.val_scored as f64,
                p.gen_scored as f64,
                p.weight_norm,
                p.sparsity,
            ]
        })
        .collect();
    crate::io::write_csv(
        path,
        &[
            "step",
            "train_loss",
            "val_acc",
            "gen_acc",
            "val_scored",
            "gen_scored",
            "weight_norm",
            "sparsity",
        ],
        &rows,
    )
}

#[doc(hidden)]
pub fn _train_dyck_split(
    split: DyckSplit,
    sampler: DyckConfig,
    min_dist: usize,
    p: &Preset,
    depth: usize,
    seed: u64,
    control: &RunControl,
) -> Result<Vec<EvalPoint>> {
    train_dyck_on(
        &DyckData {
            sampler,
            split,
            min_dist,
        },
        p,
        depth,
        seed,
        control,
        &mut |_| {},
    )
}
