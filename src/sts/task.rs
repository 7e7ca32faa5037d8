//! The sparse token selection task STS_q and its positional encodings.
//!
//! An example is T tokens `x_i ~ N(0, I_d)`, a uniform q-subset `y` of `[T]`, and the target
//! `(1/q) sum_{i in y} x_i`. The subset reaches the transformer through positional encodings
//! `p_i in R^{d_e}`: token i is embedded as `z_i = [x_i; p_i]` and the query as
//! `z_0 = [0; sum_{j in y} p_j]` (or the mean, as an option).

use crate::config::require;
use anyhow::Result;
use ndarray::{s, Array2, Array3, ArrayViewMut2, ArrayViewMut3, Axis};
use rand::seq::index::sample;
use rand::Rng as _;
use rand_distr::StandardNormal;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Most numbers (f64) one batch of examples, one model or one sample of encodings may hold: 2^30,
/// 8 GiB. Sizes are checked against it before anything is allocated, so a mistyped size is an
/// error naming the field instead of an allocation that aborts the process. The largest array of
/// any preset, the paper's floor_vs_de test set (16384 examples at T = 64, d + d_e = 528), holds
/// 2^29.04.
pub const MAX_ENTRIES: usize = 1 << 30;

/// Largest T, d or d_e: far beyond any experiment, and small enough that products of sizes
/// cannot overflow before [`MAX_ENTRIES`] is checked.
pub const MAX_DIM: usize = 1 << 24;

/// Largest T d for which the FCN bound is computed by `eigh` and a net's certificate by SVD: the
/// (T d)^2 second moment is then 32 MiB and its decomposition takes seconds; at T d = 10^5 it
/// would be 80 GB. The closed form has no such limit.
pub const MAX_TD: usize = 2048;

/// Fails naming `t` and `d` unless the (T d)^2 second moment fits [`MAX_TD`].
pub fn check_td(t: usize, d: usize) -> Result<()> {
    require(
        t.checked_mul(d).is_some_and(|td| td <= MAX_TD),
        "t",
        format!(
            "T d = {t} x {d} is above the limit of {MAX_TD} for the (T d)^2 second moment (32 MiB, seconds to decompose); lower `t` or `d`"
        ),
    )
}
/// How positional encodings are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Stochastic: fresh for every example, uniform on the unit sphere of R^{d_e}.
    Sphere,
    /// Stochastic: fresh for every example, N(0, I/d_e) (unit norm in expectation).
    Gaussian,
    /// One table drawn once (from the run's seed, unit sphere) and reused for every example.
    Fixed,
}

/// How the query token combines the selected encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Query {
    Sum,
    Mean,
}

/// Sizes and encoding choices of the task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// Sequence length T.
    pub t: usize,
    /// Token dimension d.
    pub d: usize,
    /// Subset size q.
    pub q: usize,
    /// Positional-encoding dimension d_e.
    pub de: usize,
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    #[serde(default = "default_query")]
    pub query: Query,
}

fn default_encoding() -> Encoding {
    Encoding::Sphere
}
fn default_query() -> Query {
    Query::Sum
}

impl TaskConfig {
    pub fn new(t: usize, d: usize, q: usize, de: usize) -> Self {
        Self {
            t,
            d,
            q,
            de,
            encoding: Encoding::Sphere,
            query: Query::Sum,
        }
    }

    /// Checks sizes; errors name the field and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_tokens()?;
        require(
            self.de >= 1,
            "de",
            "encoding dimension d_e must be at least 1",
        )?;
        require(
            self.de <= MAX_DIM,
            "de",
            format!("{} is above the limit of {MAX_DIM}", self.de),
        )?;
        let dim = self.d + self.de;
        require(
            dim * dim <= MAX_ENTRIES,
            "de",
            format!(
                "W is (d + d_e)^2 = {dim}^2 numbers, above the limit of 2^30 (8 GiB); lower `de` or `d`"
            ),
        )?;
        self.check_examples(1, "t")
    }

    /// Checks T, d and q alone (what the FCN bound depends on).
    pub fn validate_tokens(&self) -> Result<()> {
        for (field, v) in [("t", self.t), ("d", self.d)] {
            require(
                v <= MAX_DIM,
                field,
                format!("{v} is above the limit of {MAX_DIM}"),
            )?;
        }
        require(self.t >= 1, "t", "sequence length T must be at least 1")?;
        require(self.d >= 1, "d", "token dimension d must be at least 1")?;
        require(self.q >= 1, "q", "subset size q must be at least 1")?;
        require(
            self.q <= self.t,
            "q",
            format!(
                "subset size q = {} cannot exceed the sequence length T = {}; choose q <= T",
                self.q, self.t
            ),
        )
    }

    /// Fails naming `field` unless `n` examples (`n T (d + d_e)` numbers) fit in [`MAX_ENTRIES`].
    pub fn check_examples(&self, n: usize, field: &str) -> Result<()> {
        let each = self.t.saturating_mul(self.d + self.de);
        require(
            n.checked_mul(each).is_some_and(|x| x <= MAX_ENTRIES),
            field,
            format!(
                "{n} examples of T (d + d_e) = {each} numbers each are above the limit of 2^30 numbers (8 GiB); lower `{field}` or the task's sizes"
            ),
        )
    }

    /// Same task at another sequence length (for length generalisation).
    pub fn with_len(&self, t: usize) -> Self {
        Self { t, ..self.clone() }
    }
}

/// A batch of examples (stored in `F`; sampled in f64 and cast with [`Batch::cast`]).
#[derive(Clone, Debug)]
pub struct Batch<F = f64> {
    /// Tokens, `(batch, T, d)`.
    pub x: Array3<F>,
    /// Positional encodings, `(batch, T, d_e)`.
    pub p: Array3<F>,
    /// Positional part of the query token, `(batch, d_e)`.
    pub s: Array2<F>,
    /// Selection indicator 1_y, `(batch, T)`.
    pub sel: Array2<F>,
    /// Target (1/q) sum_{i in y} x_i, `(batch, d)`.
    pub target: Array2<F>,
}

impl Batch<f64> {
    /// A batch of no examples, to be filled by [`sample_batch_into`].
    pub fn empty() -> Self {
        Batch {
            x: Array3::zeros((0, 0, 0)),
            p: Array3::zeros((0, 0, 0)),
            s: Array2::zeros((0, 0)),
            sel: Array2::zeros((0, 0)),
            target: Array2::zeros((0, 0)),
        }
    }

    /// Gives the batch the shape of `n` examples, keeping the buffers that already have it
    /// (their contents are overwritten by the sampler).
    fn reshape(&mut self, n: usize, t: usize, d: usize, de: usize) {
        if self.x.dim() != (n, t, d) {
            self.x = Array3::zeros((n, t, d));
            self.target = Array2::zeros((n, d));
        }
        if self.p.dim() != (n, t, de) {
            self.p = Array3::zeros((n, t, de));
            self.s = Array2::zeros((n, de));
        }
        if self.sel.dim() != (n, t) {
            self.sel = Array2::zeros((n, t));
        }
    }

    /// The same batch in another float type.
    pub fn cast<F: num_traits::Float + num_traits::FromPrimitive>(&self) -> Batch<F> {
        let c = |v: &f64| F::from_f64(*v).expect("finite");
        Batch {
            x: self.x.map(c),
            p: self.p.map(c),
            s: self.s.map(c),
            sel: self.sel.map(c),
            target: self.target.map(c),
        }
    }
}

impl<F> Batch<F> {
    pub fn len(&self) -> usize {
        self.x.dim().0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn t(&self) -> usize {
        self.x.dim().1
    }
}

/// A unit vector uniform on the sphere of R^n.
fn sphere_row(rng: &mut crate::rng::Rng, n: usize) -> Vec<f64> {
    loop {
        let v: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-12 {
            return v.into_iter().map(|a| a / norm).collect();
        }
    }
}

/// A fixed table of encodings, `(rows, d_e)`, unit-sphere rows. Row i depends only on
/// (seed, i), so a longer table extends a shorter one with positions training never saw.
pub fn fixed_table(seed: u64, rows: usize, de: usize) -> Array2<f64> {
    let mut out = Array2::zeros((rows, de));
    for i in 0..rows {
        let mut rng = crate::rng::stream(super::seeds::table_seed(seed), i as u64);
        let r = sphere_row(&mut rng, de);
        out.row_mut(i).assign(&ndarray::ArrayView1::from(&r));
    }
    out
}

/// Examples generated from one seed; chunks are generated in parallel from seeds drawn in order
/// from the caller's generator, so results do not depend on the number of threads.
pub const SAMPLE_CHUNK: usize = 256;

/// Draws `n` examples of `cfg`. `table` is required for [`Encoding::Fixed`] and must have at
/// least T rows.
pub fn sample_batch(
    cfg: &TaskConfig,
    n: usize,
    table: Option<&Array2<f64>>,
    rng: &mut crate::rng::Rng,
) -> Result<Batch> {
    let mut out = Batch::empty();
    sample_batch_into(cfg, n, table, rng, &mut out)?;
    Ok(out)
}

/// [`sample_batch`] into `out`, reusing its buffers when the shapes match: at the paper's
/// sizes a batch is half a gigabyte, and fresh pages cost more than the step's arithmetic.
pub fn sample_batch_into(
    cfg: &TaskConfig,
    n: usize,
    table: Option<&Array2<f64>>,
    rng: &mut crate::rng::Rng,
    out: &mut Batch,
) -> Result<()> {
    cfg.validate()?;
    cfg.check_examples(n, "examples")?;
    let (t, d, de) = (cfg.t, cfg.d, cfg.de);
    if cfg.encoding == Encoding::Fixed {
        let rows = table.map(|tb| tb.nrows()).unwrap_or(0);
        require(
            rows >= t && table.map(|tb| tb.ncols()) == Some(de),
            "encoding",
            format!("a fixed table of at least T = {t} rows of width d_e = {de} is needed (got {rows} rows)"),
        )?;
    }
    out.reshape(n, t, d, de);
    let seeds: Vec<u64> = (0..n.div_ceil(SAMPLE_CHUNK)).map(|_| rng.gen()).collect();
    let parts: Vec<_> = seeds
        .into_iter()
        .zip(out.x.axis_chunks_iter_mut(Axis(0), SAMPLE_CHUNK))
        .zip(out.p.axis_chunks_iter_mut(Axis(0), SAMPLE_CHUNK))
        .zip(out.s.axis_chunks_iter_mut(Axis(0), SAMPLE_CHUNK))
        .zip(out.sel.axis_chunks_iter_mut(Axis(0), SAMPLE_CHUNK))
        .zip(out.target.axis_chunks_iter_mut(Axis(0), SAMPLE_CHUNK))
        .map(|(((((seed, x), p), s), sel), target)| {
            (
                seed,
                BatchViewMut {
                    x,
                    p,
                    s,
                    sel,
                    target,
                },
            )
        })
        .collect();
    parts
        .into_par_iter()
        .for_each(|(seed, view)| sample_chunk(cfg, table, &mut crate::rng::seeded(seed), view));
    Ok(())
}

/// One chunk of a batch being sampled in place.
struct BatchViewMut<'a> {
    x: ArrayViewMut3<'a, f64>,
    p: ArrayViewMut3<'a, f64>,
    s: ArrayViewMut2<'a, f64>,
    sel: ArrayViewMut2<'a, f64>,
    target: ArrayViewMut2<'a, f64>,
}

fn sample_chunk(
    cfg: &TaskConfig,
    table: Option<&Array2<f64>>,
    rng: &mut crate::rng::Rng,
    out: BatchViewMut<'_>,
) {
    let (t, q) = (cfg.t, cfg.q);
    let BatchViewMut {
        mut x,
        mut p,
        mut s,
        mut sel,
        mut target,
    } = out;
    let n = x.len_of(Axis(0));
    x.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
    match (cfg.encoding, table) {
        (Encoding::Fixed, Some(tb)) => {
            for mut ex in p.outer_iter_mut() {
                ex.assign(&tb.slice(s![..t, ..]));
            }
        }
        _ => {
            p.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
            for mut row in p.rows_mut() {
                let scale = match cfg.encoding {
                    Encoding::Gaussian => 1.0 / (cfg.de as f64).sqrt(),
                    _ => 1.0 / row.dot(&row).sqrt().max(1e-300),
                };
                row *= scale;
            }
        }
    }
    s.fill(0.0);
    sel.fill(0.0);
    target.fill(0.0);
    let scale = match cfg.query {
        Query::Sum => 1.0,
        Query::Mean => 1.0 / q as f64,
    };
    for b in 0..n {
        for i in sample(rng, t, q).into_iter() {
            sel[[b, i]] = 1.0;
            s.row_mut(b).scaled_add(scale, &p.slice(s![b, i, ..]));
            target
                .row_mut(b)
                .scaled_add(1.0 / q as f64, &x.slice(s![b, i, ..]));
        }
    }
}
