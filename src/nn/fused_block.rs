//! A whole transformer block as one graph node with a hand-written backward pass (CPU, f32/f64).
//!
//! `x (batch, T, d) -> x'`: LayerNorm, fused `[q | k | v]` projection, attention core, output
//! projection and residual sum, then LayerNorm, FFN (GELU or ReLU) and residual sum, pre-LN or
//! post-LN. Composed from single ops, candle's backward gives every activation-sized input of
//! every node a fresh zero-filled gradient buffer and an extra `add` (about 16 passes over
//! `(batch T, d)` per block, single-threaded, plus the residual adds and their copies). Here the
//! residual gradients are accumulated in place, the GEMMs write straight into their
//! destinations (residual sums by accumulating GEMMs), and every elementwise pass runs on rayon.
//!
//! The block's twelve parameters enter as one packed vector (a `cat` of the flattened tensors,
//! [`BlockParams`] order), so that the node has two inputs; candle splits the packed gradient
//! back onto the parameters. Bias and fixed-head patterns are constants held by the op.
//! Used by [`crate::nn::block::Block`] when the fused kernels are on and the block has no q/k/v
//! convolution and no active dropout; otherwise the block composes the single ops.

use crate::nn::fused::{
    attention_bwd, attention_fwd, mm, par_for, slice, uninit, AttnShape, Elem, Geo,
};
use crate::nn::ops;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::any::Any;
use std::sync::{Arc, Mutex};

/// The block's parameters, in packing order.
pub struct BlockParams<'a> {
    /// LayerNorm gains and shifts `(d,)`.
    pub ln1: (&'a Tensor, &'a Tensor),
    /// `[q | k | v]` projection: weight `(width, d)`, bias `(width,)`.
    pub qkv: (&'a Tensor, &'a Tensor),
    /// Output projection: `(d, heads * d_head)`, `(d,)`.
    pub out: (&'a Tensor, &'a Tensor),
    pub ln2: (&'a Tensor, &'a Tensor),
    /// FFN: `(ff, d)`, `(ff,)` and `(d, ff)`, `(d,)`.
    pub ff1: (&'a Tensor, &'a Tensor),
    pub ff2: (&'a Tensor, &'a Tensor),
}

impl BlockParams<'_> {
    fn all(&self) -> [&Tensor; 12] {
        [
            self.ln1.0, self.ln1.1, self.qkv.0, self.qkv.1, self.out.0, self.out.1, self.ln2.0,
            self.ln2.1, self.ff1.0, self.ff1.1, self.ff2.0, self.ff2.1,
        ]
    }
}

/// What the block computes besides its parameters.
#[derive(Clone, Copy, Debug)]
pub struct BlockShape {
    pub d: usize,
    /// FFN hidden width.
    pub ff: usize,
    pub attn: AttnShape,
    pub eps: f64,
    /// LayerNorm before each branch (pre-LN) or after each residual sum (post-LN).
    pub pre_ln: bool,
    /// Exact GELU in the FFN, else ReLU.
    pub gelu: bool,
}

impl BlockShape {
    fn width(&self) -> usize {
        let a = self.attn;
        (2 * (a.heads - a.fixed) + a.heads) * a.d_head
    }
    fn hd(&self) -> usize {
        self.attn.heads * self.attn.d_head
    }
    /// Element counts of the packed parameters, in [`BlockParams`] order.
    fn lens(&self) -> [usize; 12] {
        let (d, w, hd, f) = (self.d, self.width(), self.hd(), self.ff);
        [d, d, w * d, w, d * hd, d, d, d, f * d, f, d * f, d]
    }
}

/// Splits `s` into consecutive pieces of the given lengths.
fn split<T, const N: usize>(mut s: &[T], lens: [usize; N]) -> [&[T]; N] {
    lens.map(|n| {
        let (a, b) = s.split_at(n);
        s = b;
        a
    })
}

fn split_mut<T, const N: usize>(mut s: &mut [T], lens: [usize; N]) -> [&mut [T]; N] {
    lens.map(|n| {
        let (a, b) = std::mem::take(&mut s).split_at_mut(n);
        s = b;
        a
    })
}

/// Rows per rayon task of the elementwise passes.
const ROWS: usize = 64;

/// `dst = [base +] x W^T + b` on `rows` rows: `dst` filled with `base + b` (or `b`) in parallel,
/// then one accumulating GEMM.
#[allow(clippy::too_many_arguments)]
fn affine<T: Elem>(
    dst: &mut [T],
    base: Option<&[T]>,
    x: &[T],
    w: &[T],
    b: &[T],
    rows: usize,
    inp: usize,
    out: usize,
) {
    dst.par_chunks_mut(ROWS * out)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (k, row) in chunk.chunks_mut(out).enumerate() {
                match base {
                    Some(base) => {
                        let r = &base[(ci * ROWS + k) * out..][..out];
                        for ((o, &a), &c) in row.iter_mut().zip(r).zip(b) {
                            *o = a + c;
                        }
                    }
                    None => row.copy_from_slice(b),
                }
            }
        });
    // SAFETY: dst is rows x out, x rows x inp, w out x inp, all row-major.
    unsafe {
        mm(
            rows,
            out,
            inp,
            dst.as_mut_ptr(),
            (out as isize, 1),
            x.as_ptr(),
            (inp as isize, 1),
            w.as_ptr(),
            (1, inp as isize),
            T::one(),
            true,
            par_for(rows, inp * out),
        )
    }
}

/// Backward of `y = x W^T + b` for `dy (rows x out)`: `dx = dy W` (added to `dx` when
/// `accumulate`), `dW = dy^T x`, `db = colsum dy`.
#[allow(clippy::too_many_arguments)]
fn affine_grad<T: Elem>(
    dy: &[T],
    x: &[T],
    w: &[T],
    rows: usize,
    inp: usize,
    out: usize,
    dx: Option<(&mut [T], bool)>,
    dw: &mut [T],
    db: &mut [T],
) {
    let par = par_for(rows, inp * out);
    // SAFETY: all buffers are row-major with the sizes the products name.
    unsafe {
        if let Some((dx, acc)) = dx {
            mm(
                rows,
                inp,
                out,
                dx.as_mut_ptr(),
                (inp as isize, 1),
                dy.as_ptr(),
                (out as isize, 1),
                w.as_ptr(),
                (inp as isize, 1),
                T::one(),
                acc,
                par,
            );
        }
        mm(
            out,
            inp,
            rows,
            dw.as_mut_ptr(),
            (inp as isize, 1),
            dy.as_ptr(),
            (1, out as isize),
            x.as_ptr(),
            (inp as isize, 1),
            T::one(),
            false,
            par,
        );
    }
    colsum(dy, out, db);
}

/// `db[j] = sum_i d[i, j]`: partial sums over fixed blocks of rows in parallel, added in block
/// order (the same result for any thread count).
fn colsum<T: Elem>(d: &[T], out: usize, db: &mut [T]) {
    let partial: Vec<Vec<T>> = d
        .par_chunks(4 * ROWS * out)
        .map(|c| {
            let mut acc = vec![T::zero(); out];
            for row in c.chunks(out) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    db.iter_mut().for_each(|v| *v = T::zero());
    for p in partial {
        for (a, v) in db.iter_mut().zip(p) {
            *a += v;
        }
    }
}

/// The FFN activation of `pre` into `act`.
fn activate<T: Elem>(pre: &[T], act: &mut [T], gelu: bool) {
    if gelu {
        ops::gelu_into(pre, act);
    } else {
        act.par_chunks_mut(4096)
            .zip(pre.par_chunks(4096))
            .for_each(|(a, p)| {
                for (o, &v) in a.iter_mut().zip(p) {
                    *o = if v > T::zero() { v } else { T::zero() };
                }
            });
    }
}

/// `dpre = dact * act'(pre)`.
fn activate_grad<T: Elem>(pre: &[T], dact: &[T], dpre: &mut [T], gelu: bool) {
    if gelu {
        ops::gelu_grad_mul_into(pre, dact, dpre);
    } else {
        dpre.par_chunks_mut(4096)
            .zip(pre.par_chunks(4096).zip(dact.par_chunks(4096)))
            .for_each(|(o, (p, g))| {
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    // `>=` as candle's `relu` backward, so both paths agree at 0.
                    *o = if p >= T::zero() { g } else { T::zero() };
                }
            });
    }
}

/// Activations the backward pass reads. Pre-LN: `a = LN1(x)`, `b = x2` (after attention),
/// `c = LN2(x2)`. Post-LN: `a = s1` (first residual sum), `b = LN1(s1)`, `c = s2`.
struct Saved<T> {
    a: Vec<T>,
    qkv: Vec<T>,
    y: Vec<T>,
    probs: Vec<T>,
    b: Vec<T>,
    c: Vec<T>,
    pre: Vec<T>,
    act: Vec<T>,
}

type Store = Arc<Mutex<Option<Box<dyn Any + Send>>>>;

struct BlockOp {
    s: BlockShape,
    /// Additive attention bias `(batch or 1, 1, T, T)` and patterns (contiguous, the block's dtype).
    bias: Tensor,
    pat: Tensor,
    saved: Store,
}

/// `f(slice)` on the CPU storage of a contiguous constant tensor.
fn with_const<T: Elem, R>(t: &Tensor, what: &str, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => Ok(f(slice::<T>(c, l, what)?)),
        _ => candle_core::bail!("{what}: the fused block runs on the CPU only"),
    }
}

fn uninit_n<T: Copy>(n: usize) -> Vec<T> {
    // SAFETY: every caller overwrites the whole buffer (GEMM with read_dst = false, a full
    // elementwise pass, or `affine`'s fill) before reading it.
    unsafe { uninit(n) }
}

fn forward<T: Elem>(
    s: &BlockShape,
    x: &[T],
    p: &[T],
    bias: &[T],
    pat: &[T],
    g: &Geo,
) -> (Vec<T>, Saved<T>) {
    let rows = g.b * g.t;
    let (d, w, hd, f) = (s.d, s.width(), s.hd(), s.ff);
    let [g1, be1, wq, bq, wo, bo, g2, be2, w1, b1, w2, b2] = split(p, s.lens());
    let mut out = uninit_n(rows * d);
    let mut qkv = uninit_n(rows * w);
    let mut pre = uninit_n(rows * f);
    let mut act = uninit_n(rows * f);
    if s.pre_ln {
        let mut h1 = uninit_n(rows * d);
        ops::layer_norm_rows(x, g1, be1, d, s.eps, &mut h1);
        affine(&mut qkv, None, &h1, wq, bq, rows, d, w);
        let (y, probs) = attention_fwd(s.attn, &qkv, bias, pat, g);
        let mut x2 = uninit_n(rows * d);
        affine(&mut x2, Some(x), &y, wo, bo, rows, hd, d);
        let mut h2 = uninit_n(rows * d);
        ops::layer_norm_rows(&x2, g2, be2, d, s.eps, &mut h2);
        affine(&mut pre, None, &h2, w1, b1, rows, d, f);
        activate(&pre, &mut act, s.gelu);
        affine(&mut out, Some(&x2), &act, w2, b2, rows, f, d);
        let saved = Saved {
            a: h1,
            qkv,
            y,
            probs,
            b: x2,
            c: h2,
            pre,
            act,
        };
        (out, saved)
    } else {
        affine(&mut qkv, None, x, wq, bq, rows, d, w);
        let (y, probs) = attention_fwd(s.attn, &qkv, bias, pat, g);
        let mut s1 = uninit_n(rows * d);
        affine(&mut s1, Some(x), &y, wo, bo, rows, hd, d);
        let mut x1 = uninit_n(rows * d);
        ops::layer_norm_rows(&s1, g1, be1, d, s.eps, &mut x1);
        affine(&mut pre, None, &x1, w1, b1, rows, d, f);
        activate(&pre, &mut act, s.gelu);
        let mut s2 = uninit_n(rows * d);
        affine(&mut s2, Some(&x1), &act, w2, b2, rows, f, d);
        ops::layer_norm_rows(&s2, g2, be2, d, s.eps, &mut out);
        let saved = Saved {
            a: s1,
            qkv,
            y,
            probs,
            b: x1,
            c: s2,
            pre,
            act,
        };
        (out, saved)
    }
}

/// `(dx, d params)` from the output gradient `dout`.
fn backward<T: Elem>(
    s: &BlockShape,
    x: &[T],
    p: &[T],
    dout: &[T],
    sv: &Saved<T>,
    g: &Geo,
) -> (Vec<T>, Vec<T>) {
    let rows = g.b * g.t;
    let (d, w, hd, f) = (s.d, s.width(), s.hd(), s.ff);
    let [g1, _, wq, _, wo, _, g2, _, w1, _, w2, _] = split(p, s.lens());
    let mut dp = uninit_n(p.len());
    let [dg1, db1n, dwq, dbq, dwo, dbo, dg2, db2n, dw1, db1, dw2, db2] =
        split_mut(&mut dp, s.lens());
    // The LayerNorm backward writes [dgamma | dbeta] as one 2d slice; they are adjacent.
    let mut ln1 = uninit_n(2 * d);
    let mut ln2 = uninit_n(2 * d);
    let mut dact = uninit_n(rows * f);
    let mut dpre = uninit_n(rows * f);
    let mut dy = uninit_n(rows * hd);
    let dx = if s.pre_ln {
        // out = x2 + act W2^T + b2, x2 = x + y Wo^T + bo.
        let mut dx2 = dout.to_vec();
        affine_grad(
            dout,
            &sv.act,
            w2,
            rows,
            f,
            d,
            Some((&mut dact, false)),
            dw2,
            db2,
        );
        activate_grad(&sv.pre, &dact, &mut dpre, s.gelu);
        let mut dh = uninit_n(rows * d);
        affine_grad(
            &dpre,
            &sv.c,
            w1,
            rows,
            d,
            f,
            Some((&mut dh, false)),
            dw1,
            db1,
        );
        ops::layer_norm_grad_rows(&sv.b, g2, &dh, d, s.eps, &mut dx2, true, &mut ln2);
        affine_grad(
            &dx2,
            &sv.y,
            wo,
            rows,
            hd,
            d,
            Some((&mut dy, false)),
            dwo,
            dbo,
        );
        let dqkv = attention_bwd(s.attn, &sv.qkv, &dy, &sv.probs, g);
        affine_grad(
            &dqkv,
            &sv.a,
            wq,
            rows,
            d,
            w,
            Some((&mut dh, false)),
            dwq,
            dbq,
        );
        ops::layer_norm_grad_rows(x, g1, &dh, d, s.eps, &mut dx2, true, &mut ln1);
        dx2
    } else {
        // out = LN2(s2), s2 = x1 + act W2^T + b2, x1 = LN1(s1), s1 = x + y Wo^T + bo.
        let mut dx1 = uninit_n(rows * d);
        ops::layer_norm_grad_rows(&sv.c, g2, dout, d, s.eps, &mut dx1, false, &mut ln2);
        let ds2 = dx1.clone();
        affine_grad(
            &ds2,
            &sv.act,
            w2,
            rows,
            f,
            d,
            Some((&mut dact, false)),
            dw2,
            db2,
        );
        activate_grad(&sv.pre, &dact, &mut dpre, s.gelu);
        affine_grad(
            &dpre,
            &sv.b,
            w1,
            rows,
            d,
            f,
            Some((&mut dx1, true)),
            dw1,
            db1,
        );
        let mut ds1 = uninit_n(rows * d);
        ops::layer_norm_grad_rows(&sv.a, g1, &dx1, d, s.eps, &mut ds1, false, &mut ln1);
        affine_grad(
            &ds1,
            &sv.y,
            wo,
            rows,
            hd,
            d,
            Some((&mut dy, false)),
            dwo,
            dbo,
        );
        let dqkv = attention_bwd(s.attn, &sv.qkv, &dy, &sv.probs, g);
        affine_grad(&dqkv, x, wq, rows, d, w, Some((&mut ds1, true)), dwq, dbq);
        ds1
    };
    dg1.copy_from_slice(&ln1[..d]);
    db1n.copy_from_slice(&ln1[d..]);
    dg2.copy_from_slice(&ln2[..d]);
    db2n.copy_from_slice(&ln2[d..]);
    (dx, dp)
}

impl BlockOp {
    fn geo(&self, l: &Layout) -> Result<Geo> {
        let (b, t, _) = l.shape().dims3()?;
        Ok(Geo {
            b,
            t,
            w: self.s.width(),
            bias_b: self.bias.dims()[0],
            hd: self.s.hd(),
        })
    }

    fn fwd_t<T: Elem>(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<Vec<T>> {
        let g = self.geo(xl)?;
        let x = slice::<T>(xs, xl, "block x")?;
        let p = slice::<T>(ps, pl, "block params")?;
        let (out, saved) = with_const::<T, _>(&self.bias, "block bias", |bias| {
            with_const::<T, _>(&self.pat, "block patterns", |pat| {
                forward(&self.s, x, p, bias, pat, &g)
            })
        })??;
        *self.saved.lock().expect("block store") = Some(Box::new(saved));
        Ok(out)
    }

    fn bwd_t<T: Elem>(&self, x: &Tensor, p: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        let guard = self.saved.lock().expect("block store");
        let sv = guard
            .as_ref()
            .and_then(|b| b.downcast_ref::<Saved<T>>())
            .ok_or_else(|| candle_core::Error::Msg("fused block activations missing".into()))?;
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ps), Storage::Cpu(gs)) = (&*xs, &*ps, &*gs) else {
            candle_core::bail!("the fused block runs on the CPU only");
        };
        let g = self.geo(xl)?;
        let (dx, dp) = backward(
            &self.s,
            slice::<T>(xs, xl, "block x")?,
            slice::<T>(ps, pl, "block params")?,
            slice::<T>(gs, gl, "block grad")?,
            sv,
            &g,
        );
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, x.shape(), dev)?,
            Tensor::from_vec(dp, p.shape(), dev)?,
        ))
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "attnlab-block"
    }
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let st = match xs.dtype() {
            DType::F32 => CpuStorage::F32(self.fwd_t::<f32>(xs, xl, ps, pl)?),
            DType::F64 => CpuStorage::F64(self.fwd_t::<f64>(xs, xl, ps, pl)?),
            d => candle_core::bail!("fused block supports f32 and f64, not {d:?}"),
        };
        Ok((st, xl.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = match x.dtype() {
            DType::F32 => self.bwd_t::<f32>(x, p, grad)?,
            DType::F64 => self.bwd_t::<f64>(x, p, grad)?,
            d => candle_core::bail!("fused block supports f32 and f64, not {d:?}"),
        };
        Ok((Some(dx), Some(dp)))
    }
}

/// The block on `x (batch, T, d)` with additive attention `bias (batch or 1, 1, T, T)` and
/// fixed-head `patterns (batch, fixed, T, T)` (any tensor when there are none) ->
/// `(x', probabilities (batch, heads, T, T) if capture)`. CPU f32/f64 only (see [`crate::nn::fused::supported`]).
pub fn block(
    x: &Tensor,
    params: &BlockParams,
    bias: &Tensor,
    patterns: &Tensor,
    s: BlockShape,
    capture: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, t, _) = x.dims3()?;
    let flat = params
        .all()
        .iter()
        .map(|p| p.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    let packed = Tensor::cat(&flat, 0)?;
    let saved: Store = Arc::new(Mutex::new(None));
    let op = BlockOp {
        s,
        bias: bias.to_dtype(x.dtype())?.contiguous()?,
        pat: patterns.to_dtype(x.dtype())?.contiguous()?,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&packed, op)?;
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !capture {
        return Ok((y, None));
    }
    let shape = (b, s.attn.heads, t, t);
    let guard = saved.lock().expect("block store");
    let any = guard
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("fused block activations missing".into()))?;
    let probs = if let Some(sv) = any.downcast_ref::<Saved<f32>>() {
        Tensor::from_vec(sv.probs.clone(), shape, x.device())?
    } else if let Some(sv) = any.downcast_ref::<Saved<f64>>() {
        Tensor::from_vec(sv.probs.clone(), shape, x.device())?
    } else {
        candle_core::bail!("fused block activations missing")
    };
    Ok((y, Some(probs)))
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many fused blocks this process has run (tests check that a path took the fused block).
pub fn calls() -> u64 {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}
