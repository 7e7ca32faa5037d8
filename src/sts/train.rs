//! Training runs for STS: the exact transformer by gradient descent (fresh batches or full batch on a
//! fixed dataset) with the scalar prediction tracked beside the measurement, and the FCN.
//!
//! Configured by TOML files under `experiments/sts/`, each holding a `[cpu]` and a `[paper]` preset.

use super::fcn::{train_fcn, FcnConfig, FcnResult};
use super::model::{ExactTransformer, Real};
use super::task::{fixed_table, sample_batch, Batch, Encoding, TaskConfig};
use super::theory::{EncodingSample, Estimate};
use crate::config::{load_toml, require};
use anyhow::{bail, Context, Result};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Float type of the exact transformer's training arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    #[default]
    F64,
}

/// Gradient-descent settings for the exact transformer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub steps: usize,
    /// Step size eta of `W <- W - eta grad`.
    pub lr: f64,
    /// Examples per step.
    pub batch: usize,
    /// None: a fresh batch every step (population GD up to batch noise). Some(n): full-batch GD on
    /// one fixed dataset of n examples (then `batch` is ignored).
    #[serde(default)]
    pub dataset: Option<usize>,
    #[serde(default)]
    pub precision: Precision,
    /// Initial W = init_c I on the positional block.
    #[serde(default)]
    pub init_c: f64,
}

/// Evaluation settings shared by the models.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Test examples (fixed per run) for the measured population loss.
    #[serde(default = "default_eval_samples")]
    pub samples: usize,
    /// Number of log-spaced evaluation steps.
    #[serde(default = "default_points")]
    pub points: usize,
    /// Encoding samples behind the x-integrated theory estimates.
    #[serde(default = "default_theory_samples")]
    pub theory_samples: usize,
}

fn default_eval_samples() -> usize {
    4096
}
fn default_points() -> usize {
    30
}
fn default_theory_samples() -> usize {
    8192
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            samples: default_eval_samples(),
            points: default_points(),
            theory_samples: default_theory_samples(),
        }
    }
}

/// One training run: task, model, evaluation, seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub seed: u64,
    pub task: TaskConfig,
    #[serde(default)]
    pub transformer: Option<TransformerConfig>,
    #[serde(default)]
    pub fcn: Option<FcnConfig>,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// A config file: the CPU preset and the paper's, side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    pub cpu: RunConfig,
    pub paper: RunConfig,
}

/// Which preset of a config file to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    #[default]
    Cpu,
    Paper,
}

impl RunFile {
    pub fn load(path: &Path) -> Result<Self> {
        let f: Self = load_toml(path)?;
        f.cpu
            .validate()
            .map_err(|e| e.context(format!("in `{}` [cpu]", path.display())))?;
        f.paper
            .validate()
            .map_err(|e| e.context(format!("in `{}` [paper]", path.display())))?;
        Ok(f)
    }
    pub fn preset(&self, p: Preset) -> &RunConfig {
        match p {
            Preset::Cpu => &self.cpu,
            Preset::Paper => &self.paper,
        }
    }
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        self.task.validate()?;
        if self.transformer.is_none() && self.fcn.is_none() {
            bail!("the run trains nothing: add a `[transformer]` or an `[fcn]` table");
        }
        if let Some(t) = &self.transformer {
            require(t.steps >= 1, "transformer.steps", "must be at least 1")?;
            require(
                t.lr > 0.0 && t.lr.is_finite(),
                "transformer.lr",
                "must be a positive number",
            )?;
            require(t.batch >= 1, "transformer.batch", "must be at least 1")?;
            require(
                t.dataset.is_none_or(|n| n >= 1),
                "transformer.dataset",
                "must be at least 1 (or omitted for fresh batches)",
            )?;
        }
        if let Some(f) = &self.fcn {
            f.validate()?;
        }
        require(self.eval.samples >= 2, "eval.samples", "must be at least 2")?;
        require(self.eval.points >= 2, "eval.points", "must be at least 2")?;
        require(
            self.eval.theory_samples >= 2,
            "eval.theory_samples",
            "must be at least 2",
        )?;
        Ok(())
    }
}

/// The same run at another d_e, with the step size the recursion needs: `lr` scales with d_e so
/// that the step in c, `lr L'(c) / d_e`, stays the same (at a fixed lr a small d_e takes steps too
/// large for the off-identity directions: lr 4 at d_e 16 ends at 1.41 against a floor of 0.81).
pub fn with_de(cfg: &RunConfig, de: usize) -> RunConfig {
    let mut c = cfg.clone();
    if let Some(tc) = c.transformer.as_mut() {
        tc.lr *= de as f64 / cfg.task.de as f64;
    }
    c.task.de = de;
    c
}

/// The same run with one fixed encoding table instead of stochastic encodings. A table's gradient
/// lives in the T-dimensional span of its rows, so the same lr moves it d_e / min(T, d_e) times
/// faster than stochastic encodings do; lr is scaled by min(T, d_e) / d_e to keep it stable.
pub fn with_fixed_table(cfg: &RunConfig) -> RunConfig {
    let mut c = cfg.clone();
    c.task.encoding = Encoding::Fixed;
    if let Some(tc) = c.transformer.as_mut() {
        tc.lr *= cfg.task.t.min(cfg.task.de) as f64 / cfg.task.de as f64;
    }
    c
}

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

/// A model measured on a test set.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Measurement {
    pub loss: Estimate,
    /// Attention mass on the selected tokens: mean and worst case over the test set.
    pub mass_mean: f64,
    pub mass_min: f64,
}

/// Measures `model` on `test`.
pub fn measure(model: &ExactTransformer<f64>, test: &Batch) -> Measurement {
    let fw = model.forward(test);
    let mass = super::model::selected_mass(&fw.attn, &test.sel);
    Measurement {
        loss: Estimate::from_samples(fw.losses.as_slice().expect("contiguous")),
        mass_mean: mass.mean().unwrap_or(0.0),
        mass_min: mass.iter().cloned().fold(f64::INFINITY, f64::min),
    }
}

/// Measures a trained model on `samples` fresh examples of length `t` (length generalisation).
/// With a fixed table, positions beyond the training length get the table's extension: rows
/// drawn like the others but never seen in training.
pub fn measure_at_length(
    model: &ExactTransformer<f64>,
    task: &TaskConfig,
    t: usize,
    samples: usize,
    seed: u64,
) -> Result<Measurement> {
    let task = task.with_len(t);
    let table = (task.encoding == Encoding::Fixed).then(|| fixed_table(seed, t, task.de));
    let test = sample_batch(
        &task,
        samples,
        table.as_ref(),
        &mut crate::rng::stream(seed, 6),
    )?;
    Ok(measure(model, &test))
}

fn to_f64<F: Real>(m: &ExactTransformer<F>) -> ExactTransformer<f64> {
    ExactTransformer {
        d: m.d,
        de: m.de,
        w: m.w.mapv(|v| v.f64()),
    }
}

/// Where a run keeps its resumable state, how often it saves it, and when to stop early.
pub struct Checkpointing<'a> {
    /// The checkpoint file (JSON, written atomically).
    pub path: PathBuf,
    /// Save every this many steps (and whenever the run stops).
    pub every: usize,
    /// Polled after every step: true stops the run after saving (Ctrl-C).
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

/// Everything needed to continue a transformer run exactly where it stopped.
#[derive(Serialize, Deserialize)]
struct TransformerCheckpoint {
    /// The run's config as JSON: a checkpoint resumes only the run that wrote it.
    config: String,
    step: usize,
    w: Vec<f64>,
    pred_c: f64,
    next_eval: usize,
    curve: Vec<CurvePoint>,
    rng: crate::rng::Rng,
}

/// Trains the exact transformer as configured; `on_step` is called after every step (progress).
pub fn train_transformer(
    cfg: &RunConfig,
    on_step: &mut dyn FnMut(usize),
) -> Result<TransformerResult> {
    train_transformer_resumable(cfg, on_step, None)
}

/// Like [`train_transformer`], saving its state as `ckpt` says and resuming from it when the file
/// exists: an interrupted run continues to bit-identical results.
pub fn train_transformer_resumable(
    cfg: &RunConfig,
    on_step: &mut dyn FnMut(usize),
    ckpt: Option<&Checkpointing>,
) -> Result<TransformerResult> {
    cfg.validate()?;
    let tc = cfg
        .transformer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no `[transformer]` table in the config"))?;
    match tc.precision {
        Precision::F64 => train_transformer_in::<f64>(cfg, tc, on_step, ckpt),
        Precision::F32 => train_transformer_in::<f32>(cfg, tc, on_step, ckpt),
    }
}

fn train_transformer_in<F: Real>(
    cfg: &RunConfig,
    tc: &TransformerConfig,
    on_step: &mut dyn FnMut(usize),
    ckpt: Option<&Checkpointing>,
) -> Result<TransformerResult> {
    let task = &cfg.task;
    let table = (task.encoding == Encoding::Fixed).then(|| fixed_table(cfg.seed, task.t, task.de));
    let mut train_rng = crate::rng::stream(cfg.seed, 1);
    let mut test_rng = crate::rng::stream(cfg.seed, 2);
    let test = sample_batch(task, cfg.eval.samples, table.as_ref(), &mut test_rng)?;
    let theory = EncodingSample::draw(
        task,
        cfg.eval.theory_samples,
        table.as_ref(),
        cfg.seed.wrapping_add(1),
    )?;
    let best = theory.minimise(100.0);
    let dataset = match tc.dataset {
        Some(n) => Some(sample_batch(task, n, table.as_ref(), &mut train_rng)?.cast::<F>()),
        None => None,
    };
    let mut model = ExactTransformer::<F>::scaled_identity(task.d, task.de, tc.init_c);
    let eval_at = log_spaced_steps(tc.steps, cfg.eval.points);
    let mut pred_c = tc.init_c;
    let mut curve = Vec::with_capacity(eval_at.len());
    let mut next_eval = 0;
    let mut start = 0;
    let config_json = serde_json::to_string(cfg)?;
    if let Some(ck) = ckpt.filter(|ck| ck.path.exists()) {
        let text = std::fs::read_to_string(&ck.path)
            .with_context(|| format!("reading checkpoint `{}`", ck.path.display()))?;
        let saved: TransformerCheckpoint = serde_json::from_str(&text).with_context(|| {
            format!(
                "checkpoint `{}` is damaged: delete it to start over",
                ck.path.display()
            )
        })?;
        if saved.config != config_json {
            bail!(
                "checkpoint `{}` belongs to a different config: use another run directory (--out) or delete it",
                ck.path.display()
            );
        }
        model.w =
            Array2::from_shape_vec(model.w.dim(), saved.w.iter().map(|&v| F::of(v)).collect())?;
        (start, pred_c, next_eval, curve, train_rng) = (
            saved.step,
            saved.pred_c,
            saved.next_eval,
            saved.curve,
            saved.rng,
        );
    }
    let save = |step: usize,
                model: &ExactTransformer<F>,
                pred_c: f64,
                next_eval: usize,
                curve: &[CurvePoint],
                rng: &crate::rng::Rng|
     -> Result<()> {
        if let Some(ck) = ckpt {
            let state = TransformerCheckpoint {
                config: config_json.clone(),
                step,
                w: model.w.iter().map(|v| v.f64()).collect(),
                pred_c,
                next_eval,
                curve: curve.to_vec(),
                rng: rng.clone(),
            };
            crate::io::write_json(&ck.path, &state)?;
        }
        Ok(())
    };
    for step in start..=tc.steps {
        if eval_at.get(next_eval) == Some(&step) {
            next_eval += 1;
            let m64 = to_f64(&model);
            let now = measure(&m64, &test);
            let pred_loss = measure(
                &ExactTransformer::scaled_identity(task.d, task.de, pred_c),
                &test,
            )
            .loss;
            let at = theory.at(pred_c);
            curve.push(CurvePoint {
                step,
                loss: now.loss.mean,
                loss_stderr: now.loss.stderr,
                c: m64.c(),
                off_identity: m64.off_identity_fraction(),
                mass_mean: now.mass_mean,
                mass_min: now.mass_min,
                pred_c,
                pred_loss: pred_loss.mean,
                pred_loss_integrated: at.loss.mean,
                pred_mass: at.mass.mean,
            });
        }
        if step == tc.steps {
            break;
        }
        match &dataset {
            Some(ds) => model.gd_step(ds, tc.lr),
            None => model.gd_step(
                &sample_batch(task, tc.batch, table.as_ref(), &mut train_rng)?.cast::<F>(),
                tc.lr,
            ),
        };
        pred_c -= tc.lr / task.de as f64 * theory.at(pred_c).slope;
        on_step(step + 1);
        if let Some(ck) = ckpt {
            let stop = (ck.stop)();
            if stop || (step + 1) % ck.every.max(1) == 0 || step + 1 == tc.steps {
                save(step + 1, &model, pred_c, next_eval, &curve, &train_rng)?;
            }
            if stop {
                bail!(
                    "interrupted after step {}; state saved to `{}`: rerun the same command to resume",
                    step + 1,
                    ck.path.display()
                );
            }
        }
    }
    Ok(TransformerResult {
        curve,
        c_star: best.c,
        floor: best.loss.mean,
        loss_at_zero: super::theory::loss_at_zero(task.t, task.d, task.q),
        model: Some(to_f64(&model)),
        table,
    })
}

/// Results of a `sts train` run (what `--json` prints).
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub transformer: Option<TransformerSummary>,
    pub fcn: Option<FcnResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransformerSummary {
    pub loss: f64,
    pub loss_stderr: f64,
    pub attention_mass_selected: f64,
    pub attention_mass_selected_min: f64,
    pub off_identity_fraction: f64,
    pub c: f64,
    pub predicted_c: f64,
    pub predicted_loss: f64,
    pub c_star: f64,
    pub floor: f64,
    pub loss_at_zero: f64,
}

impl From<&TransformerResult> for TransformerSummary {
    fn from(r: &TransformerResult) -> Self {
        let p = r.last();
        Self {
            loss: p.loss,
            loss_stderr: p.loss_stderr,
            attention_mass_selected: p.mass_mean,
            attention_mass_selected_min: p.mass_min,
            off_identity_fraction: p.off_identity,
            c: p.c,
            predicted_c: p.pred_c,
            predicted_loss: p.pred_loss,
            c_star: r.c_star,
            floor: r.floor,
            loss_at_zero: r.loss_at_zero,
        }
    }
}

/// Runs whatever the config trains and writes the curve(s) and summary into `out_dir`.
/// The transformer's state is checkpointed in `out_dir` every 5% of the run and when `stop` says so;
/// rerunning with the same config and directory resumes.
pub fn run(
    cfg: &RunConfig,
    out_dir: &Path,
    on_step: &mut dyn FnMut(usize),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<RunSummary> {
    cfg.validate()?;
    let mut summary = RunSummary {
        transformer: None,
        fcn: None,
    };
    if cfg.transformer.is_some() {
        let steps = cfg.transformer.as_ref().map_or(1, |t| t.steps);
        let ck = Checkpointing {
            path: out_dir.join("checkpoint.json"),
            every: (steps / 20).max(1),
            stop,
        };
        let r = train_transformer_resumable(cfg, on_step, Some(&ck))?;
        let header = [
            "step",
            "loss",
            "loss_stderr",
            "c",
            "off_identity",
            "mass_mean",
            "mass_min",
            "pred_c",
            "pred_loss",
            "pred_loss_integrated",
            "pred_mass",
        ];
        let rows: Vec<Vec<f64>> = r
            .curve
            .iter()
            .map(|p| {
                vec![
                    p.step as f64,
                    p.loss,
                    p.loss_stderr,
                    p.c,
                    p.off_identity,
                    p.mass_mean,
                    p.mass_min,
                    p.pred_c,
                    p.pred_loss,
                    p.pred_loss_integrated,
                    p.pred_mass,
                ]
            })
            .collect();
        crate::io::write_csv(&out_dir.join("transformer_curve.csv"), &header, &rows)?;
        summary.transformer = Some(TransformerSummary::from(&r));
    }
    if let Some(fc) = &cfg.fcn {
        let r = train_fcn(&cfg.task, fc, cfg.eval.samples, cfg.seed)?;
        let rows: Vec<Vec<f64>> = r.curve.iter().map(|(s, l)| vec![*s as f64, *l]).collect();
        crate::io::write_csv(
            &out_dir.join("fcn_curve.csv"),
            &["step", "train_loss"],
            &rows,
        )?;
        summary.fcn = Some(r);
    }
    crate::io::write_json(&out_dir.join("summary.json"), &summary)?;
    crate::io::write_json(&out_dir.join("config.json"), cfg)?;
    Ok(summary)
}
