//! Fused CPU kernels with backward passes: softmax over the last dimension and LayerNorm.
//!
//! candle-nn 0.9 ships fused forward kernels for both but without backward, so training falls
//! back to chains of 6–10 elementwise ops, each a full pass over memory plus an allocation. These
//! `CustomOp`s do one pass forward and one pass backward (f32 and f64, rows split over rayon when
//! large). On a non-CPU device the same maths is composed from candle ops.
//!
//! Longer than most files: each kernel keeps its forward, its backward and the dtype dispatch
//! side by side, so the two passes can be read (and checked) against each other.

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

pub(crate) trait Float:
    num_traits::Float + Send + Sync + Copy + 'static + std::iter::Sum
{
    fn store(v: Vec<Self>) -> CpuStorage;
    /// `exp`, inlined and branch-light for f32 (libm's `expf` call was 5% of a step); exact libm
    /// `exp` for f64, which the finite-difference tests use.
    fn fexp(self) -> Self;
}
impl Float for f32 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        fast_exp(self)
    }
}
impl Float for f64 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
}

/// `e^x` for f32 with relative error below 2e-7: `x = n ln2 + r`, `|r| <= ln2 / 2`, degree-6
/// Taylor polynomial for `e^r`, `2^n` from the exponent bits. Exactly 0 below -87 (masked
/// scores must get probability exactly 0), `+inf` above 88 (softmax arguments are <= 0).
#[inline(always)]
#[allow(clippy::manual_clamp)] // max/min vectorise; `clamp`'s NaN handling did not
pub fn fast_exp(x: f32) -> f32 {
    let c = x.max(-87.0).min(88.0);
    // Round-to-nearest by the 1.5 * 2^23 trick: baseline x86-64 has no `floor` instruction.
    let t = c * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = c - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // SAFETY: |n| <= 127 after the clamp, so the conversion is exact.
    let k = unsafe { n.to_int_unchecked::<i32>() };
    let v = p * f32::from_bits(((k + 127) as u32) << 23);
    // Selects, not branches, so loops over it vectorise.
    let v = if x > 88.0 { f32::INFINITY } else { v };
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

// ---------------------------------------------------------------- softmax

struct Softmax;
struct SoftmaxGrad;

/// Sum with 8 independent partial sums, so the loop vectorises (a single running sum is a
/// dependency chain the compiler may not reorder).
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l] + c[l];
        }
    }
    let mut s = rest.iter().fold(T::zero(), |a, &b| a + b);
    for a in acc {
        s = s + a;
    }
    s
}

/// `sum_i f(a_i, b_i)` with 8 independent partial sums (see [`lane_sum`]).
#[inline(always)]
pub(crate) fn lane_sum2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = a.len().min(b.len());
    let mut acc = [T::zero(); 8];
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        for l in 0..8 {
            acc[l] = acc[l] + f(a[i + l], b[i + l]);
        }
    }
    let mut s = T::zero();
    for i in full..n {
        s = s + f(a[i], b[i]);
    }
    for v in acc {
        s = s + v;
    }
    s
}

/// Softmax of one row in place: max, then `exp` in its own loop (vectorisable), lane sum, scale.
#[inline(always)]
pub(crate) fn softmax_in_place<T: Float>(row: &mut [T]) {
    let m = row.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    row.iter_mut().for_each(|x| *x = (*x - m).fexp());
    let inv = T::one() / lane_sum(row);
    row.iter_mut().for_each(|x| *x = *x * inv);
}

fn softmax_rows<T: Float>(src: &[T], d: usize) -> Vec<T> {
    let mut dst = src.to_vec();
    rows_mut(&mut dst, d, |_, out| softmax_in_place(out));
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
                let dot = lane_sum2(y, g, |a, b| a * b);
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
    let mean = lane_sum(x) / n;
    let var = lane_sum2(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, T::one() / (var + T::from(eps).unwrap()).sqrt())
}

/// LayerNorm of each `d`-row of `x` into `out`, rows in parallel when large.
pub(crate) fn layer_norm_rows<T: Float>(
    x: &[T],
    g: &[T],
    b: &[T],
    d: usize,
    eps: f64,
    out: &mut [T],
) {
    rows_mut(out, d, |i, out| {
        let x = &x[i * d..(i + 1) * d];
        let (m, r) = stats(x, eps);
        for j in 0..d {
            out[j] = (x[j] - m) * r * g[j] + b[j];
        }
    });
}

/// LayerNorm backward over `d`-rows: `dx` (added to what `dx` holds when `accumulate`), and
/// `[dgamma | dbeta]` into `dgb` (`2 d`, overwritten).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_grad_rows<T: Float>(
    x: &[T],
    g: &[T],
    dy: &[T],
    d: usize,
    eps: f64,
    dx: &mut [T],
    accumulate: bool,
    dgb: &mut [T],
) {
    let rows = x.len() / d;
    let dn = T::from(d).unwrap();
    // Blocks of rows in parallel: each writes its rows of dx and returns its partial
    // dgamma / dbeta, summed in block order (independent of the thread count).
    let block = 64;
    let partial: Vec<Vec<T>> = dx
        .par_chunks_mut(block * d)
        .enumerate()
        .map(|(bi, dxb)| {
            let mut acc = vec![T::zero(); 2 * d];
            // Row scratch so every loop below is a plain elementwise pass or lane sum.
            let (mut xh, mut dxh) = (vec![T::zero(); d], vec![T::zero(); d]);
            for (k, dxr) in dxb.chunks_mut(d).enumerate() {
                let i = bi * block + k;
                let x = &x[i * d..(i + 1) * d];
                let dy = &dy[i * d..(i + 1) * d];
                let (m, r) = stats(x, eps);
                for j in 0..d {
                    xh[j] = (x[j] - m) * r;
                    dxh[j] = dy[j] * g[j];
                }
                let s1 = lane_sum(&dxh) / dn;
                let s2 = lane_sum2(&dxh, &xh, |a, b| a * b) / dn;
                let (ag, ab) = acc.split_at_mut(d);
                for j in 0..d {
                    ag[j] = ag[j] + dy[j] * xh[j];
                    ab[j] = ab[j] + dy[j];
                }
                if accumulate {
                    for j in 0..d {
                        dxr[j] = dxr[j] + r * (dxh[j] - s1 - xh[j] * s2);
                    }
                } else {
                    for j in 0..d {
                        dxr[j] = r * (dxh[j] - s1 - xh[j] * s2);
                    }
                }
            }
            acc
        })
        .collect();
    debug_assert_eq!(partial.len(), rows.div_ceil(block));
    dgb.iter_mut().for_each(|v| *v = T::zero());
    for acc in partial {
        for (o, a) in dgb.iter_mut().zip(acc) {
            *o = *o + a;
        }
    }
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
            // SAFETY: layer_norm_rows writes every element.
            let mut dst = unsafe { crate::nn::fused::uninit(x.len()) };
            layer_norm_rows(x, g, b, d, eps, &mut dst);
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
            // SAFETY: layer_norm_grad_rows writes all of dx (accumulate = false) and of rest.
            let mut out = unsafe { crate::nn::fused::uninit(n + 2 * d) };
            let (dx, rest) = out.split_at_mut(n);
            layer_norm_grad_rows(x, g, dy, d, eps, dx, false, rest);
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
                let lse = x.iter().map(|&v| (v - m).fexp()).sum::<T>().ln() + m;
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
                    *o = b - a.fexp() * s;
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

pub(crate) trait Erf: Float {
    fn erf(self) -> Self;
    /// `out[i] = gelu(x[i])` over a chunk.
    fn gelu_chunk(x: &[Self], out: &mut [Self]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu(v));
    }
    /// `out[i] = g[i] * gelu'(x[i])` over a chunk.
    fn gelu_grad_mul_chunk(x: &[Self], g: &[Self], out: &mut [Self]) {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o = gv * v.gelu_grad();
        }
    }
    /// d/dx of exact GELU.
    fn gelu_grad(self) -> Self {
        let h = Self::from(0.5).unwrap();
        let inv_sqrt_2pi =
            Self::from(0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2)
                .unwrap();
        h * (Self::one() + (self * Self::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf())
            + self * inv_sqrt_2pi * (-h * self * self).exp()
    }
}
impl Erf for f32 {
    fn gelu_chunk(x: &[Self], out: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { simd::gelu_avx512(x, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { simd::gelu_avx2(x, out) };
        }
        out.iter_mut()
            .zip(x)
            .for_each(|(o, &v)| *o = simd::gelu_f32(v));
    }
    fn gelu_grad_mul_chunk(x: &[Self], g: &[Self], out: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: as above.
            return unsafe { simd::gelu_grad_mul_avx512(x, g, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { simd::gelu_grad_mul_avx2(x, g, out) };
        }
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o = gv * simd::gelu_grad_f32(v);
        }
    }
    /// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below f32 resolution near 1): one `exp`
    /// instead of libm's branchy `erff`, which was 6% of a training step.
    fn erf(self) -> Self {
        let a = self.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
        (1.0 - poly * fast_exp(-a * a)).copysign(self)
    }
    /// Shares one `exp(-x^2/2)` between Phi(x) (A&S erf at x/sqrt 2) and the density.
    fn gelu_grad(self) -> Self {
        let a = self.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
        let e = fast_exp(-a * a);
        let erf = (1.0 - poly * e).copysign(self);
        0.5 * (1.0 + erf) + self * 0.398_942_3 * e
    }
}
impl Erf for f64 {
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

const CHUNK: usize = 4096;

/// `gelu` of every element, in parallel chunks when large.
pub(crate) fn gelu_vec<T: Erf>(x: &[T]) -> Vec<T> {
    // SAFETY: gelu_into writes every element.
    let mut dst = unsafe { crate::nn::fused::uninit(x.len()) };
    gelu_into(x, &mut dst);
    dst
}

/// `out = gelu(x)` elementwise, in parallel chunks when large.
pub(crate) fn gelu_into<T: Erf>(x: &[T], out: &mut [T]) {
    let body =
        |(i, out): (usize, &mut [T])| T::gelu_chunk(&x[i * CHUNK..i * CHUNK + out.len()], out);
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK).enumerate().for_each(body);
    } else {
        out.chunks_mut(CHUNK).enumerate().for_each(body);
    }
}

/// `g * gelu'(x)` elementwise, in parallel chunks when large.
pub(crate) fn gelu_grad_mul_vec<T: Erf>(x: &[T], g: &[T]) -> Vec<T> {
    // SAFETY: gelu_grad_mul_into writes every element.
    let mut dst = unsafe { crate::nn::fused::uninit(x.len()) };
    gelu_grad_mul_into(x, g, &mut dst);
    dst
}

/// `out = g * gelu'(x)` elementwise, in parallel chunks when large.
pub(crate) fn gelu_grad_mul_into<T: Erf>(x: &[T], g: &[T], out: &mut [T]) {
    let body = |(i, out): (usize, &mut [T])| {
        let r = i * CHUNK..i * CHUNK + out.len();
        T::gelu_grad_mul_chunk(&x[r.clone()], &g[r], out)
    };
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(CHUNK).enumerate().for_each(body);
    } else {
        out.chunks_mut(CHUNK).enumerate().for_each(body);
    }
}

/// Branch-free f32 GELU and its derivative, compiled once plainly and once for AVX2 + FMA
/// (picked at run time: the crate is built for baseline x86-64, where `floor` is a libm call
/// and nothing vectorises).
mod simd {
    /// `e^x` without branches (clamped to [-87, 88]; GELU needs no exact zero).
    #[inline(always)]
    #[allow(clippy::manual_clamp)] // max/min vectorise; `clamp`'s NaN handling did not
    fn exp_nb(x: f32) -> f32 {
        let x = x.max(-87.0).min(88.0);
        // Round-to-nearest by the 1.5 * 2^23 trick (no `floor` call).
        let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
        let n = t - 12_582_912.0;
        let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // SAFETY: |n| <= 127 after the clamp, so the conversion is exact (and, unlike `as`,
        // needs no saturation code, which kept the loop from vectorising).
        let k = unsafe { n.to_int_unchecked::<i32>() };
        p * f32::from_bits(((k + 127) as u32) << 23)
    }

    /// `(erf(x / sqrt 2), exp(-x^2 / 2))` by Abramowitz & Stegun 7.1.26.
    #[inline(always)]
    fn phi_parts(x: f32) -> (f32, f32) {
        let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let poly = t
            * (0.254_829_6
                + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
        let e = exp_nb(-a * a);
        ((1.0 - poly * e).copysign(x), e)
    }

    #[inline(always)]
    pub fn gelu_f32(x: f32) -> f32 {
        0.5 * x * (1.0 + phi_parts(x).0)
    }

    #[inline(always)]
    pub fn gelu_grad_f32(x: f32) -> f32 {
        let (erf, e) = phi_parts(x);
        0.5 * (1.0 + erf) + x * 0.398_942_3 * e
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_avx2(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = gelu_f32(v);
        }
    }

    /// The same loops with 16-wide vectors (AVX-512F implies FMA): GELU and its derivative were
    /// 8% of an encoder step after the fused block.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gelu_avx512(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = gelu_f32(v);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gelu_grad_mul_avx512(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o = gv * gelu_grad_f32(v);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_grad_mul_avx2(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
            *o = gv * gelu_grad_f32(v);
        }
    }
}

pub(crate) fn gelu<T: Erf>(x: T) -> T {
    let h = T::from(0.5).unwrap();
    h * x * (T::one() + (x * T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf())
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "attnlab-gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let st = match s {
            CpuStorage::F32(v) => f32::store(gelu_vec(contiguous(v, l)?)),
            CpuStorage::F64(v) => f64::store(gelu_vec(contiguous(v, l)?)),
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
            gelu_grad_mul_vec(x, g)
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
