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

use super::kernel::{self, positional_grad, Task};
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
    /// The gradient's per-example loop over consecutive examples, on this type's SIMD lanes.
    #[doc(hidden)]
    fn example_grads_serial(task: Task<'_, Self>, gmat: &mut [Self], losses: &mut [Self]);
}
impl Real for f32 {
    fn from_f64_batch(b: &Batch<f64>) -> Cow<'_, Batch<Self>> {
        Cow::Owned(b.cast())
    }
    fn example_grads_serial(task: Task<'_, Self>, gmat: &mut [Self], losses: &mut [Self]) {
        kernel::serial_f32(task, gmat, losses)
    }
}
impl Real for f64 {
    fn from_f64_batch(b: &Batch<f64>) -> Cow<'_, Batch<Self>> {
        Cow::Borrowed(b)
    }
    fn example_grads_serial(task: Task<'_, Self>, gmat: &mut [Self], losses: &mut [Self]) {
        kernel::serial_f64(task, gmat, losses)
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
        let inv_n = F::of(1.0 / n as f64);
        let mut losses = vec![F::zero(); n];
        let mut grad = Array2::zeros((d + de, d + de));
        let mut rows = match (
            batch.x.as_slice(),
            batch.p.as_slice(),
            batch.target.as_slice(),
            batch.s.as_slice(),
        ) {
            (Some(x), Some(p), Some(t), Some(sq)) => {
                let wp = self.w.slice(s![d.., ..]);
                let dims = (batch.x.dim().1, d, de);
                positional_grad(x, p, t, sq, wp, dims, &mut losses)
            }
            _ => {
                let u = self.query_times_w(batch);
                let mut gmat = Array2::zeros((n, d + de));
                self.example_grads_strided(batch, &u, &mut gmat, &mut losses);
                batch.s.t().dot(&gmat)
            }
        };
        let loss = losses.iter().fold(F::zero(), |a, &l| a + l);
        // the per-example gradients carry the 2/n of the mean loss
        rows.mapv_inplace(|v| v * F::of(2.0) * inv_n);
        grad.slice_mut(s![d.., ..]).assign(&rows);
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
