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

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

trait Elem: num_traits::Float + Send + Sync + Copy + 'static + std::iter::Sum {
    fn store(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
}
impl Elem for f32 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl Elem for f64 {
    fn store(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    fn slice(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}

fn slice<'a, T: Elem>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let v =
        T::slice(s).ok_or_else(|| candle_core::Error::Msg(format!("{what}: dtype mismatch")))?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: input has to be contiguous"),
    }
}

/// A raw pointer shared across rayon workers that write disjoint regions.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// `dst (m x n) = beta * lhs (m x k) * rhs (k x n) [+ dst if accumulate]`, strides in elements
/// as (row stride, column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn mm<T: Elem>(
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

fn par_for(rows: usize, macs: usize) -> Parallelism {
    if threads() > 1 && rows * macs > 1 << 16 {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    }
}

// ---------------------------------------------------------------- linear

struct Linear;
struct LinearGrad;

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
        fn go<T: Elem>(x: &[T], w: &[T], b: &[T], rows: usize, inp: usize, out: usize) -> Vec<T> {
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
            y
        }
        let st = match xs.dtype() {
            DType::F32 => f32::store(go(
                slice(xs, xl, "linear x")?,
                slice(ws, wl, "linear w")?,
                slice(bs, bl, "linear b")?,
                rows,
                inp,
                out,
            )),
            DType::F64 => f64::store(go(
                slice(xs, xl, "linear x")?,
                slice(ws, wl, "linear w")?,
                slice(bs, bl, "linear b")?,
                rows,
                inp,
                out,
            )),
            d => candle_core::bail!("fused linear supports f32 and f64, not {d:?}"),
        };
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
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad)?;
        let dx = packed.narrow(0, 0, rows * inp)?.reshape(x.shape())?;
        let dw = packed
            .narrow(0, rows * inp, out * inp)?
            .reshape((out, inp))?;
        let db = packed.narrow(0, rows * inp + out * inp, out)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "attnlab-linear-grad"
    }
    /// Packed `[dx = g W | dW = g^T x | db = colsum g]`.
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
        fn go<T: Elem>(x: &[T], w: &[T], g: &[T], rows: usize, inp: usize, out: usize) -> Vec<T> {
            let mut r = vec![T::zero(); rows * inp + out * inp + out];
            let (dx, rest) = r.split_at_mut(rows * inp);
            let (dw, db) = rest.split_at_mut(out * inp);
            unsafe {
                mm(
                    rows,
                    inp,
                    out,
                    dx.as_mut_ptr(),
                    (inp as isize, 1),
                    g.as_ptr(),
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
                    g.as_ptr(),
                    (1, out as isize),
                    x.as_ptr(),
                    (inp as isize, 1),
                    T::one(),
                    false,
                    par_for(rows, inp * out),
                );
            }
            for row in g.chunks(out) {
                for (a, &b) in db.iter_mut().zip(row) {
                    *a = *a + b;
                }
            }
            r
        }
        let st = match xs.dtype() {
            DType::F32 => f32::store(go(
                slice(xs, xl, "linear x")?,
                slice(ws, wl, "linear w")?,
                slice(gs, gl, "linear grad")?,
                rows,
                inp,
                out,
            )),
            DType::F64 => f64::store(go(
                slice(xs, xl, "linear x")?,
                slice(ws, wl, "linear w")?,
                slice(gs, gl, "linear grad")?,
                rows,
                inp,
                out,
            )),
            d => candle_core::bail!("fused linear supports f32 and f64, not {d:?}"),
        };
        Ok((st, Shape::from(rows * inp + out * inp + out)))
    }
}

/// `y = x W^T + b` for `x (.., in)`, `W (out, in)`, `b (out,)` as one fused node (CPU f32/f64).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// Whether the fused kernels handle tensors like `x`.
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
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
struct Geo {
    b: usize,
    t: usize,
    w: usize,
    bias_b: usize,
    hd: usize,
}

impl Attention {
    fn fwd<T: Elem>(&self, qkv: &[T], bias: &[T], pat: &[T], g: &Geo) -> (Vec<T>, Vec<T>) {
        let AttnShape {
            heads: h,
            fixed: nf,
            d_head: dh,
        } = self.s;
        let nl = h - nf;
        let (t, w, hd) = (g.t, g.w, g.hd);
        let scale = T::from(1.0 / (dh as f64).sqrt()).unwrap();
        let mut y = vec![T::zero(); g.b * t * hd];
        let mut probs = vec![T::zero(); g.b * h * t * t];
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
                    let mut m = T::neg_infinity();
                    for (x, &bv) in row.iter_mut().zip(br) {
                        *x = *x + bv;
                        m = m.max(*x);
                    }
                    let mut s = T::zero();
                    for x in row.iter_mut() {
                        *x = (*x - m).exp();
                        s = s + *x;
                    }
                    let inv = T::one() / s;
                    row.iter_mut().for_each(|x| *x = *x * inv);
                }
            }
            // y[bi, :, hi*dh..] = P @ V_hi
            let yp = yp;
            unsafe {
                mm(
                    t,
                    dh,
                    t,
                    yp.0.add(bi * t * hd + hi * dh),
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
                let (y, p) = self.fwd::<f32>(
                    slice(qs, ql, "attention qkv")?,
                    slice(bs, bl, "attention bias")?,
                    slice(ps, pl, "attention patterns")?,
                    &g,
                );
                (f32::store(y), f32::store(p))
            }
            DType::F64 => {
                let (y, p) = self.fwd::<f64>(
                    slice(qs, ql, "attention qkv")?,
                    slice(bs, bl, "attention bias")?,
                    slice(ps, pl, "attention patterns")?,
                    &g,
                );
                (f64::store(y), f64::store(p))
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

impl AttentionGrad {
    fn go<T: Elem>(&self, qkv: &[T], dy: &[T], probs: &[T], g: &Geo) -> Vec<T> {
        let AttnShape {
            heads: h,
            fixed: nf,
            d_head: dh,
        } = self.s;
        let nl = h - nf;
        let (t, w, hd) = (g.t, g.w, g.hd);
        let scale = T::from(1.0 / (dh as f64).sqrt()).unwrap();
        let mut dq = vec![T::zero(); qkv.len()];
        let dp = Ptr(dq.as_mut_ptr());
        (0..g.b * h).into_par_iter().for_each(|bh| {
            let (bi, hi) = (bh / h, bh % h);
            let p = &probs[bh * t * t..(bh + 1) * t * t];
            let base = &qkv[bi * t * w..];
            let dy = &dy[bi * t * hd + hi * dh..];
            let dp = dp;
            unsafe {
                let dbase = dp.0.add(bi * t * w);
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
                let mut ds = vec![T::zero(); t * t];
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
                    let dot: T = drow.iter().zip(prow).map(|(&a, &b)| a * b).sum();
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
            (DType::F32, CpuStorage::F32(p)) => f32::store(self.go::<f32>(
                slice(qs, ql, "attention qkv")?,
                slice(gs, gl, "attention grad")?,
                &p[..],
                &g,
            )),
            (DType::F64, CpuStorage::F64(p)) => f64::store(self.go::<f64>(
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
