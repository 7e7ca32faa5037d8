//! Fused CPU kernels with backward passes: softmax over the last dimension and LayerNorm.
//!
//! candle-nn 0.9 ships fused forward kernels for both but without backward, so training falls
//! back to chains of 6–10 elementwise ops, each a full pass over memory plus an allocation. These
//! `CustomOp`s do one pass forward and one pass backward (f32 and f64, rows split over rayon when
//! large). On a non-CPU device the same maths is composed from candle ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Rows handled serially below this many elements: rayon's hand-off costs more than it saves.
const PAR_MIN: usize = 1 << 15;

fn contiguous<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("fused op input has to be contiguous"),
    }
}

fn rows_mut<T: Send, F: Fn(usize, &mut [T]) + Sync + Send>(dst: &mut [T], d: usize, f: F) {
    if dst.len() >= PAR_MIN {
        dst.par_chunks_mut(d).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        dst.chunks_mut(d).enumerate().for_each(|(i, r)| f(i, r));
    }
}

trait Float: num_traits::Float + Send + Sync + Copy + 'static + std::iter::Sum {
    fn store(v: Vec<Self>) -> CpuStorage;
}
impl Float for f32 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}
impl Float for f64 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

// ---------------------------------------------------------------- softmax

struct Softmax;
struct SoftmaxGrad;

fn softmax_rows<T: Float>(src: &[T], d: usize) -> Vec<T> {
    let mut dst = vec![T::zero(); src.len()];
    rows_mut(&mut dst, d, |i, out| {
        let x = &src[i * d..(i + 1) * d];
        let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        let mut s = T::zero();
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - m).exp();
            s = s + *o;
        }
        let inv = T::one() / s;
        out.iter_mut().for_each(|o| *o = *o * inv);
    });
    dst
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "attnlab-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims()[l.dims().len() - 1];
        let st = match s {
            CpuStorage::F32(v) => f32::store(softmax_rows(contiguous(v, l)?, d)),
            CpuStorage::F64(v) => f64::store(softmax_rows(contiguous(v, l)?, d)),
            _ => candle_core::bail!("fused softmax supports f32 and f64 only"),
        };
        Ok((st, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxGrad)?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "attnlab-softmax-grad"
    }
    /// `dx = y * (g - sum(g * y))` per row.
    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = yl.dims()[yl.dims().len() - 1];
        fn go<T: Float>(y: &[T], g: &[T], d: usize) -> CpuStorage {
            let mut dst = vec![T::zero(); y.len()];
            rows_mut(&mut dst, d, |i, out| {
                let (y, g) = (&y[i * d..(i + 1) * d], &g[i * d..(i + 1) * d]);
                let dot: T = y.iter().zip(g).map(|(&a, &b)| a * b).sum();
                for ((o, &a), &b) in out.iter_mut().zip(y).zip(g) {
                    *o = a * (b - dot);
                }
            });
            T::store(dst)
        }
        let st = match (ys, gs) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => {
                go(contiguous(y, yl)?, contiguous(g, gl)?, d)
            }
            (CpuStorage::F64(y), CpuStorage::F64(g)) => {
                go(contiguous(y, yl)?, contiguous(g, gl)?, d)
            }
            _ => candle_core::bail!("fused softmax grad supports f32 and f64 only"),
        };
        Ok((st, yl.shape().clone()))
    }
}

/// Softmax over the last dimension, with a fused backward pass on the CPU.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax)
}

// ---------------------------------------------------------------- layer norm

struct LayerNorm {
    eps: f64,
}
struct LayerNormGrad {
    eps: f64,
}

fn stats<T: Float>(x: &[T], eps: f64) -> (T, T) {
    let n = T::from(x.len()).unwrap();
    let mean = x.iter().copied().sum::<T>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
    (mean, T::one() / (var + T::from(eps).unwrap()).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "attnlab-layer-norm"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = xl.dims()[xl.dims().len() - 1];
        let eps = self.eps;
        fn go<T: Float>(x: &[T], g: &[T], b: &[T], d: usize, eps: f64) -> CpuStorage {
            let mut dst = vec![T::zero(); x.len()];
            rows_mut(&mut dst, d, |i, out| {
                let x = &x[i * d..(i + 1) * d];
                let (m, r) = stats(x, eps);
                for j in 0..d {
                    out[j] = (x[j] - m) * r * g[j] + b[j];
                }
            });
            T::store(dst)
        }
        let st = match (xs, gs, bs) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(b)) => go(
                contiguous(x, xl)?,
                contiguous(g, gl)?,
                contiguous(b, bl)?,
                d,
                eps,
            ),
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(b)) => go(
                contiguous(x, xl)?,
                contiguous(g, gl)?,
                contiguous(b, bl)?,
                d,
                eps,
            ),
            _ => candle_core::bail!("fused layer norm supports f32 and f64 only"),
        };
        Ok((st, xl.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        let n = x.elem_count();
        // One pass computes dx, dgamma and dbeta, packed as [dx | dgamma | dbeta].
        let packed = x.apply_op3_no_bwd(
            &gamma.contiguous()?,
            &grad.contiguous()?,
            &LayerNormGrad { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dg = packed.narrow(0, n, d)?.reshape(gamma.shape())?;
        let db = packed.narrow(0, n + d, d)?.reshape(gamma.shape())?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "attnlab-layer-norm-grad"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = xl.dims()[xl.dims().len() - 1];
        let eps = self.eps;
        fn go<T: Float>(x: &[T], g: &[T], dy: &[T], d: usize, eps: f64) -> CpuStorage {
            let n = x.len();
            let mut out = vec![T::zero(); n + 2 * d];
            let (dx, rest) = out.split_at_mut(n);
            let dn = T::from(d).unwrap();
            rows_mut(dx, d, |i, dxr| {
                let x = &x[i * d..(i + 1) * d];
                let dy = &dy[i * d..(i + 1) * d];
                let (m, r) = stats(x, eps);
                let (mut s1, mut s2) = (T::zero(), T::zero());
                for j in 0..d {
                    let dxh = dy[j] * g[j];
                    s1 = s1 + dxh;
                    s2 = s2 + dxh * (x[j] - m) * r;
                }
                let (s1, s2) = (s1 / dn, s2 / dn);
                for j in 0..d {
                    let xh = (x[j] - m) * r;
                    dxr[j] = r * (dy[j] * g[j] - s1 - xh * s2);
                }
            });
            let (dg, db) = rest.split_at_mut(d);
            for i in 0..n / d {
                let x = &x[i * d..(i + 1) * d];
                let dy = &dy[i * d..(i + 1) * d];
                let (m, r) = stats(x, eps);
                for j in 0..d {
                    dg[j] = dg[j] + dy[j] * (x[j] - m) * r;
                    db[j] = db[j] + dy[j];
                }
            }
            T::store(out)
        }
        let st = match (xs, gs, dys) {
            (CpuStorage::F32(x), CpuStorage::F32(g), CpuStorage::F32(dy)) => go(
                contiguous(x, xl)?,
                contiguous(g, gl)?,
                contiguous(dy, dyl)?,
                d,
                eps,
            ),
            (CpuStorage::F64(x), CpuStorage::F64(g), CpuStorage::F64(dy)) => go(
                contiguous(x, xl)?,
                contiguous(g, gl)?,
                contiguous(dy, dyl)?,
                d,
                eps,
            ),
            _ => candle_core::bail!("fused layer norm grad supports f32 and f64 only"),
        };
        let len = xl.shape().elem_count() + 2 * d;
        Ok((st, Shape::from(len)))
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * gamma + beta`, with a fused
/// backward pass on the CPU.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        let d = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / d)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / d)?;
        let xh = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        return xh.broadcast_mul(gamma)?.broadcast_add(beta);
    }
    x.contiguous()?.apply_op3(gamma, beta, LayerNorm { eps })
}

// ---------------------------------------------------------------- log-softmax

struct LogSoftmax;
struct LogSoftmaxGrad;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "attnlab-log-softmax"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims()[l.dims().len() - 1];
        fn go<T: Float>(x: &[T], d: usize) -> CpuStorage {
            let mut dst = vec![T::zero(); x.len()];
            rows_mut(&mut dst, d, |i, out| {
                let x = &x[i * d..(i + 1) * d];
                let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
                let lse = x.iter().map(|&v| (v - m).exp()).sum::<T>().ln() + m;
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v - lse;
                }
            });
            T::store(dst)
        }
        let st = match s {
            CpuStorage::F32(v) => go(contiguous(v, l)?, d),
            CpuStorage::F64(v) => go(contiguous(v, l)?, d),
            _ => candle_core::bail!("fused log-softmax supports f32 and f64 only"),
        };
        Ok((st, l.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &LogSoftmaxGrad)?,
        ))
    }
}

impl CustomOp2 for LogSoftmaxGrad {
    fn name(&self) -> &'static str {
        "attnlab-log-softmax-grad"
    }
    /// `dx = g - exp(y) * sum(g)` per row.
    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = yl.dims()[yl.dims().len() - 1];
        fn go<T: Float>(y: &[T], g: &[T], d: usize) -> CpuStorage {
            let mut dst = vec![T::zero(); y.len()];
            rows_mut(&mut dst, d, |i, out| {
                let (y, g) = (&y[i * d..(i + 1) * d], &g[i * d..(i + 1) * d]);
                let s: T = g.iter().copied().sum();
                for ((o, &a), &b) in out.iter_mut().zip(y).zip(g) {
                    *o = b - a.exp() * s;
                }
            });
            T::store(dst)
        }
        let st = match (ys, gs) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => {
                go(contiguous(y, yl)?, contiguous(g, gl)?, d)
            }
            (CpuStorage::F64(y), CpuStorage::F64(g)) => {
                go(contiguous(y, yl)?, contiguous(g, gl)?, d)
            }
            _ => candle_core::bail!("fused log-softmax grad supports f32 and f64 only"),
        };
        Ok((st, yl.shape().clone()))
    }
}

/// Log-softmax over the last dimension, with a fused backward pass on the CPU.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return candle_nn::ops::log_softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(LogSoftmax)
}

// ---------------------------------------------------------------- GELU

struct Gelu;
struct GeluGrad;

trait Erf: Float {
    fn erf(self) -> Self;
}
impl Erf for f32 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
}
impl Erf for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

fn map1<T: Erf>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    let mut dst = vec![T::zero(); x.len()];
    let chunk = 4096;
    let body = |(i, out): (usize, &mut [T])| {
        for (o, &v) in out.iter_mut().zip(&x[i * chunk..]) {
            *o = f(v);
        }
    };
    if x.len() >= PAR_MIN {
        dst.par_chunks_mut(chunk).enumerate().for_each(body);
    } else {
        dst.chunks_mut(chunk).enumerate().for_each(body);
    }
    dst
}

fn gelu<T: Erf>(x: T) -> T {
    let h = T::from(0.5).unwrap();
    h * x * (T::one() + (x * T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf())
}

fn gelu_grad<T: Erf>(x: T) -> T {
    let h = T::from(0.5).unwrap();
    let inv_sqrt_2pi =
        T::from(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2).unwrap();
    h * (T::one() + (x * T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf())
        + x * inv_sqrt_2pi * (-h * x * x).exp()
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "attnlab-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let st = match s {
            CpuStorage::F32(v) => f32::store(map1(contiguous(v, l)?, gelu)),
            CpuStorage::F64(v) => f64::store(map1(contiguous(v, l)?, gelu)),
            _ => candle_core::bail!("fused GELU supports f32 and f64 only"),
        };
        Ok((st, l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "attnlab-gelu-grad"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn go<T: Erf>(x: &[T], g: &[T]) -> Vec<T> {
            let mut d = map1(x, gelu_grad);
            d.iter_mut().zip(g).for_each(|(a, &b)| *a = *a * b);
            d
        }
        let st = match (xs, gs) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                f32::store(go(contiguous(x, xl)?, contiguous(g, gl)?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                f64::store(go(contiguous(x, xl)?, contiguous(g, gl)?))
            }
            _ => candle_core::bail!("fused GELU grad supports f32 and f64 only"),
        };
        Ok((st, xl.shape().clone()))
    }
}

/// Exact (erf) GELU, with a fused backward pass on the CPU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}
