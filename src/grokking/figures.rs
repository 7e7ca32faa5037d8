//! The structural-grokking figures of `attnlab figures`, four per task (Dyck, question
//! formation, tense inflection; no tparseval for Dyck, which has no gold trees):
//!
//! - `<task>_accuracy`: in-domain and generalisation accuracy over steps (log x), mean and
//!   min..max band over seeds, one panel per depth, with each seed's early-stopping point;
//! - `<task>_grok_fraction`: fraction of seeds that grok by both criteria (generalisation
//!   accuracy reaches `eval.grok_threshold` at some evaluation; final generalisation reaches it,
//!   the paper's) vs depth, and generalisation at the early stop, at its best and at the end;
//! - `<task>_internals`: weight norm, attention sparsity and the paper's tscore over steps for
//!   the shallowest, the best and the deepest depth (runs committed before the tscore was
//!   recorded plot no tscore);
//! - `<task>_tparseval`: tparseval over steps with the right-branching baseline (QF / TI).
//!
//! Every figure of a task reads the same runs: `compute` first has
//! [`super::experiments::ensure_runs`] train every (depth, seed) of the preset that has no
//! complete `summary.json` under `<--runs>/grokking/` (resuming from its checkpoint; finished
//! runs are only read), then plots their `metrics.csv`.

use super::config::{GrokkingExperiment, Task};
use super::experiments::{EvalRow, RunCurve, TaskRuns};
use crate::config::Preset;
use crate::plot::figure::{Figure, FigureContext, FigureOutput};
use crate::plot::{Chart, Corner, Mark, Series, COLORS};
use anyhow::{bail, Result};
use std::path::Path;

/// The grokking figures of `attnlab figures` (registered by the `figures` command).
pub fn registered() -> Vec<Figure> {
    let check: fn(&Path) -> Result<()> = |p| GrokkingExperiment::load(p).map(|_| ());
    let mut v = Vec::new();
    // (task file, accuracy, grok fraction, internals, tparseval)
    type Names = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    );
    let files: [Names; 5] = [
        (
            "grokking/dyck.toml",
            "grokking/dyck_accuracy",
            "grokking/dyck_grok_fraction",
            "grokking/dyck_internals",
            None,
        ),
        (
            "grokking/question_formation.toml",
            "grokking/qf_accuracy",
            "grokking/qf_grok_fraction",
            "grokking/qf_internals",
            Some("grokking/qf_tparseval"),
        ),
        (
            "grokking/tense_inflection.toml",
            "grokking/ti_accuracy",
            "grokking/ti_grok_fraction",
            "grokking/ti_internals",
            Some("grokking/ti_tparseval"),
        ),
        (
            "grokking/question_formation_100k.toml",
            "grokking/qf_train100k_accuracy",
            "grokking/qf_train100k_grok_fraction",
            "grokking/qf_train100k_internals",
            Some("grokking/qf_train100k_tparseval"),
        ),
        (
            "grokking/tense_inflection_64k.toml",
            "grokking/ti_steps64k_accuracy",
            "grokking/ti_steps64k_grok_fraction",
            "grokking/ti_steps64k_internals",
            Some("grokking/ti_steps64k_tparseval"),
        ),
    ];
    for (config, acc, frac, int, tp) in files {
        v.push(Figure {
            name: acc,
            what: "in-domain and generalisation accuracy vs step (log x), mean and band over seeds, one panel per depth, with each seed's early-stopping point.",
            compute: accuracy_figure,
            config: Some(config),
            check,
        });
        v.push(Figure {
            name: frac,
            what: "fraction of seeds that grok vs depth (generalisation reaches the threshold at some evaluation, the paper's count; final generalisation reaches it), and generalisation at the early stop vs at the end.",
            compute: grok_fraction_figure,
            config: Some(config),
            check,
        });
        v.push(Figure {
            name: int,
            what: "weight norm, attention sparsity and the paper's tscore (best minus mean split per node of the projected tree, 1,000 sentences) vs step for the shallowest, best and deepest depth.",
            compute: internals_figure,
            config: Some(config),
            check,
        });
        if let Some(tp) = tp {
            v.push(Figure {
                name: tp,
                what: "tparseval of the projected trees against the gold trees vs step, beside the right-branching baseline.",
                compute: tparseval_figure,
                config: Some(config),
                check,
            });
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Charts

/// Evaluation steps shifted by one so that step 0 fits on a log axis.
fn step_axis(r: &RunCurve) -> Vec<f64> {
    r.rows.iter().map(|e| e.step as f64 + 1.0).collect()
}

const STEP_LABEL: &str = "training step + 1 (log)";

/// Mean and min..max band over the seeds at `depth` of `f` at every evaluation.
fn over_seeds(
    runs: &TaskRuns,
    depth: usize,
    label: impl Into<String>,
    color: plotters::style::RGBColor,
    f: Metric,
) -> Result<Series> {
    let rs = runs.at_depth(depth);
    let x = step_axis(rs[0]);
    if let Some(r) = rs.iter().find(|r| step_axis(r) != x) {
        bail!(
            "depth {depth}: seed {} was evaluated at other steps than seed {}: delete its run directory and rerun",
            r.seed,
            rs[0].seed
        );
    }
    let ys: Vec<Vec<f64>> = rs.iter().map(|r| r.rows.iter().map(f).collect()).collect();
    Ok(Series::over_runs(label, Mark::Line, color, x, &ys))
}

fn task_title(t: Task) -> &'static str {
    match t {
        Task::Dyck => "Dyck",
        Task::Qf => "question formation",
        Task::Ti => "tense inflection",
    }
}

fn metric_name(t: Task) -> &'static str {
    match t {
        Task::Dyck => "closing-bracket accuracy",
        Task::Qf => "first-word accuracy",
        Task::Ti => "main-verb accuracy",
    }
}

/// One panel per depth: in-domain and generalisation accuracy over steps, and the early-stopping
/// point of every seed (the step of its highest in-domain accuracy, first on ties).
pub fn accuracy_charts(runs: &TaskRuns) -> Result<Vec<Chart>> {
    let best = runs.best_depth();
    let t = runs.exp.task;
    runs.depths()
        .into_iter()
        .map(|d| {
            let rs = runs.at_depth(d);
            let es: Vec<&EvalRow> = rs.iter().filter_map(|r| r.early_stop()).collect();
            let stop = Series::new(
                "early stop (each seed): generalisation there",
                Mark::Points,
                COLORS[6],
                es.iter().map(|e| e.step as f64 + 1.0).collect(),
                es.iter().map(|e| e.gen_acc).collect(),
            );
            Ok(Chart {
                title: format!(
                    "{}: depth {d}{}",
                    task_title(t),
                    if d == best { " (best)" } else { "" }
                ),
                x_label: STEP_LABEL.into(),
                y_label: metric_name(t).into(),
                x_log: true,
                series: vec![
                    over_seeds(runs, d, "in-domain", COLORS[0], |e| e.in_domain_acc)?,
                    over_seeds(runs, d, "generalisation", COLORS[1], |e| e.gen_acc)?,
                    stop,
                ],
                legend: Corner::UpperLeft,
                ..Chart::default()
            })
        })
        .collect()
}

/// Grok fraction vs depth; generalisation at the early stop and at the end vs depth.
pub fn grok_fraction_charts(runs: &TaskRuns) -> Vec<Chart> {
    let depths = runs.depths();
    let x: Vec<f64> = depths.iter().map(|&d| d as f64).collect();
    let thr = runs.settings.eval.grok_threshold;
    let frac = Series::new(
        format!("generalisation reaches {thr} at some evaluation (the paper's count)"),
        Mark::LinePoints,
        COLORS[0],
        x.clone(),
        depths.iter().map(|&d| runs.grok_fraction(d)).collect(),
    );
    let final_frac = Series::new(
        format!("final generalisation >= {thr}"),
        Mark::LinePoints,
        COLORS[1],
        x.clone(),
        depths
            .iter()
            .map(|&d| runs.final_grok_fraction(d))
            .collect(),
    );
    // Seeds as the columns of `over_runs`: runs[seed][depth index].
    let per_seed = |f: &dyn Fn(&RunCurve) -> f64| -> Vec<Vec<f64>> {
        let n = runs.settings.seeds;
        (0..n)
            .map(|s| {
                depths
                    .iter()
                    .map(|&d| {
                        runs.at_depth(d)
                            .iter()
                            .find(|r| r.seed == s as u64)
                            .map_or(f64::NAN, |r| f(r))
                    })
                    .collect()
            })
            .collect()
    };
    let fin = per_seed(&|r| r.rows.last().map_or(f64::NAN, |e| e.gen_acc));
    let at_es = per_seed(&|r| r.early_stop().map_or(f64::NAN, |e| e.gen_acc));
    let best = per_seed(&|r| r.rows.iter().map(|e| e.gen_acc).fold(f64::NAN, f64::max));
    let t = runs.exp.task;
    vec![
        Chart {
            title: format!("{}: seeds that grok", task_title(t)),
            x_label: "depth (layers)".into(),
            y_label: "fraction of seeds".into(),
            // The all-seeds line keeps the axis at 0..1 when no seed groks.
            series: vec![
                frac,
                final_frac,
                Series::hline("all seeds", COLORS[6], 1.0, x[0], x[x.len() - 1]),
            ],
            legend: Corner::LowerRight,
            ..Chart::default()
        },
        Chart {
            title: format!("{}: generalisation, early stop / best / end", task_title(t)),
            x_label: "depth (layers)".into(),
            y_label: format!("generalisation {}", metric_name(t)),
            series: vec![
                Series::over_runs(
                    "at the end of training",
                    Mark::LinePoints,
                    COLORS[1],
                    x.clone(),
                    &fin,
                ),
                Series::over_runs(
                    "at the early-stopping point",
                    Mark::LinePoints,
                    COLORS[0],
                    x.clone(),
                    &at_es,
                ),
                Series::over_runs(
                    "best during training",
                    Mark::LinePoints,
                    COLORS[2],
                    x.clone(),
                    &best,
                ),
                Series::hline(
                    format!("grok threshold {thr}"),
                    COLORS[6],
                    thr,
                    x[0],
                    x[x.len() - 1],
                ),
            ],
            legend: Corner::LowerRight,
            ..Chart::default()
        },
    ]
}

/// Shallowest, best and deepest depth (without repeats).
pub fn featured_depths(runs: &TaskRuns) -> Vec<usize> {
    let d = runs.depths();
    let mut v = vec![d[0], runs.best_depth(), d[d.len() - 1]];
    v.sort_unstable();
    v.dedup();
    v
}

fn depth_label(runs: &TaskRuns, d: usize) -> String {
    if d == runs.best_depth() {
        format!("depth {d} (best)")
    } else {
        format!("depth {d}")
    }
}

/// One number of an evaluation row.
type Metric = fn(&EvalRow) -> f64;

/// Weight norm, attention sparsity and tscore over steps: three panels. The tscore panel plots
/// the paper's tscore; when none of the plotted runs recorded it (runs committed before it was),
/// it plots the random-tree difference they did record, and says so in its title.
pub fn internals_charts(runs: &TaskRuns) -> Result<Vec<Chart>> {
    let depths = featured_depths(runs);
    let t = runs.exp.task;
    let has_paper_tscore = depths.iter().any(|&d| {
        runs.at_depth(d)
            .iter()
            .any(|r| r.rows.iter().any(|e| e.tscore.is_finite()))
    });
    let tscore_panel: (&str, &str, Metric) = if has_paper_tscore {
        (
            "tscore",
            "tscore (sum over nodes: best - mean split)",
            |e| e.tscore,
        )
    } else {
        (
            "tscore vs random tree (runs predate the paper's tscore)",
            "S(projected tree) - E S(random tree)",
            |e| e.tscore_random_tree,
        )
    };
    let panels: [(&str, &str, Metric); 3] = [
        ("weight norm", "||theta|| / layers", |e| e.weight_norm),
        ("attention sparsity", "minus mean attention entropy", |e| {
            e.sparsity
        }),
        tscore_panel,
    ];
    panels
        .into_iter()
        .map(|(title, y, f)| {
            let series = depths
                .iter()
                .enumerate()
                .map(|(i, &d)| over_seeds(runs, d, depth_label(runs, d), COLORS[i], f))
                .collect::<Result<Vec<_>>>()?;
            Ok(Chart {
                title: format!("{}: {title}", task_title(t)),
                x_label: STEP_LABEL.into(),
                y_label: y.into(),
                x_log: true,
                series,
                legend: Corner::UpperLeft,
                ..Chart::default()
            })
        })
        .collect()
}

/// tparseval over steps for every depth, with the right-branching baseline (constant: it does
/// not depend on the model).
pub fn tparseval_charts(runs: &TaskRuns) -> Result<Vec<Chart>> {
    let t = runs.exp.task;
    let mut series = runs
        .depths()
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            over_seeds(runs, d, depth_label(runs, d), COLORS[i % 6], |e| {
                e.tparseval
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let r0 = &runs.runs[0];
    let x = step_axis(r0);
    series.push(Series::new(
        "right-branching trees",
        Mark::Dashed,
        COLORS[6],
        x,
        r0.rows
            .iter()
            .map(|e| e.tparseval_right_branching)
            .collect(),
    ));
    Ok(vec![Chart {
        title: format!("{}: tparseval against gold trees", task_title(t)),
        x_label: STEP_LABEL.into(),
        y_label: "tparseval (bracket F1)".into(),
        x_log: true,
        series,
        legend: Corner::LowerRight,
        ..Chart::default()
    }])
}

fn accuracy_figure(ctx: &FigureContext) -> Result<FigureOutput> {
    let runs = ensure_runs(ctx)?;
    Ok(FigureOutput {
        charts: accuracy_charts(&runs)?,
        summary: runs.summary(),
    })
}

fn grok_fraction_figure(ctx: &FigureContext) -> Result<FigureOutput> {
    let runs = ensure_runs(ctx)?;
    Ok(FigureOutput {
        charts: grok_fraction_charts(&runs),
        summary: runs.summary(),
    })
}

fn internals_figure(ctx: &FigureContext) -> Result<FigureOutput> {
    let runs = ensure_runs(ctx)?;
    Ok(FigureOutput {
        charts: internals_charts(&runs)?,
        summary: runs.summary(),
    })
}

fn tparseval_figure(ctx: &FigureContext) -> Result<FigureOutput> {
    let runs = ensure_runs(ctx)?;
    if runs.exp.task == Task::Dyck {
        bail!("tparseval needs gold trees: Dyck has none (use question formation or tense inflection)");
    }
    Ok(FigureOutput {
        charts: tparseval_charts(&runs)?,
        summary: runs.summary(),
    })
}

/// The runs of the figure's config and preset, trained where missing. For the CPU preset the
/// committed per-run results under `figures/grokking/runs/` (beside `experiments/`) are read
/// first and every run trained now is copied there, so a second call only redraws.
fn ensure_runs(ctx: &FigureContext) -> Result<TaskRuns> {
    let committed = (ctx.preset == Preset::Cpu)
        .then(|| committed_runs(ctx.config))
        .flatten();
    super::experiments::ensure_runs_committed(
        ctx.config,
        ctx.preset,
        ctx.runs,
        committed.as_deref(),
        ctx.quiet,
    )
}

/// `<repository>/figures/grokking/runs` for a config `<repository>/experiments/grokking/<file>`.
pub fn committed_runs(config: &Path) -> Option<std::path::PathBuf> {
    let experiments = config.parent()?.parent()?;
    Some(
        experiments
            .parent()?
            .join("figures")
            .join("grokking")
            .join("runs"),
    )
}
