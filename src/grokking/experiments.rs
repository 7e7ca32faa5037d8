//! The runs a study needs and what they say: the (depth, seed) runs of a preset, where each one
//! lives, training the missing ones, reading their metrics back, early stopping, grokking onset
//! and the per-depth summary the figures show.

use super::config::{GrokkingExperiment, Settings, Task};
use super::task::RunData;
use super::train::{train, RunOpts, RunSpec};
use crate::config::Preset;
use crate::run::{Interrupted, Outcome};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// One evaluation of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalRow {
    pub step: usize,
    /// Mean training loss since the previous evaluation (NaN at step 0).
    pub train_loss: f64,
    /// Dyck: every validation string; QF: `quest` lines; TI: every validation line (official).
    pub in_domain_acc: f64,
    /// QF / TI: the validation lines that transform (`quest` / `PRESENT`); NaN for Dyck and in
    /// runs written before the column existed.
    pub in_domain_transform_acc: f64,
    pub gen_acc: f64,
    pub weight_norm: f64,
    pub sparsity: f64,
    /// The paper's tscore ([`super::tree_projection::tscore`]); NaN in runs written before it was
    /// recorded, whose `tscore` column held the random-tree difference.
    pub tscore: f64,
    /// `S(T_greedy) - E[S(T_random)]` ([`super::tree_projection::tscore_exact`]).
    pub tscore_random_tree: f64,
    /// NaN for Dyck (no gold trees).
    pub tparseval: f64,
    /// Right-branching trees against the gold trees (NaN for Dyck).
    pub tparseval_right_branching: f64,
}

impl EvalRow {
    /// The metrics columns a row is read from (by name: a run's `metrics.csv` may also hold the
    /// engine's `wall_s` and `lr`, and older runs lack them), in [`EvalRow::values`] order.
    pub const HEADER: [&'static str; 11] = [
        "step",
        "train_loss",
        "in_domain_acc",
        "in_domain_transform_acc",
        "gen_acc",
        "weight_norm",
        "sparsity",
        "tscore",
        "tscore_random_tree",
        "tparseval",
        "tparseval_right_branching",
    ];

    /// The columns a file of the current schema has beyond the older one: a `metrics.csv` without
    /// them was written before the paper's tscore and the all-lines TI accuracy were recorded.
    pub const ADDED: [&'static str; 2] = ["in_domain_transform_acc", "tscore_random_tree"];

    /// The row from its values in [`EvalRow::HEADER`] order.
    pub fn from_values(v: &[f64]) -> Self {
        Self {
            step: v[0] as usize,
            train_loss: v[1],
            in_domain_acc: v[2],
            in_domain_transform_acc: v[3],
            gen_acc: v[4],
            weight_norm: v[5],
            sparsity: v[6],
            tscore: v[7],
            tscore_random_tree: v[8],
            tparseval: v[9],
            tparseval_right_branching: v[10],
        }
    }

    /// The values in [`EvalRow::HEADER`] order.
    pub fn values(&self) -> Vec<f64> {
        vec![
            self.step as f64,
            self.train_loss,
            self.in_domain_acc,
            self.in_domain_transform_acc,
            self.gen_acc,
            self.weight_norm,
            self.sparsity,
            self.tscore,
            self.tscore_random_tree,
            self.tparseval,
            self.tparseval_right_branching,
        ]
    }

    /// Every evaluation of a finished [`crate::run::drive`].
    pub fn from_outcome(out: &Outcome) -> Result<Vec<Self>> {
        let cols = Self::HEADER
            .iter()
            .map(|h| {
                out.column(h)
                    .with_context(|| format!("the run's metrics have no column `{h}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((0..out.rows.len())
            .map(|i| Self::from_values(&cols.iter().map(|c| c[i]).collect::<Vec<_>>()))
            .collect())
    }
}

/// Result of one run (its `summary.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub depth: usize,
    pub seed: u64,
    pub curve: Vec<EvalRow>,
    /// True once the run reached `train.steps` (an interrupted run returns an error instead).
    pub completed: bool,
    /// Step of the highest in-domain accuracy (first on ties): where early stopping stops.
    pub early_stop_step: Option<usize>,
    pub gen_at_early_stop: Option<f64>,
    pub final_gen: Option<f64>,
    pub grokked: bool,
}

impl RunResult {
    pub fn from_curve(depth: usize, seed: u64, curve: Vec<EvalRow>, thr: f64) -> Self {
        let best = early_stop(&curve);
        let final_gen = curve.last().map(|r| r.gen_acc);
        Self {
            depth,
            seed,
            early_stop_step: best.map(|r| r.step),
            gen_at_early_stop: best.map(|r| r.gen_acc),
            final_gen,
            // "Eventually exceeds": at any evaluation, as the figures count it.
            grokked: curve.iter().any(|r| r.gen_acc >= thr),
            curve,
            completed: true,
        }
    }
}

/// Where early stopping stops: the evaluation with the highest in-domain accuracy (first on ties).
pub fn early_stop(curve: &[EvalRow]) -> Option<&EvalRow> {
    let mut best: Option<&EvalRow> = None;
    for r in curve {
        if best.is_none_or(|b| r.in_domain_acc > b.in_domain_acc) {
            best = Some(r);
        }
    }
    best
}

/// In-domain accuracy at which a run counts as saturated.
pub const IN_DOMAIN_SATURATION: f64 = 0.95;

/// When a run saturated in domain and when it first generalised: structural grokking is
/// `gen_at_saturation < threshold` with `grokked_at` well after `saturated_at`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GrokOnset {
    /// First evaluation with in-domain accuracy >= [`IN_DOMAIN_SATURATION`].
    pub saturated_at: usize,
    pub gen_at_saturation: f64,
    /// First evaluation at or after `saturated_at` with generalisation >= the threshold.
    pub grokked_at: Option<usize>,
}

impl GrokOnset {
    /// `None` when in-domain accuracy never saturates.
    pub fn of(curve: &[EvalRow], threshold: f64) -> Option<Self> {
        let sat = curve
            .iter()
            .position(|r| r.in_domain_acc >= IN_DOMAIN_SATURATION)?;
        Some(Self {
            saturated_at: curve[sat].step,
            gen_at_saturation: curve[sat].gen_acc,
            grokked_at: curve[sat..]
                .iter()
                .find(|r| r.gen_acc >= threshold)
                .map(|r| r.step),
        })
    }

    /// Steps from saturation to generalisation (`None` if it never generalised).
    pub fn delay(&self) -> Option<usize> {
        self.grokked_at.map(|g| g - self.saturated_at)
    }

    /// Structural grokking: generalisation crosses the threshold after saturation, at no less
    /// than twice the saturation step (at least one doubling later on the paper's log-step axis).
    pub fn is_structural(&self) -> bool {
        self.grokked_at
            .is_some_and(|g| g > self.saturated_at && g >= 2 * self.saturated_at)
    }
}

/// Output directory of one run under `root`: `<root>/<folder>/<preset>/depth<L>_seed<S>`, the
/// folder being the experiment's [`GrokkingExperiment::runs_folder`] (the task's name by default).
pub fn run_dir(root: &Path, folder: &str, preset: Preset, depth: usize, seed: u64) -> PathBuf {
    root.join(folder)
        .join(preset.name())
        .join(format!("depth{depth}_seed{seed}"))
}

/// Trains `spec` to `train.steps` in `opts.dir` (resuming from its checkpoint; see
/// [`train`]), writing `metrics.csv` at every evaluation and `summary.json` at the end.
pub fn train_run(spec: &RunSpec, data: &RunData, opts: &RunOpts) -> Result<RunResult> {
    let out = train(spec, data, opts)?;
    let res = RunResult::from_curve(
        spec.depth,
        spec.seed,
        EvalRow::from_outcome(&out)?,
        spec.settings.eval.grok_threshold,
    );
    crate::io::write_json(&opts.dir.join("summary.json"), &res)?;
    Ok(res)
}

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
/// and is only read (its checkpoint may have been deleted). A run written before the columns of
/// [`EvalRow::ADDED`] existed is complete too (its accuracies stand; its paper tscore reads as
/// NaN, see [`has_current_columns`]): delete its directory to retrain it with every measure.
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

/// Whether the header of the metrics file `path` has every column of [`EvalRow::HEADER`].
pub fn has_current_columns(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        let header: Vec<&str> = t.lines().next().unwrap_or_default().split(',').collect();
        EvalRow::HEADER.iter().all(|h| header.contains(h))
    })
}

/// Reads a run's `metrics.csv` by column name: the engine's schema (`step, wall_s, lr,
/// train_loss, ...`, missing values empty) and the older ones without `wall_s` and `lr` (missing
/// values `NaN`) or without the columns of [`EvalRow::ADDED`] all read. In a file without
/// `tscore_random_tree`, the `tscore` column held that quantity (on 20 sentences of 2-10 words):
/// it is read as `tscore_random_tree`, and `tscore` is NaN; missing added columns are NaN.
pub fn parse_metrics(path: &Path) -> Result<Vec<EvalRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let legacy = !header.contains(&"tscore_random_tree");
    let idx = EvalRow::HEADER
        .iter()
        .map(|&h| {
            let name = match h {
                "tscore" if legacy => return Ok(None),
                "tscore_random_tree" if legacy => "tscore",
                h => h,
            };
            match header.iter().position(|c| *c == name) {
                Some(i) => Ok(Some(i)),
                None if EvalRow::ADDED.contains(&h) => Ok(None),
                None => Err(anyhow::anyhow!(
                    "`{}` is not a grokking metrics file: it has no column `{h}`",
                    path.display()
                )),
            }
        })
        .collect::<Result<Vec<Option<usize>>>>()?;
    lines
        .map(|l| {
            let v: Vec<f64> = l
                .split(',')
                .map(|x| {
                    if x.is_empty() {
                        Ok(f64::NAN)
                    } else {
                        x.parse::<f64>()
                    }
                })
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("bad row `{l}` in `{}`", path.display()))?;
            if v.len() != header.len() {
                bail!("row `{l}` of `{}` has {} fields", path.display(), v.len());
            }
            Ok(EvalRow::from_values(
                &idx.iter()
                    .map(|i| i.map_or(f64::NAN, |i| v[i]))
                    .collect::<Vec<_>>(),
            ))
        })
        .collect()
}

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
        early_stop(&self.rows)
    }
}

/// The runs of one experiment file and preset.
pub struct TaskRuns {
    pub exp: GrokkingExperiment,
    pub settings: Settings,
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
        let thr = self.settings.eval.grok_threshold;
        self.fraction(depth, |r| r.rows.iter().any(|e| e.gen_acc >= thr))
    }

    /// Fraction of the seeds at `depth` whose final generalisation accuracy reaches the threshold.
    pub fn final_grok_fraction(&self, depth: usize) -> f64 {
        let thr = self.settings.eval.grok_threshold;
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
    /// grok fraction; per run: early stop and grokking onset; and the best depth.
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
                    "final_tscore": fin(|e| e.tscore),
                    "final_tscore_random_tree": fin(|e| e.tscore_random_tree),
                    "final_tparseval": fin(|e| e.tparseval),
                    "final_in_domain_transform": fin(|e| e.in_domain_transform_acc),
                })
            })
            .collect();
        let thr = self.settings.eval.grok_threshold;
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
                    "final_tscore": r.rows.last().map(|e| e.tscore),
                    "final_tparseval": r.rows.last().map(|e| e.tparseval),
                    "paper_tscore_recorded": r.rows.iter().any(|e| e.tscore.is_finite()),
                })
            })
            .collect();
        json!({
            "task": format!("{:?}", self.exp.task).to_lowercase(),
            "grok_threshold": thr,
            "in_domain_saturation": IN_DOMAIN_SATURATION,
            "steps": self.settings.train.steps,
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

/// Loads `config`, trains every (depth, seed) of `preset` that is not complete under
/// `<runs>/grokking/` (in parallel when rayon has more than one thread), and reads their curves.
/// Ctrl-C saves every run in flight and returns [`Interrupted`].
pub fn ensure_runs(config: &Path, preset: Preset, runs: &Path, quiet: bool) -> Result<TaskRuns> {
    ensure_runs_committed(config, preset, runs, None, quiet)
}

/// [`ensure_runs`] with a folder of committed results, `<committed>/<folder>/<preset>/depth<L>_seed<S>/`
/// holding each run's `metrics.csv` and `summary.json`: a run complete there
/// ([`run_is_complete`]) is read from there and not trained; a run trained now has both files
/// copied there, so that a later call only redraws and a later session can add seeds.
pub fn ensure_runs_committed(
    config: &Path,
    preset: Preset,
    runs: &Path,
    committed: Option<&Path>,
    quiet: bool,
) -> Result<TaskRuns> {
    let exp = GrokkingExperiment::load(config)?;
    let settings = exp
        .preset(preset)
        .with_context(|| format!("in `{}`", config.display()))?
        .clone();
    ensure_runs_in(
        exp,
        settings,
        preset,
        &runs.join("grokking"),
        committed,
        quiet,
    )
}

/// [`ensure_runs`] for settings already loaded (e.g. a preset with `--set` overrides), with the
/// run directories under `root` (`<root>/<folder>/<preset>/depth<L>_seed<S>`).
pub fn ensure_runs_with(
    exp: GrokkingExperiment,
    settings: Settings,
    preset: Preset,
    root: &Path,
    quiet: bool,
) -> Result<TaskRuns> {
    ensure_runs_in(exp, settings, preset, root, None, quiet)
}

fn ensure_runs_in(
    exp: GrokkingExperiment,
    settings: Settings,
    preset: Preset,
    root: &Path,
    committed: Option<&Path>,
    quiet: bool,
) -> Result<TaskRuns> {
    let root = root.to_path_buf();
    let task = exp.task;
    let folder = exp.runs_folder();
    let steps = settings.train.steps;
    // (depth, seed, where it trains, where its finished files are read from)
    let all: Vec<(usize, u64, PathBuf, PathBuf)> = settings
        .depths
        .iter()
        .flat_map(|&d| (0..settings.seeds as u64).map(move |s| (d, s)))
        .map(|(d, s)| {
            let dir = run_dir(&root, &folder, preset, d, s);
            let read = committed
                .map(|c| run_dir(c, &folder, preset, d, s))
                .filter(|c| run_is_complete(c, d, s, steps))
                .unwrap_or_else(|| dir.clone());
            (d, s, dir, read)
        })
        .collect();
    let pending: Vec<(usize, u64, PathBuf)> = all
        .iter()
        .filter(|(d, s, _, read)| !run_is_complete(read, *d, *s, steps))
        .map(|(d, s, dir, _)| (*d, *s, dir.clone()))
        .collect();
    if !pending.is_empty() {
        let refs: Vec<&(usize, u64, PathBuf)> = pending.iter().collect();
        train_pending(task, preset, &settings, &refs, &root, quiet)?;
        if let Some(c) = committed {
            for (d, s, dir) in &pending {
                let to = run_dir(c, &folder, preset, *d, *s);
                std::fs::create_dir_all(&to)
                    .with_context(|| format!("creating `{}`", to.display()))?;
                for f in ["metrics.csv", "summary.json"] {
                    std::fs::copy(dir.join(f), to.join(f)).with_context(|| {
                        format!(
                            "copying `{}` into `{}`",
                            dir.join(f).display(),
                            to.display()
                        )
                    })?;
                }
            }
        }
    }
    let runs = all
        .iter()
        .map(|(d, s, _, read)| {
            Ok(RunCurve {
                depth: *d,
                seed: *s,
                rows: parse_metrics(&read.join("metrics.csv"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TaskRuns {
        exp,
        settings,
        runs,
    })
}

fn train_pending(
    task: Task,
    preset: Preset,
    settings: &Settings,
    pending: &[&(usize, u64, PathBuf)],
    root: &Path,
    quiet: bool,
) -> Result<()> {
    let data = RunData::new(task, settings)?;
    let device = crate::nn::device()?;
    let what = format!("{task:?} runs ({preset} preset)").to_lowercase();
    let bar = crate::progress::bar(pending.len() as u64, &what, quiet);
    bar.tick();
    let one = |&&(depth, seed, ref dir): &&(usize, u64, PathBuf)| -> Result<()> {
        if crate::interrupt::requested() {
            return Ok(()); // not started: nothing to save
        }
        let spec = RunSpec {
            task,
            preset,
            settings,
            depth,
            seed,
        };
        let opts = RunOpts {
            dir: dir.clone(),
            stop: &crate::interrupt::requested,
            progress: None,
            device: &device,
        };
        train_run(&spec, &data, &opts).with_context(|| {
            format!("training depth {depth} seed {seed} in `{}`", dir.display())
        })?;
        bar.inc(1);
        Ok(())
    };
    // Runs in parallel on rayon's threads (candle's matmuls then mostly stay on their own
    // thread): bit-identical results, and not slower than one run after another with two
    // threads each when measured on the busy 2-core machine; RAYON_NUM_THREADS=1 is sequential.
    // Every run polls the same Ctrl-C flag, so an interrupt saves all of them before returning.
    let r = if rayon::current_num_threads() > 1 && pending.len() > 1 {
        pending.par_iter().try_for_each(one)
    } else {
        pending.iter().try_for_each(one)
    };
    bar.finish_and_clear();
    let resume = format!(
        "the runs' state is saved under `{}`; rerun the same command to resume",
        root.display()
    );
    match r {
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => Err(e.context(resume)),
        Ok(()) if crate::interrupt::requested() => {
            // Every run in flight finished; the ones not yet started were skipped.
            let e = anyhow::Error::new(Interrupted {
                step: 0,
                checkpoint: None,
            });
            Err(e.context(format!(
                "interrupted before every run was trained; {resume}"
            )))
        }
        r => r,
    }
}
