//! `attnlab sts ...`: predictions, bounds, training and the benchmark from the command line.

use super::config::{RunConfig, RunFile};
use super::fcn::{drive_fcn, FcnResult};
use super::model::MAX_ABS_C;
use super::task::{Encoding, Query, TaskConfig};
use super::theory::{
    fcn_lower_bound_closed_form, fcn_lower_bound_eigh, loss_at_zero, population_loss_mc,
    EncodingSample,
};
use super::train::{drive_transformer, TransformerResult};
use crate::config::Preset;
use crate::run::{DriveOpts, Identity, RunDir};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct StsArgs {
    #[command(subcommand)]
    cmd: StsCmd,
}

#[derive(Subcommand, Debug)]
enum StsCmd {
    /// The population loss L(c) of W = cI on a grid of c, its minimiser and floor.
    Predict(PredictArgs),
    /// The lower bound on any FCN's MSE at first-layer width m (closed form and eigh).
    FcnBound(FcnBoundArgs),
    /// Train as a config file says; prints the final metrics and writes the curve.
    Train(TrainArgs),
    /// Training steps per second: analytic ndarray model against candle autograd.
    Bench(super::bench::BenchArgs),
}

#[derive(Args, Debug)]
struct TaskArgs {
    /// Sequence length T.
    #[arg(long)]
    t: usize,
    /// Token dimension d.
    #[arg(long)]
    d: usize,
    /// Subset size q.
    #[arg(long)]
    q: usize,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// Positional-encoding dimension d_e.
    #[arg(long)]
    de: usize,
    /// Comma-separated grid of c, each in [-1e6, 1e6].
    #[arg(long, value_delimiter = ',', required = true)]
    c: Vec<f64>,
    /// Monte-Carlo examples per c.
    #[arg(long, default_value_t = 20000)]
    samples: usize,
    /// Seed of the Monte-Carlo samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Encoding::Sphere)]
    encoding: Encoding,
    #[arg(long, value_enum, default_value_t = Query::Sum)]
    query: Query,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FcnBoundArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// First-layer width m.
    #[arg(long)]
    m: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// A config file under experiments/sts/.
    #[arg(long)]
    config: PathBuf,
    /// Which preset table of the config to run.
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    preset: Preset,
    /// Overrides one value of the preset, validated like the file (e.g. `--set transformer.lr=2`);
    /// repeatable.
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    set: Vec<String>,
    /// Sets the run's seed (default: the config's).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory of the run (default runs/sts/<config name>-<preset>-seed<seed>); the same
    /// command resumes it, another run is refused there.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the final metrics as one JSON object (and hide the progress bar).
    #[arg(long)]
    json: bool,
}

pub fn run(a: StsArgs) -> Result<()> {
    match a.cmd {
        StsCmd::Predict(p) => predict(p),
        StsCmd::FcnBound(b) => fcn_bound(b),
        StsCmd::Train(t) => train(t),
        StsCmd::Bench(b) => super::bench::run(b),
    }
}

/// A validation error with its config field names (`` `q` ``) written as the flags (`` `--q` ``).
fn as_flags(e: anyhow::Error, fields: &[&str]) -> anyhow::Error {
    let mut msg = format!("{e:#}");
    for f in fields {
        msg = msg.replace(&format!("`{f}`"), &format!("`--{f}`"));
    }
    anyhow!(msg)
}

const TASK_FLAGS: [&str; 5] = ["t", "d", "q", "de", "samples"];

fn predict(p: PredictArgs) -> Result<()> {
    predict_in(p).map_err(|e| as_flags(e, &TASK_FLAGS))
}

fn predict_in(p: PredictArgs) -> Result<()> {
    if p.encoding == Encoding::Fixed {
        bail!("invalid value for `--encoding`: predictions are for stochastic encodings; use sphere or gaussian");
    }
    let cfg = TaskConfig {
        t: p.task.t,
        d: p.task.d,
        q: p.task.q,
        de: p.de,
        encoding: p.encoding,
        query: p.query,
    };
    cfg.validate()?;
    if let Some(c) =
        p.c.iter()
            .find(|c| !(c.is_finite() && c.abs() <= MAX_ABS_C))
    {
        bail!(
            "invalid value for `--c`: {c:e} is not a number in [-{MAX_ABS_C:e}, {MAX_ABS_C:e}] (attention is one-hot long before)"
        );
    }
    let integrated = EncodingSample::draw(&cfg, p.samples, None, p.seed)?;
    let mut points = Vec::new();
    for &c in &p.c {
        let mc = population_loss_mc(&cfg, c, p.samples, p.seed)?;
        let at = integrated.at(c);
        let values = [
            mc.mean,
            mc.stderr,
            at.loss.mean,
            at.loss.stderr,
            at.mass.mean,
        ];
        if values.iter().any(|v| !v.is_finite()) {
            return Err(crate::run::failed(format!(
                "the estimate at c = {c} is not finite ({values:?})"
            )));
        }
        points.push((c, values));
    }
    let best = (0..points.len())
        .min_by(|&i, &j| points[i].1[0].total_cmp(&points[j].1[0]))
        .ok_or_else(|| anyhow!("invalid value for `--c`: give at least one value"))?;
    let (argmin_c, floor) = (points[best].0, points[best].1[0]);
    let l0 = loss_at_zero(cfg.t, cfg.d, cfg.q);
    if p.json {
        let pts: Vec<_> = points
            .iter()
            .map(|(c, v)| {
                json!({
                    "c": c, "loss": v[0], "stderr": v[1],
                    "loss_x_integrated": v[2], "stderr_x_integrated": v[3],
                    "attention_mass_selected": v[4],
                })
            })
            .collect();
        let out = json!({
            "t": cfg.t, "d": cfg.d, "q": cfg.q, "de": cfg.de, "samples": p.samples, "seed": p.seed,
            "loss_at_zero_exact": l0,
            "points": pts,
            "argmin_c": argmin_c,
            "floor": floor,
        });
        println!("{out}");
    } else {
        println!("L(0) exact = {l0:.6}");
        for (c, v) in &points {
            println!("c = {c:>8.4}  L = {:.6} +- {:.6}", v[0], v[1]);
        }
        println!("argmin over grid: c = {argmin_c}, floor = {floor:.6}");
    }
    Ok(())
}

fn fcn_bound(b: FcnBoundArgs) -> Result<()> {
    fcn_bound_in(b).map_err(|e| as_flags(e, &TASK_FLAGS))
}

fn fcn_bound_in(b: FcnBoundArgs) -> Result<()> {
    let (t, d, q) = (b.task.t, b.task.d, b.task.q);
    TaskConfig::new(t, d, q, 1).validate_tokens()?;
    let closed = fcn_lower_bound_closed_form(t, d, q, b.m)?;
    let eigh = fcn_lower_bound_eigh(t, d, q, b.m)?;
    let out = json!({"t": t, "d": d, "q": q, "m": b.m, "closed_form": closed, "eigh": eigh, "target_energy": d as f64 / q as f64});
    if b.json {
        println!("{out}");
    } else {
        println!(
            "FCN MSE >= {closed:.6} (closed form), {eigh:.6} (eigh); target energy d/q = {:.6}",
            d as f64 / q as f64
        );
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let mut cfg = RunFile::load_preset(&a.config, a.preset, &a.set)?;
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    let name = a
        .config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run");
    let preset = a.preset.name();
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/sts/{name}-{preset}-seed{}", cfg.seed)));
    let dir = RunDir::open(&out, Identity::of(&cfg, preset, cfg.seed)?)?;
    let label = (!a.json).then(|| format!("sts train {name} ({preset})"));
    let summary = run_in(&cfg, &dir, label)?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprintln!("metrics and summary written to {}", out.display());
    }
    Ok(())
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

/// Trains whatever `cfg` trains in the run directory `dir`: the transformer as phase `train`
/// (`checkpoint.safetensors`, `metrics.csv`), then the FCN as phase `fcn`; writes
/// `summary.json` and `config.json`. An interrupted run saves and resumes where it stopped.
pub fn run_in(cfg: &RunConfig, dir: &RunDir, progress: Option<String>) -> Result<RunSummary> {
    cfg.validate()?;
    let mut summary = RunSummary {
        transformer: None,
        fcn: None,
    };
    if cfg.transformer.is_some() {
        let mut opts = DriveOpts::new(Some(dir));
        opts.progress = progress.clone();
        let r = drive_transformer(cfg, &opts, None)?;
        summary.transformer = Some(TransformerSummary::from(&r));
    }
    if let Some(fc) = &cfg.fcn {
        let mut opts = DriveOpts::new(Some(dir));
        opts.phase = "fcn";
        opts.progress = progress.map(|l| format!("{l} fcn"));
        summary.fcn = Some(drive_fcn(
            &cfg.task,
            fc,
            cfg.eval.samples,
            cfg.seed,
            &opts,
            None,
        )?);
    }
    crate::io::write_json(&dir.path().join("summary.json"), &summary)?;
    crate::io::write_json(&dir.path().join("config.json"), cfg)?;
    Ok(summary)
}
