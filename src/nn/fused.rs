//! Fused CPU kernels for the two places where candle's op-by-op autograd costs most:
//!
//! - [`linear`]: `y = x W^T + b` on `(.., in)` as one graph node (one GEMM with the bias folded in)
//!   instead of reshape / transpose / matmul / broadcast-add / reshape, each of which costs a
//!   zero-filled gradient buffer and an extra add in candle's backward pass.
//! - [`attention`]: the whole attention core, from the fused `[q | k | v]` projection
//!   `(batch, T, width)` to the heads' concatenated output `(batch, T, heads * d_head)`, as one
//!   node: per (example, head) small strided GEMMs straight on the projection buffer (no
//!   transposes or copies), bias + softmax in place, rayon over (example, head) pairs. The
//!   probabilities are kept for the backward pass and for attention capture at no extra cost.
//!
//! Both run on f32 and f64 CPU tensors; callers fall back to composed candle ops elsewhere.
//!
//! Longer than most files: each kernel keeps its forward, its backward and the dtype dispatch
//! side by side, so the two passes can be read (and checked) against each other.

use crate::nn::{blas, ops};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

pub(crate) trait Elem: ops::Float + blas::Blas + ops::Erf + candle_core::WithDType {
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}
impl Elem for f32 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl Elem for f64 {
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

pub(crate) fn slice<'a, T: Elem>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let v =
        T::slice(s).ok_or_else(|| candle_core::Error::Msg(format!("{what}: dtype mismatch")))?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input has to be contiguous"),
    }
}

/// A raw pointer shared across rayon workers that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub(crate) *mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    /// A method (not field access) so closures capture the `Send` wrapper, not the raw pointer.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// A buffer of `n` elements every one of which the caller overwrites before reading (GEMM
/// outputs with `read_dst = false`, full copies): skips a memset that was 4% of a step.
///
/// # Safety
/// Every element must be written before the buffer is read or returned.
#[allow(clippy::uninit_vec)] // deliberate: the callers' SAFETY comments show each full write
pub(crate) unsafe fn uninit<T: Copy>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.set_len(n);
    v
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// `dst (m x n) = beta * lhs (m x k) * rhs (k x n) [+ dst if accumulate]`, strides in elements
/// as (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    d: (isize, isize),
    lhs: *const T,
    l: (isize, isize),
    rhs: *const T,
    r: (isize, isize),
    beta: T,
    accumulate: bool,
    par: Parallelism,
) {
    // Every product goes to the faster library, the small per-head ones inside rayon workers
    // too (OpenBLAS runs single-threaded here): its small-matrix kernels beat the crate's on
    // them (attention core of encoder-6L 6.1 -> 4.8 ms forward, 7.8 -> 6.4 ms backward).
    if blas::chosen() == blas::Gemm::OpenBlas
        && blas::try_gemm(m, n, k, dst, d, lhs, l, rhs, r, beta, accumulate)
    {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        d.1,
        d.0,
        accumulate,
        lhs,
        l.1,
        l.0,
        rhs,
        r.1,
        r.0,
        T::one(),
        beta,
        false,
        false,
        false,
        par,
    )
}

pub(crate) fn par_for(rows: usize, macs: usize) -> Parallelism {
    if threads() > 1 && rows * macs > 1 << 16 {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    }
}

// ---------------------------------------------------------------- linear

/// Pre-activations saved by a GELU-fused linear for its backward pass.
type Saved = Arc<Mutex<Option<CpuStorage>>>;

struct Linear {
    /// Apply exact GELU to the output, keeping the pre-activation in `pre`.
    gelu: bool,
    pre: Saved,
}
struct LinearGrad {
    gelu: bool,
    pre: Saved,
}

fn linear_fwd<T: Elem + ops::Erf>(
    x: &[T],
    w: &[T],
    b: &[T],
    rows: usize,
    inp: usize,
    out: usize,
    gelu: bool,
) -> (Vec<T>, Option<Vec<T>>) {
    let mut y: Vec<T> = Vec::with_capacity(rows * out);
    for _ in 0..rows {
        y.extend_from_slice(b);
    }
    unsafe {
        mm(
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            (out as isize, 1),
            x.as_ptr(),
            (inp as isize, 1),
            w.as_ptr(),
            (1, inp as isize),
            T::one(),
            true,
            par_for(rows, inp * out),
        )
    };
    if gelu {
        (ops::gelu_vec(&y), Some(y))
    } else {
        (y, None)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "attnlab-linear"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = wl.shape().dims2()?;
        let rows = xl.shape().elem_count() / inp;
        let (st, pre) = match xs.dtype() {
            DType::F32 => {
                let (y, pre) = linear_fwd::<f32>(
                    slice(xs, xl, "linear x")?,
                    slice(ws, wl, "linear w")?,
                    slice(bs, bl, "linear b")?,
                    rows,
                    inp,
                    out,
                    self.gelu,
                );
                (
                    <f32 as ops::Float>::store(y),
                    pre.map(<f32 as ops::Float>::store),
                )
            }
            DType::F64 => {
                let (y, pre) = linear_fwd::<f64>(
                    slice(xs, xl, "linear x")?,
                    slice(ws, wl, "linear w")?,
                    slice(bs, bl, "linear b")?,
                    rows,
                    inp,
                    out,
                    self.gelu,
                );
                (
                    <f64 as ops::Float>::store(y),
                    pre.map(<f64 as ops::Float>::store),
                )
            }
            d => candle_core::bail!("fused linear supports f32 and f64, not {d:?}"),
        };
        *self.pre.lock().expect("pre lock") = pre;
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = out;
        Ok((st, Shape::from(dims)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inp) = w.dims2()?;
        let rows = x.elem_count() / inp;
        let op = LinearGrad {
            gelu: self.gelu,
            pre: self.pre.clone(),
        };
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &op)?;
        let dx = packed.narrow(0, 0, rows * inp)?.reshape(x.shape())?;
        let dw = packed
            .narrow(0, rows * inp, out * inp)?
            .reshape((out, inp))?;
        let db = packed.narrow(0, rows * inp + out * inp, out)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Packed `[dx = d W | dW = d^T x | db = colsum d]` with `d = g` (or `g * gelu'(pre)`).
fn linear_bwd<T: Elem + ops::Erf>(
    x: &[T],
    w: &[T],
    g: &[T],
    pre: Option<&[T]>,
    rows: usize,
    inp: usize,
    out: usize,
) -> Vec<T> {
    let d: std::borrow::Cow<[T]> = match pre {
        None => g.into(),
        Some(pre) => ops::gelu_grad_mul_vec(pre, g).into(),
    };
    // SAFETY: dx and dw are GEMM outputs (read_dst = false); db is zeroed below.
    let mut r = unsafe { uninit::<T>(rows * inp + out * inp + out) };
    let (dx, rest) = r.split_at_mut(rows * inp);
    let (dw, db) = rest.split_at_mut(out * inp);
    db.iter_mut().for_each(|v| *v = T::zero());
    unsafe {
        mm(
            rows,
            inp,
            out,
            dx.as_mut_ptr(),
            (inp as isize, 1),
            d.as_ptr(),
            (out as isize, 1),
            w.as_ptr(),
            (inp as isize, 1),
            T::one(),
            false,
            par_for(rows, inp * out),
        );
        mm(
            out,
            inp,
            rows,
            dw.as_mut_ptr(),
            (inp as isize, 1),
            d.as_ptr(),
            (1, out as isize),
            x.as_ptr(),
            (inp as isize, 1),
            T::one(),
            false,
            par_for(rows, inp * out),
        );
    }
    for row in d.chunks(out) {
        for (a, &b) in db.iter_mut().zip(row) {
            *a += b;
        }
    }
    r
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "attnlab-linear-grad"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = wl.shape().dims2()?;
        let rows = xl.shape().elem_count() / inp;
        let guard = self.pre.lock().expect("pre lock");
        let pre =
            if self.gelu {
                Some(guard.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("linear pre-activations missing".into())
                })?)
            } else {
                None
            };
        let st = match (xs.dtype(), pre) {
            (DType::F32, None) | (DType::F32, Some(CpuStorage::F32(_))) => {
                let pre = match pre {
                    Some(CpuStorage::F32(v)) => Some(&v[..]),
                    _ => None,
                };
                <f32 as ops::Float>::store(linear_bwd(
                    slice(xs, xl, "linear x")?,
                    slice(ws, wl, "linear w")?,
                    slice(gs, gl, "linear grad")?,
                    pre,
                    rows,
                    inp,
                    out,
                ))
            }
            (DType::F64, None) | (DType::F64, Some(CpuStorage::F64(_))) => {
                let pre = match pre {
                    Some(CpuStorage::F64(v)) => Some(&v[..]),
                    _ => None,
                };
                <f64 as ops::Float>::store(linear_bwd(
                    slice(xs, xl, "linear x")?,
                    slice(ws, wl, "linear w")?,
                    slice(gs, gl, "linear grad")?,
                    pre,
                    rows,
                    inp,
                    out,
                ))
            }
            (d, _) => candle_core::bail!("fused linear supports f32 and f64, not {d:?}"),
        };
        Ok((st, Shape::from(rows * inp + out * inp + out)))
    }
}

/// `y = x W^T + b` for `x (.., in)`, `W (out, in)`, `b (out,)` as one fused node (CPU f32/f64).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    linear_op(x, w, b, false)
}

/// `gelu(x W^T + b)` (exact GELU) as one fused node: saves the activation's own graph node, its
/// zero-filled gradient buffer and one pass over the widest activation of the block.
pub fn linear_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    linear_op(x, w, b, true)
}

fn linear_op(x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
    let op = Linear {
        gelu,
        pre: Arc::new(Mutex::new(None)),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the fused linear and attention kernels on or off process-wide (on by default); off, the
/// layers use composed candle ops. For ablations (`attnlab bench --unfused`) and for tests that
/// check both paths agree. The fused softmax / LayerNorm / GELU ops of [`crate::nn::ops`] stay.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the fused kernels are on and handle tensors like `x`.
pub fn supported(x: &Tensor) -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
}

// ---------------------------------------------------------------- attention

/// Shape of the attention core.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    /// The first `fixed` heads take supplied patterns.
    pub fixed: usize,
    pub d_head: usize,
}

struct Attention {
    s: AttnShape,
    /// Probabilities `(batch, heads, T, T)` saved by the forward pass (f64 or f32 storage).
    probs: Arc<Mutex<Option<CpuStorage>>>,
}

struct AttentionGrad {
    s: AttnShape,
    probs: Arc<Mutex<Option<CpuStorage>>>,
}

/// Geometry of one call: batch, T, projection width, bias batch, output width.
pub(crate) struct Geo {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) w: usize,
    pub(crate) bias_b: usize,
    pub(crate) hd: usize,
}

/// The attention core forward: the heads' output `(b, T, heads * d_head)` and the
/// probabilities `(b, heads, T, T)`.
pub(crate) fn attention_fwd<T: Elem>(
    s: AttnShape,
    qkv: &[T],
    bias: &[T],
    pat: &[T],
    g: &Geo,
) -> (Vec<T>, Vec<T>) {
    let AttnShape {
        heads: h,
        fixed: nf,
        d_head: dh,
    } = s;
    let nl = h - nf;
    let (t, w, hd) = (g.t, g.w, g.hd);
    let scale = T::from(1.0 / (dh as f64).sqrt()).unwrap();
    // SAFETY: every (example, head) writes its own T x d_head block of y by GEMM and its
    // own T x T block of probs (GEMM or copy of the pattern).
    let mut y = unsafe { uninit::<T>(g.b * t * hd) };
    let mut probs = unsafe { uninit::<T>(g.b * h * t * t) };
    let yp = Ptr(y.as_mut_ptr());
    probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (bi, hi) = (bh / h, bh % h);
        let base = &qkv[bi * t * w..];
        if hi < nf {
            p.copy_from_slice(&pat[(bi * nf + hi) * t * t..(bi * nf + hi + 1) * t * t]);
        } else {
            let li = hi - nf;
            unsafe {
                mm(
                    t,
                    t,
                    dh,
                    p.as_mut_ptr(),
                    (t as isize, 1),
                    base[li * dh..].as_ptr(),
                    (w as isize, 1),
                    base[(nl + li) * dh..].as_ptr(),
                    (1, w as isize),
                    scale,
                    false,
                    Parallelism::None,
                );
            }
            let bb = if g.bias_b == 1 { 0 } else { bi };
            let brow = &bias[bb * t * t..(bb + 1) * t * t];
            for (row, br) in p.chunks_mut(t).zip(brow.chunks(t)) {
                for (x, &bv) in row.iter_mut().zip(br) {
                    *x += bv;
                }
                ops::softmax_in_place(row);
            }
        }
        // y[bi, :, hi*dh..] = P @ V_hi
        unsafe {
            mm(
                t,
                dh,
                t,
                yp.get().add(bi * t * hd + hi * dh),
                (hd as isize, 1),
                p.as_ptr(),
                (t as isize, 1),
                base[(2 * nl + hi) * dh..].as_ptr(),
                (w as isize, 1),
                T::one(),
                false,
                Parallelism::None,
            );
        }
    });
    (y, probs)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attnlab-attention"
    }
    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, w) = ql.shape().dims3()?;
        let g = Geo {
            b,
            t,
            w,
            bias_b: bl.dims()[0],
            hd: self.s.heads * self.s.d_head,
        };
        let (y, p) = match qs.dtype() {
            DType::F32 => {
                let (y, p) = attention_fwd::<f32>(
                    self.s,
                    slice(qs, ql, "attention qkv")?,
                    slice(bs, bl, "attention bias")?,
                    slice(ps, pl, "attention patterns")?,
                    &g,
                );
                (<f32 as ops::Float>::store(y), <f32 as ops::Float>::store(p))
            }
            DType::F64 => {
                let (y, p) = attention_fwd::<f64>(
                    self.s,
                    slice(qs, ql, "attention qkv")?,
                    slice(bs, bl, "attention bias")?,
                    slice(ps, pl, "attention patterns")?,
                    &g,
                );
                (<f64 as ops::Float>::store(y), <f64 as ops::Float>::store(p))
            }
            d => candle_core::bail!("fused attention supports f32 and f64, not {d:?}"),
        };
        *self.probs.lock().expect("probs lock") = Some(p);
        Ok((y, Shape::from((b, t, g.hd))))
    }
    fn bwd(
        &self,
        qkv: &Tensor,
        _bias: &Tensor,
        _pat: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = AttentionGrad {
            s: self.s,
            probs: self.probs.clone(),
        };
        let d = qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        Ok((Some(d), None, None))
    }
}

/// The attention core backward: `d qkv` from `dy` and the saved probabilities.
pub(crate) fn attention_bwd<T: Elem>(
    s: AttnShape,
    qkv: &[T],
    dy: &[T],
    probs: &[T],
    g: &Geo,
) -> Vec<T> {
    let AttnShape {
        heads: h,
        fixed: nf,
        d_head: dh,
    } = s;
    let nl = h - nf;
    let (t, w, hd) = (g.t, g.w, g.hd);
    let scale = T::from(1.0 / (dh as f64).sqrt()).unwrap();
    // SAFETY: the projection's columns are [q (learned) | k (learned) | v (all heads)];
    // every (example, head) writes dV, and learned heads dQ and dK, by GEMM.
    let mut dq = unsafe { uninit::<T>(qkv.len()) };
    let dp = Ptr(dq.as_mut_ptr());
    (0..g.b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let p = &probs[bh * t * t..(bh + 1) * t * t];
        let base = &qkv[bi * t * w..];
        let dy = &dy[bi * t * hd + hi * dh..];
        unsafe {
            let dbase = dp.get().add(bi * t * w);
            // dV = P^T dY
            mm(
                t,
                dh,
                t,
                dbase.add((2 * nl + hi) * dh),
                (w as isize, 1),
                p.as_ptr(),
                (1, t as isize),
                dy.as_ptr(),
                (hd as isize, 1),
                T::one(),
                false,
                Parallelism::None,
            );
            if hi < nf {
                return;
            }
            let li = hi - nf;
            // dP = dY V^T, then dS = P * (dP - rowsum(dP * P)), scaled.
            // SAFETY: written whole by the GEMM below.
            let mut ds = uninit::<T>(t * t);
            mm(
                t,
                t,
                dh,
                ds.as_mut_ptr(),
                (t as isize, 1),
                dy.as_ptr(),
                (hd as isize, 1),
                base[(2 * nl + hi) * dh..].as_ptr(),
                (1, w as isize),
                T::one(),
                false,
                Parallelism::None,
            );
            for (drow, prow) in ds.chunks_mut(t).zip(p.chunks(t)) {
                let dot = ops::lane_sum2(drow, prow, |a, b| a * b);
                for (a, &b) in drow.iter_mut().zip(prow) {
                    *a = b * (*a - dot);
                }
            }
            // dQ = scale dS K ; dK = scale dS^T Q
            mm(
                t,
                dh,
                t,
                dbase.add(li * dh),
                (w as isize, 1),
                ds.as_ptr(),
                (t as isize, 1),
                base[(nl + li) * dh..].as_ptr(),
                (w as isize, 1),
                scale,
                false,
                Parallelism::None,
            );
            mm(
                t,
                dh,
                t,
                dbase.add((nl + li) * dh),
                (w as isize, 1),
                ds.as_ptr(),
                (1, t as isize),
                base[li * dh..].as_ptr(),
                (w as isize, 1),
                scale,
                false,
                Parallelism::None,
            );
        }
    });
    dq
}

impl candle_core::CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "attnlab-attention-grad"
    }
    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, w) = ql.shape().dims3()?;
        let g = Geo {
            b,
            t,
            w,
            bias_b: 1,
            hd: self.s.heads * self.s.d_head,
        };
        let guard = self.probs.lock().expect("probs lock");
        let probs = guard
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("attention probabilities missing".into()))?;
        let st = match (qs.dtype(), probs) {
            (DType::F32, CpuStorage::F32(p)) => <f32 as ops::Float>::store(attention_bwd::<f32>(
                self.s,
                slice(qs, ql, "attention qkv")?,
                slice(gs, gl, "attention grad")?,
                &p[..],
                &g,
            )),
            (DType::F64, CpuStorage::F64(p)) => <f64 as ops::Float>::store(attention_bwd::<f64>(
                self.s,
                slice(qs, ql, "attention qkv")?,
                slice(gs, gl, "attention grad")?,
                &p[..],
                &g,
            )),
            _ => candle_core::bail!("fused attention grad: dtype mismatch"),
        };
        Ok((st, ql.shape().clone()))
    }
}

/// The attention core: `qkv (batch, T, width)` laid out `[q (learned heads) | k (learned) |
/// v (all heads)]`, additive `bias (batch or 1, 1, T, T)`, fixed-head `patterns (batch, fixed, T,
/// T)` (any tensor when `fixed = 0`) -> `((batch, T, heads * d_head), probabilities (batch, heads,
/// T, T) if `capture`)`. The probabilities are the ones the forward pass computed (detached).
pub fn attention(
    qkv: &Tensor,
    bias: &Tensor,
    patterns: &Tensor,
    s: AttnShape,
    capture: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, _) = qkv.dims3()?;
    let store = Arc::new(Mutex::new(None));
    let op = Attention {
        s,
        probs: store.clone(),
    };
    let y = qkv.contiguous()?.apply_op3(
        &bias.contiguous()?,
        &patterns.to_dtype(qkv.dtype())?.contiguous()?,
        op,
    )?;
    if !capture {
        return Ok((y, None));
    }
    let shape = (b, s.heads, t, t);
    let dev = qkv.device();
    let probs = match store.lock().expect("probs lock").as_ref() {
        Some(CpuStorage::F32(v)) => Tensor::from_vec(v.clone(), shape, dev)?,
        Some(CpuStorage::F64(v)) => Tensor::from_vec(v.clone(), shape, dev)?,
        _ => candle_core::bail!("attention probabilities missing"),
    };
    Ok((y, Some(probs)))
}
