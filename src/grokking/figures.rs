//! Figure data of the structural-grokking replication (issue 7): one CSV (header + rows) per
//! figure, built from the per-run `metrics.csv` files that `attnlab grokking train` writes. The
//! plotting itself is left to `attnlab figures` (registry in `src/figures.rs`).
//!
//! - `accuracy.csv`: in-domain and generalisation accuracy over steps for every run, with the
//!   early-stopping step (best in-domain accuracy) of the run (plot with a log x axis).
//! - `grok_fraction.csv`: per depth, the number of seeds, of grokking seeds (final
//!   generalisation accuracy >= threshold) and their fraction.
//! - `internals.csv`: weight norm, attention sparsity and tscore over steps for every run (the
//!   figure keeps the shallowest, the best and the deepest depth).
//! - `tparseval.csv`: tparseval over steps with the right-branching baseline.

use super::train::EvalRow;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One run's curve read back from its directory `depth<L>_seed<S>/metrics.csv`.
#[derive(Clone, Debug)]
pub struct RunCurve {
    pub depth: usize,
    pub seed: u64,
    pub rows: Vec<EvalRow>,
}

impl RunCurve {
    /// Step of the best in-domain accuracy (first on ties).
    pub fn early_stop(&self) -> Option<&EvalRow> {
        let mut best: Option<&EvalRow> = None;
        for r in &self.rows {
            if best.is_none_or(|b| r.in_domain_acc > b.in_domain_acc) {
                best = Some(r);
            }
        }
        best
    }
}

fn parse_metrics(path: &Path) -> Result<Vec<EvalRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    if header.split(',').collect::<Vec<_>>() != EvalRow::HEADER {
        bail!(
            "`{}` does not have the grokking metrics header",
            path.display()
        );
    }
    lines
        .map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|x| x.parse::<f64>())
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("bad row `{l}` in `{}`", path.display()))?;
            if v.len() != EvalRow::HEADER.len() {
                bail!("row `{l}` of `{}` has {} fields", path.display(), v.len());
            }
            Ok(EvalRow {
                step: v[0] as usize,
                train_loss: v[1],
                in_domain_acc: v[2],
                gen_acc: v[3],
                weight_norm: v[4],
                sparsity: v[5],
                tscore: v[6],
                tparseval: v[7],
                tparseval_right_branching: v[8],
            })
        })
        .collect()
}

/// Every run directory `depth<L>_seed<S>` under `dir` with a `metrics.csv`, sorted by depth, seed.
pub fn load_runs(dir: &Path) -> Result<Vec<RunCurve>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing `{}`", dir.display()))? {
        let p: PathBuf = e?.path();
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(rest) = name.strip_prefix("depth") else {
            continue;
        };
        let Some((d, s)) = rest.split_once("_seed") else {
            continue;
        };
        let (Ok(depth), Ok(seed)) = (d.parse(), s.parse()) else {
            continue;
        };
        let m = p.join("metrics.csv");
        if m.exists() {
            out.push(RunCurve {
                depth,
                seed,
                rows: parse_metrics(&m)?,
            });
        }
    }
    out.sort_by_key(|r| (r.depth, r.seed));
    Ok(out)
}

/// A figure's CSV: header and rows.
pub type FigureData = (Vec<&'static str>, Vec<Vec<f64>>);

/// Accuracy over steps with each run's early-stopping step.
pub fn accuracy_data(runs: &[RunCurve]) -> FigureData {
    let mut rows = Vec::new();
    for r in runs {
        let es = r.early_stop().map_or(f64::NAN, |e| e.step as f64);
        for e in &r.rows {
            rows.push(vec![
                r.depth as f64,
                r.seed as f64,
                e.step as f64,
                e.in_domain_acc,
                e.gen_acc,
                es,
            ]);
        }
    }
    (
        vec![
            "depth",
            "seed",
            "step",
            "in_domain_acc",
            "gen_acc",
            "early_stop_step",
        ],
        rows,
    )
}

/// Fraction of seeds whose last generalisation accuracy reaches `threshold`, per depth; also the
/// mean generalisation accuracy at the early-stopping point and at the end.
pub fn grok_fraction_data(runs: &[RunCurve], threshold: f64) -> FigureData {
    let mut depths: Vec<usize> = runs.iter().map(|r| r.depth).collect();
    depths.dedup();
    let rows = depths
        .into_iter()
        .map(|d| {
            let rs: Vec<&RunCurve> = runs.iter().filter(|r| r.depth == d).collect();
            let fin: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.rows.last().map(|e| e.gen_acc))
                .collect();
            let es: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.early_stop().map(|e| e.gen_acc))
                .collect();
            let grok = fin.iter().filter(|&&g| g >= threshold).count();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            vec![
                d as f64,
                rs.len() as f64,
                grok as f64,
                grok as f64 / rs.len().max(1) as f64,
                mean(&es),
                mean(&fin),
            ]
        })
        .collect();
    (
        vec![
            "depth",
            "seeds",
            "grokked",
            "fraction",
            "mean_gen_at_early_stop",
            "mean_final_gen",
        ],
        rows,
    )
}

/// Weight norm, sparsity and tscore over steps.
pub fn internals_data(runs: &[RunCurve]) -> FigureData {
    let mut rows = Vec::new();
    for r in runs {
        for e in &r.rows {
            rows.push(vec![
                r.depth as f64,
                r.seed as f64,
                e.step as f64,
                e.weight_norm,
                e.sparsity,
                e.tscore,
            ]);
        }
    }
    (
        vec!["depth", "seed", "step", "weight_norm", "sparsity", "tscore"],
        rows,
    )
}

/// tparseval over steps with the right-branching baseline.
pub fn tparseval_data(runs: &[RunCurve]) -> FigureData {
    let mut rows = Vec::new();
    for r in runs {
        for e in &r.rows {
            rows.push(vec![
                r.depth as f64,
                r.seed as f64,
                e.step as f64,
                e.tparseval,
                e.tparseval_right_branching,
            ]);
        }
    }
    (
        vec!["depth", "seed", "step", "tparseval", "right_branching"],
        rows,
    )
}

/// Writes the four figure CSVs for the runs under `runs_dir` into `out_dir`.
pub fn write_figure_data(runs_dir: &Path, out_dir: &Path, threshold: f64) -> Result<Vec<PathBuf>> {
    let runs = load_runs(runs_dir)?;
    if runs.is_empty() {
        bail!(
            "no `depth<L>_seed<S>/metrics.csv` under `{}`: train first",
            runs_dir.display()
        );
    }
    let mut written = Vec::new();
    for (name, (h, rows)) in [
        ("accuracy.csv", accuracy_data(&runs)),
        ("grok_fraction.csv", grok_fraction_data(&runs, threshold)),
        ("internals.csv", internals_data(&runs)),
        ("tparseval.csv", tparseval_data(&runs)),
    ] {
        let p = out_dir.join(name);
        crate::io::write_csv(&p, &h, &rows)?;
        written.push(p);
    }
    Ok(written)
}

/// The grokking figures of `attnlab figures` (see [`crate::figures::registry`]).
pub fn registered() -> Vec<crate::figures::Figure> {
    Vec::new()
}
