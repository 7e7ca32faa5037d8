//! The structural-grokking figures of `attnlab figures` (issue 7), four per task (Dyck, question
//! formation, tense inflection; no tparseval for Dyck, which has no gold trees):
//!
//! - `<task>_accuracy`: in-domain and generalisation accuracy over steps (log x), mean and
//!   min..max band over seeds, one panel per depth, with each seed's early-stopping point;
//! - `<task>_grok_fraction`: fraction of seeds that grok (generalisation accuracy reaches
//!   `eval.grok_threshold` at some evaluation) vs depth, and generalisation at the early stop,
//!   at its best and at the end;
//! - `<task>_internals`: weight norm, attention sparsity and tscore over steps for the
//!   shallowest, the best and the deepest depth;
//! - `<task>_tparseval`: tparseval over steps with the right-branching baseline (QF / TI).
//!
//! Every figure of a task reads the same runs: `compute` first trains every (depth, seed) of the
//! preset that has no complete `summary.json` under `<--runs>/grokking/` (resuming from its
//! checkpoint; finished runs are only read), then plots their `metrics.csv`.

use super::config::{GrokkingExperiment, Preset, Task};
use super::train::{self, EvalRow, GrokOnset, IN_DOMAIN_SATURATION};
use crate::figures::{Figure, FigureContext, FigureOutput};
use crate::plot::{Chart, Corner, Mark, Series, COLORS};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The grokking figures of `attnlab figures` (see [`crate::figures::registry`]).
pub fn registered() -> Vec<Figure> {
    let check: fn(&Path) -> Result<()> = |p| GrokkingExperiment::load(p).map(|_| ());
    let mut v = Vec::new();
    for (t, config) in [
        ("dyck", "grokking/dyck.toml"),
        ("qf", "grokking/question_formation.toml"),
        ("ti", "grokking/tense_inflection.toml"),
    ] {
        let (acc, frac, int, tp): (&str, &str, &str, Option<&str>) = match t {
            "dyck" => (
                "grokking/dyck_accuracy",
                "grokking/dyck_grok_fraction",
                "grokking/dyck_internals",
                None,
            ),
            "qf" => (
                "grokking/qf_accuracy",
                "grokking/qf_grok_fraction",
                "grokking/qf_internals",
                Some("grokking/qf_tparseval"),
            ),
            _ => (
                "grokking/ti_accuracy",
                "grokking/ti_grok_fraction",
                "grokking/ti_internals",
                Some("grokking/ti_tparseval"),
            ),
        };
        v.push(Figure {
            name: acc,
            what: "in-domain and generalisation accuracy vs step (log x), mean and band over seeds, one panel per depth, with each seed's early-stopping point.",
            compute: accuracy_figure,
            config: Some(config),
            check,
        });
        v.push(Figure {
            name: frac,
            what: "fraction of seeds that grok (generalisation reaches the threshold at some evaluation) vs depth, and generalisation at the early stop vs at the end.",
            compute: grok_fraction_figure,
            config: Some(config),
            check,
        });
        v.push(Figure {
            name: int,
            what: "weight norm, attention sparsity and tscore vs step for the shallowest, best and deepest depth.",
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
// Runs

/// The part of a run's `summary.json` that says whether it finished.
#[derive(Deserialize)]
struct SummaryHead {
    depth: usize,
    seed: u64,
    completed: bool,
    curve: Vec<StepOnly>,
}

#[derive(Deserialize)]
struct StepOnly {
    step: usize,
}

/// True when `dir/summary.json` records this (depth, seed) trained to `steps`: the run is done
/// and is only read (its checkpoint may have been deleted).
pub fn run_is_complete(dir: &Path, depth: usize, seed: u64, steps: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("summary.json")) else {
        return false;
    };
    serde_json::from_str::<SummaryHead>(&text).is_ok_and(|s| {
        s.completed
            && s.depth == depth
            && s.seed == seed
            && s.curve.last().is_some_and(|r| r.step == steps)
            && dir.join("metrics.csv").exists()
    })
}

/// The runs of one figure config and preset, trained on demand.
pub struct TaskRuns {
    pub exp: GrokkingExperiment,
    pub preset: Preset,
    /// Every (depth, seed) of the preset, sorted by depth then seed.
    pub runs: Vec<RunCurve>,
}

impl TaskRuns {
    pub fn depths(&self) -> Vec<usize> {
        let mut d: Vec<usize> = self.runs.iter().map(|r| r.depth).collect();
        d.dedup();
        d
    }

    pub fn at_depth(&self, depth: usize) -> Vec<&RunCurve> {
        self.runs.iter().filter(|r| r.depth == depth).collect()
    }

    /// Fraction of the seeds at `depth` whose generalisation accuracy reaches the threshold at
    /// some evaluation (the paper: "eventually exceeds 80%"; our CPU runs can fall back after).
    pub fn grok_fraction(&self, depth: usize) -> f64 {
        let thr = self.preset.eval.grok_threshold;
        self.fraction(depth, |r| r.rows.iter().any(|e| e.gen_acc >= thr))
    }

    /// Fraction of the seeds at `depth` whose final generalisation accuracy reaches the threshold.
    pub fn final_grok_fraction(&self, depth: usize) -> f64 {
        let thr = self.preset.eval.grok_threshold;
        self.fraction(depth, |r| r.rows.last().is_some_and(|e| e.gen_acc >= thr))
    }

    fn fraction(&self, depth: usize, f: impl Fn(&RunCurve) -> bool) -> f64 {
        let rs = self.at_depth(depth);
        rs.iter().filter(|r| f(r)).count() as f64 / rs.len().max(1) as f64
    }

    /// Mean final generalisation accuracy over the seeds at `depth`.
    pub fn mean_final_gen(&self, depth: usize) -> f64 {
        mean(
            self.at_depth(depth)
                .iter()
                .filter_map(|r| r.rows.last().map(|e| e.gen_acc)),
        )
    }

    /// The depth with the highest grok fraction, ties broken by the mean final generalisation
    /// accuracy, then by the smaller depth.
    pub fn best_depth(&self) -> usize {
        let mut best: Option<(usize, f64, f64)> = None;
        for d in self.depths() {
            let (f, g) = (self.grok_fraction(d), self.mean_final_gen(d));
            if best.is_none_or(|(_, bf, bg)| f > bf || (f == bf && g > bg)) {
                best = Some((d, f, g));
            }
        }
        best.map_or(0, |b| b.0)
    }

    /// Per depth: seeds, final in-domain / generalisation, generalisation at the early stop,
    /// grok fraction; and the best depth.
    pub fn summary(&self) -> serde_json::Value {
        let per_depth: Vec<serde_json::Value> = self
            .depths()
            .into_iter()
            .map(|d| {
                let rs = self.at_depth(d);
                let fin = |f: fn(&EvalRow) -> f64| {
                    mean(rs.iter().filter_map(|r| r.rows.last().map(f)))
                };
                json!({
                    "depth": d,
                    "seeds": rs.len(),
                    "final_in_domain": fin(|e| e.in_domain_acc),
                    "final_gen": fin(|e| e.gen_acc),
                    "gen_at_early_stop": mean(rs.iter().filter_map(|r| r.early_stop().map(|e| e.gen_acc))),
                    "early_stop_steps": rs.iter().filter_map(|r| r.early_stop().map(|e| e.step)).collect::<Vec<_>>(),
                    "max_gen": mean(rs.iter().map(|r| r.rows.iter().map(|e| e.gen_acc).fold(f64::NAN, f64::max))),
                    "grokked_fraction": self.grok_fraction(d),
                    "final_grokked_fraction": self.final_grok_fraction(d),
                })
            })
            .collect();
        let thr = self.preset.eval.grok_threshold;
        let per_run: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                let onset = GrokOnset::of(&r.rows, thr);
                json!({
                    "depth": r.depth,
                    "seed": r.seed,
                    "early_stop_step": r.early_stop().map(|e| e.step),
                    "gen_at_early_stop": r.early_stop().map(|e| e.gen_acc),
                    "max_gen": r.rows.iter().map(|e| e.gen_acc).fold(f64::NAN, f64::max),
                    "final_in_domain": r.rows.last().map(|e| e.in_domain_acc),
                    "final_gen": r.rows.last().map(|e| e.gen_acc),
                    "saturated_at": onset.as_ref().map(|o| o.saturated_at),
                    "gen_at_saturation": onset.as_ref().map(|o| o.gen_at_saturation),
                    "grokked_at": onset.as_ref().and_then(|o| o.grokked_at),
                    "structural_grokking": onset.as_ref().is_some_and(GrokOnset::is_structural),
                })
            })
            .collect();
        json!({
            "task": format!("{:?}", self.exp.task).to_lowercase(),
            "grok_threshold": thr,
            "in_domain_saturation": IN_DOMAIN_SATURATION,
            "steps": self.preset.train.steps,
            "per_depth": per_depth,
            "per_run": per_run,
            "best_depth": self.best_depth(),
        })
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Loads the experiment file of `ctx`, trains every (depth, seed) of its preset that is not
/// complete (runs in parallel when rayon has more than one thread), and reads their curves.
pub fn ensure_runs(ctx: &FigureContext) -> Result<TaskRuns> {
    let exp = GrokkingExperiment::load(ctx.config)?;
    let name = ctx.preset.name();
    let preset = exp
        .preset(name)
        .with_context(|| format!("in `{}`", ctx.config.display()))?
        .clone();
    let root = ctx.runs.join("grokking");
    let task = exp.task;
    let all: Vec<(usize, u64, PathBuf)> = preset
        .depths
        .iter()
        .flat_map(|&d| (0..preset.seeds as u64).map(move |s| (d, s)))
        .map(|(d, s)| (d, s, train::run_dir(&root, task, name, d, s)))
        .collect();
    let steps = preset.train.steps;
    let pending: Vec<&(usize, u64, PathBuf)> = all
        .iter()
        .filter(|(d, s, dir)| !run_is_complete(dir, *d, *s, steps))
        .collect();
    if !pending.is_empty() {
        train_pending(ctx, task, &preset, &pending)?;
    }
    let runs = all
        .iter()
        .map(|(d, s, dir)| {
            Ok(RunCurve {
                depth: *d,
                seed: *s,
                rows: parse_metrics(&dir.join("metrics.csv"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TaskRuns { exp, preset, runs })
}

fn train_pending(
    ctx: &FigureContext,
    task: Task,
    preset: &Preset,
    pending: &[&(usize, u64, PathBuf)],
) -> Result<()> {
    let data = train::RunData::new(task, preset)?;
    let what = format!("{task:?} runs ({} preset)", ctx.preset.name()).to_lowercase();
    let bar = crate::progress::bar(pending.len() as u64, &what, ctx.quiet);
    bar.tick();
    let one = |&&(depth, seed, ref dir): &&(usize, u64, PathBuf)| -> Result<()> {
        if crate::interrupt::requested() {
            return Ok(());
        }
        let r = train::train_run(
            task,
            preset,
            &data,
            depth,
            seed,
            &train::RunOpts {
                out_dir: dir.clone(),
                stop: &crate::interrupt::requested,
                steps: None,
            },
        )
        .with_context(|| format!("training depth {depth} seed {seed} in `{}`", dir.display()))?;
        if r.completed {
            bar.inc(1);
        }
        Ok(())
    };
    // Runs in parallel on rayon's threads (candle's matmuls then mostly stay on their own
    // thread): bit-identical results, and not slower than one run after another with two
    // threads each when measured on the busy 2-core machine; RAYON_NUM_THREADS=1 is sequential.
    if rayon::current_num_threads() > 1 && pending.len() > 1 {
        pending.par_iter().try_for_each(one)?;
    } else {
        pending.iter().try_for_each(one)?;
    }
    bar.finish_and_clear();
    if crate::interrupt::requested() {
        bail!(
            "interrupted: the runs' state is saved under `{}`; rerun the same command to resume",
            ctx.runs.join("grokking").display()
        );
    }
    Ok(())
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
    let thr = runs.preset.eval.grok_threshold;
    let frac = Series::new(
        format!("fraction of seeds whose generalisation reaches {thr}"),
        Mark::LinePoints,
        COLORS[0],
        x.clone(),
        depths.iter().map(|&d| runs.grok_fraction(d)).collect(),
    );
    // Seeds as the columns of `over_runs`: runs[seed][depth index].
    let per_seed = |f: &dyn Fn(&RunCurve) -> f64| -> Vec<Vec<f64>> {
        let n = runs.preset.seeds;
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

/// Weight norm, attention sparsity and tscore over steps: three panels.
pub fn internals_charts(runs: &TaskRuns) -> Result<Vec<Chart>> {
    let depths = featured_depths(runs);
    let t = runs.exp.task;
    let panels: [(&str, &str, Metric); 3] = [
        ("weight norm", "||theta|| / layers", |e| e.weight_norm),
        ("attention sparsity", "minus mean attention entropy", |e| {
            e.sparsity
        }),
        ("tscore", "tscore (projected tree vs random)", |e| e.tscore),
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

// ---------------------------------------------------------------------------------------------
// Reading runs back

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
        train::early_stop(&self.rows)
    }
}

pub fn parse_metrics(path: &Path) -> Result<Vec<EvalRow>> {
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
