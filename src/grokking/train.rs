//! Training of the structural-grokking LMs on the run engine ([`crate::run`]): a decoder-only
//! transformer over the whole line (`BOS` + tokens, loss on every token), the optimiser and
//! schedule of the config (AdamW with linear warmup and gradient clipping in every preset), and
//! at every `eval.every` steps the measures of [`super::measure`]. The engine owns the run
//! directory, its lock and identity, resume, the metrics log, divergence and Ctrl-C.

use super::config::{Settings, Task};
use super::measure::{self, EVAL_COLUMNS};
use super::model::{model_config, pad_batch};
use super::streams;
use super::task::RunData;
use crate::config::Preset;
use crate::nn::{self, ForwardOpts, Transformer};
use crate::rng::{stream, Rng};
use crate::run::{self, drive, DriveOpts, Identity, Outcome, RunDir, State, StepOutcome, Trainer};
use crate::train::{self as tr, Optimizer};
use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use rand::Rng as _;
use std::path::{Path, PathBuf};

/// A training loss this many times above its reference (the larger of the first step's loss and
/// `ln(vocab)`, a uniform predictor's cross-entropy) is divergence: a run that learns never
/// climbs there, while a learning rate far too high reaches it within a few steps with finite
/// but meaningless numbers (`lr = 1e6`: ~1e12), which the engine's non-finite check misses.
pub const DIVERGENCE_FACTOR: f64 = 100.0;

/// One (depth, seed) run of an experiment preset: everything that identifies it.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec<'a> {
    pub task: Task,
    pub preset: Preset,
    pub settings: &'a Settings,
    pub depth: usize,
    pub seed: u64,
}

impl RunSpec<'_> {
    /// The run's identity: task, model, depth and every setting that changes its numbers (data,
    /// optimiser and schedule, batch, length, evaluation), under the preset and seed. A checkpoint
    /// written under another one is refused, never resumed.
    pub fn identity(&self, data: &RunData) -> Result<Identity> {
        let s = self.settings;
        let cfg = model_config(s, self.depth, data);
        Identity::of(
            &(
                self.task, &cfg, self.depth, &s.data, &s.optim, &s.train, &s.eval,
            ),
            self.preset.name(),
            self.seed,
        )
    }
}

/// The engine's view of one run.
pub struct GrokTrainer<'a> {
    data: &'a RunData,
    settings: &'a Settings,
    device: Device,
    pub model: Transformer,
    pub vm: VarMap,
    opt: Optimizer,
    batches: Rng,
    dropout: Rng,
    /// Loss of the first update's batch: the divergence reference.
    first_loss: Option<f64>,
}

impl<'a> GrokTrainer<'a> {
    /// A fresh model for `spec` (initialised from its seed) on `device`.
    pub fn new(spec: &RunSpec<'a>, data: &'a RunData, device: &Device) -> Result<Self> {
        let cfg = model_config(spec.settings, spec.depth, data);
        let (model, vm) = Transformer::build(&cfg, spec.seed, DType::F32, device)?;
        let opt = Optimizer::new(spec.settings.optim.clone(), &vm)?;
        Ok(Self {
            data,
            settings: spec.settings,
            device: device.clone(),
            model,
            vm,
            opt,
            batches: stream(spec.seed, streams::BATCHES),
            dropout: stream(spec.seed, streams::DROPOUT),
            first_loss: None,
        })
    }

    fn divergence_reference(&self) -> Option<f64> {
        let uniform = (self.data.vocab_size as f64).ln();
        self.first_loss.map(|l| l.max(uniform))
    }
}

impl Trainer for GrokTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.settings.train.steps as u64
    }

    fn eval_columns(&self) -> Vec<String> {
        EVAL_COLUMNS.iter().map(|c| c.to_string()).collect()
    }

    fn eval_due(&self, step: u64) -> bool {
        step.is_multiple_of(self.settings.eval.every as u64)
    }

    fn lr(&self) -> f64 {
        self.opt.current_lr()
    }

    /// One update on a batch of `train.batch` training lines drawn with replacement.
    fn step(&mut self, _step: u64) -> Result<StepOutcome> {
        let data = self.data;
        let idx: Vec<usize> = (0..self.settings.train.batch)
            .map(|_| self.batches.gen_range(0..data.train.len()))
            .collect();
        let refs: Vec<&[u32]> = idx.iter().map(|&i| data.train[i].as_slice()).collect();
        let (x, t) = pad_batch(&refs, data.pad, &self.device)?;
        let inp = x.narrow(1, 0, t - 1)?;
        let tgt = x.narrow(1, 1, t - 1)?;
        let w = tgt.ne(data.pad)?.to_dtype(DType::F32)?;
        let out = self.model.forward_with(
            &inp,
            ForwardOpts {
                dropout_rng: Some(&mut self.dropout),
                ..Default::default()
            },
        )?;
        let loss = nn::cross_entropy(&out.logits, &tgt, Some(&w))?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let stats = tr::backward_step(&loss, &mut self.opt)?;
        if self.first_loss.is_none() && l.is_finite() {
            self.first_loss = Some(l);
        }
        Ok(StepOutcome {
            loss: l,
            grad_norm: Some(stats.grad_norm),
        })
    }

    fn evaluate(&mut self, _step: u64) -> Result<Vec<f64>> {
        measure::evaluate(
            &self.model,
            &self.vm,
            self.data,
            self.settings.eval.train_examples,
            self.settings.eval.tree_sentences,
            self.settings.eval.min_dist.unwrap_or(0),
            &self.device,
        )
    }

    fn save(&self, st: &mut State) -> Result<()> {
        st.put_model(&self.vm, &self.opt)?;
        st.put_rng("batches", &self.batches);
        st.put_rng("dropout", &self.dropout);
        st.put_json("first_loss", &self.first_loss)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        st.load_model(&self.vm, &mut self.opt)?;
        self.batches = st.rng("batches")?;
        self.dropout = st.rng("dropout")?;
        self.first_loss = st.json("first_loss")?;
        Ok(())
    }

    fn diverged(&self, _step: u64, o: &StepOutcome) -> Option<String> {
        let r = self.divergence_reference()?;
        (o.loss > DIVERGENCE_FACTOR * r).then(|| {
            format!(
                "the training loss is {:e}, over {DIVERGENCE_FACTOR} times its reference {r:.3} (the first step's loss, at least ln(vocab))",
                o.loss
            )
        })
    }
}

/// Where a run keeps its files and when it stops.
pub struct RunOpts<'a> {
    /// The run directory (locked while the run trains; identity in `run.json`).
    pub dir: PathBuf,
    /// Polled before every update: true saves a checkpoint and stops with
    /// [`crate::run::Interrupted`].
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// Progress-bar label; `None` hides the bar.
    pub progress: Option<String>,
    pub device: &'a Device,
}

/// Trains `spec` to `train.steps` in `opts.dir` on the engine (resuming from its checkpoint,
/// writing `metrics.csv` at every evaluation) and returns every evaluation.
pub fn train(spec: &RunSpec, data: &RunData, opts: &RunOpts) -> Result<Outcome> {
    let dir = RunDir::open(&opts.dir, spec.identity(data)?)?;
    let mut trainer = GrokTrainer::new(spec, data, opts.device)?;
    let mut d = DriveOpts::new(Some(&dir));
    d.stop = opts.stop;
    d.progress = opts.progress.clone();
    drive(&mut trainer, &d)
}

/// The model of the run of `spec` in `dir`, restored from its checkpoint after checking the
/// checkpoint belongs to `spec`, and the step it was written at.
pub fn load_run_model(
    spec: &RunSpec,
    data: &RunData,
    dir: &Path,
    device: &Device,
) -> Result<(Transformer, u64)> {
    let mut trainer = GrokTrainer::new(spec, data, device)?;
    let step = run::load_checkpoint(dir, "train", &spec.identity(data)?, &mut trainer)?;
    Ok((trainer.model, step))
}
