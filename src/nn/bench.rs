//! `attnlab bench`: trains the same configurations in attnlab and in two PyTorch references
//! (`benches/torch_reference.py`, CPU, same shapes and optimiser, same thread count): the mirror
//! of attnlab's model written out by hand and the idiomatic `nn.TransformerEncoderLayer` stack.
//! Reports steps per second, the ratio against the faster reference, achieved GFLOP/s from the
//! FLOP counter, the GEMM the fused kernels use, and the fraction of this machine's best fp32
//! GEMM peak: a 1024^3 product timed in the same run with both the `gemm` crate (candle's matmul)
//! and OpenBLAS (through [`crate::nn::blas`]), the larger taken as the machine's peak.

use crate::nn::{cross_entropy, FlopCount, Transformer, TransformerConfig};
use crate::train::{backward_step, OptimConfig, Optimizer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::Rng as _;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// One JSON object per line per configuration instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds of timed training per configuration, framework and round.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds alternating attnlab and PyTorch; each side reports its best round. On a shared
    /// machine the load moves from minute to minute, and best-of-rounds compares the two at
    /// similar load instead of whichever happened to run in a quiet minute.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads for both attnlab (rayon) and PyTorch.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Run only configurations whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Python interpreter with torch for the references (`scripts/install-bench-peer --print-python`).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_torch: bool,
    /// Use composed candle ops instead of the fused linear / attention kernels (ablation).
    #[arg(long)]
    pub unfused: bool,
    /// Print attnlab's time split into forward, backward and optimiser per configuration.
    #[arg(long)]
    pub profile: bool,
}

/// One benchmark configuration.
#[derive(Serialize, Clone, Debug)]
pub struct BenchConfig {
    pub name: String,
    pub model: TransformerConfig,
    pub batch: usize,
    pub seq: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// The three benchmark configurations.
pub fn configs() -> Vec<BenchConfig> {
    let enc = |name: &str, layers, d| BenchConfig {
        name: name.into(),
        model: TransformerConfig {
            vocab_size: 32,
            max_len: 62,
            d_model: d,
            n_layers: layers,
            n_heads: 4,
            ..Default::default()
        },
        batch: 64,
        seq: 62,
        lr: 1e-3,
        weight_decay: 0.01,
    };
    vec![
        enc("encoder-6L-d128-T62-b64", 6, 128),
        enc("encoder-4L-d64-T62-b64", 4, 64),
        BenchConfig {
            name: "decoder-6L-d128-T32-b8".into(),
            model: TransformerConfig {
                vocab_size: 32,
                max_len: 32,
                d_model: 128,
                n_layers: 6,
                n_heads: 4,
                causal: true,
                ..Default::default()
            },
            batch: 8,
            seq: 32,
            lr: 1e-3,
            weight_decay: 0.01,
        },
    ]
}

/// One line of `--json`: a configuration in attnlab and in both PyTorch references.
#[derive(Serialize)]
struct Row {
    name: String,
    attnlab_steps_per_sec: f64,
    /// The hand-written mirror of attnlab's model.
    pytorch_mirror_steps_per_sec: Option<f64>,
    /// The `nn.TransformerEncoderLayer` stack.
    pytorch_idiomatic_steps_per_sec: Option<f64>,
    /// The faster of the two references, which the ratio is against.
    pytorch_steps_per_sec: Option<f64>,
    pytorch_reference: Option<&'static str>,
    ratio: Option<f64>,
    /// The GEMM of the fused kernels (`openblas` or `gemm`) and OpenBLAS's kernel family.
    gemm: &'static str,
    openblas_core: String,
    flops_per_step: u64,
    attnlab_gflops: f64,
    pytorch_gflops: Option<f64>,
    peak_gemm_crate_gflops: f64,
    peak_openblas_gflops: Option<f64>,
    /// The machine's best measured fp32 GEMM peak: the larger of the two.
    peak_gflops: f64,
    attnlab_peak_fraction: f64,
    pytorch_peak_fraction: Option<f64>,
}

/// Side of the square product the peaks are timed on.
const PEAK_N: usize = 1024;

fn best_gflops(mut product: impl FnMut() -> Result<()>) -> Result<f64> {
    product()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        product()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (PEAK_N as f64).powi(3) / best / 1e9)
}

/// fp32 GEMM throughput of the `gemm` crate (candle's matmul) on this machine, GFLOP/s
/// (1024^3 product, best of 5).
pub fn gemm_peak_gflops() -> Result<f64> {
    let n = PEAK_N;
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    best_gflops(|| {
        let c = a.matmul(&b)?;
        let _ = c.sum_all()?; // materialise
        Ok(())
    })
}

/// fp32 GEMM throughput of OpenBLAS on this machine as the fused kernels call it (row blocks
/// spread by rayon), GFLOP/s (1024^3 product, best of 5); `None` if it refuses the product.
pub fn openblas_peak_gflops() -> Result<Option<f64>> {
    let n = PEAK_N;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let mut c = vec![0f32; n * n];
    let row_major = (n as isize, 1);
    let mut taken = true;
    let g = best_gflops(|| {
        // SAFETY: a, b and c are n x n row-major buffers that outlive the call.
        taken &= unsafe {
            super::blas::try_gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                row_major,
                a.as_ptr(),
                row_major,
                b.as_ptr(),
                row_major,
                1.0f32,
                false,
            )
        };
        Ok(())
    })?;
    Ok(taken.then_some(g))
}

/// A model, optimiser and fixed batch ready to be timed.
pub struct Trainer {
    model: Transformer,
    opt: Optimizer,
    x: Tensor,
    y: Tensor,
}

impl Trainer {
    /// One training step; returns the loss.
    pub fn step(&mut self) -> Result<f32> {
        let loss = cross_entropy(&self.model.forward(&self.x)?, &self.y, None)?;
        backward_step(&loss, &mut self.opt)?;
        Ok(loss.to_scalar::<f32>()?)
    }

    /// Steps per second over about `seconds` (at least 3 steps).
    pub fn steps_per_sec(&mut self, seconds: f64) -> Result<f64> {
        let t0 = Instant::now();
        let mut steps = 0usize;
        loop {
            self.step()?;
            steps += 1;
            let el = t0.elapsed().as_secs_f64();
            if el >= seconds && steps >= 3 {
                return Ok(steps as f64 / el);
            }
        }
    }
}

/// Builds `c` in attnlab, warms it up (and prints a time split with `profile`).
pub fn attnlab_trainer(c: &BenchConfig, profile: bool) -> Result<Trainer> {
    let dev = Device::Cpu;
    let (model, vm) = Transformer::build(&c.model, 0, DType::F32, &dev)?;
    let opt = Optimizer::new(
        OptimConfig {
            lr: c.lr,
            weight_decay: c.weight_decay,
            ..Default::default()
        },
        &vm,
    )?;
    let mut r = crate::rng::seeded(1);
    let (n, t) = (c.batch, c.seq);
    let x: Vec<u32> = (0..n * t)
        .map(|_| r.gen_range(0..c.model.vocab_size as u32))
        .collect();
    let y: Vec<u32> = (0..n * t)
        .map(|_| r.gen_range(0..c.model.out() as u32))
        .collect();
    let x = Tensor::from_vec(x, (n, t), &dev)?;
    let y = Tensor::from_vec(y, (n, t), &dev)?;
    let mut tr = Trainer { model, opt, x, y };
    for _ in 0..3 {
        tr.step()?;
    }
    let (model, opt, x, y) = (&tr.model, &mut tr.opt, &tr.x, &tr.y);
    if profile {
        let (mut f, mut b, mut o) = (0.0, 0.0, 0.0);
        let n = 5;
        for _ in 0..n {
            let t0 = Instant::now();
            let loss = cross_entropy(&model.forward(x)?, y, None)?;
            let _ = loss.to_scalar::<f32>()?;
            let t1 = Instant::now();
            let g = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&g)?;
            let t3 = Instant::now();
            f += (t1 - t0).as_secs_f64();
            b += (t2 - t1).as_secs_f64();
            o += (t3 - t2).as_secs_f64();
        }
        let ms = |v: f64| 1e3 * v / n as f64;
        // The attention core alone (forward, then backward), per layer.
        {
            let h = c.model.n_heads;
            let dh = c.model.d_head();
            let qkv = candle_core::Var::randn(0f32, 1.0, (c.batch, c.seq, 3 * h * dh), &dev)?;
            let bias = Tensor::zeros((1, 1, c.seq, c.seq), DType::F32, &dev)?;
            let pat = Tensor::zeros(1, DType::F32, &dev)?;
            let shape = crate::nn::fused::AttnShape {
                heads: h,
                fixed: 0,
                d_head: dh,
            };
            let (mut tf, mut tb) = (0.0, 0.0);
            for _ in 0..5 {
                let t0 = Instant::now();
                let (y, _) =
                    crate::nn::fused::attention(qkv.as_tensor(), &bias, &pat, shape, false)?;
                let t1 = Instant::now();
                let _ = y.sum_all()?.backward()?;
                tf += (t1 - t0).as_secs_f64();
                tb += (t1.elapsed()).as_secs_f64();
            }
            eprintln!(
                "  attention core per layer: forward {:.2} ms, backward {:.2} ms",
                1e3 * tf / 5.0,
                1e3 * tb / 5.0
            );
        }
        // The model's largest GEMM shapes, alone: (rows x in) @ (in x out).
        let rows = c.batch * c.seq;
        let d = c.model.d_model;
        for (k, nn) in [(d, 3 * d), (d, c.model.ff()), (c.model.ff(), d)] {
            let a = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
            let w = Tensor::randn(0f32, 1.0, (nn, k), &dev)?;
            let _ = crate::nn::fused::linear(&a, &w, &Tensor::zeros(nn, DType::F32, &dev)?)?;
            let t0 = Instant::now();
            for _ in 0..10 {
                let _ = crate::nn::fused::linear(&a, &w, &Tensor::zeros(nn, DType::F32, &dev)?)?;
            }
            let el = t0.elapsed().as_secs_f64() / 10.0;
            eprintln!(
                "  gemm ({rows}x{k}) @ ({k}x{nn}): {:.2} ms, {:.1} GFLOP/s",
                1e3 * el,
                2.0 * (rows * k * nn) as f64 / el / 1e9
            );
        }
        eprintln!(
            "{}: forward {:.1} ms, backward {:.1} ms, optimiser {:.1} ms",
            c.name,
            ms(f),
            ms(b),
            ms(o)
        );
    }
    Ok(tr)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/torch_reference.py")
}

/// Steps per second of the two PyTorch references in one round.
#[derive(Clone, Copy, Default, Debug)]
struct TorchRates {
    mirror: Option<f64>,
    idiomatic: Option<f64>,
}

impl TorchRates {
    /// Each reference's best of `self` and `other`.
    fn best(self, other: TorchRates) -> TorchRates {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        TorchRates {
            mirror: max(self.mirror, other.mirror),
            idiomatic: max(self.idiomatic, other.idiomatic),
        }
    }

    /// The faster reference and its name.
    fn faster(self) -> Option<(f64, &'static str)> {
        match (self.mirror, self.idiomatic) {
            (Some(m), Some(i)) if i > m => Some((i, "idiomatic")),
            (Some(m), _) => Some((m, "mirror")),
            (None, Some(i)) => Some((i, "idiomatic")),
            (None, None) => None,
        }
    }
}

/// Runs a PyTorch reference script with `args`; `Ok(None)` with a message when the interpreter
/// cannot be run or has no torch (the script exits 3), the parsed JSON line otherwise.
pub(crate) fn run_torch_script(
    python: &str,
    threads: usize,
    path: &std::path::Path,
    args: &[String],
) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        bail!("the PyTorch reference `{}` is missing", path.display());
    }
    let out = std::process::Command::new(python)
        .arg(path)
        .args(args)
        .env("OMP_NUM_THREADS", threads.to_string())
        // On a shared machine libgomp's spinning barriers collapse (10-20x slower steps when
        // another process holds a core); sleeping waits are PyTorch's best setting here.
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            eprintln!("PyTorch side skipped: could not run `{python}` ({e}); install torch with scripts/install-bench-peer and pass --python, or pass --no-torch");
            return Ok(None);
        }
    };
    if out.status.code() == Some(3) {
        eprintln!(
            "PyTorch side skipped: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Ok(None);
    }
    if !out.status.success() {
        bail!(
            "the PyTorch reference `{}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing `{}`", String::from_utf8_lossy(&out.stdout)))?;
    Ok(Some(v))
}

/// Steps per second of both PyTorch references, or `Ok(None)` with a message when torch is missing.
fn torch_steps_per_sec(a: &BenchArgs, c: &BenchConfig) -> Result<Option<TorchRates>> {
    let args = [
        "--config".to_string(),
        serde_json::to_string(c)?,
        "--seconds".into(),
        a.seconds.to_string(),
        "--threads".into(),
        a.threads.to_string(),
    ];
    let Some(v) = run_torch_script(&a.python, a.threads, &script(), &args)? else {
        return Ok(None);
    };
    Ok(Some(TorchRates {
        mirror: v["mirror"]["steps_per_sec"].as_f64(),
        idiomatic: v["idiomatic"]["steps_per_sec"].as_f64(),
    }))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.threads == 0 || a.threads > 1024 {
        bail!("`--threads` must be between 1 and 1024, not {}", a.threads);
    }
    // A bound keeps a typo from running for days; NaN would never reach it and would hang.
    if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 3600.0) {
        bail!(
            "`--seconds` must be a number of seconds in (0, 3600], not {}",
            a.seconds
        );
    }
    if a.rounds == 0 || a.rounds > 100 {
        bail!("`--rounds` must be between 1 and 100, not {}", a.rounds);
    }
    let selected: Vec<BenchConfig> = configs()
        .into_iter()
        .filter(|c| a.only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
        .collect();
    if selected.is_empty() {
        let names: Vec<String> = configs().into_iter().map(|c| c.name).collect();
        bail!(
            "`--only {}` matches no configuration: use part of one of {}",
            a.only.as_deref().unwrap_or(""),
            names.join(", ")
        );
    }
    // candle sizes its GEMM parallelism from this variable; rayon's pool is built to match.
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global();
    crate::nn::fused::set_enabled(!a.unfused);
    crate::nn::tune_allocator();
    crate::nn::tune_candle_threads();
    let gemm = super::blas::chosen();
    let core = super::blas::openblas_core();
    let peak_crate = gemm_peak_gflops()?;
    let peak_openblas = openblas_peak_gflops()?;
    let peak = peak_openblas.map_or(peak_crate, |o| o.max(peak_crate));
    if !a.json {
        println!(
            "threads {}, fused GEMM {} (OpenBLAS core {core}); fp32 1024^3 GEMM peak: gemm crate {:.1}, OpenBLAS {} GFLOP/s",
            a.threads,
            gemm.name(),
            peak_crate,
            peak_openblas.map_or("n/a".into(), |g| format!("{g:.1}")),
        );
        println!(
            "{:<26} {:>10} {:>9} {:>9} {:>7} {:>8} {:>9} {:>7} {:>7}",
            "config",
            "attnlab/s",
            "mirror/s",
            "idiom/s",
            "ratio",
            "GF/s",
            "torchGF/s",
            "peak%",
            "torch%"
        );
    }
    let mut torch_ok = !a.no_torch;
    for c in selected {
        let mut tr = attnlab_trainer(&c, a.profile)?;
        let (mut ours, mut theirs) = (0.0f64, None::<TorchRates>);
        for _ in 0..a.rounds {
            ours = ours.max(tr.steps_per_sec(a.seconds)?);
            if torch_ok {
                match torch_steps_per_sec(&a, &c)? {
                    Some(t) => theirs = Some(theirs.map_or(t, |b| b.best(t))),
                    None => torch_ok = false,
                }
            }
        }
        let faster = theirs.and_then(TorchRates::faster);
        let best = faster.map(|f| f.0);
        let flops = FlopCount::new(&c.model, c.seq).train_step(c.batch, c.seq);
        let gf = |s: f64| s * flops as f64 / 1e9;
        let row = Row {
            name: c.name.clone(),
            attnlab_steps_per_sec: ours,
            pytorch_mirror_steps_per_sec: theirs.and_then(|t| t.mirror),
            pytorch_idiomatic_steps_per_sec: theirs.and_then(|t| t.idiomatic),
            pytorch_steps_per_sec: best,
            pytorch_reference: faster.map(|f| f.1),
            ratio: best.map(|t| ours / t),
            gemm: gemm.name(),
            openblas_core: core.clone(),
            flops_per_step: flops,
            attnlab_gflops: gf(ours),
            pytorch_gflops: best.map(gf),
            peak_gemm_crate_gflops: peak_crate,
            peak_openblas_gflops: peak_openblas,
            peak_gflops: peak,
            attnlab_peak_fraction: gf(ours) / peak,
            pytorch_peak_fraction: best.map(|t| gf(t) / peak),
        };
        if a.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            let o = |v: Option<f64>, p: usize| v.map_or("n/a".to_string(), |v| format!("{v:.p$}"));
            println!(
                "{:<26} {:>10.2} {:>9} {:>9} {:>7} {:>8.1} {:>9} {:>6.1}% {:>7}",
                row.name,
                ours,
                o(row.pytorch_mirror_steps_per_sec, 2),
                o(row.pytorch_idiomatic_steps_per_sec, 2),
                o(row.ratio, 2),
                row.attnlab_gflops,
                o(row.pytorch_gflops, 1),
                100.0 * row.attnlab_peak_fraction,
                row.pytorch_peak_fraction
                    .map_or("n/a".to_string(), |f| format!("{:.1}%", 100.0 * f)),
            );
        }
    }
    Ok(())
}
