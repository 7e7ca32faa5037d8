//! The GEMM behind the fused kernels' large products: the system OpenBLAS (already linked for
//! ndarray-linalg) or the `gemm` crate.
//!
//! The `gemm` crate does not use AVX-512 on stable Rust: on an AVX-512 Xeon it reaches about
//! 180 GFLOP/s fp32 on 2 cores where OpenBLAS reaches 300-350; on AVX2-only machines the two are
//! close and the crate avoids OpenBLAS's thread pool. The choice is made from the CPU's features,
//! not from a timing, so that one machine always trains with the same arithmetic (a timing at
//! start-up could flip between runs and change the numbers a seed gives). `ATTNLAB_GEMM=openblas`
//! or `ATTNLAB_GEMM=gemm` overrides it (`attnlab bench` reports both).

use super::fused::Ptr;
use std::sync::OnceLock;

/// Which library computes the fused kernels' parallel GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// The system OpenBLAS `sgemm` / `dgemm` through CBLAS.
    OpenBlas,
    /// The pure-Rust `gemm` crate (candle's own).
    GemmCrate,
}

impl Gemm {
    pub fn name(self) -> &'static str {
        match self {
            Gemm::OpenBlas => "openblas",
            Gemm::GemmCrate => "gemm",
        }
    }

    /// The value of `ATTNLAB_GEMM`, `None` when unset; an error names the accepted values.
    pub fn from_env() -> anyhow::Result<Option<Gemm>> {
        match std::env::var("ATTNLAB_GEMM") {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Ok(v) if v == "openblas" => Ok(Some(Gemm::OpenBlas)),
            Ok(v) if v == "gemm" => Ok(Some(Gemm::GemmCrate)),
            Ok(v) => anyhow::bail!(
                "ATTNLAB_GEMM = `{v}` is not a GEMM this build knows; use `openblas` or `gemm`, or unset it to choose by CPU features"
            ),
            Err(e) => anyhow::bail!("ATTNLAB_GEMM: {e}; use `openblas` or `gemm`"),
        }
    }

    /// The choice by CPU features: OpenBLAS on AVX-512 when it runs an AVX-512 kernel.
    pub fn by_cpu() -> Gemm {
        if avx512() && !generic_kernel() {
            Gemm::OpenBlas
        } else {
            Gemm::GemmCrate
        }
    }
}

/// The AVX-512 subsets OpenBLAS's `SkylakeX` kernels need.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512cd")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The kernel family OpenBLAS picked at load time (`SkylakeX`, `Haswell`, ...).
pub fn openblas_core() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string of the library.
    let p = unsafe { openblas_get_corename() };
    if p.is_null() {
        return "unknown".into();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// Whether OpenBLAS fell back to its SSE3 kernels: Debian's OpenBLAS 0.3.21 does not know
/// CPUs newer than it (an Emerald Rapids Xeon, model 207, runs `Prescott` kernels at a
/// third of the `gemm` crate's speed) unless `OPENBLAS_CORETYPE` names one at start-up.
fn generic_kernel() -> bool {
    matches!(
        openblas_core().to_ascii_lowercase().as_str(),
        "prescott" | "core2" | "unknown"
    )
}

/// The `OPENBLAS_CORETYPE` this process should have been started with, when OpenBLAS fell
/// back to generic kernels on an AVX-512 CPU and the variable is unset (`main` re-executes
/// itself with it; OpenBLAS reads it only while loading).
pub fn coretype_to_set() -> Option<&'static str> {
    let unset = std::env::var_os("OPENBLAS_CORETYPE").is_none();
    (unset && avx512() && generic_kernel()).then_some("SkylakeX")
}

static CHOSEN: OnceLock<Gemm> = OnceLock::new();

/// The GEMM in use: fixed by the first call (or by [`set`]); an invalid `ATTNLAB_GEMM` is
/// reported by [`check_env`] at start-up and falls back to the CPU's choice here.
pub fn chosen() -> Gemm {
    *CHOSEN.get_or_init(|| Gemm::from_env().ok().flatten().unwrap_or_else(Gemm::by_cpu))
}

/// Refuses an invalid `ATTNLAB_GEMM` before any work starts (a usage error).
pub fn check_env() -> anyhow::Result<()> {
    Gemm::from_env().map(|_| ())
}

/// Fixes the GEMM for the rest of the process; `false` if one was already in use.
pub fn set(g: Gemm) -> bool {
    CHOSEN.set(g).is_ok() || *CHOSEN.get().expect("set") == g
}

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

#[allow(clippy::too_many_arguments)]
extern "C" {
    fn openblas_set_num_threads(n: i32);
    fn openblas_get_corename() -> *const std::ffi::c_char;
    fn cblas_sgemm(
        order: i32,
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn cblas_dgemm(
        order: i32,
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f64,
        a: *const f64,
        lda: i32,
        b: *const f64,
        ldb: i32,
        beta: f64,
        c: *mut f64,
        ldc: i32,
    );
}

/// A float CBLAS multiplies.
pub(crate) trait Blas: num_traits::Float + Send + Sync {
    /// # Safety
    /// The CBLAS contract: every pointer valid for its matrix under its leading dimension.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: Self,
        a: *const Self,
        lda: i32,
        b: *const Self,
        ldb: i32,
        beta: Self,
        c: *mut Self,
        ldc: i32,
    );
}

macro_rules! impl_blas {
    ($t:ty, $f:ident) => {
        impl Blas for $t {
            unsafe fn gemm_raw(
                ta: i32,
                tb: i32,
                m: i32,
                n: i32,
                k: i32,
                alpha: $t,
                a: *const $t,
                lda: i32,
                b: *const $t,
                ldb: i32,
                beta: $t,
                c: *mut $t,
                ldc: i32,
            ) {
                $f(
                    ROW_MAJOR, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                )
            }
        }
    };
}
impl_blas!(f32, cblas_sgemm);
impl_blas!(f64, cblas_dgemm);

/// CBLAS's (transpose flag, leading dimension) for a `rows x cols` operand with strides
/// `(row, col)` in elements, or `None` when neither stride is 1 (or a stride does not fit).
fn operand(rows: usize, cols: usize, (rs, cs): (isize, isize)) -> Option<(i32, i32)> {
    let fits = |v: usize| i32::try_from(v).ok();
    if cs == 1 && (rows <= 1 || rs >= cols.max(1) as isize) {
        let ld = if rows <= 1 { cols.max(1) } else { rs as usize };
        return Some((NO_TRANS, fits(ld)?));
    }
    if rs == 1 && (cols <= 1 || cs >= rows.max(1) as isize) {
        let ld = if cols <= 1 { rows.max(1) } else { cs as usize };
        return Some((TRANS, fits(ld)?));
    }
    None
}

/// `dst (m x n) = beta * lhs (m x k) rhs (k x n) [+ dst if accumulate]` through CBLAS, strides
/// as (row, column) in elements; `false` (nothing written) when the layout is not one CBLAS
/// takes, for the caller to fall back on.
///
/// # Safety
/// The pointers are valid for their matrices under the given strides; `dst` is writable.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn try_gemm<T: Blas>(
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
) -> bool {
    if m == 0 || n == 0 || k == 0 {
        return false;
    }
    // A column-major destination is the transposed product: dst^T = rhs^T lhs^T.
    if d.1 != 1 && d.0 == 1 {
        return try_gemm(
            n,
            m,
            k,
            dst,
            (d.1, d.0),
            rhs,
            (r.1, r.0),
            lhs,
            (l.1, l.0),
            beta,
            accumulate,
        );
    }
    if d.1 != 1 {
        return false;
    }
    let ldc = match m {
        1 => n,
        _ if d.0 >= n as isize => d.0 as usize,
        _ => return false,
    };
    let (Some((ta, lda)), Some((tb, ldb))) = (operand(m, k, l), operand(k, n, r)) else {
        return false;
    };
    let (Ok(_), Ok(ni), Ok(ki), Ok(ldc)) = (
        i32::try_from(m),
        i32::try_from(n),
        i32::try_from(k),
        i32::try_from(ldc),
    ) else {
        return false;
    };
    CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keep = if accumulate { T::one() } else { T::zero() };
    // OpenBLAS's own pool would compete with rayon's workers for the same cores (under load it
    // ran at half the crate's speed); instead it runs single-threaded on row blocks that rayon
    // spreads, so one pool owns every thread.
    single_threaded();
    let blocks = rayon::current_num_threads()
        .min(m.div_ceil(MIN_ROWS))
        .max(1);
    let per = m.div_ceil(blocks);
    let (dst, lhs, rhs) = (Ptr(dst), Ptr(lhs as *mut T), Ptr(rhs as *mut T));
    let run = |i0: usize| {
        let rows = per.min(m - i0) as i32;
        T::gemm_raw(
            ta,
            tb,
            rows,
            ni,
            ki,
            beta,
            lhs.get().offset(i0 as isize * l.0),
            lda,
            rhs.get(),
            ldb,
            keep,
            dst.get().offset(i0 as isize * d.0),
            ldc,
        )
    };
    if blocks == 1 {
        run(0);
    } else {
        use rayon::prelude::*;
        (0..blocks).into_par_iter().for_each(|b| {
            if b * per < m {
                // The blocks write disjoint row ranges of `dst`.
                run(b * per)
            }
        });
    }
    true
}

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Products computed by OpenBLAS so far in this process (lets a test see the path is taken).
pub fn openblas_calls() -> u64 {
    CALLS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Fewest rows a block is given: below this the call overhead outweighs the split.
const MIN_ROWS: usize = 64;

fn single_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets a global of the library, before any of our calls into it.
    ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn every_layout_cblas_takes_matches_the_naive_product() {
        let (m, n, k) = (5, 4, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let at: Vec<f64> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f64> = (0..k * n).map(|i| b[(i % k) * n + i / k]).collect();
        let want = naive(m, n, k, &a, &b);
        for (lhs, l) in [(&a, (k as isize, 1)), (&at, (1, m as isize))] {
            for (rhs, r) in [(&b, (n as isize, 1)), (&bt, (1, k as isize))] {
                for col_major in [false, true] {
                    let mut c = vec![1.0; m * n];
                    let d = if col_major {
                        (1, m as isize)
                    } else {
                        (n as isize, 1)
                    };
                    let ok = unsafe {
                        try_gemm(
                            m,
                            n,
                            k,
                            c.as_mut_ptr(),
                            d,
                            lhs.as_ptr(),
                            l,
                            rhs.as_ptr(),
                            r,
                            2.0,
                            true,
                        )
                    };
                    assert!(ok);
                    for i in 0..m {
                        for j in 0..n {
                            let got = c[(i as isize * d.0 + j as isize * d.1) as usize];
                            approx::assert_relative_eq!(
                                got,
                                1.0 + 2.0 * want[i * n + j],
                                epsilon = 1e-12
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_layout_without_a_unit_stride_is_left_to_the_fallback() {
        let x = [0.0f32; 64];
        let mut c = [0.0f32; 4];
        let ok = unsafe {
            try_gemm(
                2,
                2,
                2,
                c.as_mut_ptr(),
                (2, 1),
                x.as_ptr(),
                (4, 2),
                x.as_ptr(),
                (2, 1),
                1.0,
                false,
            )
        };
        assert!(!ok);
    }
}
