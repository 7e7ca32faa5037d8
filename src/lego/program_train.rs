//! Training the program-execution models of the convolution study (issue 6, item 6): an encoder
//! reads a straight-line program ([`crate::lego::program`]) and predicts every printed value,
//! softmax cross-entropy over `0..modulus` at the token of the printed variable. Plain attention
//! and depthwise convolutions after the q/k/v projections (toolkit `qkv_conv`) share everything
//! else. Padding keys are masked; runs checkpoint every epoch and on Ctrl-C and resume exactly.

use crate::lego::config::{Preset, ProgramTaskConfig, Schedule as CfgSchedule};
use crate::lego::program::{sample_programs, Program, ProgramBatch, PROGRAM_VOCAB_SIZE};
use crate::lego::train::{encoder_config, resume_checkpoint, save_run_checkpoint, Checkpointing};
use crate::nn::{num_params, AttnMask, FlopCount, ForwardOpts, Transformer, TransformerConfig};
use crate::rng::{stream, Rng};
use crate::train::{backward_step, OptimConfig, OptimKind, Optimizer, Schedule};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// One program model: a label and the q/k/v convolution width (0 = plain attention).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramRun {
    pub label: String,
    pub qkv_conv: usize,
    pub seed: u64,
}

/// One evaluation during training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramCurvePoint {
    pub epoch: usize,
    pub step: u64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Test accuracy over every print.
    pub accuracy: f64,
}

/// Everything a finished program run reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramResult {
    pub run: ProgramRun,
    /// [`program_key`] of the preset it was trained on.
    pub key: String,
    pub model: TransformerConfig,
    /// Final test accuracy over every print.
    pub accuracy: f64,
    /// Final test accuracy of the k-th print of a program.
    pub per_print: Vec<f64>,
    /// Test accuracy of always answering the most frequent printed value of the training set.
    pub majority: f64,
    pub curve: Vec<ProgramCurvePoint>,
    pub params: usize,
    /// Exact forward FLOPs of one program of the longest length the spec allows.
    pub forward_flops: u64,
    pub seconds: f64,
}

/// Longest program the spec can produce: `[CLS]`, literals (4 tokens), assignments (at most 6),
/// prints (3), `[SEP]`.
pub fn max_program_len(p: &ProgramTaskConfig) -> usize {
    2 + 4 * p.n_vars + 6 * p.n_statements + 3 * p.n_prints
}

/// The toolkit config of a program model: the LEGO encoder (pre-LN, learned positions, GELU)
/// with the program vocabulary and one output class per value.
pub fn program_transformer_config(preset: &Preset, run: &ProgramRun) -> Result<TransformerConfig> {
    let p = preset
        .program
        .as_ref()
        .context("program runs need [*.program]")?;
    let m = &preset.model;
    Ok(TransformerConfig {
        vocab_size: PROGRAM_VOCAB_SIZE,
        n_out: p.modulus as usize,
        qkv_conv: run.qkv_conv,
        ..encoder_config(m)
    })
}

/// What determines a program run's outcome besides the [`ProgramRun`] (as JSON).
pub fn program_key(preset: &Preset) -> Result<String> {
    Ok(serde_json::to_string(&(
        &preset.program,
        &preset.model,
        &preset.train,
    ))?)
}

struct ProgramTensors {
    tokens: Tensor,
    mask: AttnMask,
    /// Flat row index `b * T + position` of every print, `(B * P,)`.
    rows: Tensor,
    targets: Tensor,
    present: Tensor,
    shape: (usize, usize, usize),
}

fn tensors(batch: &ProgramBatch, dev: &Device) -> Result<ProgramTensors> {
    let (b, t) = batch.tokens.dim();
    let np = batch.outputs.ncols();
    // query i may attend to key j iff j is a real token
    let mut allowed = Vec::with_capacity(b * t * t);
    for i in 0..b {
        for _ in 0..t {
            allowed.extend(batch.token_mask.row(i).iter().map(|&m| m as u32));
        }
    }
    let rows: Vec<u32> = (0..b)
        .flat_map(|i| (0..np).map(move |k| (i, k)))
        .map(|(i, k)| (i * t) as u32 + batch.print_positions[[i, k]])
        .collect();
    Ok(ProgramTensors {
        tokens: Tensor::from_vec(batch.tokens.iter().copied().collect(), (b, t), dev)?,
        mask: AttnMask::Allowed(Tensor::from_vec(allowed, (b, t, t), dev)?),
        rows: Tensor::from_vec(rows, b * np, dev)?,
        targets: Tensor::from_vec(batch.outputs.iter().copied().collect(), (b, np), dev)?,
        present: Tensor::from_vec(batch.present.iter().copied().collect(), (b, np), dev)?,
        shape: (b, t, np),
    })
}

/// Logits at the print positions, `(B, P, modulus)`.
fn print_logits(model: &Transformer, pt: &ProgramTensors) -> Result<Tensor> {
    let out = model.forward_with(
        &pt.tokens,
        ForwardOpts {
            mask: Some(&pt.mask),
            ..Default::default()
        },
    )?;
    let (b, t, np) = pt.shape;
    let c = model.cfg.out();
    Ok(out
        .logits
        .reshape((b * t, c))?
        .index_select(&pt.rows, 0)?
        .reshape((b, np, c))?)
}

/// Accuracy over every print and per print index, in chunks of 250 programs.
fn evaluate(model: &Transformer, test: &[Program], dev: &Device) -> Result<(f64, Vec<f64>)> {
    let (mut hit, mut cnt) = (Vec::<f64>::new(), Vec::<f64>::new());
    for chunk in test.chunks(250) {
        let batch = ProgramBatch::new(chunk)?;
        let pt = tensors(&batch, dev)?;
        let pred = print_logits(model, &pt)?
            .argmax(candle_core::D::Minus1)?
            .to_vec2::<u32>()?;
        let np = batch.outputs.ncols();
        if hit.len() < np {
            hit.resize(np, 0.0);
            cnt.resize(np, 0.0);
        }
        for (i, row) in pred.iter().enumerate() {
            for k in 0..np {
                if batch.present[[i, k]] > 0.0 {
                    hit[k] += (row[k] == batch.outputs[[i, k]]) as u8 as f64;
                    cnt[k] += 1.0;
                }
            }
        }
    }
    let all = hit.iter().sum::<f64>() / cnt.iter().sum::<f64>().max(1.0);
    Ok((
        all,
        hit.iter().zip(&cnt).map(|(h, c)| h / c.max(1.0)).collect(),
    ))
}

/// Test accuracy of always predicting the most frequent printed value of `train`.
pub fn majority_baseline(train: &[Program], test: &[Program], modulus: u32) -> f64 {
    let mut freq = vec![0usize; modulus as usize];
    for p in train {
        for v in p.outputs() {
            freq[v as usize] += 1;
        }
    }
    let best = (0..freq.len())
        .max_by_key(|&v| (freq[v], usize::MAX - v))
        .unwrap_or(0) as u32;
    let (mut hit, mut n) = (0usize, 0usize);
    for p in test {
        for v in p.outputs() {
            hit += (v == best) as usize;
            n += 1;
        }
    }
    hit as f64 / n.max(1) as f64
}

/// What a checkpoint carries besides tensors.
#[derive(Serialize, Deserialize, Default)]
struct Extra {
    run: String,
    epoch: usize,
    step_in_epoch: usize,
    epoch_loss_sum: f64,
    curve: Vec<ProgramCurvePoint>,
}

/// Trains one program run on `preset` (`[*.program]`, `[*.model]`, `[*.train]`); `None` when
/// stopped early (state saved to `dir/program.safetensors`, call again to resume).
pub fn train_program_run(
    preset: &Preset,
    run: &ProgramRun,
    ckpt: Option<&Checkpointing>,
    on_epoch: &mut dyn FnMut(&ProgramCurvePoint),
) -> Result<Option<ProgramResult>> {
    let started = std::time::Instant::now();
    let pc = preset
        .program
        .as_ref()
        .context("program runs need [*.program]")?;
    let tc = &preset.train;
    let cfg = program_transformer_config(preset, run)?;
    let dev = crate::nn::device()?;
    let (model, varmap): (Transformer, VarMap) =
        Transformer::build(&cfg, run.seed, DType::F32, &dev)?;
    let spec = pc.spec();
    let train = sample_programs(&spec, pc.n_train, run.seed.wrapping_mul(2).wrapping_add(21))?;
    let test = sample_programs(&spec, pc.n_test, run.seed.wrapping_mul(2).wrapping_add(22))?;
    let steps_per_epoch = pc.n_train.div_ceil(tc.batch_size);
    let total = (tc.epochs * steps_per_epoch) as u64;
    let ocfg = OptimConfig {
        kind: OptimKind::Adam,
        lr: tc.lr,
        weight_decay: 0.0,
        schedule: match tc.schedule {
            CfgSchedule::Cosine => Schedule {
                kind: crate::train::schedule::ScheduleKind::Cosine,
                warmup_steps: 0,
                total_steps: total.max(1),
                final_ratio: 0.0,
            },
            CfgSchedule::Constant => Schedule::default(),
        },
        ..Default::default()
    };
    let mut opt = Optimizer::new(ocfg, &varmap)?;
    let run_json = serde_json::to_string(&(run, program_key(preset)?))?;
    let path = ckpt.map(|c| c.dir.join("program.safetensors"));
    if let Some(c) = ckpt {
        std::fs::create_dir_all(&c.dir)
            .with_context(|| format!("creating `{}`", c.dir.display()))?;
    }
    let mut extra = Extra {
        run: run_json.clone(),
        ..Default::default()
    };
    let mut shuffle_rng: Rng = stream(run.seed, 8);
    if let Some(p) = path.as_ref().filter(|p| p.exists()) {
        (extra, shuffle_rng) =
            resume_checkpoint(p, &varmap, &mut opt, &run_json, |e: &Extra| &e.run)?;
    }
    while extra.epoch < tc.epochs {
        let epoch_rng = shuffle_rng.clone();
        let mut perm: Vec<usize> = (0..train.len()).collect();
        perm.shuffle(&mut shuffle_rng);
        for si in extra.step_in_epoch..steps_per_epoch {
            let idx = &perm[si * tc.batch_size..((si + 1) * tc.batch_size).min(train.len())];
            let progs: Vec<Program> = idx.iter().map(|&i| train[i].clone()).collect();
            let pt = tensors(&ProgramBatch::new(&progs)?, &dev)?;
            let z = print_logits(&model, &pt)?;
            let loss = crate::nn::cross_entropy(&z, &pt.targets, Some(&pt.present))?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                bail!(
                    "training loss became {lv} at step {}: lower train.lr",
                    opt.step
                );
            }
            backward_step(&loss, &mut opt)?;
            extra.epoch_loss_sum += lv;
            extra.step_in_epoch = si + 1;
            if let (Some(c), Some(p)) = (ckpt, path.as_ref()) {
                if (c.stop)() && extra.step_in_epoch < steps_per_epoch {
                    save_run_checkpoint(p, &varmap, &opt, &epoch_rng, &extra)?;
                    return Ok(None);
                }
            }
        }
        extra.epoch += 1;
        let done = extra.epoch == tc.epochs;
        if extra.epoch.is_multiple_of(tc.eval_every) || done {
            let (acc, _) = evaluate(&model, &test, &dev)?;
            let point = ProgramCurvePoint {
                epoch: extra.epoch,
                step: opt.step,
                train_loss: extra.epoch_loss_sum / steps_per_epoch as f64,
                accuracy: acc,
            };
            on_epoch(&point);
            extra.curve.push(point);
        }
        extra.step_in_epoch = 0;
        extra.epoch_loss_sum = 0.0;
        if let (Some(c), Some(p)) = (ckpt, path.as_ref()) {
            save_run_checkpoint(p, &varmap, &opt, &shuffle_rng, &extra)?;
            if (c.stop)() && !done {
                return Ok(None);
            }
        }
    }
    let (accuracy, per_print) = evaluate(&model, &test, &dev)?;
    let t = max_program_len(pc);
    Ok(Some(ProgramResult {
        run: run.clone(),
        key: program_key(preset)?,
        forward_flops: FlopCount::new(&cfg, t).forward_per_token * t as u64,
        params: num_params(&varmap),
        model: cfg,
        accuracy,
        per_print,
        majority: majority_baseline(&train, &test, pc.modulus),
        curve: extra.curve,
        seconds: started.elapsed().as_secs_f64(),
    }))
}
