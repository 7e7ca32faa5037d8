//! The fully-connected baseline for STS: input `[vec(X); 1_y]` `(T d + T)`, a first layer of width m,
//! ReLU, depth 2 (one hidden layer) or 3 (two), trained on fresh batches by GD or Adam (candle
//! autograd). After training, its own certificate `E_y ||M_y (I - P_A)||^2` is computed from the
//! first layer's weights on vec(X): no net that sees X only through A can do better.

use super::model_candle::{array2, tensor2};
use super::task::{sample_batch, Batch, TaskConfig};
use super::theory::{fcn_certificate, fcn_lower_bound_closed_form, Estimate};
use crate::config::require;
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use ndarray::{s, Array2};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FcnOptimizer {
    Gd,
    Adam,
}

/// FCN architecture and training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcnConfig {
    /// First-layer width m.
    pub width: usize,
    /// 2 (one hidden layer) or 3 (two hidden layers of width m).
    #[serde(default = "default_depth")]
    pub depth: usize,
    pub optimizer: FcnOptimizer,
    pub lr: f64,
    pub steps: usize,
    pub batch: usize,
}

fn default_depth() -> usize {
    2
}

impl FcnConfig {
    pub fn validate(&self) -> Result<()> {
        require(self.width >= 1, "fcn.width", "must be at least 1")?;
        require(
            self.depth == 2 || self.depth == 3,
            "fcn.depth",
            "must be 2 or 3",
        )?;
        require(
            self.lr > 0.0 && self.lr.is_finite(),
            "fcn.lr",
            "must be a positive number",
        )?;
        require(self.steps >= 1, "fcn.steps", "must be at least 1")?;
        require(self.batch >= 1, "fcn.batch", "must be at least 1")?;
        Ok(())
    }
}

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

/// One optimiser update from a loss (SGD or Adam behind one name).
trait OptimizerStep: FnMut(&Tensor) -> Result<()> {}
impl<T: FnMut(&Tensor) -> Result<()>> OptimizerStep for T {}

/// The network's parameters: `(weight (out, in), bias (out,))` per layer.
pub struct Fcn {
    layers: Vec<(Var, Var)>,
}

impl Fcn {
    /// PyTorch-style uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialisation from our seeded RNG
    /// (candle's own CPU RNG is not seedable).
    pub fn new(sizes: &[usize], seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = crate::rng::stream(seed, 3);
        let mut layers = Vec::new();
        for w in sizes.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let wv: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect();
            let bv: Vec<f32> = (0..fan_out)
                .map(|_| rng.gen_range(-bound..bound) as f32)
                .collect();
            layers.push((
                Var::from_tensor(&Tensor::from_vec(wv, (fan_out, fan_in), dev)?)?,
                Var::from_tensor(&Tensor::from_vec(bv, fan_out, dev)?)?,
            ));
        }
        Ok(Self { layers })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
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

fn per_example_sq_error(net: &Fcn, b: &Batch, dev: &Device) -> Result<Tensor> {
    let out = net.forward(&tensor2(&fcn_input(b), DType::F32, dev)?)?;
    Ok((out - tensor2(&b.target, DType::F32, dev)?)?
        .sqr()?
        .sum(1)?)
}

/// Trains an FCN on fresh batches and measures it on `eval_samples` fresh test examples.
pub fn train_fcn(
    task: &TaskConfig,
    cfg: &FcnConfig,
    eval_samples: usize,
    seed: u64,
) -> Result<FcnResult> {
    task.validate()?;
    cfg.validate()?;
    let dev = Device::Cpu;
    let (t, d) = (task.t, task.d);
    let mut sizes = vec![t * d + t, cfg.width];
    if cfg.depth == 3 {
        sizes.push(cfg.width);
    }
    sizes.push(d);
    let net = Fcn::new(&sizes, seed, &dev)?;
    let mut opt: Box<dyn OptimizerStep> = match cfg.optimizer {
        FcnOptimizer::Gd => {
            let mut o = SGD::new(net.vars(), cfg.lr)?;
            Box::new(move |l| Ok(o.backward_step(l)?))
        }
        FcnOptimizer::Adam => {
            let mut o = AdamW::new(
                net.vars(),
                ParamsAdamW {
                    lr: cfg.lr,
                    weight_decay: 0.0,
                    ..Default::default()
                },
            )?;
            Box::new(move |l| Ok(o.backward_step(l)?))
        }
    };
    let mut rng = crate::rng::stream(seed, 4);
    let log_at = super::train::log_spaced_steps(cfg.steps, 20);
    let mut curve = Vec::new();
    for step in 0..cfg.steps {
        let b = sample_batch(task, cfg.batch, None, &mut rng)?;
        let loss = per_example_sq_error(&net, &b, &dev)?.mean(0)?;
        if log_at.contains(&step) {
            curve.push((step, loss.to_scalar::<f32>()? as f64));
        }
        opt(&loss)?;
    }
    let mut test_rng = crate::rng::stream(seed, 5);
    let test = sample_batch(task, eval_samples, None, &mut test_rng)?;
    let errs = per_example_sq_error(&net, &test, &dev)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let est = Estimate::from_samples(&errs);
    Ok(FcnResult {
        width: cfg.width,
        depth: cfg.depth,
        test_mse: est.mean,
        test_mse_stderr: est.stderr,
        certificate: fcn_certificate(&net.first_layer_on_tokens(t * d)?, t, d, task.q)?,
        lower_bound: fcn_lower_bound_closed_form(t, d, task.q, cfg.width)?,
        curve,
    })
}
