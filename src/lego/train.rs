//! Training LEGO models on the run engine ([`crate::run`]): the LEGO objective and mimicking
//! pretraining as two [`Trainer`]s, and [`train_run`], which drives one run through them.
//!
//! - [`LegoTrainer`]: epochs over a fixed training set, reshuffled every epoch by the run's
//!   shuffle stream; BCE at the supervised chain positions; test accuracy per chain position
//!   every `eval_every` epochs. Its state holds the shuffle generator as it was before the
//!   current epoch's permutation, so a stop in the middle of an epoch resumes bit for bit.
//! - [`MimicTrainer`] (official `pretrain_mimic.py`): head `local_head` of every layer towards
//!   the local 1,2,4,2,1 map and head `association_head` towards the association map, by
//!   `KL(smoothed attention || target)` summed over layers, on fresh sentences every step.
//! - A run with `init = mimic` drives the mimicking trainer as phase `mimic`, then the LEGO
//!   trainer as phase `train`, in the same run directory; head scores are taken at
//!   initialisation, after mimicking and after training. A run with `init = text` drives the
//!   masked-LM trainer of [`crate::lego::text_pretrain`] as phase `pretrain` first and copies
//!   the encoder in (head scores also after that).

use crate::lego::config::{optim_for, Arch, Init, MimicConfig, Preset};
use crate::lego::epochs::{loss_diverged, update, Epochs};
use crate::lego::measure::{local_target, mimic_targets, HeadScores};
use crate::lego::model::{bce_with_logits, mimic_loss_tensor, LegoModel};
use crate::lego::seeds;
use crate::lego::task::{seq_len, LegoBatch, LegoSentence};
use crate::lego::text_pretrain::{transfer, Corpus, TextTrainer};
use crate::lego::variants::{sample_mixture, Variant};
use crate::nn::{FlopCount, ForwardOpts, Transformer, TransformerConfig};
use crate::run::{drive, DriveOpts, RunDir, State, StepOutcome, Trainer};
use crate::train::Optimizer;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub use crate::lego::model::LegoRun;

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
    /// Masked-LM loss after every text-pretraining step (empty unless `init = text`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pretrain_losses: Vec<f64>,
    /// What text pretraining reached (`init = text` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain: Option<PretrainSummary>,
    pub head_scores: Vec<StageScores>,
    /// Exact forward FLOPs per sentence of the model (toolkit's `FlopCount`) at the task's length.
    pub forward_flops: u64,
    pub seconds: f64,
}

/// The end of a run's masked-LM pretraining on text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainSummary {
    /// Masked-word accuracy on the held-out windows.
    pub held_out_accuracy: f64,
    /// The same over the masked words that are in the vocabulary (not `[UNK]`).
    pub held_out_accuracy_known: f64,
    /// Tokens of the corpus, words in the vocabulary, and the fraction of the training tokens
    /// outside it (`[UNK]`).
    pub corpus_tokens: usize,
    pub vocab_size: usize,
    pub unk_rate: f64,
    /// Association score of every head (layer-major) on held-out text
    /// ([`TextTrainer::text_association`]).
    pub text_association: Vec<Vec<f64>>,
    /// The same score for uniform attention on the same windows.
    pub text_association_uniform: f64,
}

/// Head-score sentences of every run of the experiment files: one count for all studies, since
/// they share runs (the plain `bert-random` run serves four of them).
pub const HEAD_SCORE_SENTENCES: usize = 100;

/// How [`train_run`] runs: where its state goes, what stops it, where tensors live.
pub struct RunOpts<'a> {
    /// The run directory (locked, identity checked); `None` keeps nothing on disk.
    pub dir: Option<&'a RunDir>,
    /// Polled before every update: true saves the state and stops with
    /// [`crate::run::Interrupted`].
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// Progress-bar label; `None` hides the bar.
    pub progress: Option<String>,
    pub dev: &'a Device,
}

impl RunOpts<'_> {
    pub(crate) fn drive(&self, phase: &'static str) -> DriveOpts<'_> {
        DriveOpts {
            dir: self.dir,
            phase,
            progress: self.progress.as_ref().map(|p| {
                if phase == "train" {
                    p.clone()
                } else {
                    format!("{p} {phase}")
                }
            }),
            stop: self.stop,
        }
    }
}

/// Mean of `v`; NaN when empty.
fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The LEGO objective on a fixed training set (see the module doc).
pub struct LegoTrainer<'a> {
    lm: &'a LegoModel,
    opt: Optimizer,
    train: Vec<LegoSentence>,
    test: Vec<LegoSentence>,
    n_var: usize,
    n_sup: usize,
    epochs: Epochs,
    /// Loss of every update.
    pub losses: Vec<f64>,
}

impl<'a> LegoTrainer<'a> {
    /// The trainer of `run` on `preset`'s task and training settings, for model `lm`.
    pub fn new(preset: &Preset, run: &LegoRun, lm: &'a LegoModel) -> Result<Self> {
        let task = preset.task.as_ref().context("LEGO runs need [*.task]")?;
        let tc = &preset.train;
        let mix = &run.train_mix;
        let train = sample_mixture(mix, task.n_var, task.n_train, seeds::lego_train(run.seed))?;
        let test = sample_mixture(mix, task.n_var, task.n_test, seeds::lego_test(run.seed))?;
        let shuffle = seeds::lego_shuffle(run.seed);
        let epochs = Epochs::new(
            task.n_train,
            tc.batch_size,
            tc.epochs,
            tc.eval_every,
            shuffle,
        );
        let opt = Optimizer::new(optim_for(&tc.optim, epochs.total), &lm.varmap)
            .context("invalid value in `train.optim`")?;
        Ok(Self {
            lm,
            opt,
            train,
            test,
            n_var: task.n_var,
            n_sup: task.train_vars,
            epochs,
            losses: Vec::new(),
        })
    }

    /// The evaluations of a finished drive as curve points (columns of [`Trainer::eval_columns`]).
    pub fn curve(&self, out: &crate::run::Outcome) -> Vec<CurvePoint> {
        let b = crate::run::BASE_COLUMNS.len();
        let point = |r: &Vec<f64>| CurvePoint {
            epoch: r[b] as usize,
            step: r[0] as u64,
            train_loss: r[b + 1],
            acc_supervised: r[b + 2],
            acc_extrapolated: r[b + 3],
            per_position: r[b + 4..].to_vec(),
        };
        out.rows.iter().map(point).collect()
    }
}

impl Trainer for LegoTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.epochs.total
    }

    fn eval_columns(&self) -> Vec<String> {
        let head = ["epoch", "epoch_loss", "acc_supervised", "acc_extrapolated"];
        let mut c: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        c.extend((1..=self.n_var).map(|k| format!("acc_pos{k}")));
        c
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
        let sents: Vec<LegoSentence> = idx.iter().map(|&i| self.train[i].clone()).collect();
        let batch = LegoBatch::new(&sents, self.n_sup)?;
        let bt = self.lm.tensors(&batch)?;
        let (z, _) = self.lm.chain_logits(&bt, false)?;
        let loss = bce_with_logits(&z, &bt.labels, &bt.supervised)?;
        let out = update(&loss, &mut self.opt)?;
        if out.loss.is_finite() {
            self.losses.push(out.loss);
            self.epochs.record(step, out.loss);
        }
        Ok(out)
    }

    fn evaluate(&mut self, step: u64) -> Result<Vec<f64>> {
        let per = self.lm.accuracy(&self.test)?;
        let k = self.n_sup.min(per.len());
        let mut row = self.epochs.summary(step).to_vec();
        row.extend([mean(&per[..k]), mean(&per[k..])]);
        row.extend(per);
        Ok(row)
    }

    fn save(&self, st: &mut State) -> Result<()> {
        save_weights_and_losses(st, &self.lm.varmap, &self.opt, &self.losses)?;
        self.epochs.save(st)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        self.losses = load_weights_and_losses(st, &self.lm.varmap, &mut self.opt)?;
        self.epochs.load(st, self.opt.step)
    }

    fn diverged(&self, _step: u64, outcome: &StepOutcome) -> Option<String> {
        loss_diverged(outcome, self.losses.first().copied())
    }
}

/// Mimicking pretraining of a model in place (see the module doc). Sentences and dropout of
/// step `s` come from the seed and `s` alone, so a resumed run sees the same data.
pub struct MimicTrainer<'a> {
    lm: &'a LegoModel,
    /// The model over the same parameters with a (negligible) dropout: the toolkit's fused
    /// attention returns detached probabilities, and a dropout generator selects the composed
    /// path, whose probabilities carry gradients.
    twin: Transformer,
    opt: Optimizer,
    mc: &'a MimicConfig,
    n_var: usize,
    seed: u64,
    steps_per_epoch: u64,
    total: u64,
    local: Tensor,
    /// Mimicking loss of every update.
    pub losses: Vec<f64>,
}

impl<'a> MimicTrainer<'a> {
    /// Mimicking of `lm` as `mc` says for `run`'s architecture, on chains of `n_var`.
    pub fn new(
        lm: &'a LegoModel,
        mc: &'a MimicConfig,
        n_var: usize,
        run: &LegoRun,
    ) -> Result<Self> {
        let epochs = if run.arch == Arch::Albert {
            mc.epochs_albert
        } else {
            mc.epochs_bert
        };
        let total = (epochs * mc.steps_per_epoch) as u64;
        let mut cfg = lm.cfg.clone();
        cfg.dropout = 1e-12;
        let twin = Transformer::new(
            &cfg,
            VarBuilder::from_varmap(&lm.varmap, DType::F32, &lm.dev),
        )?;
        let opt = Optimizer::new(optim_for(&mc.optim, total), &lm.varmap)
            .context("invalid value in `mimic.optim`")?;
        let t = seq_len(n_var);
        let local = Tensor::from_vec(local_target(t).into_raw_vec_and_offset().0, (t, t), &lm.dev)?;
        Ok(Self {
            lm,
            twin,
            opt,
            mc,
            n_var,
            seed: run.seed,
            steps_per_epoch: mc.steps_per_epoch as u64,
            total,
            local,
            losses: Vec::new(),
        })
    }
}

impl Trainer for MimicTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.total
    }

    fn eval_columns(&self) -> Vec<String> {
        Vec::new()
    }

    /// A metrics row (the mean mimicking loss) and a checkpoint after every mimicking epoch.
    fn eval_due(&self, step: u64) -> bool {
        step > 0 && step.is_multiple_of(self.steps_per_epoch)
    }

    fn lr(&self) -> f64 {
        self.opt.current_lr()
    }

    fn step(&mut self, step: u64) -> Result<StepOutcome> {
        let (mc, dev) = (self.mc, &self.lm.dev);
        let sents = Variant::Shuffled.sample(
            self.n_var,
            mc.batch_size,
            seeds::mimic_sentences(self.seed, step),
        )?;
        let batch = LegoBatch::new(&sents, 0)?;
        let (b, t) = batch.tokens.dim();
        let tokens = Tensor::from_vec(
            batch.tokens.iter().copied().collect::<Vec<_>>(),
            (b, t),
            dev,
        )?;
        let (_, assoc) = mimic_targets(batch.tokens.view());
        let assoc = Tensor::from_vec(assoc.into_raw_vec_and_offset().0, (b, t, t), dev)?;
        let mut drng = seeds::mimic_dropout(self.seed, step);
        let out = self.twin.forward_with(
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
            let l = (mimic_loss_tensor(&lh, &self.local)? + mimic_loss_tensor(&ah, &assoc)?)?;
            loss = Some(match loss {
                None => l,
                Some(x) => (x + l)?,
            });
        }
        let loss = loss.context("model without layers")?;
        let out = update(&loss, &mut self.opt)?;
        if out.loss.is_finite() {
            self.losses.push(out.loss);
        }
        Ok(out)
    }

    fn evaluate(&mut self, _step: u64) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }

    fn save(&self, st: &mut State) -> Result<()> {
        save_weights_and_losses(st, &self.lm.varmap, &self.opt, &self.losses)?;
        Ok(())
    }

    fn load(&mut self, st: &State) -> Result<()> {
        self.losses = load_weights_and_losses(st, &self.lm.varmap, &mut self.opt)?;
        Ok(())
    }

    fn diverged(&self, _step: u64, outcome: &StepOutcome) -> Option<String> {
        loss_diverged(outcome, self.losses.first().copied())
    }
}

/// Trains one run on `preset` as `opts` says, resuming from its directory's checkpoints; stops
/// with [`crate::run::Interrupted`] when `opts.stop` answers true (state saved, call again to
/// resume). `head_sentences` test sentences (0: none) give the head scores at each stage.
pub fn train_run(
    preset: &Preset,
    run: &LegoRun,
    head_sentences: usize,
    opts: &RunOpts,
) -> Result<RunResult> {
    let task = preset.task.as_ref().context("LEGO runs need [*.task]")?;
    let n_var = task.n_var;
    let lm = LegoModel::build(&preset.model, run, opts.dev)?;
    let head_test = Variant::Shuffled.sample(
        n_var,
        head_sentences.max(1),
        seeds::head_sentences(run.seed),
    )?;
    let mut head_scores = Vec::new();
    let mut score = |stage: &str, lm: &LegoModel| -> Result<()> {
        if head_sentences > 0 {
            head_scores.push(StageScores {
                stage: stage.into(),
                scores: lm.head_scores(&head_test)?,
            });
        }
        Ok(())
    };
    // the initial model is the seed's: its scores are the same on every resume
    score("init", &lm)?;
    let mut seconds = 0.0;
    let mut mimic_losses = Vec::new();
    if run.init == Init::Mimic {
        let mc = preset
            .mimic
            .as_ref()
            .context("a mimic run needs [*.mimic]")?;
        let mut mt = MimicTrainer::new(&lm, mc, n_var, run)?;
        // a finished phase only reloads its final state
        seconds += drive(&mut mt, &opts.drive("mimic"))?.wall_seconds;
        mimic_losses = std::mem::take(&mut mt.losses);
        score("mimicked", &lm)?;
    }
    let (mut pretrain_losses, mut pretrain) = (Vec::new(), None);
    if run.init == Init::Text {
        let pc = preset
            .pretrain
            .as_ref()
            .context("a text-pretrained run needs [*.pretrain]")?;
        let corpus = Corpus::load(&pc.corpus, pc.vocab_words)?;
        let mut tt = TextTrainer::new(&preset.model, run, n_var, &corpus, pc, opts.dev)?;
        seconds += drive(&mut tt, &opts.drive("pretrain"))?.wall_seconds;
        transfer(&tt.varmap, &corpus, &lm)?;
        let (text_association, text_association_uniform) = tt.text_association()?;
        pretrain_losses = std::mem::take(&mut tt.losses);
        pretrain = Some(PretrainSummary {
            held_out_accuracy: tt.held_out_accuracy,
            held_out_accuracy_known: tt.held_out_known()?,
            corpus_tokens: corpus.train.len() + corpus.held_out.len(),
            vocab_size: corpus.vocab.len(),
            unk_rate: corpus.unk_rate,
            text_association,
            text_association_uniform,
        });
        score("pretrained", &lm)?;
    }
    let mut tr = LegoTrainer::new(preset, run, &lm)?;
    let out = drive(&mut tr, &opts.drive("train"))?;
    seconds += out.wall_seconds;
    let curve = tr.curve(&out);
    score("trained", &lm)?;
    let mut variant_accuracy = Vec::new();
    for (i, v) in run.test_variants.iter().enumerate() {
        let s = v.sample(n_var, task.n_test, seeds::variant_test(run.seed, i))?;
        variant_accuracy.push((*v, lm.accuracy(&s)?));
    }
    let t = seq_len(n_var);
    Ok(RunResult {
        run: run.clone(),
        key: run_key(preset, run)?,
        forward_flops: FlopCount::new(&lm.cfg, t).forward_per_token * t as u64,
        model: lm.cfg.clone(),
        per_position: curve
            .last()
            .map(|p| p.per_position.clone())
            .unwrap_or_default(),
        variant_accuracy,
        curve,
        mimic_losses,
        losses: std::mem::take(&mut tr.losses),
        pretrain_losses,
        pretrain,
        head_scores,
        seconds,
    })
}

/// What determines a run's outcome besides the [`LegoRun`]: task, model, training, and the
/// mimicking settings when it starts from mimicking (as JSON).
pub fn run_key(preset: &Preset, run: &LegoRun) -> Result<String> {
    // a fifth field only for text runs: the keys of every other run stay as they were
    if run.init == Init::Text {
        return Ok(serde_json::to_string(&(
            &preset.task,
            &preset.model,
            &preset.train,
            None::<()>,
            &preset.pretrain,
        ))?);
    }
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

/// Mimicking pretraining of `lm` in place, kept nowhere on disk; returns the loss of every step.
/// `run` supplies the architecture (epoch count) and the seed of the sentences.
pub fn mimic_pretrain(
    lm: &LegoModel,
    mc: &MimicConfig,
    n_var: usize,
    run: &LegoRun,
) -> Result<Vec<f64>> {
    let mut mt = MimicTrainer::new(lm, mc, n_var, run)?;
    drive(&mut mt, &DriveOpts::new(None))?;
    Ok(mt.losses)
}

/// The state the LEGO and mimicking trainers share: the model, its optimiser and every step's
/// loss.
pub(crate) fn save_weights_and_losses(
    st: &mut State,
    vm: &VarMap,
    opt: &Optimizer,
    losses: &[f64],
) -> Result<()> {
    st.put_model(vm, opt)?;
    st.put_f64("losses", &[losses.len()], losses);
    Ok(())
}

/// Restores what [`save_weights_and_losses`] stored; returns the losses.
pub(crate) fn load_weights_and_losses(
    st: &State,
    vm: &VarMap,
    opt: &mut Optimizer,
) -> Result<Vec<f64>> {
    st.load_model(vm, opt)?;
    let losses = st.get_f64("losses")?.1;
    anyhow::ensure!(
        losses.len() as u64 == opt.step,
        "the checkpoint's step counts disagree"
    );
    Ok(losses)
}
