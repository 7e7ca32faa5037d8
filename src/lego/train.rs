//! Training LEGO models on the `src/nn` toolkit: BERT-like (independent layers) and ALBERT-like
//! (`share_layers`) encoders with one output logit, read at each clause's left-hand variable.
//!
//! - Loss: binary cross-entropy with logits (`n_out = 1`, the official `demo.ipynb` head),
//!   averaged over the first `train_vars` chain positions of every sentence; accuracy
//!   (`logit > 0` vs label) is measured at every chain position.
//! - Mimicking (official `pretrain_mimic.py`): head `local_head` of every layer towards the
//!   local 1,2,4,2,1 map and head `association_head` towards the association map, by
//!   `KL(smoothed attention || target)` summed over layers, on fresh unlabelled sentences.
//! - LEGO attention module: the first `local + association` heads of every layer take fixed
//!   patterns (local maps first, then association maps) through the toolkit's `fixed_heads`.
//! - Runs checkpoint (`train::save_checkpoint`) after every epoch and when
//!   [`Checkpointing::stop`] answers true (Ctrl-C), and resume bit for bit from the file.

use crate::lego::config::{Arch, Init, MimicConfig, ModelConfig, Preset, Schedule as CfgSchedule};
use crate::lego::heads::{association_target, local_target, score_heads, HeadScores, MIMIC_EPS};
use crate::lego::task::{LegoBatch, LegoSentence, VOCAB_SIZE};
use crate::lego::variants::{sample_mixture, Variant};
use crate::nn::{
    Activation, FlopCount, ForwardOpts, NormPlacement, Positions, Transformer, TransformerConfig,
};
use crate::rng::{stream, Rng};
use crate::train::{
    backward_step, load_checkpoint, save_checkpoint, OptimConfig, OptimKind, Optimizer, Schedule,
};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use ndarray::{s, Array4};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
            train_mix: vec![(Variant::Shuffled, 1.0)],
            test_variants: Vec::new(),
            seed,
        }
    }

    fn fixed(&self) -> usize {
        self.fixed_local + self.fixed_association
    }
}

/// Where and how often a run saves its state, and when it stops early.
pub struct Checkpointing<'a> {
    /// Directory of the run's checkpoint files (`mimic.safetensors`, `train.safetensors`).
    pub dir: PathBuf,
    /// Polled after every step: true saves the state and stops (Ctrl-C).
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

/// One evaluation during training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub epoch: usize,
    pub step: u64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Mean test accuracy over the supervised chain positions.
    pub acc_supervised: f64,
    /// Mean test accuracy over the other chain positions (NaN when all are supervised; JSON
    /// writes NaN as `null`, read back as NaN).
    #[serde(deserialize_with = "null_as_nan")]
    pub acc_extrapolated: f64,
    /// Test accuracy per chain position.
    pub per_position: Vec<f64>,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Mean head scores of a model at one stage, `[layer][head]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StageScores {
    /// `init`, `mimicked` or `trained`.
    pub stage: String,
    pub scores: Vec<Vec<HeadScores>>,
}

/// Everything a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub run: LegoRun,
    /// [`run_key`] of the preset it was trained on (results are reused only for the same key).
    pub key: String,
    pub model: TransformerConfig,
    /// Final test accuracy per chain position on the run's own test split.
    pub per_position: Vec<f64>,
    /// Final accuracy per chain position on each of `run.test_variants`.
    pub variant_accuracy: Vec<(Variant, Vec<f64>)>,
    pub curve: Vec<CurvePoint>,
    /// Mimicking loss after every mimicking step (empty for random init).
    pub mimic_losses: Vec<f64>,
    /// Training loss after every step.
    pub losses: Vec<f64>,
    pub head_scores: Vec<StageScores>,
    /// Exact forward FLOPs per sentence of the model (toolkit's `FlopCount`) at the task's length.
    pub forward_flops: u64,
    pub seconds: f64,
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
struct BatchTensors {
    tokens: Tensor,
    labels: Tensor,
    supervised: Tensor,
    query: Tensor,
    patterns: Option<Tensor>,
}

impl LegoModel {
    pub fn build(m: &ModelConfig, run: &LegoRun) -> Result<Self> {
        let cfg = transformer_config(m, run);
        let dev = crate::nn::device()?;
        let (model, varmap) = Transformer::build(&cfg, run.seed, DType::F32, &dev)?;
        Ok(Self {
            cfg,
            model,
            varmap,
            local: run.fixed_local,
            association: run.fixed_association,
            dev,
        })
    }

    fn tensors(&self, batch: &LegoBatch) -> Result<BatchTensors> {
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
    fn chain_logits(&self, bt: &BatchTensors, capture: bool) -> Result<(Tensor, Vec<Tensor>)> {
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

fn optim(lr: f64, schedule: CfgSchedule, total_steps: u64) -> OptimConfig {
    OptimConfig {
        kind: OptimKind::Adam,
        lr,
        weight_decay: 0.0,
        schedule: match schedule {
            CfgSchedule::Cosine => Schedule {
                kind: crate::train::schedule::ScheduleKind::Cosine,
                warmup_steps: 0,
                total_steps: total_steps.max(1),
                final_ratio: 0.0,
            },
            CfgSchedule::Constant => Schedule::default(),
        },
        ..Default::default()
    }
}

/// Name of the shuffle RNG in a LEGO or program checkpoint.
const SHUFFLE_RNG: &str = "shuffle";

/// Saves a run's parameters, optimiser, shuffle RNG and metadata; read back by
/// [`resume_checkpoint`].
pub(crate) fn save_run_checkpoint<E: Serialize>(
    path: &std::path::Path,
    varmap: &VarMap,
    opt: &Optimizer,
    shuffle: &Rng,
    extra: &E,
) -> Result<()> {
    save_checkpoint(
        path,
        varmap,
        opt,
        &[(SHUFFLE_RNG, shuffle)],
        &serde_json::to_string(extra)?,
    )
}

/// Restores the optimiser and parameters from the checkpoint at `path` and returns its metadata
/// and shuffle RNG, refusing a checkpoint written by another run (`run_of(meta) != run_json`).
pub(crate) fn resume_checkpoint<E: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    varmap: &VarMap,
    opt: &mut Optimizer,
    run_json: &str,
    run_of: fn(&E) -> &str,
) -> Result<(E, Rng)> {
    let r = load_checkpoint(path, varmap, opt)?;
    let extra: E = serde_json::from_str(&r.extra)
        .with_context(|| format!("metadata of checkpoint `{}`", path.display()))?;
    if run_of(&extra) != run_json {
        bail!(
            "checkpoint `{}` belongs to another run: delete it to start over",
            path.display()
        );
    }
    let rng = r
        .rngs
        .get(SHUFFLE_RNG)
        .cloned()
        .context("checkpoint lacks the shuffle rng")?;
    Ok((extra, rng))
}

/// What a checkpoint carries besides tensors.
#[derive(Serialize, Deserialize, Default)]
struct Extra {
    run: String,
    epoch: usize,
    step_in_epoch: usize,
    epoch_loss_sum: f64,
    curve: Vec<CurvePoint>,
    losses: Vec<f64>,
    mimic_losses: Vec<f64>,
    head_scores: Vec<StageScores>,
}

/// Mimicking pretraining of `lm` in place, losses appended to `extra.mimic_losses`; false when
/// stopped (state saved to `dir/mimic.safetensors`). Sentences of step `s` come from the seed
/// alone, so a resumed run sees the same data.
fn mimic(
    lm: &LegoModel,
    mc: &MimicConfig,
    n_var: usize,
    run: &LegoRun,
    extra: &mut Extra,
    ckpt: Option<&Checkpointing>,
) -> Result<bool> {
    let epochs = if run.arch == Arch::Albert {
        mc.epochs_albert
    } else {
        mc.epochs_bert
    };
    let total = (epochs * mc.steps_per_epoch) as u64;
    // The toolkit's fused attention returns detached probabilities; a (negligible) dropout
    // with a generator selects the composed path, whose probabilities carry gradients. The
    // second model shares the VarMap, so training it trains `lm`.
    let mut cfg = lm.cfg.clone();
    cfg.dropout = 1e-12;
    let twin = Transformer::new(
        &cfg,
        VarBuilder::from_varmap(&lm.varmap, DType::F32, &lm.dev),
    )?;
    let mut opt = Optimizer::new(optim(mc.lr, mc.schedule, total), &lm.varmap)?;
    let path = ckpt.map(|c| c.dir.join("mimic.safetensors"));
    if let Some(p) = path.as_ref().filter(|p| p.exists()) {
        let r = load_checkpoint(p, &lm.varmap, &mut opt)?;
        *extra = serde_json::from_str(&r.extra).context("mimic checkpoint metadata")?;
    }
    let t = crate::lego::task::seq_len(n_var);
    let local = Tensor::from_vec(local_target(t).into_raw_vec_and_offset().0, (t, t), &lm.dev)?;
    while (opt.step) < total {
        let step = opt.step;
        let sents =
            Variant::Shuffled.sample(n_var, mc.batch_size, run.seed ^ (0x6d696d << 20) ^ step)?;
        let batch = LegoBatch::new(&sents, 0)?;
        let (b, _) = batch.tokens.dim();
        let tokens = Tensor::from_vec(
            batch.tokens.iter().copied().collect::<Vec<_>>(),
            (b, t),
            &lm.dev,
        )?;
        let (_, assoc) = crate::lego::heads::mimic_targets(batch.tokens.view());
        let assoc = Tensor::from_vec(assoc.into_raw_vec_and_offset().0, (b, t, t), &lm.dev)?;
        let mut drng: Rng = stream(run.seed, 1000 + step);
        let out = twin.forward_with(
            &tokens,
            ForwardOpts {
                capture_attention: true,
                dropout_rng: Some(&mut drng),
                ..Default::default()
            },
        )?;
        let mut loss: Option<Tensor> = None;
        for a in &out.attention {
            let lh = a.narrow(1, mc.local_head, 1)?.squeeze(1)?;
            let ah = a.narrow(1, mc.association_head, 1)?.squeeze(1)?;
            let l = (mimic_loss_tensor(&lh, &local)? + mimic_loss_tensor(&ah, &assoc)?)?;
            loss = Some(match loss {
                None => l,
                Some(x) => (x + l)?,
            });
        }
        let loss = loss.context("model without layers")?;
        extra.mimic_losses.push(loss.to_scalar::<f32>()? as f64);
        backward_step(&loss, &mut opt)?;
        if let (Some(c), Some(p)) = (ckpt, path.as_ref()) {
            if (c.stop)() {
                save_checkpoint(p, &lm.varmap, &opt, &[], &serde_json::to_string(extra)?)?;
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Trains one run on `preset`; `None` when stopped early (state saved, call again to resume).
/// `head_sentences` test sentences are used for the head scores at each stage.
pub fn train_run(
    preset: &Preset,
    run: &LegoRun,
    head_sentences: usize,
    ckpt: Option<&Checkpointing>,
    on_epoch: &mut dyn FnMut(&CurvePoint),
) -> Result<Option<RunResult>> {
    let started = std::time::Instant::now();
    let task = preset.task.as_ref().context("LEGO runs need [*.task]")?;
    let tc = &preset.train;
    let lm = LegoModel::build(&preset.model, run)?;
    if let Some(c) = ckpt {
        std::fs::create_dir_all(&c.dir)
            .with_context(|| format!("creating `{}`", c.dir.display()))?;
    }
    let n_var = task.n_var;
    let train = sample_mixture(
        &run.train_mix,
        n_var,
        task.n_train,
        run.seed.wrapping_mul(2).wrapping_add(11),
    )?;
    let own_test = sample_mixture(
        &run.train_mix,
        n_var,
        task.n_test,
        run.seed.wrapping_mul(2).wrapping_add(12),
    )?;
    let head_test =
        Variant::Shuffled.sample(n_var, head_sentences.max(1), run.seed ^ 0x4845414453)?;
    let steps_per_epoch = task.n_train.div_ceil(tc.batch_size);
    let total = (tc.epochs * steps_per_epoch) as u64;
    let mut opt = Optimizer::new(optim(tc.lr, tc.schedule, total), &lm.varmap)?;
    let run_json = serde_json::to_string(&(run, run_key(preset, run)?))?;
    let train_path = ckpt.map(|c| c.dir.join("train.safetensors"));
    let mut extra = Extra {
        run: run_json.clone(),
        ..Default::default()
    };
    let mut shuffle_rng: Rng = stream(run.seed, 7);
    let resumed = match train_path.as_ref().filter(|p| p.exists()) {
        Some(p) => {
            (extra, shuffle_rng) =
                resume_checkpoint(p, &lm.varmap, &mut opt, &run_json, |e: &Extra| &e.run)?;
            true
        }
        None => false,
    };
    if !resumed {
        if head_sentences > 0 && extra.head_scores.is_empty() {
            extra.head_scores.push(StageScores {
                stage: "init".into(),
                scores: lm.head_scores(&head_test)?,
            });
        }
        if run.init == Init::Mimic {
            let mc = preset
                .mimic
                .as_ref()
                .context("a mimic run needs [*.mimic]")?;
            let mut mextra = Extra {
                run: run_json.clone(),
                head_scores: extra.head_scores.clone(),
                ..Default::default()
            };
            if !mimic(&lm, mc, n_var, run, &mut mextra, ckpt)? {
                return Ok(None);
            }
            extra.mimic_losses = mextra.mimic_losses;
            extra.head_scores = mextra.head_scores;
            if head_sentences > 0 {
                extra.head_scores.push(StageScores {
                    stage: "mimicked".into(),
                    scores: lm.head_scores(&head_test)?,
                });
            }
        }
    }
    let n_sup = task.train_vars;
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    while extra.epoch < tc.epochs {
        // the permutation comes from the generator state saved at the start of the epoch
        let epoch_rng = shuffle_rng.clone();
        let mut perm: Vec<usize> = (0..train.len()).collect();
        perm.shuffle(&mut shuffle_rng);
        for si in extra.step_in_epoch..steps_per_epoch {
            let idx = &perm[si * tc.batch_size..((si + 1) * tc.batch_size).min(train.len())];
            let sents: Vec<LegoSentence> = idx.iter().map(|&i| train[i].clone()).collect();
            let batch = LegoBatch::new(&sents, n_sup)?;
            let bt = lm.tensors(&batch)?;
            let (z, _) = lm.chain_logits(&bt, false)?;
            let loss = bce_with_logits(&z, &bt.labels, &bt.supervised)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                bail!(
                    "training loss became {lv} at step {}: lower train.lr",
                    opt.step
                );
            }
            backward_step(&loss, &mut opt)?;
            extra.losses.push(lv);
            extra.epoch_loss_sum += lv;
            extra.step_in_epoch = si + 1;
            if let (Some(c), Some(p)) = (ckpt, train_path.as_ref()) {
                if (c.stop)() && extra.step_in_epoch < steps_per_epoch {
                    save_run_checkpoint(p, &lm.varmap, &opt, &epoch_rng, &extra)?;
                    return Ok(None);
                }
            }
        }
        extra.epoch += 1;
        let done = extra.epoch == tc.epochs;
        if extra.epoch.is_multiple_of(tc.eval_every) || done {
            let per = lm.accuracy(&own_test)?;
            let point = CurvePoint {
                epoch: extra.epoch,
                step: opt.step,
                train_loss: extra.epoch_loss_sum / steps_per_epoch as f64,
                acc_supervised: mean(&per[..n_sup.min(per.len())]),
                acc_extrapolated: mean(&per[n_sup.min(per.len())..]),
                per_position: per,
            };
            on_epoch(&point);
            extra.curve.push(point);
        }
        extra.step_in_epoch = 0;
        extra.epoch_loss_sum = 0.0;
        if let (Some(c), Some(p)) = (ckpt, train_path.as_ref()) {
            save_run_checkpoint(p, &lm.varmap, &opt, &shuffle_rng, &extra)?;
            if (c.stop)() && !done {
                return Ok(None);
            }
        }
    }
    if head_sentences > 0 && !extra.head_scores.iter().any(|s| s.stage == "trained") {
        extra.head_scores.push(StageScores {
            stage: "trained".into(),
            scores: lm.head_scores(&head_test)?,
        });
    }
    let mut variant_accuracy = Vec::new();
    for (i, v) in run.test_variants.iter().enumerate() {
        let s = v.sample(n_var, task.n_test, run.seed ^ (0x7465_7374 + i as u64))?;
        variant_accuracy.push((*v, lm.accuracy(&s)?));
    }
    let per_position = extra
        .curve
        .last()
        .map(|p| p.per_position.clone())
        .unwrap_or_default();
    Ok(Some(RunResult {
        run: run.clone(),
        key: run_key(preset, run)?,
        forward_flops: FlopCount::new(&lm.cfg, crate::lego::task::seq_len(n_var)).forward_per_token
            * crate::lego::task::seq_len(n_var) as u64,
        model: lm.cfg.clone(),
        per_position,
        variant_accuracy,
        curve: extra.curve,
        mimic_losses: extra.mimic_losses,
        losses: extra.losses,
        head_scores: extra.head_scores,
        seconds: started.elapsed().as_secs_f64(),
    }))
}

/// What determines a run's outcome besides the [`LegoRun`]: task, model, training, and the
/// mimicking settings when it starts from mimicking (as JSON).
pub fn run_key(preset: &Preset, run: &LegoRun) -> Result<String> {
    let mimic = if run.init == Init::Mimic {
        preset.mimic.clone()
    } else {
        None
    };
    Ok(serde_json::to_string(&(
        &preset.task,
        &preset.model,
        &preset.train,
        mimic,
    ))?)
}

/// Mimicking pretraining of `lm` in place (no checkpointing); returns the loss of every step.
/// `run` supplies the architecture (epoch count) and the seed of the sentences.
pub fn mimic_pretrain(
    lm: &LegoModel,
    mc: &MimicConfig,
    n_var: usize,
    run: &LegoRun,
) -> Result<Vec<f64>> {
    let mut extra = Extra::default();
    mimic(lm, mc, n_var, run, &mut extra, None)?;
    Ok(extra.mimic_losses)
}
