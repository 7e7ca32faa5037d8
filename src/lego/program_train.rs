//! Training the program-execution models of the convolution study on the run engine: an
//! encoder reads a straight-line program ([`crate::lego::program`]) and predicts every printed
//! value, softmax cross-entropy over `0..modulus` at the token of the printed variable. Plain
//! attention and depthwise convolutions after the q/k/v projections (toolkit `qkv_conv`) share
//! everything else. Padding keys are masked. [`ProgramTrainer`] runs epochs over a fixed
//! training set like the LEGO trainer, and resumes the same way, mid-epoch included.

use crate::lego::config::{optim_for, Preset, ProgramTaskConfig};
use crate::lego::epochs::{loss_diverged, update, Epochs};
use crate::lego::model::{encoder_config, fixed_patterns};
use crate::lego::program::{sample_programs, Program, ProgramBatch, PROGRAM_VOCAB_SIZE};
use crate::lego::seeds;
use crate::lego::train::RunOpts;
use crate::nn::config::QkvConvMaps;
use crate::nn::{num_params, AttnMask, FlopCount, ForwardOpts, Transformer, TransformerConfig};
use crate::run::{drive, State, StepOutcome, Trainer};
use crate::train::Optimizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// One program model: a label and the q/k/v convolution width (0 = plain attention).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgramRun {
    pub label: String,
    pub qkv_conv: usize,
    /// Which of q, k, v the convolution covers (left out when all three, so the run identities
    /// of the all-three studies stay as they were).
    #[serde(default, skip_serializing_if = "QkvConvMaps::is_all")]
    pub qkv_conv_maps: QkvConvMaps,
    /// Heads per layer with the fixed local (window) and association (same-token) patterns of
    /// the LEGO attention module (left out when 0, so earlier run identities stay as they were).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fixed_local: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fixed_association: usize,
    pub seed: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ProgramRun {
    /// Fixed heads per layer, local and association together.
    fn fixed(&self) -> usize {
        self.fixed_local + self.fixed_association
    }
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
        qkv_conv_maps: run.qkv_conv_maps,
        fixed_heads: run.fixed(),
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
    /// Fixed-head patterns `(B, fixed, T, T)`, when the model has fixed heads.
    patterns: Option<Tensor>,
    shape: (usize, usize, usize),
}

fn tensors(batch: &ProgramBatch, run: &ProgramRun, dev: &Device) -> Result<ProgramTensors> {
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
        patterns: (run.fixed() > 0)
            .then(|| fixed_patterns(&batch.tokens, run.fixed_local, run.fixed_association, dev))
            .transpose()?,
        shape: (b, t, np),
    })
}

/// Logits at the print positions, `(B, P, modulus)`.
fn print_logits(model: &Transformer, pt: &ProgramTensors) -> Result<Tensor> {
    let out = model.forward_with(
        &pt.tokens,
        ForwardOpts {
            mask: Some(&pt.mask),
            patterns: pt.patterns.as_ref(),
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
fn evaluate(
    model: &Transformer,
    run: &ProgramRun,
    test: &[Program],
    dev: &Device,
) -> Result<(f64, Vec<f64>)> {
    let (mut hit, mut cnt) = (Vec::<f64>::new(), Vec::<f64>::new());
    for chunk in test.chunks(250) {
        let batch = ProgramBatch::new(chunk)?;
        let pt = tensors(&batch, run, dev)?;
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

/// Program execution on a fixed training set: epochs reshuffled by the run's stream (as the
/// LEGO trainer's), test accuracy over every print every `eval_every` epochs.
pub struct ProgramTrainer {
    run: ProgramRun,
    model: Transformer,
    varmap: VarMap,
    dev: Device,
    opt: Optimizer,
    train: Vec<Program>,
    test: Vec<Program>,
    epochs: Epochs,
    first_loss: Option<f64>,
}

impl ProgramTrainer {
    /// The model of `run` at its initialisation and its trainer on `preset`, on `dev`.
    pub fn new(preset: &Preset, run: &ProgramRun, dev: &Device) -> Result<Self> {
        let pc = preset
            .program
            .as_ref()
            .context("program runs need [*.program]")?;
        let tc = &preset.train;
        let cfg = program_transformer_config(preset, run)?;
        let (model, varmap) =
            Transformer::build(&cfg, seeds::model_init(run.seed), DType::F32, dev)?;
        let spec = pc.spec();
        let train = sample_programs(&spec, pc.n_train, seeds::program_train(run.seed))?;
        let test = sample_programs(&spec, pc.n_test, seeds::program_test(run.seed))?;
        let shuffle = seeds::program_shuffle(run.seed);
        let epochs = Epochs::new(pc.n_train, tc.batch_size, tc.epochs, tc.eval_every, shuffle);
        let opt = Optimizer::new(optim_for(&tc.optim, epochs.total), &varmap)
            .context("invalid value in `train.optim`")?;
        Ok(Self {
            run: run.clone(),
            model,
            varmap,
            dev: dev.clone(),
            opt,
            train,
            test,
            epochs,
            first_loss: None,
        })
    }
}

impl Trainer for ProgramTrainer {
    fn total_steps(&self) -> u64 {
        self.epochs.total
    }

    fn eval_columns(&self) -> Vec<String> {
        vec!["epoch".into(), "epoch_loss".into(), "accuracy".into()]
    }

    fn eval_due(&self, step: u64) -> bool {
        self.epochs.eval_due(step)
    }

    fn checkpoint_due(&self, step: u64) -> bool {
        self.epochs.checkpoint_due(step)
    }

    fn lr(&self) -> f64 {
        self.opt.current_lr()
    }

    fn step(&mut self, step: u64) -> Result<StepOutcome> {
        let idx = self.epochs.batch(step);
        let progs: Vec<Program> = idx.iter().map(|&i| self.train[i].clone()).collect();
        let pt = tensors(&ProgramBatch::new(&progs)?, &self.run, &self.dev)?;
        let z = print_logits(&self.model, &pt)?;
        let loss = crate::nn::cross_entropy(&z, &pt.targets, Some(&pt.present))?;
        let out = update(&loss, &mut self.opt)?;
        if out.loss.is_finite() {
            self.first_loss.get_or_insert(out.loss);
            self.epochs.record(step, out.loss);
        }
        Ok(out)
    }

    fn evaluate(&mut self, step: u64) -> Result<Vec<f64>> {
        let (acc, _) = evaluate(&self.model, &self.run, &self.test, &self.dev)?;
        let [epoch, loss] = self.epochs.summary(step);
        Ok(vec![epoch, loss, acc])
    }

    fn save(&self, st: &mut State) -> Result<()> {
        st.put_model(&self.varmap, &self.opt)?;
        if let Some(f) = self.first_loss {
            st.put_json("first_loss", &f)?;
        }
        self.epochs.save(st)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        st.load_model(&self.varmap, &mut self.opt)?;
        self.first_loss = if st.has_json("first_loss") {
            Some(st.json("first_loss")?)
        } else {
            None
        };
        self.epochs.load(st, self.opt.step)
    }

    fn diverged(&self, _step: u64, outcome: &StepOutcome) -> Option<String> {
        loss_diverged(outcome, self.first_loss)
    }
}

/// Trains one program run on `preset` (`[*.program]`, `[*.model]`, `[*.train]`) as `opts`
/// says, resuming from its directory's checkpoint; stops with [`crate::run::Interrupted`]
/// when `opts.stop` answers true (state saved, call again to resume).
pub fn train_program_run(
    preset: &Preset,
    run: &ProgramRun,
    opts: &RunOpts,
) -> Result<ProgramResult> {
    let pc = preset
        .program
        .as_ref()
        .context("program runs need [*.program]")?;
    let mut tr = ProgramTrainer::new(preset, run, opts.dev)?;
    let out = drive(&mut tr, &opts.drive("train"))?;
    let b = crate::run::BASE_COLUMNS.len();
    let curve = out
        .rows
        .iter()
        .map(|r| ProgramCurvePoint {
            epoch: r[b] as usize,
            step: r[0] as u64,
            train_loss: r[b + 1],
            accuracy: r[b + 2],
        })
        .collect();
    let (accuracy, per_print) = evaluate(&tr.model, run, &tr.test, &tr.dev)?;
    let t = max_program_len(pc);
    let cfg = tr.model.cfg.clone();
    Ok(ProgramResult {
        run: run.clone(),
        key: program_key(preset)?,
        forward_flops: FlopCount::new(&cfg, t).forward_per_token * t as u64,
        params: num_params(&tr.varmap),
        model: cfg,
        accuracy,
        per_print,
        majority: majority_baseline(&tr.train, &tr.test, pc.modulus),
        curve,
        seconds: out.wall_seconds,
    })
}
