//! `attnlab sts bench`: training steps per second of the analytic ndarray model (hand-derived
//! gradient) against the same model under candle autograd and against the same step written in
//! PyTorch (`benches/torch_sts.py`: the forward in tensor ops, autograd, `torch.optim.SGD`), on
//! one configuration and the same sampled batch, in f32 and f64, measured in the same run.

use super::model::{ExactTransformer, Real};
use super::model_candle::{BatchTensors, CandleTransformer};
use super::task::{sample_batch, TaskConfig};
use crate::config::require;
use anyhow::{Context, Result};
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
    /// Rounds alternating the three implementations; each reports its best round (a shared
    /// machine's load moves from minute to minute).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Python interpreter with torch for the reference (`scripts/install-bench-peer --print-python`).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
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
    require(
        (1..=100).contains(&a.rounds),
        "rounds",
        format!("must be between 1 and 100, not {}", a.rounds),
    )?;
    task.check_examples(a.batch, "batch")
}

pub fn run(a: BenchArgs) -> Result<()> {
    let task = TaskConfig::new(a.t, a.d, a.q, a.de);
    check(&a, &task).map_err(|e| {
        let mut msg = format!("{e:#}");
        for f in ["t", "d", "q", "de", "batch", "seconds", "rounds"] {
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
    let data = if a.no_torch {
        None
    } else {
        Some(BatchFile::write(&batch)?)
    };
    let threads = rayon::current_num_threads();
    let mut torch_ok = data.is_some();
    for (name, dtype) in [("f32", DType::F32), ("f64", DType::F64)] {
        let (mut analytic, mut autograd, mut torch) = (0.0f64, 0.0f64, None::<f64>);
        let mut torch_loss0 = None;
        for _ in 0..a.rounds {
            analytic = analytic.max(if dtype == DType::F32 {
                ndarray_rate::<f32>(&batch, &task, a.seconds)?
            } else {
                ndarray_rate::<f64>(&batch, &task, a.seconds)?
            });
            autograd = autograd.max(candle_rate(&batch, &task, dtype, a.seconds)?);
            if let (true, Some(file)) = (torch_ok, &data) {
                match torch_rate(&a, file, dtype, threads)? {
                    Some((rate, loss0)) => {
                        torch = Some(torch.map_or(rate, |b| b.max(rate)));
                        torch_loss0 = loss0;
                    }
                    None => torch_ok = false,
                }
            }
        }
        let loss0 = if dtype == DType::F32 {
            f64::from(start_loss::<f32>(&batch, &task))
        } else {
            start_loss::<f64>(&batch, &task)
        };
        let row = json!({
            "name": format!("sts T={} d={} de={} batch={} {name}", a.t, a.d, a.de, a.batch),
            "threads": threads,
            "analytic_ndarray_steps_per_sec": analytic,
            "candle_autograd_steps_per_sec": autograd,
            "pytorch_steps_per_sec": torch,
            "ratio_analytic_over_autograd": analytic / autograd,
            "ratio_analytic_over_pytorch": torch.map(|t| analytic / t),
            "loss_at_start": loss0,
            "pytorch_loss_at_start": torch_loss0,
        });
        if a.json {
            println!("{row}");
        } else {
            let torch_txt = torch.map_or("PyTorch n/a".to_string(), |t| {
                format!(
                    "PyTorch {t:.1} steps/s (ratio {:.2}; start loss {loss0:.6} here, {} there)",
                    analytic / t,
                    torch_loss0.map_or("n/a".into(), |l| format!("{l:.6}"))
                )
            });
            println!(
                "{name}: analytic ndarray {analytic:.1} steps/s, candle autograd {autograd:.1} steps/s (ratio {:.2}), {torch_txt}",
                analytic / autograd
            );
        }
    }
    Ok(())
}

/// The loss at the benchmark's starting point (`W = 0.5 I` on the positional block).
fn start_loss<F: Real>(batch: &super::task::Batch, task: &TaskConfig) -> F {
    let b = batch.cast::<F>();
    ExactTransformer::<F>::scaled_identity(task.d, task.de, 0.5)
        .loss_and_grad(&b)
        .0
}

/// The sampled batch in a temporary file for the PyTorch side: x, p, s and target as
/// little-endian f64, one after the other (`benches/torch_sts.py` reads them back).
struct BatchFile(std::path::PathBuf);

impl BatchFile {
    fn write(b: &super::task::Batch) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("attnlab-sts-bench-{}.f64", std::process::id()));
        let mut bytes =
            Vec::with_capacity(8 * (b.x.len() + b.p.len() + b.s.len() + b.target.len()));
        for v in
            b.x.iter()
                .chain(b.p.iter())
                .chain(b.s.iter())
                .chain(b.target.iter())
        {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for BatchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// PyTorch's steps per second and start loss, or `Ok(None)` with a message when torch is missing.
fn torch_rate(
    a: &BenchArgs,
    file: &BatchFile,
    dtype: DType,
    threads: usize,
) -> Result<Option<(f64, Option<f64>)>> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/torch_sts.py");
    let dt = if dtype == DType::F32 {
        "float32"
    } else {
        "float64"
    };
    let mut args: Vec<String> = vec!["--data".into(), file.0.display().to_string()];
    for (k, v) in [
        ("--t", a.t),
        ("--d", a.d),
        ("--de", a.de),
        ("--batch", a.batch),
        ("--threads", threads),
    ] {
        args.push(k.into());
        args.push(v.to_string());
    }
    args.extend([
        "--dtype".into(),
        dt.into(),
        "--lr".into(),
        "1e-3".into(),
        "--seconds".into(),
        a.seconds.to_string(),
    ]);
    let v = crate::nn::bench::run_torch_script(&a.python, threads, &path, &args)?;
    Ok(v.and_then(|v| {
        v["steps_per_sec"]
            .as_f64()
            .map(|r| (r, v["loss0"].as_f64()))
    }))
}
