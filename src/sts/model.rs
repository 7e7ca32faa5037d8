//! The exact one-layer softmax-attention transformer for STS, on ndarray, with its analytic gradient.
//!
//! With `z_i = [x_i; p_i]` (dimension `D = d + d_e`) and query `z_0 = [0; s]`:
//!
//! `f(X, y) = sum_i alpha_i x_i`, `alpha = softmax_i(z_0^T W z_i)`,
//!
//! the full `D x D` matrix W is trained and the value map reads the x-part. The loss of one example
//! is `||f - target||^2` (summed over the d coordinates), averaged over the batch.
//!
//! Gradient: with `e = f - t`, `df/da_i = alpha_i (x_i - f)`, so
//! `dl/da_i = g_i = 2 alpha_i (x_i.e - f.e)` and `dl/dW = z_0 (sum_i g_i z_i)^T`.
//! Only the rows of the positional block receive gradient because the query's x-part is zero.
//!
//! ```
//! use attnlab::sts::model::ExactTransformer;
//! let m = ExactTransformer::<f64>::scaled_identity(4, 8, 2.0);
//! assert_eq!(m.c(), 2.0);
//! assert!(m.off_identity_fraction() < 1e-12);
//! ```

use super::task::Batch;
use ndarray::{s, Array1, Array2, ArrayView1, Axis, Zip};
use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt::Debug;

/// Float types the exact models run in (f32 and f64).
pub trait Real:
    ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + num_traits::Float
    + num_traits::FromPrimitive
    + Send
    + Sync
    + Debug
    + 'static
{
    fn of(v: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(v).expect("finite")
    }
    fn f64(self) -> f64 {
        num_traits::ToPrimitive::to_f64(&self).expect("finite")
    }
    /// A batch sampled in f64, in this precision (borrowed when it already is).
    fn from_f64_batch(b: &Batch<f64>) -> Cow<'_, Batch<Self>>;
}
impl Real for f32 {
    fn from_f64_batch(b: &Batch<f64>) -> Cow<'_, Batch<Self>> {
        Cow::Owned(b.cast())
    }
}
impl Real for f64 {
    fn from_f64_batch(b: &Batch<f64>) -> Cow<'_, Batch<Self>> {
        Cow::Borrowed(b)
    }
}

/// Largest |c| accepted for `W = c I` (a prediction's grid, a run's `init_c`). Attention is
/// one-hot to double precision long before (score gaps above ~40 saturate `exp`), while at
/// c = 1e308 the scores overflow and every loss is NaN.
pub const MAX_ABS_C: f64 = 1e6;

/// The trainable parameter: W, `(D, D)` with `D = d + d_e`; rows/cols `0..d` are the token block.
#[derive(Clone, Debug, PartialEq)]
pub struct ExactTransformer<F: Real> {
    pub d: usize,
    pub de: usize,
    pub w: Array2<F>,
}

/// What one forward pass over a batch gives.
#[derive(Clone, Debug)]
pub struct Forward<F> {
    /// Outputs, `(batch, d)`.
    pub out: Array2<F>,
    /// Attention probabilities, `(batch, T)`.
    pub attn: Array2<F>,
    /// Per-example loss `||f - t||^2`, `(batch,)`.
    pub losses: Array1<F>,
}

impl<F> Forward<F>
where
    F: Real,
{
    /// Mean loss over the batch.
    pub fn loss(&self) -> F {
        self.losses.mean().unwrap_or(F::zero())
    }
}

fn softmax_in_place<F: Real>(a: &mut Array1<F>) {
    let m = a.iter().cloned().fold(F::neg_infinity(), F::max);
    a.mapv_inplace(|v| (v - m).exp());
    let z = a.sum();
    a.mapv_inplace(|v| v / z);
}

impl<F: Real> ExactTransformer<F> {
    /// W = 0: uniform attention.
    pub fn zeros(d: usize, de: usize) -> Self {
        Self {
            d,
            de,
            w: Array2::zeros((d + de, d + de)),
        }
    }

    /// W = c I on the positional block, zero elsewhere: the direction the theory predicts.
    pub fn scaled_identity(d: usize, de: usize, c: f64) -> Self {
        let mut m = Self::zeros(d, de);
        for k in 0..de {
            m.w[[d + k, d + k]] = F::of(c);
        }
        m
    }

    /// `c = tr(W_pp) / d_e`, the coefficient of the identity direction.
    pub fn c(&self) -> f64 {
        let d = self.d;
        (0..self.de)
            .map(|k| self.w[[d + k, d + k]].f64())
            .sum::<f64>()
            / self.de as f64
    }

    /// `||W - c I_pp||_F / ||W||_F`: how far W is from the predicted direction (0 when exactly on it).
    pub fn off_identity_fraction(&self) -> f64 {
        let c = self.c();
        let mut off = 0.0;
        let mut all = 0.0;
        for ((i, j), v) in self.w.indexed_iter() {
            let v = v.f64();
            all += v * v;
            let on = if i == j && i >= self.d { c } else { 0.0 };
            off += (v - on) * (v - on);
        }
        if all == 0.0 {
            0.0
        } else {
            (off / all).sqrt()
        }
    }

    /// `U = Z_0 W`, `(batch, D)`: query times W, so that the score of token i is `z_i . u`.
    fn query_times_w(&self, batch: &Batch<F>) -> Array2<F> {
        batch.s.dot(&self.w.slice(s![self.d.., ..]))
    }

    fn example_attention(&self, batch: &Batch<F>, u: ArrayView1<F>, b: usize) -> Array1<F> {
        let xb = batch.x.index_axis(Axis(0), b);
        let pb = batch.p.index_axis(Axis(0), b);
        let mut a = xb.dot(&u.slice(s![..self.d])) + pb.dot(&u.slice(s![self.d..]));
        softmax_in_place(&mut a);
        a
    }

    /// Attention, outputs and per-example losses.
    pub fn forward(&self, batch: &Batch<F>) -> Forward<F> {
        let (n, t, d) = batch.x.dim();
        let u = self.query_times_w(batch);
        let rows: Vec<(Array1<F>, Array1<F>, F)> = (0..n)
            .into_par_iter()
            .map(|b| {
                let alpha = self.example_attention(batch, u.row(b), b);
                let f = batch.x.index_axis(Axis(0), b).t().dot(&alpha);
                let e = &f - &batch.target.row(b);
                let l = e.dot(&e);
                (alpha, f, l)
            })
            .collect();
        let mut out = Array2::zeros((n, d));
        let mut attn = Array2::zeros((n, t));
        let mut losses = Array1::zeros(n);
        for (b, (alpha, f, l)) in rows.into_iter().enumerate() {
            attn.row_mut(b).assign(&alpha);
            out.row_mut(b).assign(&f);
            losses[b] = l;
        }
        Forward { out, attn, losses }
    }

    /// Mean loss and its analytic gradient with respect to W, `(D, D)`.
    pub fn loss_and_grad(&self, batch: &Batch<F>) -> (F, Array2<F>) {
        let (loss, grad, _) = self.loss_grad_and_losses(batch);
        (loss, grad)
    }

    /// [`ExactTransformer::loss_and_grad`] with the per-example losses beside, `(batch,)`.
    pub fn loss_grad_and_losses(&self, batch: &Batch<F>) -> (F, Array2<F>, Vec<F>) {
        let n = batch.len();
        let (d, de) = (self.d, self.de);
        let u = self.query_times_w(batch);
        let inv_n = F::of(1.0 / n as f64);
        let mut gmat = Array2::zeros((n, d + de));
        let mut losses = vec![F::zero(); n];
        match (
            batch.x.as_slice(),
            batch.p.as_slice(),
            batch.target.as_slice(),
            u.as_slice(),
        ) {
            (Some(x), Some(p), Some(t), Some(u)) => {
                let gm = gmat.as_slice_mut().expect("fresh array");
                example_grads(x, p, t, u, (batch.x.dim().1, d, de), gm, &mut losses);
            }
            _ => self.example_grads_strided(batch, &u, &mut gmat, &mut losses),
        }
        let loss = losses.iter().fold(F::zero(), |a, &l| a + l);
        // the per-example gradients carry the 2/n of the mean loss
        gmat.mapv_inplace(|v| v * F::of(2.0) * inv_n);
        let mut grad = Array2::zeros((d + de, d + de));
        grad.slice_mut(s![d.., ..]).assign(&batch.s.t().dot(&gmat));
        (loss * inv_n, grad, losses)
    }

    /// The per-example loop on any memory layout: `G_b = sum_i g_i z_i` (without the 2/n) into the
    /// rows of `gmat`, the losses into `losses`.
    fn example_grads_strided(
        &self,
        batch: &Batch<F>,
        u: &Array2<F>,
        gmat: &mut Array2<F>,
        losses: &mut [F],
    ) {
        let d = self.d;
        gmat.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(losses.par_iter_mut())
            .enumerate()
            .for_each(|(b, (mut gz, loss))| {
                let xb = batch.x.index_axis(Axis(0), b);
                let pb = batch.p.index_axis(Axis(0), b);
                let alpha = self.example_attention(batch, u.row(b), b);
                let f = xb.t().dot(&alpha);
                let e = &f - &batch.target.row(b);
                let h = xb.dot(&e);
                let fe = f.dot(&e);
                let g = Zip::from(&alpha)
                    .and(&h)
                    .map_collect(|&a, &hi| a * (hi - fe));
                gz.slice_mut(s![..d]).assign(&xb.t().dot(&g));
                gz.slice_mut(s![d..]).assign(&pb.t().dot(&g));
                *loss = e.dot(&e);
            });
    }

    /// One gradient-descent step `W <- W - lr * grad`; returns the loss before the step.
    pub fn gd_step(&mut self, batch: &Batch<F>, lr: f64) -> F {
        let (l, g) = self.loss_and_grad(batch);
        self.w.scaled_add(F::of(-lr), &g);
        l
    }
}

/// Attention mass on the selected tokens per example, `(batch,)`.
pub fn selected_mass<F: Real>(attn: &Array2<F>, sel: &Array2<F>) -> Array1<f64> {
    (attn * sel).sum_axis(Axis(1)).mapv(|v| v.f64())
}

/// Examples per rayon task of [`example_grads`]: 256-example batches split into 16 tasks.
const EXAMPLES_PER_TASK: usize = 16;

/// The per-example loop of the gradient on contiguous (row-major) batches, one pass over each
/// example's tokens and encodings while they sit in L1: the generic ndarray loop spent most of
/// its time in per-example allocations and small `dot` calls, not in arithmetic.
/// `x` is `(n, T, d)`, `p` `(n, T, d_e)`, `t` `(n, d)`, `u` `(n, D)` (dims `(T, d, d_e)`); writes `sum_i a_i (x_i.e -
/// f.e) z_i` into the rows of `gmat` `(n, D)` and `||f - t||^2` into `losses`.
fn example_grads<F: Real>(
    x: &[F],
    p: &[F],
    t: &[F],
    u: &[F],
    (tt, d, de): (usize, usize, usize),
    gmat: &mut [F],
    losses: &mut [F],
) {
    let dd = d + de;
    gmat.par_chunks_mut(EXAMPLES_PER_TASK * dd)
        .zip(losses.par_chunks_mut(EXAMPLES_PER_TASK))
        .enumerate()
        .for_each(|(c, (gm, ls))| {
            let mut scratch = Scratch::new(tt, d);
            for (k, (gz, loss)) in gm.chunks_exact_mut(dd).zip(ls.iter_mut()).enumerate() {
                let b = c * EXAMPLES_PER_TASK + k;
                let ex = Example {
                    x: &x[b * tt * d..(b + 1) * tt * d],
                    p: &p[b * tt * de..(b + 1) * tt * de],
                    t: &t[b * d..(b + 1) * d],
                    u: &u[b * dd..(b + 1) * dd],
                    d,
                    de,
                };
                *loss = example_grad_dispatch(&ex, &mut scratch, gz);
            }
        });
}

/// One example's rows.
struct Example<'a, F> {
    x: &'a [F],
    p: &'a [F],
    t: &'a [F],
    u: &'a [F],
    d: usize,
    de: usize,
}

/// Buffers reused across the examples of one task.
struct Scratch<F> {
    a: Vec<F>,
    f: Vec<F>,
    e: Vec<F>,
}

impl<F: Real> Scratch<F> {
    fn new(t: usize, d: usize) -> Self {
        Self {
            a: vec![F::zero(); t],
            f: vec![F::zero(); d],
            e: vec![F::zero(); d],
        }
    }
}

/// [`example_grad`] compiled for AVX2 + FMA where the CPU has them. The arithmetic is the same
/// sequence of operations on every path (Rust does not contract into FMA), so the numbers do not
/// depend on the machine.
fn example_grad_dispatch<F: Real>(ex: &Example<F>, s: &mut Scratch<F>, gz: &mut [F]) -> F {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the feature the function is compiled for.
        return unsafe { example_grad_avx2(ex, s, gz) };
    }
    example_grad(ex, s, gz)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn example_grad_avx2<F: Real>(ex: &Example<F>, s: &mut Scratch<F>, gz: &mut [F]) -> F {
    example_grad(ex, s, gz)
}

/// Loss and `sum_i a_i (x_i.e - f.e) z_i` of one example (see the module doc).
#[inline(always)]
fn example_grad<F: Real>(ex: &Example<F>, s: &mut Scratch<F>, gz: &mut [F]) -> F {
    let (d, de) = (ex.d, ex.de);
    let (ux, up) = ex.u.split_at(d);
    // four rows at a time: four independent chains of additions instead of one, and one pass
    // over the accumulator for four rank-1 updates
    let quads = s.a.len() / 4;
    let (xq, xr) = ex.x.split_at(quads * 4 * d);
    let (pq, pr) = ex.p.split_at(quads * 4 * de);
    let (aq, ar) = s.a.split_at_mut(quads * 4);
    for ((a, x), p) in aq
        .chunks_exact_mut(4)
        .zip(xq.chunks_exact(4 * d))
        .zip(pq.chunks_exact(4 * de))
    {
        let (sx, sp) = (dot4(x, ux), dot4(p, up));
        for k in 0..4 {
            a[k] = sx[k] + sp[k];
        }
    }
    for ((a, x), p) in ar
        .iter_mut()
        .zip(xr.chunks_exact(d))
        .zip(pr.chunks_exact(de))
    {
        *a = dot(x, ux) + dot(p, up);
    }
    let m = s.a.iter().fold(F::neg_infinity(), |m, &v| m.max(v));
    let mut z = F::zero();
    for v in s.a.iter_mut() {
        *v = (*v - m).exp();
        z = z + *v;
    }
    s.a.iter_mut().for_each(|v| *v = *v / z);
    s.f.iter_mut().for_each(|v| *v = F::zero());
    for (a, x) in s.a.chunks_exact(4).zip(xq.chunks_exact(4 * d)) {
        axpy4([a[0], a[1], a[2], a[3]], x, &mut s.f);
    }
    for (&a, x) in s.a[quads * 4..].iter().zip(xr.chunks_exact(d)) {
        axpy(a, x, &mut s.f);
    }
    for ((e, &f), &t) in s.e.iter_mut().zip(&s.f).zip(ex.t) {
        *e = f - t;
    }
    let fe = dot(&s.f, &s.e);
    gz.iter_mut().for_each(|v| *v = F::zero());
    let (gx, gp) = gz.split_at_mut(d);
    for ((a, x), p) in
        s.a.chunks_exact(4)
            .zip(xq.chunks_exact(4 * d))
            .zip(pq.chunks_exact(4 * de))
    {
        let h = dot4(x, &s.e);
        let g = [0, 1, 2, 3].map(|k| a[k] * (h[k] - fe));
        axpy4(g, x, gx);
        axpy4(g, p, gp);
    }
    for ((&a, x), p) in s.a[quads * 4..]
        .iter()
        .zip(xr.chunks_exact(d))
        .zip(pr.chunks_exact(de))
    {
        let g = a * (dot(x, &s.e) - fe);
        axpy(g, x, gx);
        axpy(g, p, gp);
    }
    dot(&s.e, &s.e)
}

/// `sum_k a_k b_k` with eight running sums (so that it vectorises; the order is fixed).
#[inline(always)]
fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    let mut acc = [F::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = acc[k] + x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s = s + *x * *y;
    }
    s
}

/// [`dot`] of four consecutive rows of `rows` (each `v.len()` long) with `v`: the same order of
/// operations per row as [`dot`].
#[inline(always)]
fn dot4<F: Real>(rows: &[F], v: &[F]) -> [F; 4] {
    let n = v.len();
    let (r0, rest) = rows.split_at(n);
    let (r1, rest) = rest.split_at(n);
    let (r2, r3) = rest.split_at(n);
    let r3 = &r3[..n];
    let mut acc = [[F::zero(); 8]; 4];
    let chunks = r0
        .chunks_exact(8)
        .zip(r1.chunks_exact(8))
        .zip(r2.chunks_exact(8))
        .zip(r3.chunks_exact(8))
        .zip(v.chunks_exact(8));
    for ((((c0, c1), c2), c3), cv) in chunks {
        for k in 0..8 {
            acc[0][k] = acc[0][k] + c0[k] * cv[k];
            acc[1][k] = acc[1][k] + c1[k] * cv[k];
            acc[2][k] = acc[2][k] + c2[k] * cv[k];
            acc[3][k] = acc[3][k] + c3[k] * cv[k];
        }
    }
    let full = n / 8 * 8;
    let mut out = [F::zero(); 4];
    for ((o, a), r) in out.iter_mut().zip(&acc).zip([r0, r1, r2, r3]) {
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for (x, y) in r[full..].iter().zip(&v[full..]) {
            s = s + *x * *y;
        }
        *o = s;
    }
    out
}

/// `y += (a0 r0 + a1 r1) + (a2 r2 + a3 r3)` for four consecutive rows `r` of `rows`.
#[inline(always)]
fn axpy4<F: Real>(a: [F; 4], rows: &[F], y: &mut [F]) {
    let n = y.len();
    let (r0, rest) = rows.split_at(n);
    let (r1, rest) = rest.split_at(n);
    let (r2, r3) = rest.split_at(n);
    for ((((y, &x0), &x1), &x2), &x3) in y.iter_mut().zip(r0).zip(r1).zip(r2).zip(&r3[..n]) {
        *y = *y + ((a[0] * x0 + a[1] * x1) + (a[2] * x2 + a[3] * x3));
    }
}

/// `y += a x`.
#[inline(always)]
fn axpy<F: Real>(a: F, x: &[F], y: &mut [F]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = *y + a * x;
    }
}
