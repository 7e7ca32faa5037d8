//! What the theory predicts for STS, computed: the loss at initialisation, the population loss
//! L(c) of `W = c I` and its slope, the scalar recursion that full-matrix GD from zero follows,
//! the loss floor for a given d_e, and the FCN lower bound with each net's own certificate.
//!
//! Derivations (also in `paper_notes.md`):
//! - At `W = 0` attention is uniform and `f - t = sum_i (1/T - 1[i in y]/q) x_i`, so
//!   `L(0) = d (1/q - 1/T)` exactly.
//! - At `W = c I_pp` the attention `alpha = softmax(c k)`, `k_i = s . p_i`, depends on the encodings
//!   and y only; since `E[x_i . x_j] = d [i = j]` and x is independent of them,
//!   `L(c) = d E ||alpha - 1_y/q||^2` and `L'(c) = 2 d E[(alpha - 1_y/q) . alpha * (k - alpha . k)]`.
//!   Integrating x out analytically (Rao-Blackwellisation) makes the estimate far less noisy.
//! - Isotropy of the encodings and `x -> -x` symmetry make the population gradient at `c I` equal to
//!   `(L'(c) / d_e) I_pp`, so GD from zero follows `c_{t+1} = c_t - (eta / d_e) L'(c_t)`.

use super::config::RunConfig;
use super::model::{selected_mass, ExactTransformer};
use super::task::{check_td, sample_batch, Batch, Encoding, TaskConfig, MAX_ENTRIES};
use crate::config::require;
use anyhow::Result;
use ndarray::{Array1, Array2, Axis};
use ndarray_linalg::{Eigh, SVD, UPLO};
use rayon::prelude::*;
use serde::Serialize;

/// The exact population loss at `W = 0`: `d (1/q - 1/T)`.
pub fn loss_at_zero(t: usize, d: usize, q: usize) -> f64 {
    d as f64 * (1.0 / q as f64 - 1.0 / t as f64)
}

/// A Monte-Carlo mean with its standard error.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

impl Estimate {
    pub fn from_samples(v: &[f64]) -> Self {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            stderr: (var / n).sqrt(),
        }
    }
}

/// Samples processed at once by the Monte-Carlo estimators (bounds memory, not results).
const CHUNK: usize = 2048;

/// Population loss of a model by plain Monte Carlo over fresh examples (tokens included).
pub fn model_loss_mc(
    model: &ExactTransformer<f64>,
    cfg: &TaskConfig,
    samples: usize,
    seed: u64,
) -> Result<Estimate> {
    require(
        samples >= 2,
        "samples",
        "at least 2 Monte-Carlo samples are needed for a standard error",
    )?;
    require(
        cfg.encoding != Encoding::Fixed,
        "encoding",
        "the population loss is defined here for stochastic encodings",
    )?;
    cfg.check_examples(samples.min(CHUNK), "samples")?;
    let mut rng = crate::rng::stream(seed, super::seeds::MONTE_CARLO);
    let mut losses = Vec::with_capacity(samples);
    let mut left = samples;
    while left > 0 {
        let n = left.min(CHUNK);
        let batch = sample_batch(cfg, n, None, &mut rng)?;
        losses.extend(model.forward(&batch).losses.iter().copied());
        left -= n;
    }
    Ok(Estimate::from_samples(&losses))
}

/// Population loss of `W = c I` by plain Monte Carlo (tokens drawn too): the direct estimator.
pub fn population_loss_mc(cfg: &TaskConfig, c: f64, samples: usize, seed: u64) -> Result<Estimate> {
    model_loss_mc(
        &ExactTransformer::scaled_identity(cfg.d, cfg.de, c),
        cfg,
        samples,
        seed,
    )
}

/// A fixed sample of encoding scores `k_i = s . p_i` and selections, reused for every c
/// (common random numbers), so that L(c), L'(c) and the minimiser are smooth in c.
#[derive(Clone, Debug)]
pub struct EncodingSample {
    /// `(samples, T)`.
    pub k: Array2<f64>,
    /// Selection indicators, `(samples, T)`.
    pub sel: Array2<f64>,
    pub d: usize,
    pub q: usize,
}

/// Values of the x-integrated estimators at one c.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AtC {
    pub c: f64,
    pub loss: Estimate,
    pub slope: f64,
    /// Mean attention mass on the selected tokens.
    pub mass: Estimate,
    /// Smallest attention mass on the selected tokens in the sample.
    pub mass_min: f64,
}

impl EncodingSample {
    /// Draws `samples` examples' encodings for `cfg` (stochastic encodings; for a fixed table pass it).
    pub fn draw(
        cfg: &TaskConfig,
        samples: usize,
        table: Option<&Array2<f64>>,
        seed: u64,
    ) -> Result<Self> {
        require(
            samples >= 2,
            "samples",
            "at least 2 Monte-Carlo samples are needed for a standard error",
        )?;
        let small = TaskConfig {
            d: 1,
            ..cfg.clone()
        };
        small.check_examples(samples.min(CHUNK), "samples")?;
        require(
            samples
                .checked_mul(2 * cfg.t)
                .is_some_and(|n| n <= MAX_ENTRIES),
            "samples",
            format!(
                "{samples} samples of T = {} scores and selections are above the limit of 2^30 numbers (8 GiB); lower `samples`",
                cfg.t
            ),
        )?;
        let mut rng = crate::rng::stream(seed, super::seeds::ENCODING_SAMPLE);
        let mut k = Array2::zeros((samples, cfg.t));
        let mut sel = Array2::zeros((samples, cfg.t));
        let mut start = 0;
        while start < samples {
            let n = (samples - start).min(CHUNK);
            let b = sample_batch(&small, n, table, &mut rng)?;
            for i in 0..n {
                let kb = b.p.index_axis(Axis(0), i).dot(&b.s.row(i));
                k.row_mut(start + i).assign(&kb);
                sel.row_mut(start + i).assign(&b.sel.row(i));
            }
            start += n;
        }
        Ok(Self {
            k,
            sel,
            d: cfg.d,
            q: cfg.q,
        })
    }

    /// Loss, slope and attention mass at c.
    pub fn at(&self, c: f64) -> AtC {
        let d = self.d as f64;
        let invq = 1.0 / self.q as f64;
        let per: Vec<(f64, f64, f64)> = self
            .k
            .axis_iter(Axis(0))
            .into_par_iter()
            .zip(self.sel.axis_iter(Axis(0)).into_par_iter())
            .map(|(k, sel)| {
                let m = k.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(c * b));
                let mut alpha: Array1<f64> = k.mapv(|v| (c * v - m).exp());
                alpha /= alpha.sum();
                let diff = &alpha - &sel.mapv(|v| v * invq);
                let ak = alpha.dot(&k);
                let slope = 2.0
                    * d
                    * diff
                        .iter()
                        .zip(alpha.iter())
                        .zip(k.iter())
                        .map(|((df, a), kk)| df * a * (kk - ak))
                        .sum::<f64>();
                (d * diff.dot(&diff), slope, alpha.dot(&sel))
            })
            .collect();
        let losses: Vec<f64> = per.iter().map(|p| p.0).collect();
        let masses: Vec<f64> = per.iter().map(|p| p.2).collect();
        AtC {
            c,
            loss: Estimate::from_samples(&losses),
            slope: per.iter().map(|p| p.1).sum::<f64>() / per.len() as f64,
            mass: Estimate::from_samples(&masses),
            mass_min: masses.iter().cloned().fold(f64::INFINITY, f64::min),
        }
    }

    /// The minimiser of L over `c in [0, c_max]` and the floor: geometric grid, then golden section.
    pub fn minimise(&self, c_max: f64) -> AtC {
        let mut grid = vec![0.0];
        let mut c = 0.01;
        while c < c_max {
            grid.push(c);
            c *= 1.25;
        }
        grid.push(c_max);
        let vals: Vec<f64> = grid.iter().map(|&c| self.at(c).loss.mean).collect();
        let best = (0..grid.len())
            .min_by(|&a, &b| vals[a].total_cmp(&vals[b]))
            .unwrap_or(0);
        let (mut lo, mut hi) = (
            grid[best.saturating_sub(1)],
            grid[(best + 1).min(grid.len() - 1)],
        );
        let g = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..40 {
            let (a, b) = (hi - g * (hi - lo), lo + g * (hi - lo));
            if self.at(a).loss.mean < self.at(b).loss.mean {
                hi = b;
            } else {
                lo = a;
            }
        }
        self.at(0.5 * (lo + hi))
    }
}

/// The scalar recursion `c_{t+1} = c_t - (lr / d_e) L'(c_t)`: the c that full-matrix GD from
/// `W = c_0 I` must follow. Returns `c_0, c_1, ..., c_steps`.
pub fn scalar_recursion(
    sample: &EncodingSample,
    de: usize,
    lr: f64,
    c0: f64,
    steps: usize,
) -> Vec<f64> {
    let mut cs = Vec::with_capacity(steps + 1);
    let mut c = c0;
    cs.push(c);
    for _ in 0..steps {
        c -= lr / de as f64 * sample.at(c).slope;
        cs.push(c);
    }
    cs
}

/// A model measured on a test set.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Measurement {
    pub loss: Estimate,
    /// Attention mass on the selected tokens: mean and worst case over the test set.
    pub mass_mean: f64,
    pub mass_min: f64,
}

/// Measures `model` on `test`.
pub fn measure(model: &ExactTransformer<f64>, test: &Batch) -> Measurement {
    let fw = model.forward(test);
    let mass = selected_mass(&fw.attn, &test.sel);
    Measurement {
        loss: Estimate::from_samples(fw.losses.as_slice().expect("contiguous")),
        mass_mean: mass.mean().unwrap_or(0.0),
        mass_min: mass.iter().cloned().fold(f64::INFINITY, f64::min),
    }
}

/// Mean attention mass on the selected tokens and its minimum for a model on a batch.
pub fn model_selected_mass(
    model: &ExactTransformer<f64>,
    batch: &super::task::Batch,
) -> (f64, f64) {
    let m = selected_mass(&model.forward(batch).attn, &batch.sel);
    (
        m.mean().unwrap_or(0.0),
        m.iter().cloned().fold(f64::INFINITY, f64::min),
    )
}

/// `S = E_y M_y^T M_y = (1/q^2) C kron I_d`, `(T d, T d)`, with `C = E[1_y 1_y^T]`; tokens are
/// stacked as `vec(X) = (x_1, ..., x_T)`.
pub fn selection_second_moment(t: usize, d: usize, q: usize) -> Array2<f64> {
    let (tf, qf) = (t as f64, q as f64);
    let diag = qf / tf;
    let off = if t > 1 {
        qf * (qf - 1.0) / (tf * (tf - 1.0))
    } else {
        0.0
    };
    let mut s = Array2::zeros((t * d, t * d));
    for i in 0..t {
        for j in 0..t {
            let cij = if i == j { diag } else { off } / (qf * qf);
            for k in 0..d {
                s[[i * d + k, j * d + k]] = cij;
            }
        }
    }
    s
}

fn check_bound_sizes(t: usize, d: usize, q: usize) -> Result<()> {
    TaskConfig::new(t, d, q, 1).validate_tokens()
}

/// Closed form of the FCN lower bound: the sum of the `T d - m` smallest eigenvalues of S, which
/// are `(T-q)/(q T (T-1))` ((T-1)d times) and `1/T` (d times). For `d <= m <= T d` this is
/// `(T d - m)(T - q) / (q T (T - 1))`.
pub fn fcn_lower_bound_closed_form(t: usize, d: usize, q: usize, m: usize) -> Result<f64> {
    check_bound_sizes(t, d, q)?;
    let k = t.saturating_mul(d).saturating_sub(m);
    let n_small = (t - 1) * d;
    let small = if t > 1 {
        (t - q) as f64 / (q as f64 * t as f64 * (t - 1) as f64)
    } else {
        0.0
    };
    Ok(k.min(n_small) as f64 * small + k.saturating_sub(n_small) as f64 / t as f64)
}

/// The same bound from the eigenvalues of S computed by `eigh`.
pub fn fcn_lower_bound_eigh(t: usize, d: usize, q: usize, m: usize) -> Result<f64> {
    check_bound_sizes(t, d, q)?;
    check_td(t, d)?;
    let (mut ev, _) = selection_second_moment(t, d, q).eigh(UPLO::Lower)?;
    let v = ev.as_slice_mut().expect("contiguous");
    v.sort_by(f64::total_cmp);
    // `+ 0.0` turns the empty sum's -0 into 0.
    Ok(v.iter()
        .take((t * d).saturating_sub(m))
        .map(|&x| x.max(0.0))
        .sum::<f64>()
        + 0.0)
}

/// A trained FCN's own certificate `E_y ||M_y (I - P_A)||_F^2 = tr(S) - tr(Q^T S Q)`, where the
/// columns of Q are an orthonormal basis of the row space of A, the first layer's weights on
/// vec(X), `(m, T d)`. No network whose first layer sees X only through A can beat it.
pub fn fcn_certificate(a: &Array2<f64>, t: usize, d: usize, q: usize) -> Result<f64> {
    check_bound_sizes(t, d, q)?;
    check_td(t, d)?;
    require(
        a.ncols() == t * d,
        "a",
        format!(
            "first-layer block must have T d = {} columns, got {}",
            t * d,
            a.ncols()
        ),
    )?;
    let s = selection_second_moment(t, d, q);
    let (_, sv, vt) = a.svd(false, true)?;
    let vt = vt.expect("requested right singular vectors");
    let tol = sv.iter().cloned().fold(0.0, f64::max) * 1e-10 * (t * d) as f64;
    let rank = sv.iter().filter(|&&x| x > tol).count();
    let qmat = vt.slice(ndarray::s![..rank, ..]).t().to_owned();
    let captured = (&qmat * &s.dot(&qmat)).sum();
    Ok(s.diag().sum() - captured)
}

pub use super::seeds::THEORY_SEED;
/// Upper end of the search for the minimiser c* of L(c).
pub const C_MAX: f64 = 100.0;

/// The theory floor `min_c L(c)` at `task`, from the encoding sample drawn with [`THEORY_SEED`].
pub fn theory_floor(task: &TaskConfig, samples: usize) -> Result<f64> {
    Ok(EncodingSample::draw(task, samples, None, THEORY_SEED)?
        .minimise(C_MAX)
        .loss
        .mean)
}

/// The scalar recursion's prediction for `run` at its evaluation steps: `(sample, c_t)` from the
/// x-integrated estimator on the encoding sample drawn with [`THEORY_SEED`].
pub fn predicted_curve(run: &RunConfig, steps: &[usize]) -> Result<(EncodingSample, Vec<f64>)> {
    let tc = run
        .transformer
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the run has no `[transformer]` table to predict"))?;
    let sample = EncodingSample::draw(&run.task, run.eval.theory_samples, None, THEORY_SEED)?;
    let cs = scalar_recursion(&sample, run.task.de, tc.lr, tc.init_c, tc.steps);
    let c_at = steps.iter().map(|&s| cs[s.min(tc.steps)]).collect();
    Ok((sample, c_at))
}

/// Least-squares slope of log y against log x.
pub fn fitted_exponent(xs: &[f64], ys: &[f64]) -> f64 {
    let lx: Vec<f64> = xs.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = ys.iter().map(|v| v.ln()).collect();
    let n = lx.len() as f64;
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let cov: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    cov / lx.iter().map(|a| (a - mx) * (a - mx)).sum::<f64>()
}

/// Smallest grid value whose error is at most `target`, interpolated log-linearly between the
/// last grid value above the target and the first at or below it; NaN when none reaches it.
pub fn needed(grid: &[f64], err: &[f64], target: f64) -> f64 {
    match err.iter().position(|&e| e <= target) {
        None => f64::NAN,
        Some(0) => grid[0],
        Some(i) => {
            let (x0, x1, e0, e1) = (grid[i - 1].ln(), grid[i].ln(), err[i - 1], err[i]);
            (x0 + (x1 - x0) * (e0 - target) / (e0 - e1)).exp()
        }
    }
}

/// Largest d_e [`theory_de_needed`] searches (W and the encoding sample still fit the size limit
/// there).
const MAX_DE_SEARCHED: usize = 1 << 14;

/// The smallest d_e whose theory floor is at most `target` (doubling, then bisection).
pub fn theory_de_needed(task: &TaskConfig, target: f64, samples: usize) -> Result<usize> {
    let floor = |de| theory_floor(&TaskConfig { de, ..task.clone() }, samples);
    let mut hi = 1usize;
    while floor(hi)? > target {
        hi *= 2;
        require(
            hi <= MAX_DE_SEARCHED,
            "target_fraction",
            format!("no d_e up to {MAX_DE_SEARCHED} reaches it; raise the target"),
        )?;
    }
    let mut lo = hi / 2;
    if lo == 0 {
        return Ok(1);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if floor(mid)? <= target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The smallest FCN width m whose lower bound is at most `target`.
pub fn fcn_width_needed(t: usize, d: usize, q: usize, target: f64) -> Result<usize> {
    for m in 0..=t * d {
        if fcn_lower_bound_closed_form(t, d, q, m)? <= target {
            return Ok(m);
        }
    }
    Ok(t * d)
}

/// The FCN lower bound on a log grid of widths up to `m_max`, with `extra` widths and the last
/// two before T d (where the bound reaches zero) included: `(widths, bounds)`.
pub fn fcn_bound_curve(
    t: usize,
    d: usize,
    q: usize,
    m_max: usize,
    extra: &[usize],
) -> Result<(Vec<usize>, Vec<f64>)> {
    let td = t * d;
    let mut ms: Vec<usize> = (0..=40)
        .map(|i| ((m_max as f64).powf(i as f64 / 40.0)).round() as usize)
        .chain(extra.iter().copied())
        .chain([td.saturating_sub(1), td])
        .filter(|&m| m >= 1)
        .collect();
    ms.sort_unstable();
    ms.dedup();
    let bound = ms
        .iter()
        .map(|&m| fcn_lower_bound_closed_form(t, d, q, m))
        .collect::<Result<_>>()?;
    Ok((ms, bound))
}
