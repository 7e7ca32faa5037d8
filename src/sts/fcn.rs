//! The fully-connected baseline for STS: input `[vec(X); 1_y]` `(T d + T)`, a first layer of width m,
//! ReLU, depth 2 (one hidden layer) or 3 (two), and its trainer on the run engine (fresh batches,
//! the shared optimiser). After training, its own certificate `E_y ||M_y (I - P_A)||^2` is
//! computed from the first layer's weights on vec(X): no net that sees X only through A can do
//! better.

use super::config::FcnConfig;
use super::model_candle::{array2, tensor2};
use super::seeds;
use super::task::{sample_batch, Batch, Encoding, TaskConfig};
use super::theory::{fcn_certificate, fcn_lower_bound_closed_form, Estimate};
use super::train::{diverged_error, far_above, log_spaced_steps};
use crate::config::require;
use crate::rng::{stream, Rng};
use crate::run::{
    checkpoint_path, drive, DriveOpts, Outcome, State, StepOutcome, Trainer, BASE_COLUMNS,
};
use crate::train::optim::Optimizer;
use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use indicatif::ProgressBar;
use ndarray::{s, Array2};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The network's parameters: `(weight (out, in), bias (out,))` per layer, registered in a
/// `VarMap` as `l<i>.weight`, `l<i>.bias` for the optimiser and the checkpoint.
pub struct Fcn {
    layers: Vec<(Var, Var)>,
    vars: VarMap,
}

impl Fcn {
    /// PyTorch-style uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialisation from our seeded RNG
    /// (candle's own CPU RNG is not seedable).
    pub fn new(sizes: &[usize], seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = stream(seed, seeds::FCN_INIT);
        let vars = VarMap::new();
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let wv: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect();
            let bv: Vec<f32> = (0..fan_out)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect();
            let weight = Var::from_tensor(&Tensor::from_vec(wv, (fan_out, fan_in), dev)?)?;
            let bias = Var::from_tensor(&Tensor::from_vec(bv, fan_out, dev)?)?;
            {
                let mut data = vars.data().lock().expect("VarMap lock poisoned");
                data.insert(format!("l{i}.weight"), weight.clone());
                data.insert(format!("l{i}.bias"), bias.clone());
            }
            layers.push((weight, bias));
        }
        Ok(Self { layers, vars })
    }

    /// The parameters by name (what the optimiser updates and the checkpoint stores).
    pub fn var_map(&self) -> &VarMap {
        &self.vars
    }

    /// `(batch, in) -> (batch, d)`.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut h = input.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// First-layer weights on vec(X), `(m, T d)`.
    pub fn first_layer_on_tokens(&self, td: usize) -> Result<Array2<f64>> {
        Ok(array2(self.layers[0].0.as_tensor())?
            .slice(s![.., ..td])
            .to_owned())
    }
}

/// `[vec(X); 1_y]` for every example, `(batch, T d + T)`.
pub fn fcn_input(b: &Batch) -> Array2<f64> {
    let (n, t, d) = b.x.dim();
    let mut out = Array2::zeros((n, t * d + t));
    for i in 0..n {
        let flat = b.x.slice(s![i, .., ..]).iter().copied().collect::<Vec<_>>();
        out.slice_mut(s![i, ..t * d])
            .assign(&ndarray::ArrayView1::from(&flat));
        out.slice_mut(s![i, t * d..]).assign(&b.sel.row(i));
    }
    out
}

/// Squared error of every example, `(batch,)`, in f32.
pub fn per_example_sq_error(net: &Fcn, b: &Batch, dev: &Device) -> Result<Tensor> {
    let out = net.forward(&tensor2(&fcn_input(b), DType::F32, dev)?)?;
    Ok((out - tensor2(&b.target, DType::F32, dev)?)?
        .sqr()?
        .sum(1)?)
}

/// The FCN's evaluation columns: test MSE and its standard error, the net's certificate, and the
/// bound over every first layer of its width.
pub const FCN_COLUMNS: [&str; 4] = ["test_mse", "test_mse_stderr", "certificate", "lower_bound"];

/// What a trained FCN achieves, beside what it cannot beat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FcnResult {
    pub width: usize,
    pub depth: usize,
    pub test_mse: f64,
    pub test_mse_stderr: f64,
    /// This net's own certificate from its first layer's row space.
    pub certificate: f64,
    /// The bound over all first layers of width m.
    pub lower_bound: f64,
    /// Training loss at log-spaced steps.
    pub curve: Vec<(usize, f64)>,
}

/// The FCN trained on fresh batches by the shared optimiser, measured at the end on a fresh test
/// set, as an engine [`Trainer`].
pub struct FcnTrainer {
    task: TaskConfig,
    cfg: FcnConfig,
    eval_samples: usize,
    seed: u64,
    dev: Device,
    net: Fcn,
    opt: Optimizer,
    rng: Rng,
    log_at: Vec<usize>,
    /// Batch loss at the steps of `log_at`.
    curve: Vec<(usize, f64)>,
    /// max(d / q, the first batch's loss): see [`far_above`].
    ceiling: Option<f64>,
    last_batch: (Estimate, usize),
    /// The run's checkpoint (named when a divergence keeps it).
    checkpoint: Option<PathBuf>,
    pub progress: Option<ProgressBar>,
}

impl FcnTrainer {
    pub fn new(task: &TaskConfig, cfg: &FcnConfig, eval_samples: usize, seed: u64) -> Result<Self> {
        task.validate()?;
        cfg.validate(task)?;
        require(eval_samples >= 2, "eval.samples", "must be at least 2")?;
        task.check_examples(eval_samples, "eval.samples")?;
        let dev = crate::nn::device()?;
        let (t, d) = (task.t, task.d);
        let mut sizes = vec![t * d + t, cfg.width];
        if cfg.depth == 3 {
            sizes.push(cfg.width);
        }
        sizes.push(d);
        let net = Fcn::new(&sizes, seed, &dev)?;
        let opt = Optimizer::new(cfg.optim(), net.var_map())?;
        // The FCN's input holds no positional encodings, so a fixed table changes nothing for it:
        // its batches are drawn with stochastic ones (a table would have to be drawn for nothing).
        let encoding = match task.encoding {
            Encoding::Fixed => Encoding::Sphere,
            e => e,
        };
        Ok(Self {
            task: TaskConfig {
                encoding,
                ..task.clone()
            },
            cfg: cfg.clone(),
            eval_samples,
            seed,
            dev,
            net,
            opt,
            rng: stream(seed, seeds::FCN_TRAIN),
            log_at: log_spaced_steps(cfg.steps, 20),
            curve: Vec::new(),
            ceiling: None,
            last_batch: (Estimate::from_samples(&[0.0]), 0),
            checkpoint: None,
            progress: None,
        })
    }

    /// The run's result from the engine's outcome (its last row is the final evaluation).
    pub fn into_result(self, out: &Outcome) -> Result<FcnResult> {
        let last = out
            .rows
            .last()
            .ok_or_else(|| anyhow!("the FCN run has no evaluation"))?;
        let v = |i: usize| last[BASE_COLUMNS.len() + i];
        Ok(FcnResult {
            width: self.cfg.width,
            depth: self.cfg.depth,
            test_mse: v(0),
            test_mse_stderr: v(1),
            certificate: v(2),
            lower_bound: v(3),
            curve: self.curve,
        })
    }
}

impl Trainer for FcnTrainer {
    fn total_steps(&self) -> u64 {
        self.cfg.steps as u64
    }
    fn eval_columns(&self) -> Vec<String> {
        FCN_COLUMNS.iter().map(|s| s.to_string()).collect()
    }
    fn eval_due(&self, _step: u64) -> bool {
        false
    }
    /// FCN runs take seconds to minutes: the engine's saves at the end and on Ctrl-C suffice,
    /// and the end's comes after the divergence check of the final evaluation.
    fn checkpoint_due(&self, _step: u64) -> bool {
        false
    }
    fn lr(&self) -> f64 {
        self.opt.current_lr()
    }

    fn step(&mut self, step: u64) -> Result<StepOutcome> {
        let b = sample_batch(&self.task, self.cfg.batch, None, &mut self.rng)?;
        let errs = per_example_sq_error(&self.net, &b, &self.dev)?;
        let loss = errs.mean(0)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if self.log_at.contains(&(step as usize)) {
            self.curve.push((step as usize, l));
        }
        let stats = self.opt.step(&loss.backward()?)?;
        let errs = errs.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.last_batch = (Estimate::from_samples(&errs), errs.len());
        if self.ceiling.is_none() {
            self.ceiling = Some(l.max(self.task.d as f64 / self.task.q as f64));
        }
        if let Some(p) = &self.progress {
            p.inc(1);
        }
        Ok(StepOutcome {
            loss: l,
            grad_norm: Some(stats.grad_norm),
        })
    }

    fn evaluate(&mut self, step: u64) -> Result<Vec<f64>> {
        let mut test_rng = stream(self.seed, seeds::FCN_TEST);
        let test = sample_batch(&self.task, self.eval_samples, None, &mut test_rng)?;
        let errs = per_example_sq_error(&self.net, &test, &self.dev)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let est = Estimate::from_samples(&errs);
        if let Some(c) = self.ceiling {
            if let Some(why) = far_above("test", est, errs.len(), c, ("fcn.lr", self.cfg.lr)) {
                return Err(diverged_error(step, why, self.checkpoint.as_deref()));
            }
        }
        let (t, d, q) = (self.task.t, self.task.d, self.task.q);
        Ok(vec![
            est.mean,
            est.stderr,
            fcn_certificate(&self.net.first_layer_on_tokens(t * d)?, t, d, q)?,
            fcn_lower_bound_closed_form(t, d, q, self.cfg.width)?,
        ])
    }

    fn save(&self, st: &mut State) -> Result<()> {
        st.put_model(self.net.var_map(), &self.opt)?;
        st.put_rng("train", &self.rng);
        st.put_json("curve", &self.curve)?;
        st.put_json("ceiling", &self.ceiling)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        st.load_model(self.net.var_map(), &mut self.opt)?;
        self.rng = st.rng("train")?;
        self.curve = st.json("curve")?;
        self.ceiling = st.json("ceiling")?;
        Ok(())
    }

    fn diverged(&self, _step: u64, _o: &StepOutcome) -> Option<String> {
        let (loss, n) = self.last_batch;
        far_above("batch", loss, n, self.ceiling?, ("fcn.lr", self.cfg.lr))
    }
}

/// Trains an FCN as `cfg` says on `task`, driven by the engine as `opts` says, and measures it on
/// `eval_samples` fresh test examples.
pub fn drive_fcn(
    task: &TaskConfig,
    cfg: &FcnConfig,
    eval_samples: usize,
    seed: u64,
    opts: &DriveOpts,
    progress: Option<ProgressBar>,
) -> Result<FcnResult> {
    let mut t = FcnTrainer::new(task, cfg, eval_samples, seed)?;
    t.progress = progress;
    t.checkpoint = opts.dir.map(|d| checkpoint_path(d.path(), opts.phase));
    let out = drive(&mut t, opts)?;
    t.into_result(&out)
}

/// Trains an FCN in memory (no run directory).
pub fn train_fcn(
    task: &TaskConfig,
    cfg: &FcnConfig,
    eval_samples: usize,
    seed: u64,
) -> Result<FcnResult> {
    drive_fcn(task, cfg, eval_samples, seed, &DriveOpts::new(None), None)
}
