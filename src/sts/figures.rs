//! The six sparse-token-selection figures, each measured beside what the theory predicts:
//! the loss curve against the scalar recursion, the attention mass on the selected tokens, the
//! loss floor against d_e, length generalisation, FCN test error against width with its lower
//! bound, and the width each model needs against T (the separation).
//!
//! Configs: `experiments/sts/figures/<name>.toml`, one table per preset (`cpu`, `paper`, `tiny`).
//! Transformer runs are memoised within one process, so figures that share a run train it once.

use super::fcn::{train_fcn, FcnConfig, FcnOptimizer, FcnResult};
use super::task::TaskConfig;
use super::theory::{fcn_lower_bound_closed_form, loss_at_zero, scalar_recursion, EncodingSample};
use super::train::{
    measure_at_length, train_transformer, with_de, with_fixed_table, EvalConfig, RunConfig,
    TransformerConfig, TransformerResult,
};
use crate::config::require;
use crate::figures::{Figure, FigureContext, FigureFile, FigureOutput};
use crate::plot::{Chart, Corner, Mark, Series, COLORS};
use anyhow::{anyhow, Context, Result};
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// Seed of the encoding sample behind every theory curve (fixed, so a curve can be recomputed).
pub const THEORY_SEED: u64 = 1_000_003;
/// Upper end of the search for the minimiser c* of L(c).
const C_MAX: f64 = 100.0;

pub fn figures() -> Vec<Figure> {
    vec![
        Figure {
            name: "sts/loss_curve",
            what: "population loss vs GD step (log-log) at two batch sizes beside the scalar recursion's L(c_t), and W's off-identity fraction.",
            config: None,
            compute: loss_curve,
            check: |p| check_file::<LossCurveConfig>(p).map(|_| ()),
        },
        Figure {
            name: "sts/attention_mass",
            what: "attention mass on the selected tokens vs step (mean and worst case over the test set) beside the prediction.",
            config: None,
            compute: attention_mass,
            check: |p| check_file::<AttentionMassConfig>(p).map(|_| ()),
        },
        Figure {
            name: "sts/floor_vs_de",
            what: "loss floor vs d_e (log-log): theory floor L(c*) and measured final loss, with fitted exponents.",
            config: None,
            compute: floor_vs_de,
            check: |p| check_file::<FloorVsDeConfig>(p).map(|_| ()),
        },
        Figure {
            name: "sts/length_generalisation",
            what: "test loss vs test length T' (up to 8T) for stochastic and fixed encodings, beside the prediction L_T'(c).",
            config: None,
            compute: length_generalisation,
            check: |p| check_file::<LengthGeneralisationConfig>(p).map(|_| ()),
        },
        Figure {
            name: "sts/fcn_width",
            what: "FCN test MSE vs first-layer width m over seeds, its lower bound, each net's certificate, and the transformer's loss.",
            config: None,
            compute: fcn_width,
            check: |p| check_file::<FcnWidthConfig>(p).map(|_| ()),
        },
        Figure {
            name: "sts/separation",
            what: "width needed to reach a target error vs T: FCN width m against transformer d_e, measured and from the bounds.",
            config: None,
            compute: separation,
            check: |p| check_file::<SeparationConfig>(p).map(|_| ()),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Shared machinery

fn memo() -> &'static Mutex<HashMap<String, Arc<TransformerResult>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<TransformerResult>>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

fn steps_of(cfg: &RunConfig) -> u64 {
    cfg.transformer.as_ref().map_or(0, |t| t.steps as u64)
}

/// Trains (or recalls) one run; advances `bar` by its steps.
fn train_memo(cfg: &RunConfig, bar: &ProgressBar) -> Result<Arc<TransformerResult>> {
    let key = serde_json::to_string(cfg)?;
    if let Some(r) = memo()
        .lock()
        .map_err(|_| anyhow!("run cache poisoned"))?
        .get(&key)
    {
        bar.inc(steps_of(cfg));
        return Ok(r.clone());
    }
    let r = Arc::new(train_transformer(cfg, &mut |_| bar.inc(1))?);
    memo()
        .lock()
        .map_err(|_| anyhow!("run cache poisoned"))?
        .insert(key, r.clone());
    Ok(r)
}

/// The run at every seed, seeds in parallel.
fn train_seeds(
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

fn check_seeds(seeds: &[u64]) -> Result<()> {
    require(
        !seeds.is_empty(),
        "seeds",
        "list at least one seed, e.g. seeds = [0, 1, 2]",
    )
}

fn check_run(run: &RunConfig) -> Result<&TransformerConfig> {
    run.validate().map_err(|e| e.context("in `run`"))?;
    run.transformer
        .as_ref()
        .ok_or_else(|| anyhow!("`run` needs a `[<preset>.run.transformer]` table"))
}

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

fn load<P: FigureConfig>(ctx: &FigureContext) -> Result<P> {
    Ok(check_file::<P>(ctx.config)?.preset(ctx.preset))
}

fn bar(ctx: &FigureContext, total: u64, what: &str) -> ProgressBar {
    crate::progress::bar(total, what, ctx.quiet)
}

/// The scalar recursion's prediction for `run` at its evaluation steps: `(c_t, L(c_t))` from the
/// x-integrated estimator on the encoding sample drawn with [`THEORY_SEED`].
pub fn predicted_curve(run: &RunConfig, steps: &[usize]) -> Result<(EncodingSample, Vec<f64>)> {
    let tc = check_run(run)?;
    let sample = EncodingSample::draw(&run.task, run.eval.theory_samples, None, THEORY_SEED)?;
    let cs = scalar_recursion(&sample, run.task.de, tc.lr, tc.init_c, tc.steps);
    let c_at = steps.iter().map(|&s| cs[s.min(tc.steps)]).collect();
    Ok((sample, c_at))
}

/// Least-squares slope of log y against log x.
pub fn fitted_exponent(xs: &[f64], ys: &[f64]) -> f64 {
    let lx: Vec<f64> = xs.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = ys.iter().map(|v| v.ln()).collect();
    let n = lx.len() as f64;
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let cov: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    cov / lx.iter().map(|a| (a - mx) * (a - mx)).sum::<f64>()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Evaluation steps of a run, shifted by one so that step 0 fits on a log axis.
fn step_axis(r: &TransformerResult) -> Vec<f64> {
    r.curve.iter().map(|p| p.step as f64 + 1.0).collect()
}

fn per_run<F: Fn(&super::train::CurvePoint) -> f64>(
    runs: &[Arc<TransformerResult>],
    f: F,
) -> Vec<Vec<f64>> {
    runs.iter()
        .map(|r| r.curve.iter().map(&f).collect())
        .collect()
}

const STEP_LABEL: &str = "GD step t + 1 (steps)";

// ---------------------------------------------------------------------------------------------
// 1. loss_curve

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
        Ok(())
    }
}

fn loss_curve(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: LossCurveConfig = load(ctx)?;
    let total = steps_of(&p.run) * (p.seeds.len() * p.batches.len()) as u64;
    let pb = bar(ctx, total, "sts/loss_curve: training");
    let mut loss = Chart {
        title: "Population loss: measured vs scalar recursion".into(),
        x_label: STEP_LABEL.into(),
        y_label: "population loss (squared error)".into(),
        x_log: true,
        y_log: true,
        ..Default::default()
    };
    let mut off = Chart {
        title: "W off the identity direction".into(),
        x_label: STEP_LABEL.into(),
        y_label: "||W - c I||_F / ||W||_F".into(),
        x_log: true,
        legend: Corner::UpperRight,
        ..Default::default()
    };
    let mut summary = serde_json::Map::new();
    let mut x_axis = Vec::new();
    for (i, &b) in p.batches.iter().enumerate() {
        let mut cfg = p.run.clone();
        if let Some(tc) = cfg.transformer.as_mut() {
            tc.batch = b;
        }
        let runs = train_seeds(&cfg, &p.seeds, &pb)?;
        x_axis = step_axis(&runs[0]);
        let color = COLORS[i % COLORS.len()];
        loss.series.push(Series::over_runs(
            format!("measured, batch {b}"),
            Mark::Line,
            color,
            x_axis.clone(),
            &per_run(&runs, |p| p.loss),
        ));
        // At step 0 W = 0 and the fraction is undefined: start at the first step.
        let off_runs: Vec<Vec<f64>> = per_run(&runs, |p| p.off_identity)
            .into_iter()
            .map(|r| r[1..].to_vec())
            .collect();
        off.series.push(Series::over_runs(
            format!("measured, batch {b}"),
            Mark::Line,
            color,
            x_axis[1..].to_vec(),
            &off_runs,
        ));
        let finals: Vec<f64> = runs.iter().map(|r| r.last().loss).collect();
        let pred_same: Vec<f64> = runs.iter().map(|r| r.last().pred_loss).collect();
        summary.insert(
            format!("batch_{b}"),
            json!({
                "final_loss_mean": mean(&finals),
                "final_loss_min": finals.iter().cloned().fold(f64::INFINITY, f64::min),
                "final_loss_max": finals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                "excess_over_prediction_same_test_set": mean(&finals) / mean(&pred_same) - 1.0,
                "final_off_identity_mean": mean(&runs.iter().map(|r| r.last().off_identity).collect::<Vec<_>>()),
            }),
        );
    }
    pb.finish_and_clear();
    let steps: Vec<usize> = x_axis.iter().map(|&x| x as usize - 1).collect();
    let (sample, cs) = predicted_curve(&p.run, &steps)?;
    let pred: Vec<f64> = cs.iter().map(|&c| sample.at(c).loss.mean).collect();
    let floor = sample.minimise(C_MAX);
    loss.series.push(Series::new(
        "theory L(c_t), scalar recursion",
        Mark::Dashed,
        COLORS[6],
        x_axis.clone(),
        pred.clone(),
    ));
    let (x0, x1) = (x_axis[0], *x_axis.last().unwrap_or(&1.0));
    loss.series.push(Series::hline(
        format!("floor L(c*) = {:.3}", floor.loss.mean),
        COLORS[3],
        floor.loss.mean,
        x0,
        x1,
    ));
    summary.insert(
        "predicted_final_loss".into(),
        json!(pred.last().copied().unwrap_or(f64::NAN)),
    );
    summary.insert("floor".into(), json!(floor.loss.mean));
    summary.insert("c_star".into(), json!(floor.c));
    summary.insert(
        "loss_at_zero".into(),
        json!(loss_at_zero(p.run.task.t, p.run.task.d, p.run.task.q)),
    );
    Ok(FigureOutput {
        charts: vec![loss, off],
        summary: serde_json::Value::Object(summary),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. attention_mass

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

fn attention_mass(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: AttentionMassConfig = load(ctx)?;
    let pb = bar(
        ctx,
        steps_of(&p.run) * p.seeds.len() as u64,
        "sts/attention_mass: training",
    );
    let runs = train_seeds(&p.run, &p.seeds, &pb)?;
    pb.finish_and_clear();
    let x = step_axis(&runs[0]);
    let steps: Vec<usize> = runs[0].curve.iter().map(|p| p.step).collect();
    let (sample, cs) = predicted_curve(&p.run, &steps)?;
    // The worst case depends on how many examples it is taken over: take it over a sample as
    // large as the test set.
    let same_size = EncodingSample::draw(&p.run.task, p.run.eval.samples, None, THEORY_SEED + 1)?;
    let pred_mean: Vec<f64> = cs.iter().map(|&c| sample.at(c).mass.mean).collect();
    let pred_min: Vec<f64> = cs.iter().map(|&c| same_size.at(c).mass_min).collect();
    let chart = Chart {
        title: "Attention mass on the q selected tokens".into(),
        x_label: STEP_LABEL.into(),
        y_label: "attention mass on selected tokens (fraction)".into(),
        x_log: true,
        legend: Corner::UpperLeft,
        series: vec![
            Series::over_runs(
                "measured mean over test set",
                Mark::Line,
                COLORS[0],
                x.clone(),
                &per_run(&runs, |p| p.mass_mean),
            ),
            Series::over_runs(
                "measured worst case over test set",
                Mark::Line,
                COLORS[1],
                x.clone(),
                &per_run(&runs, |p| p.mass_min),
            ),
            Series::new(
                "theory mean at c_t",
                Mark::Dashed,
                COLORS[6],
                x.clone(),
                pred_mean.clone(),
            ),
            Series::new(
                "theory worst case at c_t",
                Mark::Dashed,
                COLORS[3],
                x.clone(),
                pred_min.clone(),
            ),
        ],
        ..Default::default()
    };
    let fin = |f: fn(&super::train::CurvePoint) -> f64| {
        mean(&runs.iter().map(|r| f(r.last())).collect::<Vec<_>>())
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "final_mass_mean": fin(|p| p.mass_mean),
            "final_mass_min": fin(|p| p.mass_min),
            "predicted_final_mass_mean": pred_mean.last(),
            "predicted_final_mass_min": pred_min.last(),
            "uniform_attention_mass": p.run.task.q as f64 / p.run.task.t as f64,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. floor_vs_de

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorVsDeConfig {
    pub seeds: Vec<u64>,
    /// d_e of the trained runs (lr scaled with d_e, see `sts::train::with_de`).
    pub des: Vec<usize>,
    /// Extra d_e where only the theory floor is drawn.
    #[serde(default)]
    pub theory_des: Vec<usize>,
    pub run: RunConfig,
}

/// The theory floor `min_c L(c)` at `task`, from the encoding sample drawn with [`THEORY_SEED`].
pub fn theory_floor(task: &TaskConfig, samples: usize) -> Result<f64> {
    Ok(EncodingSample::draw(task, samples, None, THEORY_SEED)?
        .minimise(C_MAX)
        .loss
        .mean)
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
        Ok(())
    }
}

fn floor_vs_de(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: FloorVsDeConfig = load(ctx)?;
    let total: u64 = steps_of(&p.run) * (p.seeds.len() * p.des.len()) as u64;
    let pb = bar(ctx, total, "sts/floor_vs_de: training");
    let mut measured_runs: Vec<Vec<f64>> = vec![Vec::new(); p.seeds.len()];
    for &de in &p.des {
        let runs = train_seeds(&with_de(&p.run, de), &p.seeds, &pb)?;
        for (s, r) in runs.iter().enumerate() {
            measured_runs[s].push(r.last().loss);
        }
    }
    pb.finish_and_clear();
    let mut all_des: Vec<usize> = p.des.iter().chain(&p.theory_des).copied().collect();
    all_des.sort_unstable();
    all_des.dedup();
    let floors: Vec<f64> = all_des
        .par_iter()
        .map(|&de| {
            theory_floor(
                &TaskConfig {
                    de,
                    ..p.run.task.clone()
                },
                p.run.eval.theory_samples,
            )
        })
        .collect::<Result<_>>()?;
    let xs: Vec<f64> = p.des.iter().map(|&d| d as f64).collect();
    let floors_at_des: Vec<f64> = p
        .des
        .iter()
        .map(|de| floors[all_des.iter().position(|x| x == de).unwrap_or(0)])
        .collect();
    let measured_mean: Vec<f64> = (0..p.des.len())
        .map(|i| mean(&measured_runs.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect();
    let (a_theory, a_measured) = (
        fitted_exponent(&xs, &floors_at_des),
        fitted_exponent(&xs, &measured_mean),
    );
    let chart = Chart {
        title: format!(
            "Loss floor vs d_e (T={}, d={}, q={})",
            p.run.task.t, p.run.task.d, p.run.task.q
        ),
        x_label: "positional-encoding dimension d_e".into(),
        y_label: "final loss or floor L(c*) (squared error)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::UpperRight,
        series: vec![
            Series::over_runs(
                format!("measured final loss, slope {a_measured:.2}"),
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &measured_runs,
            ),
            Series::new(
                format!("theory floor L(c*), slope {a_theory:.2}"),
                Mark::Dashed,
                COLORS[6],
                all_des.iter().map(|&d| d as f64).collect(),
                floors.clone(),
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "des": p.des,
            "measured_final_loss_mean": measured_mean,
            "theory_floor": floors_at_des,
            "fitted_exponent_measured": a_measured,
            "fitted_exponent_theory": a_theory,
            "theory_des": all_des,
            "theory_floor_all": floors,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 4. length_generalisation

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
        Ok(())
    }
}

fn length_generalisation(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: LengthGeneralisationConfig = load(ctx)?;
    let fixed_cfg = with_fixed_table(&p.run);
    let pb = bar(
        ctx,
        2 * steps_of(&p.run) * p.seeds.len() as u64,
        "sts/length_generalisation: training",
    );
    let spe = train_seeds(&p.run, &p.seeds, &pb)?;
    let fixed = train_seeds(&fixed_cfg, &p.seeds, &pb)?;
    pb.finish_and_clear();
    let measure = |runs: &[Arc<TransformerResult>], cfg: &RunConfig| -> Result<Vec<Vec<f64>>> {
        runs.iter()
            .zip(&p.seeds)
            .map(|(r, &seed)| {
                let model = r
                    .model
                    .as_ref()
                    .ok_or_else(|| anyhow!("run kept no model"))?;
                p.test_lengths
                    .iter()
                    .map(|&t| {
                        Ok(
                            measure_at_length(model, &cfg.task, t, p.test_samples, seed)?
                                .loss
                                .mean,
                        )
                    })
                    .collect()
            })
            .collect()
    };
    let spe_loss = measure(&spe, &p.run)?;
    let fixed_loss = measure(&fixed, &fixed_cfg)?;
    // The prediction made before testing: L_T'(c) with each seed's learned c.
    let pred: Vec<Vec<f64>> = spe
        .iter()
        .map(|r| {
            let c = r.last().c;
            p.test_lengths
                .iter()
                .map(|&t| {
                    Ok(EncodingSample::draw(
                        &p.run.task.with_len(t),
                        p.run.eval.theory_samples,
                        None,
                        THEORY_SEED,
                    )?
                    .at(c)
                    .loss
                    .mean)
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let xs: Vec<f64> = p.test_lengths.iter().map(|&t| t as f64).collect();
    let task = &p.run.task;
    let chart = Chart {
        title: format!("Length generalisation (trained at T = {})", task.t),
        x_label: "test sequence length T' (tokens)".into(),
        y_label: "test loss (squared error)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::LowerRight,
        series: vec![
            Series::over_runs(
                "stochastic encodings, measured",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &spe_loss,
            ),
            Series::over_runs(
                "prediction L_T'(c), learned c",
                Mark::Dashed,
                COLORS[6],
                xs.clone(),
                &pred,
            ),
            Series::over_runs(
                "fixed table, measured",
                Mark::LinePoints,
                COLORS[1],
                xs.clone(),
                &fixed_loss,
            ),
            Series::new(
                "W = 0 (uniform attention)",
                Mark::Dashed,
                COLORS[3],
                xs.clone(),
                p.test_lengths
                    .iter()
                    .map(|&t| loss_at_zero(t, task.d, task.q))
                    .collect(),
            ),
        ],
    };
    let col = |m: &[Vec<f64>]| -> Vec<f64> {
        (0..xs.len())
            .map(|i| mean(&m.iter().map(|r| r[i]).collect::<Vec<_>>()))
            .collect()
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "test_lengths": p.test_lengths,
            "stochastic_mean": col(&spe_loss),
            "prediction_mean": col(&pred),
            "fixed_mean": col(&fixed_loss),
            "learned_c": spe.iter().map(|r| r.last().c).collect::<Vec<_>>(),
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 5. fcn_width

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

fn default_depth() -> usize {
    2
}

impl FcnSweep {
    fn at_width(&self, width: usize) -> Result<FcnConfig> {
        let c = FcnConfig {
            width,
            depth: self.depth,
            optimizer: self.optimizer,
            lr: self.lr,
            steps: self.steps,
            batch: self.batch,
        };
        c.validate().map_err(|e| e.context("in `fcn`"))?;
        Ok(c)
    }

    /// Trains one net per (width, seed), in parallel; advances `bar` by steps.
    fn train_all(
        &self,
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
                let r = train_fcn(task, &self.at_width(w)?, self.eval_samples, s)?;
                bar.inc(self.steps as u64);
                Ok(r)
            })
            .collect::<Result<_>>()?;
        Ok(done.chunks(seeds.len()).map(|c| c.to_vec()).collect())
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
        self.fcn.at_width(1)?;
        Ok(())
    }
}

fn fcn_width(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: FcnWidthConfig = load(ctx)?;
    let task = &p.run.task;
    let total = p.fcn.steps as u64 * (p.widths.len() * p.seeds.len()) as u64 + steps_of(&p.run);
    let pb = bar(ctx, total, "sts/fcn_width: training");
    let nets = p.fcn.train_all(task, &p.widths, &p.seeds, &pb)?;
    let transformer = train_memo(&p.run, &pb)?;
    pb.finish_and_clear();
    let xs: Vec<f64> = p.widths.iter().map(|&w| w as f64).collect();
    let mse: Vec<Vec<f64>> = (0..p.seeds.len())
        .map(|s| nets.iter().map(|n| n[s].test_mse).collect())
        .collect();
    let (cx, cy): (Vec<f64>, Vec<f64>) = nets
        .iter()
        .flatten()
        .map(|n| (n.width as f64, n.certificate))
        .unzip();
    let td = task.t * task.d;
    let m_max = (*p.widths.iter().max().unwrap_or(&1)).max(td);
    let mut bound_m: Vec<usize> = (0..=40)
        .map(|i| ((m_max as f64).powf(i as f64 / 40.0)).round() as usize)
        .chain(p.widths.iter().copied())
        .chain([td.saturating_sub(1), td])
        .filter(|&m| m >= 1)
        .collect();
    bound_m.sort_unstable();
    bound_m.dedup();
    let bound: Vec<f64> = bound_m
        .iter()
        .map(|&m| fcn_lower_bound_closed_form(task.t, task.d, task.q, m))
        .collect::<Result<_>>()?;
    let t_loss = transformer.last().loss;
    let (x0, x1) = (bound_m[0] as f64, m_max as f64);
    let chart = Chart {
        title: format!(
            "FCN vs width (T={}, d={}, q={}, T d = {td})",
            task.t, task.d, task.q
        ),
        x_label: "FCN first-layer width m (units)".into(),
        y_label: "test MSE".into(),
        x_log: true,
        y_log: false,
        legend: Corner::UpperRight,
        series: vec![
            Series::over_runs(
                "FCN test MSE",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                &mse,
            ),
            Series::new("each net's certificate", Mark::Points, COLORS[1], cx, cy),
            Series::new(
                "lower bound, any FCN of width m",
                Mark::Dashed,
                COLORS[6],
                bound_m.iter().map(|&m| m as f64).collect(),
                bound.clone(),
            ),
            Series::hline(
                format!("transformer, d_e = {} (measured)", task.de),
                COLORS[2],
                t_loss,
                x0,
                x1,
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({
            "widths": p.widths,
            "fcn_test_mse_mean": (0..xs.len()).map(|i| mean(&mse.iter().map(|r| r[i]).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "certificate_mean": nets.iter().map(|n| mean(&n.iter().map(|r| r.certificate).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "lower_bound": p.widths.iter().map(|&m| fcn_lower_bound_closed_form(task.t, task.d, task.q, m)).collect::<Result<Vec<_>>>()?,
            "transformer_loss": t_loss,
            "transformer_floor": transformer.floor,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// 6. separation

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeparationConfig {
    pub seed: u64,
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

/// Smallest grid value whose error is at most `target`, interpolated log-linearly between the
/// last grid value above the target and the first at or below it; NaN when none reaches it.
pub fn needed(grid: &[f64], err: &[f64], target: f64) -> f64 {
    match err.iter().position(|&e| e <= target) {
        None => f64::NAN,
        Some(0) => grid[0],
        Some(i) => {
            let (x0, x1, e0, e1) = (grid[i - 1].ln(), grid[i].ln(), err[i - 1], err[i]);
            (x0 + (x1 - x0) * (e0 - target) / (e0 - e1)).exp()
        }
    }
}

/// The smallest d_e whose theory floor is at most `target` (doubling, then bisection).
pub fn theory_de_needed(task: &TaskConfig, target: f64, samples: usize) -> Result<usize> {
    let floor = |de| theory_floor(&TaskConfig { de, ..task.clone() }, samples);
    let mut hi = 1usize;
    while floor(hi)? > target {
        hi *= 2;
        require(
            hi <= 1 << 16,
            "target_fraction",
            "no d_e up to 65536 reaches it; raise the target",
        )?;
    }
    let mut lo = hi / 2;
    if lo == 0 {
        return Ok(1);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if floor(mid)? <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The smallest FCN width m whose lower bound is at most `target`.
pub fn fcn_width_needed(t: usize, d: usize, q: usize, target: f64) -> Result<usize> {
    for m in 0..=t * d {
        if fcn_lower_bound_closed_form(t, d, q, m)? <= target {
            return Ok(m);
        }
    }
    Ok(t * d)
}

impl SeparationConfig {
    /// The transformer run at length t and the reference d_e.
    fn base(&self, t: usize) -> RunConfig {
        RunConfig {
            seed: self.seed,
            task: TaskConfig::new(t, self.d, self.q, self.reference_de),
            transformer: Some(self.transformer.clone()),
            fcn: None,
            eval: self.eval.clone(),
        }
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
            !self.width_factors.is_empty() && self.width_factors.iter().all(|&f| f > 0.0),
            "width_factors",
            "list at least one positive factor",
        )?;
        for &t in &self.ts {
            check_run(&self.base(t)).map_err(|e| e.context(format!("at T = {t}")))?;
        }
        self.fcn.at_width(1)?;
        Ok(())
    }
}

fn separation(ctx: &FigureContext) -> Result<FigureOutput> {
    let p: SeparationConfig = load(ctx)?;
    let base = |t: usize| p.base(t);
    let total = (p.transformer.steps * p.des.len() + p.fcn.steps * p.width_factors.len()) as u64
        * p.ts.len() as u64;
    let pb = bar(ctx, total, "sts/separation: training");
    let mut rows = Vec::new();
    for &t in &p.ts {
        let target = p.target_fraction * loss_at_zero(t, p.d, p.q);
        let task = TaskConfig::new(t, p.d, p.q, p.reference_de);
        let trans: Vec<f64> = p
            .des
            .par_iter()
            .map(|&de| Ok(train_memo(&with_de(&base(t), de), &pb)?.last().loss))
            .collect::<Result<_>>()?;
        let widths: Vec<usize> = p
            .width_factors
            .iter()
            .map(|f| ((f * (t * p.d) as f64).round() as usize).max(1))
            .collect();
        let nets = p.fcn.train_all(&task, &widths, &[p.seed], &pb)?;
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
    pb.finish_and_clear();
    let xs: Vec<f64> = p.ts.iter().map(|&t| t as f64).collect();
    let get = |k: &str| -> Vec<f64> {
        rows.iter()
            .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    // Where no FCN width tried reaches the target, mark the widest one: the need is above it.
    let not_reached: Vec<f64> = rows
        .iter()
        .map(|r| match r["fcn_width_measured"].as_f64() {
            Some(_) => f64::NAN,
            None => r["fcn_widths"]
                .as_array()
                .and_then(|w| w.last())
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN),
        })
        .collect();
    let chart = Chart {
        title: format!(
            "Width needed for error <= {} L(0) (d={}, q={})",
            p.target_fraction, p.d, p.q
        ),
        x_label: "sequence length T (tokens)".into(),
        y_label: "width needed (FCN: m, transformer: d_e)".into(),
        x_log: true,
        y_log: true,
        legend: Corner::UpperLeft,
        series: vec![
            Series::new(
                "FCN, measured",
                Mark::LinePoints,
                COLORS[1],
                xs.clone(),
                get("fcn_width_measured"),
            ),
            Series::new(
                "FCN, target not reached at the widest net tried",
                Mark::Points,
                COLORS[3],
                xs.clone(),
                not_reached,
            ),
            Series::new(
                "FCN, lower bound solved for m",
                Mark::Dashed,
                COLORS[1],
                xs.clone(),
                get("fcn_width_bound"),
            ),
            Series::new(
                "transformer, measured d_e",
                Mark::LinePoints,
                COLORS[0],
                xs.clone(),
                get("transformer_de_measured"),
            ),
            Series::new(
                "transformer, theory floor solved for d_e",
                Mark::Dashed,
                COLORS[0],
                xs.clone(),
                get("transformer_de_theory"),
            ),
        ],
    };
    Ok(FigureOutput {
        charts: vec![chart],
        summary: json!({ "target_fraction": p.target_fraction, "rows": rows }),
    })
}
