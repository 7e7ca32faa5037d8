//! The exact transformer's training on the run engine ([`crate::run`]): gradient descent on fresh
//! batches or full batch on a fixed dataset, with the scalar prediction tracked beside the
//! measurement at log-spaced steps, and the divergence rule it shares with the FCN's trainer
//! (`sts::fcn`). The engine owns the run directory, resume, the metrics log, Ctrl-C and the
//! non-finite checks.

use super::config::{Precision, RunConfig, TransformerConfig};
use super::model::{ExactTransformer, Real};
use super::seeds;
use super::task::{fixed_table, sample_batch, sample_batch_into, Batch, Encoding, TaskConfig};
use super::theory::{loss_at_zero, measure, EncodingSample, Estimate, C_MAX};
use crate::rng::{stream, Rng};
use crate::run::{
    checkpoint_path, drive, failed, DriveOpts, Outcome, State, StepOutcome, Trainer, BASE_COLUMNS,
};
use anyhow::{anyhow, bail, Result};
use indicatif::ProgressBar;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `points` distinct steps spread log-uniformly over `0..=steps` (0 and `steps` included).
pub fn log_spaced_steps(steps: usize, points: usize) -> Vec<usize> {
    let mut v = vec![0];
    for i in 0..points {
        let s = ((steps as f64 + 1.0).powf(i as f64 / (points - 1).max(1) as f64) - 1.0).round()
            as usize;
        v.push(s.min(steps));
    }
    v.push(steps);
    v.sort_unstable();
    v.dedup();
    v
}

/// Smallest batch whose own standard error is trusted to tell a rise of the loss from chance.
const MIN_BATCH_FOR_DIVERGENCE: usize = 32;
/// Standard errors a batch loss must lie above its ceiling to count as divergence: chance alone
/// gets there about once in 10^9 batches.
const DIVERGENCE_Z: f64 = 6.0;

/// The divergence rule of both trainers. Gradient descent at a stable step size does not raise
/// the population loss above where it started, and no trained model should be worse than the
/// trivial one (uniform attention for the transformer, output zero for the FCN): a loss far above
/// the larger of the two, measured in its own standard errors, means the step size is too large.
/// `what` names the loss (a batch's before each update; the test set's or the dataset's at every
/// evaluation and checkpoint, so neither ever records a diverged model). Samples too small for a
/// standard error are left to the engine's non-finite check.
pub(super) fn far_above(
    what: &str,
    loss: Estimate,
    n: usize,
    ceiling: f64,
    lr: (&str, f64),
) -> Option<String> {
    if n < MIN_BATCH_FOR_DIVERGENCE || loss.mean <= ceiling + DIVERGENCE_Z * loss.stderr {
        return None;
    }
    Some(format!(
        "the {what} loss {:.6} is {:.0} standard errors above {ceiling:.6}, the larger of the trivial model's loss and the loss at the start, which gradient descent at a stable step size does not exceed (`{}` = {})",
        loss.mean,
        (loss.mean - ceiling) / loss.stderr,
        lr.0,
        lr.1
    ))
}

/// The failure for a model found diverged after `step` updates, naming the checkpoint the run
/// keeps (the engine writes none after it).
pub(super) fn diverged_error(
    step: u64,
    why: String,
    checkpoint: Option<&std::path::Path>,
) -> anyhow::Error {
    let kept = match checkpoint.filter(|p| p.exists()) {
        Some(p) => format!("; the last good checkpoint `{}` is kept", p.display()),
        None => String::new(),
    };
    failed(format!(
        "the run diverged at step {step}: {why}{kept}; lower the learning rate"
    ))
}

// ---------------------------------------------------------------------------------------------
// The exact transformer

/// The metrics the transformer's evaluations log, after the engine's `step, wall_s, lr,
/// train_loss`: the test loss (fixed test set) and its standard error, the learned c and W's
/// distance from the identity direction, the attention mass on the selected tokens (mean and worst
/// case), then the scalar recursion's c_t, `L(c_t)` on the same test set, `L(c_t)` x-integrated
/// and the predicted mass.
pub const TRANSFORMER_COLUMNS: [&str; 10] = [
    "test_loss",
    "test_loss_stderr",
    "c",
    "off_identity",
    "mass_mean",
    "mass_min",
    "pred_c",
    "pred_loss",
    "pred_loss_integrated",
    "pred_mass",
];

/// One evaluation of the transformer during training, beside the scalar prediction at the same step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: usize,
    /// Measured population loss (fixed test set) and its standard error.
    pub loss: f64,
    pub loss_stderr: f64,
    /// The learned coefficient `tr(W_pp)/d_e`.
    pub c: f64,
    pub off_identity: f64,
    /// Attention mass on the selected tokens: mean and worst case over the test set.
    pub mass_mean: f64,
    pub mass_min: f64,
    /// The scalar recursion's c at this step.
    pub pred_c: f64,
    /// `L(pred_c)` on the same test set (common random numbers with `loss`).
    pub pred_loss: f64,
    /// `L(pred_c)` from the x-integrated estimator, and the predicted mean attention mass.
    pub pred_loss_integrated: f64,
    pub pred_mass: f64,
}

impl CurvePoint {
    /// The point of one metrics row (engine columns first, then [`TRANSFORMER_COLUMNS`]).
    fn from_row(r: &[f64]) -> Self {
        let v = |i: usize| r[BASE_COLUMNS.len() + i];
        Self {
            step: r[0] as usize,
            loss: v(0),
            loss_stderr: v(1),
            c: v(2),
            off_identity: v(3),
            mass_mean: v(4),
            mass_min: v(5),
            pred_c: v(6),
            pred_loss: v(7),
            pred_loss_integrated: v(8),
            pred_mass: v(9),
        }
    }
}

/// The whole transformer run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransformerResult {
    pub curve: Vec<CurvePoint>,
    /// The best c for this d_e and the floor L(c*) (x-integrated estimator).
    pub c_star: f64,
    pub floor: f64,
    pub loss_at_zero: f64,
    #[serde(skip)]
    pub model: Option<ExactTransformer<f64>>,
    /// The fixed encoding table, when the run used one.
    #[serde(skip)]
    pub table: Option<Array2<f64>>,
}

impl TransformerResult {
    pub fn last(&self) -> &CurvePoint {
        self.curve
            .last()
            .expect("a run has at least one evaluation")
    }
}

fn to_f64<F: Real>(m: &ExactTransformer<F>) -> ExactTransformer<f64> {
    ExactTransformer {
        d: m.d,
        de: m.de,
        w: m.w.mapv(|v| v.f64()),
    }
}

/// The exact transformer's gradient descent in precision `F`, as an engine [`Trainer`].
pub struct TransformerTrainer<F: Real> {
    task: TaskConfig,
    tc: TransformerConfig,
    model: ExactTransformer<F>,
    table: Option<Array2<f64>>,
    train_rng: Rng,
    /// The fixed dataset of full-batch GD (`None`: a fresh batch every step).
    dataset: Option<Batch<F>>,
    /// The fresh batch's buffers, refilled every step.
    fresh: Batch,
    test: Batch,
    /// The run's own encoding sample, behind the scalar prediction.
    theory: EncodingSample,
    eval_at: Vec<usize>,
    checkpoint_every: u64,
    /// The scalar recursion's c after the steps made so far.
    pred_c: f64,
    /// max(L(0), L(c_0)): see [`far_above`].
    ceiling: f64,
    /// Loss estimate and size of the last batch.
    last_batch: (Estimate, usize),
    /// Updates made, and the count at which the model was last checked for divergence.
    done: u64,
    checked: Option<u64>,
    /// The run's checkpoint (named when a divergence keeps it).
    checkpoint: Option<PathBuf>,
    /// Advanced by one per step (figures share one bar between runs).
    pub progress: Option<ProgressBar>,
}

impl<F: Real> TransformerTrainer<F> {
    /// The loss the run descends, measured as the model stands: on the fixed dataset (full
    /// batch) or the test set (fresh batches, the same distribution), with its sample size.
    fn objective(&self, test_loss: Option<Estimate>) -> (Estimate, usize) {
        match (&self.dataset, test_loss) {
            (Some(ds), _) => {
                let l: Vec<f64> = self
                    .model
                    .forward(ds)
                    .losses
                    .iter()
                    .map(|v| v.f64())
                    .collect();
                (Estimate::from_samples(&l), ds.len())
            }
            (None, Some(t)) => (t, self.test.len()),
            (None, None) => (
                measure(&to_f64(&self.model), &self.test).loss,
                self.test.len(),
            ),
        }
    }

    fn check(&self, test_loss: Option<Estimate>) -> Result<()> {
        let what = if self.dataset.is_some() {
            "dataset"
        } else {
            "test"
        };
        let (loss, n) = self.objective(test_loss);
        match far_above(what, loss, n, self.ceiling, ("transformer.lr", self.tc.lr)) {
            Some(why) => Err(diverged_error(self.done, why, self.checkpoint.as_deref())),
            None => Ok(()),
        }
    }

    pub fn new(cfg: &RunConfig) -> Result<Self> {
        cfg.validate()?;
        let tc = cfg
            .transformer
            .clone()
            .ok_or_else(|| anyhow!("no `[transformer]` table in the config"))?;
        let task = cfg.task.clone();
        let table =
            (task.encoding == Encoding::Fixed).then(|| fixed_table(cfg.seed, task.t, task.de));
        let mut train_rng = stream(cfg.seed, seeds::TRAIN);
        let mut test_rng = stream(cfg.seed, seeds::TEST);
        let test = sample_batch(&task, cfg.eval.samples, table.as_ref(), &mut test_rng)?;
        let theory = EncodingSample::draw(
            &task,
            cfg.eval.theory_samples,
            table.as_ref(),
            seeds::run_theory_seed(cfg.seed),
        )?;
        let dataset = match tc.dataset {
            Some(n) => Some(sample_batch(&task, n, table.as_ref(), &mut train_rng)?.cast::<F>()),
            None => None,
        };
        let start = theory.at(tc.init_c).loss;
        let ceiling = loss_at_zero(task.t, task.d, task.q).max(start.mean + 3.0 * start.stderr);
        Ok(Self {
            model: ExactTransformer::<F>::scaled_identity(task.d, task.de, tc.init_c),
            eval_at: log_spaced_steps(tc.steps, cfg.eval.points),
            checkpoint_every: (tc.steps as u64 / 20).max(1),
            pred_c: tc.init_c,
            task,
            tc,
            table,
            train_rng,
            dataset,
            fresh: Batch::empty(),
            test,
            theory,
            ceiling,
            last_batch: (Estimate::from_samples(&[0.0]), 0),
            done: 0,
            checked: None,
            checkpoint: None,
            progress: None,
        })
    }

    /// The run's result from the engine's outcome and the trained model.
    pub fn into_result(self, out: &Outcome) -> TransformerResult {
        let best = self.theory.minimise(C_MAX);
        TransformerResult {
            curve: out.rows.iter().map(|r| CurvePoint::from_row(r)).collect(),
            c_star: best.c,
            floor: best.loss.mean,
            loss_at_zero: loss_at_zero(self.task.t, self.task.d, self.task.q),
            model: Some(to_f64(&self.model)),
            table: self.table,
        }
    }
}

impl<F: Real> Trainer for TransformerTrainer<F> {
    fn total_steps(&self) -> u64 {
        self.tc.steps as u64
    }
    fn eval_columns(&self) -> Vec<String> {
        TRANSFORMER_COLUMNS.iter().map(|s| s.to_string()).collect()
    }
    fn eval_due(&self, step: u64) -> bool {
        self.eval_at.binary_search(&(step as usize)).is_ok()
    }
    fn checkpoint_due(&self, step: u64) -> bool {
        step.is_multiple_of(self.checkpoint_every)
    }
    fn lr(&self) -> f64 {
        self.tc.lr
    }

    fn step(&mut self, _step: u64) -> Result<StepOutcome> {
        let cast;
        let batch = match &self.dataset {
            Some(ds) => ds,
            None => {
                sample_batch_into(
                    &self.task,
                    self.tc.batch,
                    self.table.as_ref(),
                    &mut self.train_rng,
                    &mut self.fresh,
                )?;
                cast = F::from_f64_batch(&self.fresh);
                &*cast
            }
        };
        let (loss, grad, losses) = self.model.loss_grad_and_losses(batch);
        self.model.w.scaled_add(F::of(-self.tc.lr), &grad);
        self.done += 1;
        let losses: Vec<f64> = losses.iter().map(|l| l.f64()).collect();
        self.last_batch = (Estimate::from_samples(&losses), losses.len());
        self.pred_c -= self.tc.lr / self.task.de as f64 * self.theory.at(self.pred_c).slope;
        if let Some(p) = &self.progress {
            p.inc(1);
        }
        let grad_norm = grad.iter().map(|g| g.f64() * g.f64()).sum::<f64>().sqrt();
        Ok(StepOutcome {
            loss: loss.f64(),
            grad_norm: Some(grad_norm),
        })
    }

    fn evaluate(&mut self, _step: u64) -> Result<Vec<f64>> {
        let m64 = to_f64(&self.model);
        let now = measure(&m64, &self.test);
        self.check(Some(now.loss))?;
        self.checked = Some(self.done);
        let on_identity = ExactTransformer::scaled_identity(self.task.d, self.task.de, self.pred_c);
        let pred_loss = measure(&on_identity, &self.test).loss;
        let at = self.theory.at(self.pred_c);
        Ok(vec![
            now.loss.mean,
            now.loss.stderr,
            m64.c(),
            m64.off_identity_fraction(),
            now.mass_mean,
            now.mass_min,
            self.pred_c,
            pred_loss.mean,
            at.loss.mean,
            at.mass.mean,
        ])
    }

    fn save(&self, st: &mut State) -> Result<()> {
        if self.checked != Some(self.done) {
            self.check(None)?;
        }
        let (rows, cols) = self.model.w.dim();
        let w: Vec<f64> = self.model.w.iter().map(|v| v.f64()).collect();
        st.put_f64("w", &[rows, cols], &w);
        st.put_f64("pred_c", &[1], &[self.pred_c]);
        st.put_rng("train", &self.train_rng);
        st.put_json("done", &self.done)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        let (shape, w) = st.get_f64("w")?;
        let dim = self.model.w.dim();
        if shape != [dim.0, dim.1] {
            bail!("W has shape {shape:?} in the checkpoint, {dim:?} in the model");
        }
        self.model.w = Array2::from_shape_vec(dim, w.into_iter().map(F::of).collect())?;
        self.pred_c = st.get_f64("pred_c")?.1[0];
        self.train_rng = st.rng("train")?;
        self.done = st.json("done")?;
        self.checked = Some(self.done);
        Ok(())
    }

    fn diverged(&self, _step: u64, _o: &StepOutcome) -> Option<String> {
        let (loss, n) = self.last_batch;
        far_above(
            "batch",
            loss,
            n,
            self.ceiling,
            ("transformer.lr", self.tc.lr),
        )
    }
}

/// Trains the exact transformer as `cfg` says, driven by the engine as `opts` says (a run
/// directory to resume from and save into, or none); `progress` advances by one per step.
pub fn drive_transformer(
    cfg: &RunConfig,
    opts: &DriveOpts,
    progress: Option<ProgressBar>,
) -> Result<TransformerResult> {
    let precision = cfg.transformer.as_ref().map(|t| t.precision);
    match precision.unwrap_or_default() {
        Precision::F64 => drive_in::<f64>(cfg, opts, progress),
        Precision::F32 => drive_in::<f32>(cfg, opts, progress),
    }
}

fn drive_in<F: Real>(
    cfg: &RunConfig,
    opts: &DriveOpts,
    progress: Option<ProgressBar>,
) -> Result<TransformerResult> {
    let mut t = TransformerTrainer::<F>::new(cfg)?;
    t.progress = progress;
    t.checkpoint = opts.dir.map(|d| checkpoint_path(d.path(), opts.phase));
    let out = drive(&mut t, opts)?;
    Ok(t.into_result(&out))
}

/// Trains the exact transformer in memory (no run directory).
pub fn train_transformer(cfg: &RunConfig) -> Result<TransformerResult> {
    drive_transformer(cfg, &DriveOpts::new(None), None)
}
