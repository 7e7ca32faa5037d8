//! Optimisers (AdamW, Adam, SGD with momentum) over the variables of a `VarMap`, with
//! weight-decay groups, global-norm gradient clipping and a learning-rate schedule.
//!
//! Updates run in plain Rust over each parameter's buffer, in the parameter's own precision
//! (f32 or f64, as PyTorch does): one pass per parameter instead of ~10 candle ops each, and a
//! state that checkpoints exactly.

use crate::train::schedule::Schedule;
use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch `AdamW`.
    AdamW,
    /// Adam with L2 weight decay added to the gradient, PyTorch `Adam`.
    Adam,
    /// SGD with (heavy-ball) momentum and L2 weight decay, PyTorch `SGD`.
    Sgd,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    /// Base learning rate (multiplied by the schedule).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to the decay group only (by default matrices and embeddings, not biases or norms).
    pub weight_decay: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub clip_norm: f64,
    pub schedule: Schedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimKind::AdamW,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            momentum: 0.0,
            clip_norm: 0.0,
            schedule: Schedule::default(),
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let need = |ok: bool, field: &str, fix: &str| -> Result<()> {
            if !ok {
                bail!("invalid optimiser field `{field}`: {fix}");
            }
            Ok(())
        };
        for (field, x) in [
            ("lr", self.lr),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("momentum", self.momentum),
            ("clip_norm", self.clip_norm),
        ] {
            need(x.is_finite(), field, "must be a finite number")?;
        }
        need(self.lr > 0.0, "lr", "must be positive, e.g. 1e-3")?;
        need(
            (0.0..1.0).contains(&self.beta1),
            "beta1",
            "must be in [0, 1)",
        )?;
        need(
            (0.0..1.0).contains(&self.beta2),
            "beta2",
            "must be in [0, 1)",
        )?;
        need(self.eps > 0.0, "eps", "must be positive, e.g. 1e-8")?;
        need(self.weight_decay >= 0.0, "weight_decay", "must be >= 0")?;
        need(
            (0.0..1.0).contains(&self.momentum),
            "momentum",
            "must be in [0, 1)",
        )?;
        need(
            self.clip_norm >= 0.0,
            "clip_norm",
            "must be >= 0 (0 disables)",
        )?;
        self.schedule.validate()
    }
}

/// Optimiser state of one parameter, in the parameter's precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Buf {
    fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F64 => Buf::F64(vec![0.0; n]),
            _ => Buf::F32(vec![0.0; n]),
        }
    }

    /// As a 1-D tensor (for checkpoints).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let dev = &candle_core::Device::Cpu;
        Ok(match self {
            Buf::F32(v) => Tensor::from_slice(v, v.len(), dev)?,
            Buf::F64(v) => Tensor::from_slice(v, v.len(), dev)?,
        })
    }

    /// From a 1-D tensor of the same precision and length as `self`.
    pub fn load(&mut self, t: &Tensor) -> Result<()> {
        let n = match self {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
        };
        if t.elem_count() != n {
            bail!(
                "optimiser state has {} entries, expected {n}",
                t.elem_count()
            );
        }
        match self {
            Buf::F32(v) => *v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            Buf::F64(v) => *v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?,
        }
        Ok(())
    }
}

/// One parameter and its optimiser state.
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
    /// First moment (Adam) or momentum buffer (SGD).
    pub m: Buf,
    /// Second moment (Adam).
    pub v: Buf,
}

/// What one step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

pub struct Optimizer {
    pub cfg: OptimConfig,
    pub params: Vec<Param>,
    /// Updates done so far.
    pub step: u64,
}

/// Default decay group: tensors of rank >= 2 (weight matrices, embeddings, convolutions).
pub fn decay_matrices(_name: &str, var: &Var) -> bool {
    var.rank() >= 2
}

/// Per-step constants of an update.
struct Hyper {
    c: OptimConfig,
    lr: f64,
    scale: f64,
    bc1: f64,
    bc2: f64,
    first: bool,
}

/// One parameter's update in its own precision (PyTorch's formulas).
fn update<T: num_traits::Float>(
    h: &Hyper,
    wd: f64,
    w: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
) {
    let f = |x: f64| T::from(x).expect("finite hyper-parameter");
    let (lr, wd, scale) = (f(h.lr), f(wd), f(h.scale));
    let (b1, b2, eps) = (f(h.c.beta1), f(h.c.beta2), f(h.c.eps));
    let (one, mom) = (T::one(), f(h.c.momentum));
    // Adam's step size and denominator scale with the bias corrections folded in.
    let step = lr / f(h.bc1);
    let sqrt_bc2 = f(h.bc2.sqrt());
    // One loop per kind, without branches inside, so each vectorises.
    match h.c.kind {
        OptimKind::AdamW => {
            let shrink = one - lr * wd;
            for i in 0..w.len() {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (one - b1) * gi;
                v[i] = b2 * v[i] + (one - b2) * gi * gi;
                w[i] = w[i] * shrink - step * m[i] / (v[i].sqrt() / sqrt_bc2 + eps);
            }
        }
        OptimKind::Adam => {
            for i in 0..w.len() {
                let gi = g[i] * scale + wd * w[i];
                m[i] = b1 * m[i] + (one - b1) * gi;
                v[i] = b2 * v[i] + (one - b2) * gi * gi;
                w[i] = w[i] - step * m[i] / (v[i].sqrt() / sqrt_bc2 + eps);
            }
        }
        OptimKind::Sgd => {
            for i in 0..w.len() {
                let mut gi = g[i] * scale + wd * w[i];
                if mom > T::zero() {
                    // PyTorch: the buffer starts as the first gradient.
                    m[i] = if h.first { gi } else { mom * m[i] + gi };
                    gi = m[i];
                }
                w[i] = w[i] - lr * gi;
            }
        }
    }
}

impl Optimizer {
    /// Optimises every variable of `vm` (sorted by name), decaying those `decay_matrices` picks.
    pub fn new(cfg: OptimConfig, vm: &VarMap) -> Result<Self> {
        Self::with_groups(cfg, vm, decay_matrices)
    }

    /// As [`Optimizer::new`] with the decay group chosen by `decay(name, var)`.
    pub fn with_groups(
        cfg: OptimConfig,
        vm: &VarMap,
        decay: impl Fn(&str, &Var) -> bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let data = vm.data().lock().expect("VarMap lock poisoned");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|n| {
                let var = data[n].clone();
                let (len, dt) = (var.elem_count(), var.dtype());
                Param {
                    name: n.clone(),
                    decay: decay(n, &var),
                    var,
                    m: Buf::zeros(dt, len),
                    v: Buf::zeros(dt, len),
                }
            })
            .collect();
        Ok(Self {
            cfg,
            params,
            step: 0,
        })
    }

    /// Learning rate of the next update.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr * self.cfg.schedule.factor(self.step)
    }

    /// One update from `grads` (parameters without a gradient are left alone, state included).
    pub fn step(&mut self, grads: &GradStore) -> Result<StepStats> {
        // Gradients to host buffers in the parameter's precision, with their squared norms
        // (f64, summed in parameter order so the result does not depend on scheduling).
        let gs: Vec<Option<(Buf, f64)>> = self
            .params
            .par_iter()
            .map(|p| -> Result<Option<(Buf, f64)>> {
                let Some(g) = grads.get(p.var.as_tensor()) else {
                    return Ok(None);
                };
                let g = g.flatten_all()?;
                Ok(Some(match p.m {
                    Buf::F32(_) => {
                        let v = g.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                        let sq = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                        (Buf::F32(v), sq)
                    }
                    Buf::F64(_) => {
                        let v = g.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                        let sq = v.iter().map(|&x| x * x).sum();
                        (Buf::F64(v), sq)
                    }
                }))
            })
            .collect::<Result<_>>()?;
        let sq: f64 = gs.iter().flatten().map(|(_, s)| s).sum();
        let norm = sq.sqrt();
        if !norm.is_finite() {
            bail!(
                "gradient norm is {norm} at step {}: lower `lr` or enable `clip_norm`",
                self.step
            );
        }
        let scale = if self.cfg.clip_norm > 0.0 {
            (self.cfg.clip_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        let lr = self.current_lr();
        let h = Hyper {
            c: self.cfg.clone(),
            lr,
            scale,
            bc1: 1.0 - self.cfg.beta1.powi((self.step + 1) as i32),
            bc2: 1.0 - self.cfg.beta2.powi((self.step + 1) as i32),
            first: self.step == 0,
        };
        let updated: Vec<Option<Tensor>> = self
            .params
            .par_iter_mut()
            .zip(gs.into_par_iter())
            .map(|(p, g)| -> Result<Option<Tensor>> {
                let Some((g, _)) = g else { return Ok(None) };
                let t = p.var.as_tensor();
                let wd = if p.decay { h.c.weight_decay } else { 0.0 };
                let new = match (&mut p.m, &mut p.v, g) {
                    (Buf::F32(m), Buf::F32(v), Buf::F32(g)) => {
                        let mut w = t.flatten_all()?.to_vec1::<f32>()?;
                        update(&h, wd, &mut w, &g, m, v);
                        Tensor::from_vec(w, t.shape(), t.device())?
                    }
                    (Buf::F64(m), Buf::F64(v), Buf::F64(g)) => {
                        let mut w = t.flatten_all()?.to_vec1::<f64>()?;
                        update(&h, wd, &mut w, &g, m, v);
                        Tensor::from_vec(w, t.shape(), t.device())?
                    }
                    _ => bail!("optimiser state of `{}` has the wrong precision", p.name),
                };
                Ok(Some(new))
            })
            .collect::<Result<_>>()?;
        for (p, new) in self.params.iter().zip(updated) {
            if let Some(new) = new {
                p.var
                    .set(&new)
                    .with_context(|| format!("updating parameter `{}`", p.name))?;
            }
        }
        self.step += 1;
        Ok(StepStats {
            grad_norm: norm,
            lr,
        })
    }
}
