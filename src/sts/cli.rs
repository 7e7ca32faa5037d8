//! `attnlab sts ...`: predictions, bounds, training and the benchmark from the command line.

use super::task::{Encoding, Query, TaskConfig};
use super::theory::{
    fcn_lower_bound_closed_form, fcn_lower_bound_eigh, loss_at_zero, population_loss_mc,
    EncodingSample,
};
use super::train::{Preset, RunFile};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
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
    /// Comma-separated grid of c.
    #[arg(long, value_delimiter = ',', required = true)]
    c: Vec<f64>,
    /// Monte-Carlo examples per c.
    #[arg(long, default_value_t = 20000)]
    samples: usize,
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
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// A config file under experiments/sts/.
    #[arg(long)]
    config: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    preset: Preset,
    /// Overrides the config's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Run directory (default runs/sts/<config name>-<preset>-seed<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
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

fn predict(p: PredictArgs) -> Result<()> {
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
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{e} (flag --{})", flag_of(&e.to_string())))?;
    if p.c.iter().any(|c| !c.is_finite()) {
        bail!("invalid value for `--c`: every grid point must be a finite number");
    }
    let integrated = EncodingSample::draw(&cfg, p.samples, None, p.seed)?;
    let mut points = Vec::new();
    for &c in &p.c {
        let mc = population_loss_mc(&cfg, c, p.samples, p.seed)?;
        let at = integrated.at(c);
        points.push(json!({
            "c": c, "loss": mc.mean, "stderr": mc.stderr,
            "loss_x_integrated": at.loss.mean, "stderr_x_integrated": at.loss.stderr,
            "attention_mass_selected": at.mass.mean,
        }));
    }
    let best = (0..p.c.len())
        .min_by(|&i, &j| {
            points[i]["loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&points[j]["loss"].as_f64().unwrap())
        })
        .expect("c is required");
    let out = json!({
        "t": cfg.t, "d": cfg.d, "q": cfg.q, "de": cfg.de, "samples": p.samples, "seed": p.seed,
        "loss_at_zero_exact": loss_at_zero(cfg.t, cfg.d, cfg.q),
        "points": points,
        "argmin_c": p.c[best],
        "floor": points[best]["loss"],
    });
    if p.json {
        println!("{out}");
    } else {
        println!("L(0) exact = {:.6}", out["loss_at_zero_exact"]);
        for pt in out["points"].as_array().unwrap() {
            println!(
                "c = {:>8.4}  L = {:.6} +- {:.6}",
                pt["c"].as_f64().unwrap(),
                pt["loss"].as_f64().unwrap(),
                pt["stderr"].as_f64().unwrap()
            );
        }
        println!(
            "argmin over grid: c = {}, floor = {:.6}",
            out["argmin_c"],
            out["floor"].as_f64().unwrap()
        );
    }
    Ok(())
}

/// The CLI flag behind a config field named in an error message.
fn flag_of(msg: &str) -> &'static str {
    for (field, flag) in [("`q`", "q"), ("`t`", "t"), ("`d`", "d"), ("`de`", "de")] {
        if msg.contains(field) {
            return flag;
        }
    }
    "t/d/q/de"
}

fn fcn_bound(b: FcnBoundArgs) -> Result<()> {
    let (t, d, q) = (b.task.t, b.task.d, b.task.q);
    TaskConfig::new(t, d, q, 1)
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (flag --{})", flag_of(&e.to_string())))?;
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
    let file = RunFile::load(&a.config)?;
    let mut cfg = file.preset(a.preset).clone();
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    let name = a
        .config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run");
    let preset = format!("{:?}", a.preset).to_lowercase();
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/sts/{name}-{preset}-seed{}", cfg.seed)));
    let total = cfg.transformer.as_ref().map_or(0, |t| t.steps) as u64;
    let bar = crate::progress::bar(total, &format!("sts train {name} ({preset})"), a.json);
    let summary = super::train::run(
        &cfg,
        &out,
        &mut |s| bar.set_position(s as u64),
        &crate::interrupt::requested,
    )?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprintln!("curve and summary written to {}", out.display());
    }
    Ok(())
}
