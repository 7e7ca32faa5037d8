//! `attnlab sts bench`: training steps per second of the analytic ndarray model against the same
//! model under candle autograd, on one configuration, measured in the same run.

use super::model::{ExactTransformer, Real};
use super::model_candle::{BatchTensors, CandleTransformer};
use super::task::{sample_batch, TaskConfig};
use crate::config::require;
use anyhow::Result;
use candle_core::{DType, Device};
use serde_json::json;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Sequence length T.
    #[arg(long, default_value_t = 64)]
    t: usize,
    /// Token dimension d.
    #[arg(long, default_value_t = 16)]
    d: usize,
    /// Subset size q.
    #[arg(long, default_value_t = 4)]
    q: usize,
    /// Positional-encoding dimension d_e.
    #[arg(long, default_value_t = 64)]
    de: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Seconds of measurement per implementation and precision (after warm-up), in (0, 3600].
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Print one JSON object per precision.
    #[arg(long)]
    json: bool,
}

/// Steps per second of `step`, timed for about `seconds` after three warm-up steps.
fn steps_per_sec(seconds: f64, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        step()?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        step()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn ndarray_rate<F: Real>(
    batch: &super::task::Batch,
    task: &TaskConfig,
    seconds: f64,
) -> Result<f64> {
    let b = batch.cast::<F>();
    let mut m = ExactTransformer::<F>::scaled_identity(task.d, task.de, 0.5);
    steps_per_sec(seconds, || {
        m.gd_step(&b, 1e-3);
        Ok(())
    })
}

fn candle_rate(
    batch: &super::task::Batch,
    task: &TaskConfig,
    dtype: DType,
    seconds: f64,
) -> Result<f64> {
    // The analytic model runs on the CPU, so its autograd twin does too: like for like.
    let dev = Device::Cpu;
    let b = BatchTensors::new(batch, dtype, &dev)?;
    let w0 = ExactTransformer::<f64>::scaled_identity(task.d, task.de, 0.5).w;
    let mut m = CandleTransformer::new(&w0, task.d, dtype, &dev)?;
    steps_per_sec(seconds, || m.gd_step(&b, 1e-3).map(|_| ()))
}

/// Longest measurement accepted: the four measurements then take four hours.
const MAX_SECONDS: f64 = 3600.0;

fn check(a: &BenchArgs, task: &TaskConfig) -> Result<()> {
    require(
        a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= MAX_SECONDS,
        "seconds",
        format!(
            "must be a number of seconds in (0, {MAX_SECONDS}], not {}",
            a.seconds
        ),
    )?;
    task.validate()?;
    require(a.batch >= 1, "batch", "must be at least 1")?;
    task.check_examples(a.batch, "batch")
}

pub fn run(a: BenchArgs) -> Result<()> {
    let task = TaskConfig::new(a.t, a.d, a.q, a.de);
    check(&a, &task).map_err(|e| {
        let mut msg = format!("{e:#}");
        for f in ["t", "d", "q", "de", "batch", "seconds"] {
            msg = msg.replace(&format!("`{f}`"), &format!("`--{f}`"));
        }
        anyhow::anyhow!(msg)
    })?;
    let batch = sample_batch(
        &task,
        a.batch,
        None,
        &mut crate::rng::seeded(super::seeds::BENCH),
    )?;
    for (name, dtype) in [("f32", DType::F32), ("f64", DType::F64)] {
        let analytic = if dtype == DType::F32 {
            ndarray_rate::<f32>(&batch, &task, a.seconds)?
        } else {
            ndarray_rate::<f64>(&batch, &task, a.seconds)?
        };
        let autograd = candle_rate(&batch, &task, dtype, a.seconds)?;
        let row = json!({
            "name": format!("sts T={} d={} de={} batch={} {name}", a.t, a.d, a.de, a.batch),
            "analytic_ndarray_steps_per_sec": analytic,
            "candle_autograd_steps_per_sec": autograd,
            "ratio_analytic_over_autograd": analytic / autograd,
        });
        if a.json {
            println!("{row}");
        } else {
            println!("{name}: analytic ndarray {analytic:.1} steps/s, candle autograd {autograd:.1} steps/s, ratio {:.2}", analytic / autograd);
        }
    }
    Ok(())
}
