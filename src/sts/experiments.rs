//! The studies behind the figures: each one's config (which runs it needs, read from its TOML
//! under `experiments/sts/figures/`, range-checked per preset) and the runs themselves, shared by
//! the figures and the tests: a transformer run trained once per process and recalled after, the
//! same run over seeds, FCNs over a (width, seed) grid, trained models measured at other sequence
//! lengths. All train in memory through the engine (`drive` without a run directory).

use super::config::{
    default_depth, with_de, EvalConfig, FcnConfig, FcnOptimizer, RunConfig, TransformerConfig,
};
use super::fcn::{train_fcn, FcnResult};
use super::model::selected_mass;
use super::model::ExactTransformer;
use super::task::{fixed_table, sample_batch, Encoding, TaskConfig, SAMPLE_CHUNK};
use super::theory::{
    fcn_width_needed, loss_at_zero, needed, theory_de_needed, EncodingSample, THEORY_SEED,
};
use super::theory::{Estimate, Measurement};
use super::train::{drive_transformer, TransformerResult};
use crate::config::require;
use crate::plot::figure::FigureFile;
use crate::run::DriveOpts;
use anyhow::Context;
use anyhow::{anyhow, Result};
use indicatif::ProgressBar;
use ndarray::Array1;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

fn memo() -> &'static Mutex<HashMap<String, Arc<TransformerResult>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<TransformerResult>>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Optimiser steps of a run's transformer (0 without one).
pub fn steps_of(cfg: &RunConfig) -> u64 {
    cfg.transformer.as_ref().map_or(0, |t| t.steps as u64)
}

/// Trains one transformer run, or recalls it when this process trained the same config before
/// (figures that share a run train it once); advances `bar` by its steps either way.
pub fn train_memo(cfg: &RunConfig, bar: &ProgressBar) -> Result<Arc<TransformerResult>> {
    let key = serde_json::to_string(cfg)?;
    if let Some(r) = memo()
        .lock()
        .map_err(|_| anyhow!("run cache poisoned"))?
        .get(&key)
    {
        bar.inc(steps_of(cfg));
        return Ok(r.clone());
    }
    let r = Arc::new(drive_transformer(
        cfg,
        &DriveOpts::new(None),
        Some(bar.clone()),
    )?);
    memo()
        .lock()
        .map_err(|_| anyhow!("run cache poisoned"))?
        .insert(key, r.clone());
    Ok(r)
}

/// The run at every seed, seeds in parallel.
pub fn train_seeds(
    cfg: &RunConfig,
    seeds: &[u64],
    bar: &ProgressBar,
) -> Result<Vec<Arc<TransformerResult>>> {
    seeds
        .par_iter()
        .map(|&s| {
            let mut c = cfg.clone();
            c.seed = s;
            train_memo(&c, bar)
        })
        .collect()
}

/// One FCN per (width, seed), in parallel; `result[w][s]`. Advances `bar` by steps.
pub fn train_fcn_grid(
    sweep: &FcnSweep,
    task: &TaskConfig,
    widths: &[usize],
    seeds: &[u64],
    bar: &ProgressBar,
) -> Result<Vec<Vec<FcnResult>>> {
    let jobs: Vec<(usize, u64)> = widths
        .iter()
        .flat_map(|&w| seeds.iter().map(move |&s| (w, s)))
        .collect();
    let done: Vec<FcnResult> = jobs
        .par_iter()
        .map(|&(w, s)| {
            let r = train_fcn(task, &sweep.at_width(task, w)?, sweep.eval_samples, s)?;
            bar.inc(sweep.steps as u64);
            Ok(r)
        })
        .collect::<Result<_>>()?;
    Ok(done.chunks(seeds.len()).map(|c| c.to_vec()).collect())
}

/// Measures a trained model on `samples` fresh examples of length `t` (length generalisation).
/// With a fixed table, positions beyond the training length get the table's extension: rows
/// drawn like the others but never seen in training. The examples are drawn and measured in
/// pieces of whole sampling chunks, so they are the same examples as one draw of `samples` while
/// memory stays bounded (the paper preset's 16384 examples at T' = 512 would hold 18 GB).
pub fn measure_at_length(
    model: &ExactTransformer<f64>,
    task: &TaskConfig,
    t: usize,
    samples: usize,
    seed: u64,
) -> Result<Measurement> {
    let task = task.with_len(t);
    task.validate()?;
    let piece = measure_piece(&task);
    task.check_examples(samples.min(piece), "test_samples")?;
    let table = (task.encoding == Encoding::Fixed).then(|| fixed_table(seed, t, task.de));
    let mut rng = crate::rng::stream(seed, super::seeds::LENGTH_TEST);
    let (mut losses, mut masses) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    let mut left = samples;
    while left > 0 {
        let n = left.min(piece);
        let test = sample_batch(&task, n, table.as_ref(), &mut rng)?;
        let fw = model.forward(&test);
        losses.extend(fw.losses.iter().copied());
        masses.extend(selected_mass(&fw.attn, &test.sel));
        left -= n;
    }
    Ok(Measurement {
        loss: Estimate::from_samples(&losses),
        mass_mean: Array1::from(masses.clone()).mean().unwrap_or(0.0),
        mass_min: masses.iter().cloned().fold(f64::INFINITY, f64::min),
    })
}

/// Examples measured at once: whole sampling chunks holding about 2^26 numbers.
fn measure_piece(task: &TaskConfig) -> usize {
    let each = task.t * (task.d + task.de);
    ((1usize << 26) / each / SAMPLE_CHUNK).max(1) * SAMPLE_CHUNK
}

/// The test loss of each run's model (seed `seeds[i]` for run i) at every length: `[run][length]`.
pub fn losses_at_lengths(
    runs: &[Arc<TransformerResult>],
    task: &TaskConfig,
    lengths: &[usize],
    samples: usize,
    seeds: &[u64],
) -> Result<Vec<Vec<f64>>> {
    runs.iter()
        .zip(seeds)
        .map(|(r, &seed)| {
            let model = r
                .model
                .as_ref()
                .ok_or_else(|| anyhow!("run kept no model"))?;
            lengths
                .iter()
                .map(|&t| Ok(measure_at_length(model, task, t, samples, seed)?.loss.mean))
                .collect()
        })
        .collect()
}

/// The prediction `L_T'(c)` at every length with each run's learned c (x-integrated, on the
/// encoding sample drawn with [`THEORY_SEED`]): `[run][length]`.
pub fn predicted_at_lengths(
    runs: &[Arc<TransformerResult>],
    task: &TaskConfig,
    lengths: &[usize],
    theory_samples: usize,
) -> Result<Vec<Vec<f64>>> {
    runs.iter()
        .map(|r| {
            let c = r.last().c;
            lengths
                .iter()
                .map(|&t| {
                    Ok(
                        EncodingSample::draw(&task.with_len(t), theory_samples, None, THEORY_SEED)?
                            .at(c)
                            .loss
                            .mean,
                    )
                })
                .collect()
        })
        .collect()
}

/// One row per T of the separation study: the transformer trained at every d_e and the FCN at
/// every width, the width each needs to reach the target (measured, and from the theory floor
/// or the FCN bound), and the losses behind them.
pub fn separation_rows(p: &SeparationConfig, bar: &ProgressBar) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for &t in &p.ts {
        let target = p.target_fraction * loss_at_zero(t, p.d, p.q);
        let task = TaskConfig::new(t, p.d, p.q, p.reference_de);
        let trans: Vec<f64> = p
            .des
            .par_iter()
            .map(|&de| Ok(train_memo(&with_de(&p.base(t), de), bar)?.last().loss))
            .collect::<Result<_>>()?;
        let widths = p.widths(t);
        let nets = train_fcn_grid(&p.fcn, &task, &widths, &[p.seed], bar)?;
        let fcn_err: Vec<f64> = nets.iter().map(|n| n[0].test_mse).collect();
        let de_grid: Vec<f64> = p.des.iter().map(|&d| d as f64).collect();
        let w_grid: Vec<f64> = widths.iter().map(|&w| w as f64).collect();
        rows.push(json!({
            "t": t,
            "target": target,
            "transformer_de_measured": needed(&de_grid, &trans, target),
            "transformer_de_theory": theory_de_needed(&task, target, p.eval.theory_samples)?,
            "fcn_width_measured": needed(&w_grid, &fcn_err, target),
            "fcn_width_bound": fcn_width_needed(t, p.d, p.q, target)?,
            "transformer_loss_by_de": trans,
            "fcn_mse_by_width": fcn_err,
            "fcn_widths": widths,
        }));
    }
    Ok(rows)
}

/// Per row of [`separation_rows`]: where no FCN width tried reaches the target, the widest one
/// (the need is above it); NaN where one does.
pub fn widest_unreached(rows: &[serde_json::Value]) -> Vec<f64> {
    rows.iter()
        .map(|r| match r["fcn_width_measured"].as_f64() {
            Some(_) => f64::NAN,
            None => r["fcn_widths"]
                .as_array()
                .and_then(|w| w.last())
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The studies: one config per figure, one table per preset in its file (`experiments/sts/figures/`).

/// A figure's config (one preset): parsed with `deny_unknown_fields`, then range-checked.
pub trait FigureConfig: Clone + serde::de::DeserializeOwned {
    fn check(&self) -> Result<()>;
}

/// Parses a figure config file and checks every preset; errors name the file and the preset.
pub fn check_file<P: FigureConfig>(path: &Path) -> Result<FigureFile<P>> {
    let f = FigureFile::<P>::load(path)?;
    for (name, p) in [("cpu", &f.cpu), ("paper", &f.paper), ("tiny", &f.tiny)] {
        p.check()
            .with_context(|| format!("in `{}` [{name}]", path.display()))?;
    }
    Ok(f)
}

fn check_seeds(seeds: &[u64]) -> Result<()> {
    require(
        !seeds.is_empty(),
        "seeds",
        "list at least one seed, e.g. seeds = [0, 1, 2]",
    )
}

/// Checks a figure's transformer run; returns its `[transformer]` table.
pub fn check_run(run: &RunConfig) -> Result<&TransformerConfig> {
    run.validate().map_err(|e| e.context("in `run`"))?;
    run.transformer
        .as_ref()
        .ok_or_else(|| anyhow!("`run` needs a `[<preset>.run.transformer]` table"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossCurveConfig {
    /// Seeds of the band (min..max over seeds).
    pub seeds: Vec<u64>,
    /// Fresh-batch sizes compared (gradient noise: excess loss falls as 1/batch).
    pub batches: Vec<usize>,
    pub run: RunConfig,
}

impl FigureConfig for LossCurveConfig {
    fn check(&self) -> Result<()> {
        check_seeds(&self.seeds)?;
        check_run(&self.run)?;
        require(
            !self.batches.is_empty() && self.batches.iter().all(|&b| b >= 1),
            "batches",
            "list at least one batch size >= 1",
        )?;
        for &b in &self.batches {
            self.run.task.check_examples(b, "batches")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionMassConfig {
    pub seeds: Vec<u64>,
    pub run: RunConfig,
}

impl FigureConfig for AttentionMassConfig {
    fn check(&self) -> Result<()> {
        check_seeds(&self.seeds)?;
        check_run(&self.run)?;
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorVsDeConfig {
    pub seeds: Vec<u64>,
    /// d_e of the trained runs (lr scaled with d_e, see [`with_de`]).
    pub des: Vec<usize>,
    /// Extra d_e where only the theory floor is drawn.
    #[serde(default)]
    pub theory_des: Vec<usize>,
    pub run: RunConfig,
}

impl FigureConfig for FloorVsDeConfig {
    fn check(&self) -> Result<()> {
        check_seeds(&self.seeds)?;
        check_run(&self.run)?;
        require(
            self.des.len() >= 2 && self.des.iter().all(|&d| d >= 1),
            "des",
            "list at least two d_e >= 1 to fit an exponent",
        )?;
        for &de in &self.des {
            with_de(&self.run, de)
                .validate()
                .with_context(|| format!("in `des` at d_e = {de}"))?;
        }
        // Only the theory floor is computed at these: no test set, no training.
        for &de in &self.theory_des {
            TaskConfig {
                de,
                ..self.run.task.clone()
            }
            .validate()
            .with_context(|| format!("in `theory_des` at d_e = {de}"))?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthGeneralisationConfig {
    pub seeds: Vec<u64>,
    /// Test lengths T' (the training length is `run.task.t`).
    pub test_lengths: Vec<usize>,
    /// Test examples per length.
    pub test_samples: usize,
    /// The stochastic-encoding run; the fixed-table run is the same with `with_fixed_table`.
    pub run: RunConfig,
}

impl FigureConfig for LengthGeneralisationConfig {
    fn check(&self) -> Result<()> {
        check_seeds(&self.seeds)?;
        check_run(&self.run)?;
        require(
            !self.test_lengths.is_empty()
                && self.test_lengths.iter().all(|&t| t >= self.run.task.q),
            "test_lengths",
            "list at least one length, each at least q",
        )?;
        require(self.test_samples >= 2, "test_samples", "must be at least 2")?;
        for &t in &self.test_lengths {
            let task = self.run.task.with_len(t);
            task.validate()
                .with_context(|| format!("in `test_lengths` at T' = {t}"))?;
        }
        Ok(())
    }
}

/// FCN training settings of a width sweep (the width comes from the sweep).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcnSweep {
    #[serde(default = "default_depth")]
    pub depth: usize,
    pub optimizer: FcnOptimizer,
    pub lr: f64,
    pub steps: usize,
    pub batch: usize,
    /// Test examples per trained net.
    pub eval_samples: usize,
}

impl FcnSweep {
    /// The FCN config at `width`, checked for `task`.
    pub fn at_width(&self, task: &TaskConfig, width: usize) -> Result<FcnConfig> {
        let c = FcnConfig {
            width,
            depth: self.depth,
            optimizer: self.optimizer,
            lr: self.lr,
            steps: self.steps,
            batch: self.batch,
        };
        c.validate(task).map_err(|e| e.context("in `fcn`"))?;
        require(
            self.eval_samples >= 2,
            "fcn.eval_samples",
            "must be at least 2",
        )?;
        task.check_examples(self.eval_samples, "fcn.eval_samples")?;
        Ok(c)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcnWidthConfig {
    pub seeds: Vec<u64>,
    /// First-layer widths m.
    pub widths: Vec<usize>,
    pub fcn: FcnSweep,
    /// The transformer reference (its task is the FCN's task too).
    pub run: RunConfig,
}

impl FigureConfig for FcnWidthConfig {
    fn check(&self) -> Result<()> {
        check_seeds(&self.seeds)?;
        check_run(&self.run)?;
        require(
            !self.widths.is_empty() && self.widths.iter().all(|&w| w >= 1),
            "widths",
            "list at least one width >= 1",
        )?;
        for &w in &self.widths {
            self.fcn.at_width(&self.run.task, w)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeparationConfig {
    pub seed: u64,
    /// Seeds the whole study is repeated at (none: `seed` alone); the chart shows the first.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Sequence lengths T.
    pub ts: Vec<usize>,
    pub d: usize,
    pub q: usize,
    /// Target error as a fraction of L(0) = d (1/q - 1/T).
    pub target_fraction: f64,
    /// d_e grid the transformer is trained on at every T.
    pub des: Vec<usize>,
    /// Transformer training at `reference_de` (lr scales with d_e).
    pub reference_de: usize,
    pub transformer: TransformerConfig,
    pub eval: EvalConfig,
    /// FCN widths tried at every T, as multiples of T d.
    pub width_factors: Vec<f64>,
    pub fcn: FcnSweep,
}

impl SeparationConfig {
    /// The seeds of the study: `seeds`, or `seed` alone.
    pub fn all_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }

    /// The transformer run at length t and the reference d_e.
    pub fn base(&self, t: usize) -> RunConfig {
        RunConfig {
            seed: self.seed,
            task: TaskConfig::new(t, self.d, self.q, self.reference_de),
            transformer: Some(self.transformer.clone()),
            fcn: None,
            eval: self.eval.clone(),
        }
    }

    /// The FCN widths tried at length t.
    pub fn widths(&self, t: usize) -> Vec<usize> {
        self.width_factors
            .iter()
            .map(|f| ((f * (t * self.d) as f64).round() as usize).max(1))
            .collect()
    }
}

impl FigureConfig for SeparationConfig {
    fn check(&self) -> Result<()> {
        require(
            self.target_fraction > 0.0 && self.target_fraction < 1.0,
            "target_fraction",
            "must lie in (0, 1)",
        )?;
        require(!self.ts.is_empty(), "ts", "list at least one T")?;
        require(!self.des.is_empty(), "des", "list at least one d_e")?;
        require(
            !self.width_factors.is_empty()
                && self
                    .width_factors
                    .iter()
                    .all(|&f| f.is_finite() && f > 0.0 && f <= 1e3),
            "width_factors",
            "list at least one factor in (0, 1000]",
        )?;
        for &t in &self.ts {
            let base = self.base(t);
            check_run(&base).map_err(|e| e.context(format!("at T = {t}")))?;
            for &de in &self.des {
                with_de(&base, de)
                    .validate()
                    .with_context(|| format!("in `des` at T = {t}, d_e = {de}"))?;
            }
            for w in self.widths(t) {
                self.fcn
                    .at_width(&base.task, w)
                    .with_context(|| format!("at T = {t}, width {w}"))?;
            }
        }
        Ok(())
    }
}
