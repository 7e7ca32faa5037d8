//! The per-example loop of the exact model's gradient (see [`super::model`]), written once over
//! eight-lane vectors: AVX2 + FMA registers where the CPU has them (f64 in one AVX-512 register
//! where it has that too), plain arrays with `mul_add` elsewhere. Both paths run the same operations in the same order (every product is fused, every
//! sum has a fixed tree), so the numbers do not depend on the machine. A SIMD crate would pick
//! its lane width from the CPU (pulp: 8 or 16 f32 lanes), which changes the summation order.
//!
//! Per example, with `z_i = [x_i; p_i]` and `u = W^T z_0`: scores `z_i . u`, softmax `a`,
//! `f = sum_i a_i x_i`, `e = f - t`, `g_i = a_i (x_i . e - f . e)`, and `sum_i g_i z_i` into the
//! example's row of the gradient matrix. Row products run along the rows (one accumulator, one
//! reduction per row); weighted row sums run down the columns, eight at a time, with four
//! accumulators over the rows so that the additions do not wait on each other.

use super::model::Real;
use ndarray::{Array2, ArrayView2};
use num_traits::{Float, Zero};
use rayon::prelude::*;

/// Examples per rayon task: 256-example batches split into 16 tasks.
const EXAMPLES_PER_TASK: usize = 16;

/// Eight lanes of a float type and the few operations the kernel needs.
trait Lanes: Copy {
    type F: Real;
    type V: Copy;
    fn zero() -> Self::V;
    fn splat(a: Self::F) -> Self::V;
    /// The first eight elements of `s`.
    fn load(s: &[Self::F]) -> Self::V;
    /// Eight elements from `p`.
    ///
    /// # Safety
    /// `p` points to eight readable elements.
    unsafe fn loadp(p: *const Self::F) -> Self::V;
    /// Into the first eight elements of `s`.
    fn store(s: &mut [Self::F], v: Self::V);
    /// `a * b + c`, rounded once.
    fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `((v0 + v4) + (v1 + v5)) + ((v2 + v6) + (v3 + v7))`.
    fn sum(v: Self::V) -> Self::F;
}

/// Any target: arrays and `mul_add`.
#[derive(Clone, Copy)]
struct Portable<F>(std::marker::PhantomData<F>);

impl<F: Real> Lanes for Portable<F> {
    type F = F;
    type V = [F; 8];
    #[inline(always)]
    fn zero() -> [F; 8] {
        [F::zero(); 8]
    }
    #[inline(always)]
    fn splat(a: F) -> [F; 8] {
        [a; 8]
    }
    #[inline(always)]
    fn load(s: &[F]) -> [F; 8] {
        s[..8].try_into().expect("eight elements")
    }
    #[inline(always)]
    unsafe fn loadp(p: *const F) -> [F; 8] {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::read_unaligned(p as *const [F; 8]) }
    }
    #[inline(always)]
    fn store(s: &mut [F], v: [F; 8]) {
        s[..8].copy_from_slice(&v);
    }
    #[inline(always)]
    fn fma(a: [F; 8], b: [F; 8], c: [F; 8]) -> [F; 8] {
        std::array::from_fn(|k| a[k].mul_add(b[k], c[k]))
    }
    #[inline(always)]
    fn add(a: [F; 8], b: [F; 8]) -> [F; 8] {
        std::array::from_fn(|k| a[k] + b[k])
    }
    #[inline(always)]
    fn sum(v: [F; 8]) -> F {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// f32: one 256-bit register. Only called from functions compiled with AVX2 and FMA.
    #[derive(Clone, Copy)]
    pub(super) struct F32x8;
    /// f64: two 256-bit registers, lanes 0-3 and 4-7.
    #[derive(Clone, Copy)]
    pub(super) struct F64x8;

    impl Lanes for F32x8 {
        type F = f32;
        type V = __m256;
        #[inline(always)]
        fn zero() -> __m256 {
            // SAFETY (this impl): its functions are inlined only into `target_feature(avx2, fma)`
            // functions, called after the CPU was checked for both.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn splat(a: f32) -> __m256 {
            unsafe { _mm256_set1_ps(a) }
        }
        #[inline(always)]
        fn load(s: &[f32]) -> __m256 {
            assert!(s.len() >= 8);
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        unsafe fn loadp(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        fn store(s: &mut [f32], v: __m256) {
            assert!(s.len() >= 8);
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sum(v: __m256) -> f32 {
            unsafe {
                // [v0+v4, v1+v5, v2+v6, v3+v7], then pairs, then the pair of pairs
                let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let c = _mm_hadd_ps(b, b);
                _mm_cvtss_f32(_mm_hadd_ps(c, c))
            }
        }
    }

    /// f64 on one 512-bit register. Only called from functions compiled with AVX-512F and FMA.
    #[derive(Clone, Copy)]
    pub(super) struct F64x8Avx512;

    impl Lanes for F64x8Avx512 {
        type F = f64;
        type V = __m512d;
        #[inline(always)]
        fn zero() -> __m512d {
            // SAFETY (this impl): inlined only into `target_feature(avx512f, avx2, fma)` functions,
            // called after the CPU was checked for them.
            unsafe { _mm512_setzero_pd() }
        }
        #[inline(always)]
        fn splat(a: f64) -> __m512d {
            unsafe { _mm512_set1_pd(a) }
        }
        #[inline(always)]
        fn load(s: &[f64]) -> __m512d {
            assert!(s.len() >= 8);
            unsafe { _mm512_loadu_pd(s.as_ptr()) }
        }
        #[inline(always)]
        unsafe fn loadp(p: *const f64) -> __m512d {
            unsafe { _mm512_loadu_pd(p) }
        }
        #[inline(always)]
        fn store(s: &mut [f64], v: __m512d) {
            assert!(s.len() >= 8);
            unsafe { _mm512_storeu_pd(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn fma(a: __m512d, b: __m512d, c: __m512d) -> __m512d {
            unsafe { _mm512_fmadd_pd(a, b, c) }
        }
        #[inline(always)]
        fn add(a: __m512d, b: __m512d) -> __m512d {
            unsafe { _mm512_add_pd(a, b) }
        }
        #[inline(always)]
        fn sum(v: __m512d) -> f64 {
            unsafe {
                let b = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
                let c = _mm_hadd_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd(b, 1));
                _mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c))
            }
        }
    }

    impl Lanes for F64x8 {
        type F = f64;
        type V = (__m256d, __m256d);
        #[inline(always)]
        fn zero() -> Self::V {
            // SAFETY: as for `F32x8`.
            unsafe { (_mm256_setzero_pd(), _mm256_setzero_pd()) }
        }
        #[inline(always)]
        fn splat(a: f64) -> Self::V {
            unsafe { (_mm256_set1_pd(a), _mm256_set1_pd(a)) }
        }
        #[inline(always)]
        fn load(s: &[f64]) -> Self::V {
            assert!(s.len() >= 8);
            unsafe {
                (
                    _mm256_loadu_pd(s.as_ptr()),
                    _mm256_loadu_pd(s.as_ptr().add(4)),
                )
            }
        }
        #[inline(always)]
        unsafe fn loadp(p: *const f64) -> Self::V {
            unsafe { (_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
        }
        #[inline(always)]
        fn store(s: &mut [f64], v: Self::V) {
            assert!(s.len() >= 8);
            unsafe {
                _mm256_storeu_pd(s.as_mut_ptr(), v.0);
                _mm256_storeu_pd(s.as_mut_ptr().add(4), v.1);
            }
        }
        #[inline(always)]
        fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe {
                (
                    _mm256_fmadd_pd(a.0, b.0, c.0),
                    _mm256_fmadd_pd(a.1, b.1, c.1),
                )
            }
        }
        #[inline(always)]
        fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { (_mm256_add_pd(a.0, b.0), _mm256_add_pd(a.1, b.1)) }
        }
        #[inline(always)]
        fn sum(v: Self::V) -> f64 {
            unsafe {
                let b = _mm256_add_pd(v.0, v.1);
                let c = _mm_hadd_pd(_mm256_castpd256_pd128(b), _mm256_extractf128_pd(b, 1));
                _mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c))
            }
        }
    }
}

/// The positional rows of the gradient (without the 2/n of the mean), `(d_e, D)`, and the
/// per-example losses `||f - t||^2` into `losses`, on contiguous (row-major) batches: `x`
/// `(n, T, d)`, `p` `(n, T, d_e)`, `t` `(n, d)`, `s` `(n, d_e)` (dims `(T, d, d_e)`), `wp` the
/// positional rows of W. Each rayon task takes its examples' query products `u = s W_p`, the
/// per-example loop, and its share `s^T G` of the gradient, so the two GEMMs run in parallel
/// too; the shares are added in task order.
pub(super) fn positional_grad<F: Real>(
    x: &[F],
    p: &[F],
    t: &[F],
    s: &[F],
    wp: ArrayView2<'_, F>,
    (tt, d, de): (usize, usize, usize),
    losses: &mut [F],
) -> Array2<F> {
    let dd = d + de;
    let shares: Vec<Array2<F>> = losses
        .par_chunks_mut(EXAMPLES_PER_TASK)
        .enumerate()
        .map(|(c, ls)| {
            let (b0, b1) = (c * EXAMPLES_PER_TASK, c * EXAMPLES_PER_TASK + ls.len());
            let sq = ArrayView2::from_shape((b1 - b0, de), &s[b0 * de..b1 * de])
                .expect("(n, d_e) queries");
            let u = sq.dot(&wp);
            let mut gmat = Array2::zeros((b1 - b0, dd));
            let task = Task {
                x: &x[b0 * tt * d..b1 * tt * d],
                p: &p[b0 * tt * de..b1 * tt * de],
                t: &t[b0 * d..b1 * d],
                u: u.as_slice().expect("fresh array"),
                tt,
                d,
                de,
            };
            F::example_grads_serial(task, gmat.as_slice_mut().expect("fresh array"), ls);
            sq.t().dot(&gmat)
        })
        .collect();
    let mut grad = Array2::zeros((de, dd));
    for g in &shares {
        grad.zip_mut_with(g, |a, &b| *a = *a + b);
    }
    grad
}

/// Consecutive examples of a batch, laid out as in [`positional_grad`], with their `u`.
pub struct Task<'a, F> {
    x: &'a [F],
    p: &'a [F],
    t: &'a [F],
    u: &'a [F],
    tt: usize,
    d: usize,
    de: usize,
}

/// The per-example loop of one task on this CPU's lanes, f32.
pub(super) fn serial_f32(task: Task<f32>, gmat: &mut [f32], losses: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { run_task_avx2::<avx2::F32x8>(&task, gmat, losses) };
    }
    run_task_on::<Portable<f32>>(&task, gmat, losses)
}

/// The per-example loop of one task on this CPU's lanes, f64.
pub(super) fn serial_f64(task: Task<f64>, gmat: &mut [f64], losses: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { run_task_avx512::<avx2::F64x8Avx512>(&task, gmat, losses) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { run_task_avx2::<avx2::F64x8>(&task, gmat, losses) };
    }
    run_task_on::<Portable<f64>>(&task, gmat, losses)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_task_avx2<L: Lanes>(task: &Task<L::F>, gmat: &mut [L::F], losses: &mut [L::F]) {
    run_task_on::<L>(task, gmat, losses)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_task_avx512<L: Lanes>(task: &Task<L::F>, gmat: &mut [L::F], losses: &mut [L::F]) {
    run_task_on::<L>(task, gmat, losses)
}

#[inline(always)]
fn run_task_on<L: Lanes>(task: &Task<L::F>, gmat: &mut [L::F], losses: &mut [L::F]) {
    let (tt, d, de) = (task.tt, task.d, task.de);
    let dd = d + de;
    let mut a = vec![L::F::zero(); tt];
    let mut f = vec![L::F::zero(); d];
    let mut e = vec![L::F::zero(); d];
    for (b, (gz, loss)) in gmat.chunks_exact_mut(dd).zip(losses.iter_mut()).enumerate() {
        let x = &task.x[b * tt * d..(b + 1) * tt * d];
        let p = &task.p[b * tt * de..(b + 1) * tt * de];
        let t = &task.t[b * d..(b + 1) * d];
        let (ux, up) = task.u[b * dd..(b + 1) * dd].split_at(d);
        for ((s, xi), pi) in a.iter_mut().zip(x.chunks_exact(d)).zip(p.chunks_exact(de)) {
            *s = dot2::<L>(xi, ux, pi, up);
        }
        let m = a.iter().fold(L::F::neg_infinity(), |m, &v| m.max(v));
        let mut z = L::F::zero();
        for v in a.iter_mut() {
            *v = (*v - m).exp();
            z = z + *v;
        }
        a.iter_mut().for_each(|v| *v = *v / z);
        weighted_rows::<L>(&a, x, d, &mut f);
        for ((e, &f), &t) in e.iter_mut().zip(&f).zip(t) {
            *e = f - t;
        }
        let fe = dot::<L>(&f, &e);
        // the weights g_i overwrite the attention, which is not needed after them
        for (ai, xi) in a.iter_mut().zip(x.chunks_exact(d)) {
            *ai = *ai * (dot::<L>(xi, &e) - fe);
        }
        let (gx, gp) = gz.split_at_mut(d);
        weighted_rows::<L>(&a, x, d, gx);
        weighted_rows::<L>(&a, p, de, gp);
        *loss = dot::<L>(&e, &e);
    }
}

/// `sum_k a_k b_k`: [`dot2`] with nothing beside it.
#[inline(always)]
fn dot<L: Lanes>(a: &[L::F], b: &[L::F]) -> L::F {
    dot2::<L>(a, b, &[], &[])
}

/// `a . b + c . d` with one accumulator: the eight-lane blocks of both, then the rest of `a . b`,
/// then the rest of `c . d`, one by one.
#[inline(always)]
fn dot2<L: Lanes>(a: &[L::F], b: &[L::F], c: &[L::F], d: &[L::F]) -> L::F {
    let (fa, fc) = (a.len() / 8 * 8, c.len() / 8 * 8);
    let mut acc = L::zero();
    for (x, y) in a[..fa].chunks_exact(8).zip(b[..fa].chunks_exact(8)) {
        acc = L::fma(L::load(x), L::load(y), acc);
    }
    for (x, y) in c[..fc].chunks_exact(8).zip(d[..fc].chunks_exact(8)) {
        acc = L::fma(L::load(x), L::load(y), acc);
    }
    let mut s = L::sum(acc);
    for (x, y) in a[fa..].iter().zip(&b[fa..]) {
        s = x.mul_add(*y, s);
    }
    for (x, y) in c[fc..].iter().zip(&d[fc..]) {
        s = x.mul_add(*y, s);
    }
    s
}

/// `out = sum_i w_i r_i` over the rows `r_i` (each `width` long) of `rows`: column blocks of
/// eight, four running sums over the rows (row i into sum i mod 4), added as `(0 + 1) + (2 + 3)`.
#[inline(always)]
fn weighted_rows<L: Lanes>(w: &[L::F], rows: &[L::F], width: usize, out: &mut [L::F]) {
    let n = w.len();
    let quads = n / 4 * 4;
    let full = width / 8 * 8;
    assert!(rows.len() >= n * width && out.len() >= width);
    for c in (0..full).step_by(8) {
        let mut acc = [L::zero(); 4];
        for (wq, rq) in w[..quads].chunks_exact(4).zip(rows.chunks_exact(4 * width)) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: c + 8 <= width, so the eight elements lie in row k of the four.
                let r = unsafe { L::loadp(rq.as_ptr().add(k * width + c)) };
                *acc = L::fma(L::splat(wq[k]), r, *acc);
            }
        }
        for i in quads..n {
            // SAFETY: c + 8 <= width and i < n, inside `rows` (asserted above).
            let r = unsafe { L::loadp(rows.as_ptr().add(i * width + c)) };
            acc[i - quads] = L::fma(L::splat(w[i]), r, acc[i - quads]);
        }
        L::store(
            &mut out[c..c + 8],
            L::add(L::add(acc[0], acc[1]), L::add(acc[2], acc[3])),
        );
    }
    for (j, o) in out.iter_mut().enumerate().take(width).skip(full) {
        let mut acc = [L::F::zero(); 4];
        for i in 0..n {
            acc[i % 4] = w[i].mul_add(rows[i * width + j], acc[i % 4]);
        }
        *o = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// The per-example loop gives the same bits on this CPU's lanes as on the portable path,
    /// for sizes with and without eight-lane tails.
    fn same_bits<F: Real>(
        serial: fn(Task<F>, &mut [F], &mut [F]),
        portable: fn(&Task<F>, &mut [F], &mut [F]),
    ) {
        for (n, tt, d, de) in [(3, 5, 1, 3), (4, 9, 8, 17), (5, 64, 16, 64), (2, 13, 19, 8)] {
            let dd = d + de;
            let c = |v: Vec<f64>| v.into_iter().map(F::of).collect::<Vec<F>>();
            let (x, p) = (c(numbers(n * tt * d, 1)), c(numbers(n * tt * de, 2)));
            let (t, u) = (
                c(numbers(n * d, 3)),
                c(numbers(n * dd, 4))
                    .iter()
                    .map(|&v| v * F::of(3.0))
                    .collect::<Vec<F>>(),
            );
            let task = || Task {
                x: &x,
                p: &p,
                t: &t,
                u: &u,
                tt,
                d,
                de,
            };
            let (mut g1, mut l1) = (vec![F::zero(); n * dd], vec![F::zero(); n]);
            let (mut g2, mut l2) = (g1.clone(), l1.clone());
            serial(task(), &mut g1, &mut l1);
            portable(&task(), &mut g2, &mut l2);
            assert_eq!(g1, g2, "gradient rows, sizes {:?}", (n, tt, d, de));
            assert_eq!(l1, l2, "losses, sizes {:?}", (n, tt, d, de));
        }
    }

    #[test]
    fn simd_and_portable_paths_give_the_same_bits() {
        same_bits::<f32>(serial_f32, run_task_on::<Portable<f32>>);
        same_bits::<f64>(serial_f64, run_task_on::<Portable<f64>>);
    }
}
