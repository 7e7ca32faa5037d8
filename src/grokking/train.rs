//! Training of the structural-grokking LMs (issue 7): a decoder-only transformer over the whole
//! line (`BOS` + tokens, loss on every token), AdamW with linear warmup and gradient clipping,
//! checkpoints every `eval.every` steps, resumption after an interruption, and at every
//! evaluation step the paper's measures:
//!
//! - in-domain and generalisation accuracy (Dyck closing-bracket accuracy, QF first-word
//!   accuracy on `quest` lines, TI main-verb accuracy of the greedy decode on `PRESENT` lines);
//! - mean training loss since the previous evaluation;
//! - weight norm `||theta|| / L` and attention sparsity (minus the mean entropy over every layer,
//!   head and causal row of the captured attention, on `eval.train_examples` training lines);
//! - tree projections on at most [`TREE_SENTENCES`] training sentences of at most
//!   [`TREE_MAX_WORDS`] words (kept cheap for the CPU): the SCI chart of every span (cosine between
//!   the in-context and the context-free sum of the span's last-layer states, the latter under
//!   [`context_free_mask`] in every layer), the projected tree, the exact tscore, and for QF / TI
//!   tparseval against the gold trees with the right-branching baseline.

use super::config::{Norm, Positions, Preset, Schedule as CfgSchedule, Task};
use super::dyck::{self, DyckSplit};
use super::grammar::{
    self, qf_first_word_correct, ti_main_verb_correct, GrammarSplit, GrammarTask, GrammarVocab,
};
use super::internals::{weight_norm, AttentionSparsity};
use super::tree::BinaryTree;
use super::tree_projection::{
    context_free_mask, cosine_similarity, expected_random_tree_score, project_tree,
    project_tree_optimal, sci_chart, tparseval, tscore_one_split_estimate,
};
use super::SplitSizes;
use crate::nn::{self, AttnMask, ForwardOpts, Transformer, TransformerConfig};
use crate::rng::{stream, Rng};
use crate::train::{self as tr, OptimConfig, OptimKind, Optimizer};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use ndarray::Array2;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Training sentences whose tree projections are computed at each evaluation.
pub const TREE_SENTENCES: usize = 20;
/// Longest sentence (words) used for tree projections.
pub const TREE_MAX_WORDS: usize = 10;
/// Lines per forward pass during evaluation.
const EVAL_BATCH: usize = 64;

/// The data of one run, encoded as token ids with `BOS` at position 0.
pub struct RunData {
    pub task: Task,
    /// Bracket types (Dyck).
    pub k: usize,
    pub grammar: Option<(GrammarSplit, GrammarVocab)>,
    pub dyck: Option<DyckSplit>,
    pub train: Vec<Vec<u32>>,
    pub bos: u32,
    pub pad: u32,
    pub vocab_size: usize,
    pub max_len: usize,
}

impl RunData {
    /// Draws the split of `preset` for `task`.
    pub fn new(task: Task, preset: &Preset) -> Result<Self> {
        let sizes = SplitSizes {
            train: preset.data.train,
            val: preset.data.val,
            gen: preset.data.gen,
        };
        match task {
            Task::Dyck => {
                let d = preset
                    .data
                    .dyck
                    .as_ref()
                    .context("Dyck task without [data.dyck]")?;
                let split = dyck::structure_split(&d.sampler(), sizes, d.split, preset.data.seed)?;
                let k = d.bracket_types;
                let (bos, pad) = (2 * k as u32, 2 * k as u32 + 1);
                let enc = |s: &Vec<u16>| -> Vec<u32> {
                    std::iter::once(bos)
                        .chain(s.iter().map(|&t| t as u32))
                        .collect()
                };
                let train: Vec<Vec<u32>> = split.train.iter().map(enc).collect();
                let max_len = split
                    .train
                    .iter()
                    .chain(&split.val)
                    .chain(&split.gen)
                    .map(|s| s.len() + 1)
                    .max()
                    .unwrap_or(1);
                Ok(Self {
                    task,
                    k,
                    grammar: None,
                    dyck: Some(split),
                    train,
                    bos,
                    pad,
                    vocab_size: 2 * k + 2,
                    max_len,
                })
            }
            Task::Qf | Task::Ti => {
                let gt = if task == Task::Qf {
                    GrammarTask::Qf
                } else {
                    GrammarTask::Ti
                };
                let split = grammar::grammar_split(gt, sizes, preset.data.seed)?;
                let vocab = GrammarVocab::new(gt);
                let (bos, pad) = (vocab.len() as u32, vocab.len() as u32 + 1);
                let mut train = Vec::with_capacity(split.train.len());
                for e in &split.train {
                    let ids = vocab.encode(&e.tokens())?;
                    train.push(
                        std::iter::once(bos)
                            .chain(ids.iter().map(|&i| i as u32))
                            .collect(),
                    );
                }
                let max_len = split
                    .train
                    .iter()
                    .chain(&split.val)
                    .chain(&split.gen)
                    .map(|e| e.tokens().len() + 3)
                    .max()
                    .unwrap_or(1);
                let vs = vocab.len() + 2;
                Ok(Self {
                    task,
                    k: 0,
                    grammar: Some((split, vocab)),
                    dyck: None,
                    train,
                    bos,
                    pad,
                    vocab_size: vs,
                    max_len,
                })
            }
        }
    }
}

/// The transformer config of `preset` at `depth`.
pub fn model_config(preset: &Preset, depth: usize, data: &RunData) -> TransformerConfig {
    let m = &preset.model;
    TransformerConfig {
        vocab_size: data.vocab_size,
        max_len: data.max_len,
        d_model: m.d_model,
        n_layers: depth,
        n_heads: m.heads,
        d_ff: m.ffn,
        causal: true,
        norm: match m.norm {
            Norm::Pre => nn::NormPlacement::Pre,
            Norm::Post => nn::NormPlacement::Post,
        },
        activation: nn::Activation::Relu,
        dropout: m.dropout,
        positions: match m.positions {
            Positions::Sinusoidal => nn::Positions::Sinusoidal,
            Positions::Learned => nn::Positions::Learned,
        },
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

fn optim_config(preset: &Preset) -> OptimConfig {
    let o = &preset.optim;
    let schedule = tr::Schedule {
        kind: match o.schedule {
            CfgSchedule::Constant => tr::schedule::ScheduleKind::Constant,
            CfgSchedule::LinearDecay => tr::schedule::ScheduleKind::Linear,
        },
        warmup_steps: o.warmup_steps as u64,
        total_steps: o.decay_steps.unwrap_or(preset.train.steps) as u64,
        final_ratio: 0.0,
    };
    OptimConfig {
        kind: OptimKind::AdamW,
        lr: o.lr,
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
        momentum: 0.0,
        clip_norm: o.clip_norm,
        schedule,
    }
}

/// One evaluation step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalRow {
    pub step: usize,
    pub train_loss: f64,
    pub in_domain_acc: f64,
    pub gen_acc: f64,
    pub weight_norm: f64,
    pub sparsity: f64,
    pub tscore: f64,
    /// NaN for Dyck (no gold trees).
    pub tparseval: f64,
    /// Right-branching trees against the gold trees (NaN for Dyck).
    pub tparseval_right_branching: f64,
}

impl EvalRow {
    pub const HEADER: [&'static str; 9] = [
        "step",
        "train_loss",
        "in_domain_acc",
        "gen_acc",
        "weight_norm",
        "sparsity",
        "tscore",
        "tparseval",
        "tparseval_right_branching",
    ];
    fn from_values(v: &[Option<f64>]) -> Result<Self> {
        if v.len() != Self::HEADER.len() {
            anyhow::bail!(
                "checkpoint curve row has {} values, expected {}",
                v.len(),
                Self::HEADER.len()
            );
        }
        let g = |i: usize| v[i].unwrap_or(f64::NAN);
        Ok(Self {
            step: g(0) as usize,
            train_loss: g(1),
            in_domain_acc: g(2),
            gen_acc: g(3),
            weight_norm: g(4),
            sparsity: g(5),
            tscore: g(6),
            tparseval: g(7),
            tparseval_right_branching: g(8),
        })
    }

    pub fn values(&self) -> Vec<f64> {
        vec![
            self.step as f64,
            self.train_loss,
            self.in_domain_acc,
            self.gen_acc,
            self.weight_norm,
            self.sparsity,
            self.tscore,
            self.tparseval,
            self.tparseval_right_branching,
        ]
    }
}

/// What the checkpoint carries besides parameters, optimiser state and RNGs.
#[derive(Serialize, Deserialize)]
struct Extra {
    config: String,
    /// [`EvalRow::values`] with NaN as `None` (JSON has no NaN).
    curve: Vec<Vec<Option<f64>>>,
    loss_sum: f64,
    loss_n: usize,
}

/// Result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub depth: usize,
    pub seed: u64,
    pub curve: Vec<EvalRow>,
    /// False when the run stopped on request before `train.steps`.
    pub completed: bool,
    /// Step of the highest in-domain accuracy (first on ties): where early stopping stops.
    pub early_stop_step: Option<usize>,
    pub gen_at_early_stop: Option<f64>,
    pub final_gen: Option<f64>,
    pub grokked: bool,
}

impl RunResult {
    fn from_curve(depth: usize, seed: u64, curve: Vec<EvalRow>, completed: bool, thr: f64) -> Self {
        let best = early_stop(&curve);
        let final_gen = curve.last().map(|r| r.gen_acc);
        Self {
            depth,
            seed,
            early_stop_step: best.map(|r| r.step),
            gen_at_early_stop: best.map(|r| r.gen_acc),
            final_gen,
            // "Eventually exceeds": at any evaluation, as the figures count it.
            grokked: curve.iter().any(|r| r.gen_acc >= thr),
            curve,
            completed,
        }
    }
}

/// Where early stopping stops: the evaluation with the highest in-domain accuracy (first on ties).
pub fn early_stop(curve: &[EvalRow]) -> Option<&EvalRow> {
    let mut best: Option<&EvalRow> = None;
    for r in curve {
        if best.is_none_or(|b| r.in_domain_acc > b.in_domain_acc) {
            best = Some(r);
        }
    }
    best
}

/// In-domain accuracy at which a run counts as saturated.
pub const IN_DOMAIN_SATURATION: f64 = 0.95;

/// When a run saturated in domain and when it first generalised: structural grokking is
/// `gen_at_saturation < threshold` with `grokked_at` well after `saturated_at`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrokOnset {
    /// First evaluation with in-domain accuracy >= [`IN_DOMAIN_SATURATION`].
    pub saturated_at: usize,
    pub gen_at_saturation: f64,
    /// First evaluation at or after `saturated_at` with generalisation >= the threshold.
    pub grokked_at: Option<usize>,
}

impl GrokOnset {
    /// `None` when in-domain accuracy never saturates.
    pub fn of(curve: &[EvalRow], threshold: f64) -> Option<Self> {
        let sat = curve
            .iter()
            .position(|r| r.in_domain_acc >= IN_DOMAIN_SATURATION)?;
        Some(Self {
            saturated_at: curve[sat].step,
            gen_at_saturation: curve[sat].gen_acc,
            grokked_at: curve[sat..]
                .iter()
                .find(|r| r.gen_acc >= threshold)
                .map(|r| r.step),
        })
    }

    /// Steps from saturation to generalisation (`None` if it never generalised).
    pub fn delay(&self) -> Option<usize> {
        self.grokked_at.map(|g| g - self.saturated_at)
    }

    /// Structural grokking: generalisation crosses the threshold after saturation, at no less
    /// than twice the saturation step (at least one doubling later on the paper's log-step axis).
    pub fn is_structural(&self) -> bool {
        self.grokked_at
            .is_some_and(|g| g > self.saturated_at && g >= 2 * self.saturated_at)
    }
}

/// Where a run keeps its files and when it stops.
pub struct RunOpts<'a> {
    pub out_dir: PathBuf,
    /// Polled after every step: true saves a checkpoint and stops.
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// Override of `train.steps` (tests).
    pub steps: Option<usize>,
}

fn pad_batch(lines: &[&[u32]], pad: u32, dev: &Device) -> Result<(Tensor, usize)> {
    let t = lines.iter().map(|l| l.len()).max().unwrap_or(1);
    let mut v = Vec::with_capacity(lines.len() * t);
    for l in lines {
        v.extend_from_slice(l);
        v.extend(std::iter::repeat_n(pad, t - l.len()));
    }
    Ok((Tensor::from_vec(v, (lines.len(), t), dev)?, t))
}

/// Logits of every line, `(len, vocab)` row-major per line.
fn logits_of(model: &Transformer, lines: &[Vec<u32>], pad: u32) -> Result<Vec<Array2<f32>>> {
    let dev = Device::Cpu;
    let mut out = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(EVAL_BATCH) {
        let refs: Vec<&[u32]> = chunk.iter().map(|l| l.as_slice()).collect();
        let (x, t) = pad_batch(&refs, pad, &dev)?;
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

/// Greedy continuations of `prompts` for `steps` tokens.
fn greedy(
    model: &Transformer,
    prompts: &[Vec<u32>],
    steps: usize,
    pad: u32,
) -> Result<Vec<Vec<u32>>> {
    let mut seqs = prompts.to_vec();
    let max_len = model.cfg.max_len;
    for _ in 0..steps {
        let logits = logits_of(model, &seqs, pad)?;
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

/// In-domain or generalisation accuracy of `model` on one held-out set.
fn accuracy(model: &Transformer, data: &RunData, preset: &Preset, gen: bool) -> Result<f64> {
    match data.task {
        Task::Dyck => {
            let split = data.dyck.as_ref().expect("Dyck data");
            let set = if gen { &split.gen } else { &split.val };
            let lines: Vec<Vec<u32>> = set
                .iter()
                .map(|s| {
                    std::iter::once(data.bos)
                        .chain(s.iter().map(|&t| t as u32))
                        .collect()
                })
                .collect();
            let logits = logits_of(model, &lines, data.pad)?;
            let mut acc = dyck::ClosingAccuracy::default();
            for (s, l) in set.iter().zip(&logits) {
                // Row j of the logits (after BOS + s[..j]) predicts s[j].
                let rows = l.slice(ndarray::s![..s.len(), ..]);
                let rows = rows.as_standard_layout();
                acc.add(dyck::closing_bracket_accuracy_nd(
                    s,
                    rows.view(),
                    data.k,
                    preset.eval.min_dist.unwrap_or(0),
                )?);
            }
            Ok(acc.accuracy())
        }
        Task::Qf | Task::Ti => {
            let (split, vocab) = data.grammar.as_ref().expect("grammar data");
            let set = if gen { &split.gen } else { &split.val };
            let exs: Vec<_> = set.iter().filter(|e| e.is_transform()).collect();
            if exs.is_empty() {
                return Ok(f64::NAN);
            }
            let prompts: Vec<Vec<u32>> = exs
                .iter()
                .map(|e| {
                    let t = e.tokens();
                    let ids = vocab.encode(&t[..e.prompt_len()]).expect("known words");
                    std::iter::once(data.bos)
                        .chain(ids.into_iter().map(|i| i as u32))
                        .collect()
                })
                .collect();
            let mut correct = 0usize;
            if data.task == Task::Qf {
                let logits = logits_of(model, &prompts, data.pad)?;
                for (e, l) in exs.iter().zip(&logits) {
                    let row = l.row(l.nrows() - 1).to_vec();
                    correct += qf_first_word_correct(e, &row, vocab)? as usize;
                }
            } else {
                let steps = exs.iter().map(|e| e.output.len() + 1).max().unwrap_or(1);
                let outs = greedy(model, &prompts, steps, data.pad)?;
                for (e, o) in exs.iter().zip(&outs) {
                    let words: Vec<&str> = o
                        .iter()
                        .map(|&i| vocab.word(i as usize).unwrap_or("<bos>"))
                        .collect();
                    correct += ti_main_verb_correct(e, &words, vocab) as usize;
                }
            }
            Ok(correct as f64 / exs.len() as f64)
        }
    }
}

/// `||theta|| / L` over every parameter of `vm`.
pub fn model_weight_norm(vm: &VarMap, n_layers: usize) -> Result<f64> {
    let data = vm.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<_> = data.iter().collect();
    vars.sort_by(|a, b| a.0.cmp(b.0)); // fixed summation order: bit-identical across instances
    let mut vals: Vec<Vec<f32>> = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        vals.push(
            v.as_tensor()
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(weight_norm(vals.iter().map(|v| v.as_slice()), n_layers))
}

/// Attention sparsity (minus the mean row entropy over every layer, head and causal row) of
/// `model` on `lines`, from the attention captured in the forward pass.
pub fn attention_sparsity(model: &Transformer, lines: &[Vec<u32>], pad: u32) -> Result<f64> {
    let dev = Device::Cpu;
    let mut s = AttentionSparsity::default();
    for chunk in lines.chunks(EVAL_BATCH) {
        let refs: Vec<&[u32]> = chunk.iter().map(|l| l.as_slice()).collect();
        let (x, t) = pad_batch(&refs, pad, &dev)?;
        let out = model.forward_with(
            &x,
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )?;
        for att in &out.attention {
            let (b, h, _, _) = att.dims4()?;
            let flat = att.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let a = ndarray::Array4::from_shape_vec((b, h, t, t), flat)?;
            for (bi, l) in chunk.iter().enumerate() {
                let n = l.len();
                for hi in 0..h {
                    s.add_map(a.slice(ndarray::s![bi, hi, ..n, ..n]))?;
                }
            }
        }
    }
    Ok(s.value())
}

/// Sum over positions `first..=last` of `hidden[b]` (`hidden` flattened `(B, T, d)`).
fn span_sum(hidden: &[f32], b: usize, t: usize, d: usize, first: usize, last: usize) -> Vec<f32> {
    let mut v = vec![0f32; d];
    for p in first..=last {
        let row = &hidden[(b * t + p) * d..(b * t + p + 1) * d];
        for (a, x) in v.iter_mut().zip(row) {
            *a += x;
        }
    }
    v
}

/// Last-layer states `(T, d)` of `line` with every span's context-free encoding: returns the
/// in-context states and, per span `(first, last)` in token positions, the context-free states of
/// the whole line under [`context_free_mask`] (flattened `(T, d)`).
pub fn context_free_states(
    model: &Transformer,
    line: &[u32],
    spans: &[(usize, usize)],
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let dev = Device::Cpu;
    let t = line.len();
    let x = Tensor::from_vec(line.to_vec(), (1, t), &dev)?;
    let ic = model
        .forward_with(&x, ForwardOpts::default())?
        .hidden
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut cf = Vec::with_capacity(spans.len());
    for chunk in spans.chunks(EVAL_BATCH) {
        let b = chunk.len();
        let mut m = Vec::with_capacity(b * t * t);
        for &(f, l) in chunk {
            m.extend(context_free_mask(t, f, l).iter().map(|&ok| ok as u8));
        }
        let mask = AttnMask::Allowed(Tensor::from_vec(m, (b, t, t), &dev)?);
        let xs = x.broadcast_as((b, t))?.contiguous()?;
        let h = model
            .forward_with(
                &xs,
                ForwardOpts {
                    mask: Some(&mask),
                    ..Default::default()
                },
            )?
            .hidden
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per = t * model.cfg.d_model;
        for bi in 0..b {
            cf.push(h[bi * per..(bi + 1) * per].to_vec());
        }
    }
    Ok((ic, cf))
}

/// The SCI chart of a sentence `words` (ids without BOS): `chart[i][j]` = cosine between the
/// in-context and context-free sums of the last-layer states of words `i..=j`.
pub fn sentence_chart(model: &Transformer, words: &[u32], bos: u32) -> Result<Array2<f64>> {
    let n = words.len();
    let line: Vec<u32> = std::iter::once(bos).chain(words.iter().copied()).collect();
    let t = line.len();
    let d = model.cfg.d_model;
    let spans: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i..n).map(move |j| (i + 1, j + 1)))
        .collect();
    let (ic, cf) = context_free_states(model, &line, &spans)?;
    let mut sci = std::collections::HashMap::new();
    for (&(f, l), c) in spans.iter().zip(&cf) {
        let a = span_sum(&ic, 0, t, d, f, l);
        let b = span_sum(c, 0, t, d, f, l);
        sci.insert((f - 1, l - 1), cosine_similarity(&a, &b));
    }
    Ok(sci_chart(n, |i, j| sci[&(i, j)]))
}

/// Tree-projection sentences: the first `count` training sentences of 2 to [`TREE_MAX_WORDS`]
/// words, with gold trees for QF / TI.
fn tree_sentences(data: &RunData, count: usize) -> Result<Vec<(Vec<u32>, Option<BinaryTree>)>> {
    let ok = |n: usize| (2..=TREE_MAX_WORDS).contains(&n);
    Ok(match (&data.dyck, &data.grammar) {
        (Some(s), _) => s
            .train
            .iter()
            .filter(|s| ok(s.len()))
            .take(count)
            .map(|s| (s.iter().map(|&t| t as u32).collect(), None))
            .collect(),
        (_, Some((s, v))) => {
            let mut out = Vec::new();
            for e in s.train.iter().filter(|e| ok(e.input.len())).take(count) {
                let ids = v.encode(&e.input)?.into_iter().map(|i| i as u32).collect();
                out.push((ids, Some(e.tree.clone())));
            }
            out
        }
        _ => Vec::new(),
    })
}

/// tscore, tparseval and the right-branching baseline on the first [`TREE_SENTENCES`] sentences.
fn tree_metrics(model: &Transformer, data: &RunData) -> Result<(f64, f64, f64)> {
    let c = projection_check(model, data, TREE_SENTENCES)?;
    Ok((
        c.tscore_greedy,
        c.tparseval_greedy,
        c.tparseval_right_branching,
    ))
}

/// The greedy tree projection (the paper's, used in the curves) against the tree that maximises
/// the whole-tree SCI score, on one trained model.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectionCheck {
    pub sentences: usize,
    pub tscore_greedy: f64,
    pub tscore_optimal: f64,
    /// Fraction of sentences whose greedy tree scores below a random tree's expectation.
    pub greedy_below_random: f64,
    /// Fraction of sentences whose greedy tree is the optimal one.
    pub greedy_is_optimal: f64,
    /// The official code's per-node estimate (`tree_projection(..., normalize=True)`).
    pub tscore_code_estimate: f64,
    /// Mean SCI of the spans that start at the first word: 1 in a causal LM, whose prefix spans
    /// see no more context in the sentence than under the context-free mask.
    pub left_anchored_sci: f64,
    /// NaN for Dyck (no gold trees).
    pub tparseval_greedy: f64,
    pub tparseval_optimal: f64,
    pub tparseval_right_branching: f64,
}

/// [`ProjectionCheck`] of `model` on the first `count` tree-projection sentences.
pub fn projection_check(
    model: &Transformer,
    data: &RunData,
    count: usize,
) -> Result<ProjectionCheck> {
    let sents = tree_sentences(data, count)?;
    let n = sents.len().max(1) as f64;
    let (mut tg, mut to, mut below, mut same) = (0.0, 0.0, 0usize, 0usize);
    let (mut code, mut left, mut left_n) = (0.0, 0.0, 0usize);
    let mut rng = stream(0, 102);
    let (mut greedy, mut optimal, mut gold, mut rb) = (vec![], vec![], vec![], vec![]);
    for (w, g) in &sents {
        let chart = sentence_chart(model, w, data.bos)?;
        let (pg, po) = (project_tree(&chart), project_tree_optimal(&chart));
        // tscore_exact and tscore_optimal_tree, sharing the projections and the expectation.
        let e = expected_random_tree_score(&chart);
        let t = pg.score - e;
        tg += t;
        to += po.score - e;
        code += tscore_one_split_estimate(&chart, &mut rng);
        for j in 1..w.len() {
            left += chart[[0, j]];
            left_n += 1;
        }
        below += usize::from(t < 0.0);
        same += usize::from(pg.tree == po.tree);
        if let Some(g) = g {
            greedy.push(pg.tree);
            optimal.push(po.tree);
            gold.push(g.clone());
            rb.push(BinaryTree::right_branching(w.len()));
        }
    }
    let f1 = |pred: &[BinaryTree]| {
        if gold.is_empty() {
            f64::NAN
        } else {
            tparseval(pred, &gold).f1
        }
    };
    Ok(ProjectionCheck {
        sentences: sents.len(),
        tscore_greedy: tg / n,
        tscore_optimal: to / n,
        greedy_below_random: below as f64 / n,
        greedy_is_optimal: same as f64 / n,
        tscore_code_estimate: code / n,
        left_anchored_sci: left / left_n.max(1) as f64,
        tparseval_greedy: f1(&greedy),
        tparseval_optimal: f1(&optimal),
        tparseval_right_branching: f1(&rb),
    })
}

/// Loads the model of the run in `dir` (its `checkpoint.safetensors`, written at the last
/// evaluation) for depth `depth` and seed `seed` of `preset`.
pub fn load_run_model(
    preset: &Preset,
    data: &RunData,
    depth: usize,
    seed: u64,
    dir: &Path,
) -> Result<(Transformer, usize)> {
    let ck = dir.join("checkpoint.safetensors");
    if !ck.exists() {
        anyhow::bail!(
            "no checkpoint `{}`: train the run first (`attnlab grokking train` with the same config, depth and seed)",
            ck.display()
        );
    }
    let cfg = model_config(preset, depth, data);
    let (model, vm) = Transformer::build(&cfg, seed, DType::F32, &Device::Cpu)?;
    let mut opt = Optimizer::new(optim_config(preset), &vm)?;
    let r = tr::load_checkpoint(&ck, &vm, &mut opt)
        .with_context(|| format!("loading `{}` as depth {depth}", ck.display()))?;
    let extra: Extra = serde_json::from_str(&r.extra)
        .with_context(|| format!("checkpoint `{}` is damaged", ck.display()))?;
    let step = extra
        .curve
        .last()
        .and_then(|v| v.first().copied().flatten())
        .map_or(0, |s| s as usize);
    Ok((model, step))
}

/// Every measure at one evaluation step.
pub fn evaluate(
    model: &Transformer,
    vm: &VarMap,
    data: &RunData,
    preset: &Preset,
    step: usize,
    train_loss: f64,
) -> Result<EvalRow> {
    let n = preset.eval.train_examples.min(data.train.len());
    let sparsity = attention_sparsity(model, &data.train[..n], data.pad)?;
    let (tscore, tp, trb) = tree_metrics(model, data)?;
    Ok(EvalRow {
        step,
        train_loss,
        in_domain_acc: accuracy(model, data, preset, false)?,
        gen_acc: accuracy(model, data, preset, true)?,
        weight_norm: model_weight_norm(vm, model.cfg.n_layers)?,
        sparsity,
        tscore,
        tparseval: tp,
        tparseval_right_branching: trb,
    })
}

/// One training step on a random batch; returns the loss.
fn train_step(
    model: &Transformer,
    opt: &mut Optimizer,
    data: &RunData,
    batch: usize,
    data_rng: &mut Rng,
    drop_rng: &mut Rng,
) -> Result<f64> {
    let dev = Device::Cpu;
    let idx: Vec<usize> = (0..batch)
        .map(|_| data_rng.gen_range(0..data.train.len()))
        .collect();
    let refs: Vec<&[u32]> = idx.iter().map(|&i| data.train[i].as_slice()).collect();
    let (x, t) = pad_batch(&refs, data.pad, &dev)?;
    let inp = x.narrow(1, 0, t - 1)?;
    let tgt = x.narrow(1, 1, t - 1)?;
    let w = tgt.ne(data.pad)?.to_dtype(DType::F32)?;
    let out = model.forward_with(
        &inp,
        ForwardOpts {
            dropout_rng: Some(drop_rng),
            ..Default::default()
        },
    )?;
    let loss = nn::cross_entropy(&out.logits, &tgt, Some(&w))?;
    let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    tr::backward_step(&loss, opt)?;
    Ok(l)
}

/// Trains one (depth, seed) run of `preset`, writing `metrics.csv` (after every evaluation) and
/// `checkpoint.safetensors` (every `eval.every` steps and on stop) into `opts.out_dir`, resuming
/// from the checkpoint when it exists.
pub fn train_run(
    task: Task,
    preset: &Preset,
    data: &RunData,
    depth: usize,
    seed: u64,
    opts: &RunOpts,
) -> Result<RunResult> {
    let steps = opts.steps.unwrap_or(preset.train.steps);
    let cfg = model_config(preset, depth, data);
    let dev = Device::Cpu;
    let (model, vm) = Transformer::build(&cfg, seed, DType::F32, &dev)?;
    let mut opt = Optimizer::new(optim_config(preset), &vm)?;
    let mut data_rng = stream(seed, 100);
    let mut drop_rng = stream(seed, 101);
    // Data, optimiser and evaluation settings are part of a run's identity too: a checkpoint
    // trained with another learning rate must not be resumed under this one.
    let settings = format!(
        "{:?}",
        (
            &preset.data,
            &preset.optim,
            preset.train.batch,
            &preset.eval
        )
    );
    let config_json =
        serde_json::to_string(&(format!("{task:?}"), &cfg, depth, seed, steps, settings))?;
    let mut curve: Vec<EvalRow> = Vec::new();
    let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating `{}`", opts.out_dir.display()))?;
    let ck = opts.out_dir.join("checkpoint.safetensors");
    let csv = opts.out_dir.join("metrics.csv");
    if ck.exists() {
        let r = tr::load_checkpoint(&ck, &vm, &mut opt)?;
        let extra: Extra = serde_json::from_str(&r.extra)
            .with_context(|| format!("checkpoint `{}` is damaged: delete it", ck.display()))?;
        if extra.config != config_json {
            anyhow::bail!(
                "checkpoint `{}` was written by another run config: delete it or use another output directory",
                ck.display()
            );
        }
        data_rng = r
            .rngs
            .get("data")
            .context("no data RNG in checkpoint")?
            .clone();
        drop_rng = r
            .rngs
            .get("dropout")
            .context("no dropout RNG in checkpoint")?
            .clone();
        curve = extra
            .curve
            .iter()
            .map(|v| EvalRow::from_values(v))
            .collect::<Result<_>>()?;
        loss_sum = extra.loss_sum;
        loss_n = extra.loss_n;
    }
    let every = preset.eval.every.max(1);
    let save = |opt: &Optimizer, curve: &[EvalRow], ls: f64, ln: usize, d: &Rng, r: &Rng| {
        let extra = serde_json::to_string(&Extra {
            config: config_json.clone(),
            curve: curve
                .iter()
                .map(|r| {
                    r.values()
                        .into_iter()
                        .map(|x| (!x.is_nan()).then_some(x))
                        .collect()
                })
                .collect(),
            loss_sum: ls,
            loss_n: ln,
        })?;
        tr::save_checkpoint(&ck, &vm, opt, &[("data", d), ("dropout", r)], &extra)
    };
    let write_csv = |curve: &[EvalRow]| {
        let rows: Vec<Vec<f64>> = curve.iter().map(|r| r.values()).collect();
        crate::io::write_csv(&csv, &EvalRow::HEADER, &rows)
    };
    if curve.is_empty() {
        curve.push(evaluate(&model, &vm, data, preset, 0, f64::NAN)?);
        write_csv(&curve)?;
    }
    let mut step = opt.step as usize;
    while step < steps {
        let l = train_step(
            &model,
            &mut opt,
            data,
            preset.train.batch,
            &mut data_rng,
            &mut drop_rng,
        )?;
        loss_sum += l;
        loss_n += 1;
        step += 1;
        if step.is_multiple_of(every) || step == steps {
            let row = evaluate(&model, &vm, data, preset, step, loss_sum / loss_n as f64)?;
            curve.push(row);
            loss_sum = 0.0;
            loss_n = 0;
            write_csv(&curve)?;
            save(&opt, &curve, loss_sum, loss_n, &data_rng, &drop_rng)?;
        }
        if (opts.stop)() && step < steps {
            save(&opt, &curve, loss_sum, loss_n, &data_rng, &drop_rng)?;
            return Ok(RunResult::from_curve(
                depth,
                seed,
                curve,
                false,
                preset.eval.grok_threshold,
            ));
        }
    }
    let res = RunResult::from_curve(depth, seed, curve, true, preset.eval.grok_threshold);
    crate::io::write_json(&opts.out_dir.join("summary.json"), &res)?;
    Ok(res)
}

/// Mean of a slice ignoring NaNs (NaN when none).
pub fn nan_mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

/// Output directory of one run under `root`.
pub fn run_dir(root: &Path, task: Task, preset: &str, depth: usize, seed: u64) -> PathBuf {
    root.join(format!("{task:?}").to_lowercase())
        .join(preset)
        .join(format!("depth{depth}_seed{seed}"))
}
