//! This paper's claims of the ledger (`experiments/claims/grokking.toml`), measured for
//! `attnlab verify`.
//!
//! - `cpu`: read from the committed per-run curves of the CPU presets
//!   (`<figures>/grokking/runs/<task>/cpu/depth<L>_seed<S>/metrics.csv`, read by column name) and
//!   the tree-projection check of their final checkpoints (`<figures>/grokking/projection_check.jsonl`);
//!   nothing is retrained.
//! - `quick`: trains the short runs of `experiments/grokking/verify/quick.toml` through the run
//!   engine under `<runs>/grokking/` (a second call reuses them).
//! - `paper`: not runnable here (300k-step runs at d_model 512, 10 seeds per depth).
//!
//! A claim is measured by the part of its id after `grokking/`; one that names no measurement
//! here is an error ("not run").

use super::config::{GrokkingExperiment, Task};
use super::experiments::{ensure_runs_with, parse_metrics, run_dir, GrokOnset, RunCurve, TaskRuns};
use crate::config::Preset;
use crate::run::Interrupted;
use crate::verify::{Claim, Ctx, Measured, Scale};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The task files under `<experiments>/grokking/`.
fn config_file(task: Task) -> &'static str {
    match task {
        Task::Dyck => "dyck.toml",
        Task::Qf => "question_formation.toml",
        Task::Ti => "tense_inflection.toml",
    }
}

fn task_name(task: Task) -> String {
    format!("{task:?}").to_lowercase()
}

/// The quick scale's runs: `experiments/grokking/verify/quick.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickFile {
    #[allow(dead_code)]
    description: String,
    #[serde(rename = "run")]
    runs: Vec<QuickRuns>,
}

/// One task file's `[cpu]` preset with `--set` overrides (depths, seeds, steps, ...).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickRuns {
    /// A task file under `experiments/grokking/`.
    config: String,
    #[serde(default)]
    set: Vec<String>,
}

/// The projection check of one run's final checkpoint (a line of `projection_check.jsonl`).
/// Only the consistency check reads it: the tscore claims read the curves.
#[derive(Deserialize)]
struct Projection {
    left_anchored_sci: f64,
}

/// What the claims of one scale are measured on.
struct Evidence {
    /// The runs of each task available at this scale.
    tasks: BTreeMap<String, TaskRuns>,
    /// The runs of each variant of [`STUDIES`] (cpu only).
    studies: BTreeMap<String, TaskRuns>,
    /// Where the runs were read from or trained, for the notes.
    source: String,
    /// The projection check of the final checkpoints (cpu only).
    projections: Option<Vec<Projection>>,
}

/// Measures `claims` at `ctx.scale`, one result per claim.
pub fn measure(claims: &[&Claim], ctx: &Ctx) -> Result<Vec<Result<Measured>>> {
    let evidence = match ctx.scale {
        Scale::Cpu => committed(ctx),
        Scale::Quick => match quick(ctx) {
            Err(e) if e.downcast_ref::<Interrupted>().is_some() => return Err(e),
            r => r,
        },
        Scale::Paper => {
            return Ok(claims
                .iter()
                .map(|_| {
                    Ok(Measured::NotShown(
                        "the paper's runs (d_model 512, 300k-400k steps, 10 seeds per depth at \
                         depths 2-10) do not fit on 2 CPU cores"
                            .into(),
                    ))
                })
                .collect())
        }
    };
    Ok(claims
        .iter()
        .map(|c| match &evidence {
            Ok(ev) => measure_one(c, ev),
            Err(e) => Err(anyhow!("{e:#}")),
        })
        .collect())
}

/// Variants of a task's CPU preset whose runs are committed beside the tasks' (their own
/// claims only, keyed by their `runs` folder; the claims over every run read the three tasks
/// alone).
const STUDIES: [&str; 2] = ["question_formation_100k.toml", "tense_inflection_64k.toml"];

/// The committed CPU-preset runs of the experiment file `path`.
fn committed_runs_of(ctx: &Ctx, path: &Path) -> Result<TaskRuns> {
    let root = ctx.figures.join("grokking").join("runs");
    let exp = GrokkingExperiment::load(path)?;
    let settings = exp.cpu.clone();
    let folder = exp.runs_folder();
    let mut runs = Vec::new();
    for &depth in &settings.depths {
        for seed in 0..settings.seeds as u64 {
            let csv = run_dir(&root, &folder, Preset::Cpu, depth, seed).join("metrics.csv");
            let rows = parse_metrics(&csv).with_context(|| {
                format!(
                    "the committed CPU run of `{}` is missing: run `attnlab figures --only \
                     grokking/{folder}_accuracy` to train it",
                    path.display(),
                )
            })?;
            runs.push(RunCurve { depth, seed, rows });
        }
    }
    Ok(TaskRuns {
        exp,
        settings,
        runs,
    })
}

/// The committed CPU-preset runs and projection check.
fn committed(ctx: &Ctx) -> Result<Evidence> {
    let root = ctx.figures.join("grokking").join("runs");
    let dir = ctx.experiments.join("grokking");
    let mut tasks = BTreeMap::new();
    for task in [Task::Dyck, Task::Qf, Task::Ti] {
        let runs = committed_runs_of(ctx, &dir.join(config_file(task)))?;
        tasks.insert(task_name(task), runs);
    }
    let mut studies = BTreeMap::new();
    for file in STUDIES {
        let runs = committed_runs_of(ctx, &dir.join(file))?;
        studies.insert(runs.exp.runs_folder(), runs);
    }
    let jsonl = ctx.figures.join("grokking").join("projection_check.jsonl");
    let text = std::fs::read_to_string(&jsonl)
        .with_context(|| format!("reading the projection check `{}`", jsonl.display()))?;
    let projections = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Projection>(l)
                .with_context(|| format!("a line of `{}`: {l}", jsonl.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Evidence {
        tasks,
        studies,
        source: format!("committed runs under `{}`", root.display()),
        projections: Some(projections),
    })
}

/// Trains (or reuses) the quick scale's runs.
fn quick(ctx: &Ctx) -> Result<Evidence> {
    let dir = ctx.experiments.join("grokking");
    let file: QuickFile = crate::config::load_toml(&dir.join("verify/quick.toml"))?;
    let mut tasks = BTreeMap::new();
    let root = ctx.runs.join("grokking");
    for r in &file.runs {
        let path = dir.join(&r.config);
        let exp = GrokkingExperiment::load_with(&path, Preset::Cpu, &r.set).with_context(|| {
            format!(
                "in `run.set` of `{}`",
                dir.join("verify/quick.toml").display()
            )
        })?;
        let settings = exp.cpu.clone();
        let name = task_name(exp.task);
        let runs = ensure_runs_with(exp, settings, Preset::Cpu, &root, ctx.quiet)?;
        tasks.insert(name, runs);
    }
    Ok(Evidence {
        tasks,
        studies: BTreeMap::new(),
        source: format!("runs under `{}`", root.display()),
        projections: None,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl Evidence {
    fn task(&self, name: &str) -> Result<&TaskRuns> {
        self.tasks
            .get(name)
            .or_else(|| self.studies.get(name))
            .with_context(|| format!("no `{name}` runs at this scale"))
    }

    fn runs(&self) -> impl Iterator<Item = (&String, &RunCurve)> {
        self.tasks
            .iter()
            .flat_map(|(t, tr)| tr.runs.iter().map(move |r| (t, r)))
    }

    /// The task's runs at `depths`; an error when a depth has none.
    fn at(&self, task: &str, depths: &[usize]) -> Result<Vec<&RunCurve>> {
        let tr = self.task(task)?;
        let mut out = Vec::new();
        for &d in depths {
            let rs = tr.at_depth(d);
            if rs.is_empty() {
                bail!("no `{task}` runs at depth {d} at this scale");
            }
            out.extend(rs);
        }
        Ok(out)
    }

    fn grok_fraction(&self, task: &str, depth: usize) -> Result<f64> {
        self.at(task, &[depth])?;
        Ok(self.task(task)?.grok_fraction(depth))
    }

    fn note_runs(&self, what: &str, rs: &[(String, &RunCurve)]) -> String {
        let list: Vec<String> = rs
            .iter()
            .map(|(t, r)| format!("{t} d{} s{}", r.depth, r.seed))
            .collect();
        format!("{what}; {}: {}", self.source, list.join(", "))
    }
}

fn first(r: &RunCurve) -> Result<&super::experiments::EvalRow> {
    r.rows.first().context("a run with no evaluation")
}

fn last(r: &RunCurve) -> Result<&super::experiments::EvalRow> {
    r.rows.last().context("a run with no evaluation")
}

fn values(values: Vec<f64>, note: String) -> Result<Measured> {
    Ok(Measured::Values { values, note })
}

/// Measures one claim by the part of its id after `grokking/`.
fn measure_one(c: &Claim, ev: &Evidence) -> Result<Measured> {
    let name = c.id.strip_prefix("grokking/").unwrap_or(&c.id);
    let (task, rest) = name.split_once('-').unwrap_or(("", name));
    match (task, rest) {
        ("dyck" | "qf" | "ti", "structural-grokking") => structural(ev, task, &[4, 6]),
        ("ti_steps64k", "structural-grokking") => structural(ev, task, &[4]),
        ("qf", "saturates-before-generalising") => gen_at_saturation(ev, task, 6),
        ("qf", "early-stopping-underestimates") => early_stop_gap(ev, task, 6),
        ("ti" | "ti_steps64k", "early-stopping-underestimates") => early_stop_gap(ev, task, 4),
        ("qf" | "qf_train100k", "inverted-u-shallow-side") => fraction_gap(ev, task, 6, &[2]),
        ("qf" | "qf_train100k", "inverted-u-peak-at-6") => fraction_gap(ev, task, 6, &[4]),
        ("qf" | "qf_train100k", "inverted-u-deep-side") => deep_side_gap(ev, task, 6, &[8, 10]),
        ("qf" | "qf_train100k", "tscore-paper-depth-above-shallow") => tscore_gap(ev, task, 6, 2),
        ("ti", "tscore-paper-depth-above-shallow") => tscore_gap(ev, task, 4, 2),
        ("qf" | "qf_train100k", "groks-over-seeds") => final_fraction(ev, task, 6),
        ("ti" | "ti_steps64k", "groks-over-seeds") => final_fraction(ev, task, 4),
        ("qf" | "ti", "groks-over-seeds-at-best-depth") => {
            final_fraction(ev, task, ev.task(task)?.best_depth())
        }
        ("ti", "inverted-u-shallow-side") => fraction_gap(ev, task, 4, &[2]),
        ("ti", "inverted-u-peak-at-4") => fraction_gap(ev, task, 4, &[6]),
        ("ti", "inverted-u-deep-never-groks") => {
            let f = vec![ev.grok_fraction(task, 8)?, ev.grok_fraction(task, 10)?];
            values(
                f,
                "fraction of TI seeds reaching 0.8 at depths 8, 10".into(),
            )
        }
        _ => match name {
            "weight-norm-grows" => growth(ev, "weight norm / layers, end / start - 1", |r| {
                Ok(last(r)?.weight_norm / first(r)?.weight_norm - 1.0)
            }),
            "sparsity-grows" => growth(ev, "attention sparsity, end - start (nats)", |r| {
                Ok(last(r)?.sparsity - first(r)?.sparsity)
            }),
            "tscore-rises" => tscore_growth(ev),
            "weight-norm-does-not-predict" => {
                shallow_vs_best(ev, "weight norm / layers", |r| Ok(last(r)?.weight_norm))
            }
            "sparsity-does-not-predict" => {
                shallow_vs_best(ev, "attention sparsity", |r| Ok(last(r)?.sparsity))
            }
            "tparseval-beats-right-branching" => with_trees(
                ev,
                "tparseval - right-branching tparseval, mean over the evaluations after step 0",
                |r| {
                    let d: Vec<f64> = r.rows[1..]
                        .iter()
                        .map(|e| e.tparseval - e.tparseval_right_branching)
                        .collect();
                    if d.is_empty() {
                        bail!("a run with no evaluation after step 0");
                    }
                    Ok(mean(&d))
                },
            ),
            "tparseval-approaches-gold" => {
                with_trees(ev, "final tparseval against gold trees", |r| {
                    Ok(last(r)?.tparseval)
                })
            }
            "tscore-highest-at-best-depth" => tscore_at_best_depth(ev),
            "causal-prefix-sci-is-one" => {
                let p = projections(ev)?;
                values(
                    p.iter().map(|p| p.left_anchored_sci).collect(),
                    format!("{} final checkpoints, 200 sentences each", p.len()),
                )
            }
            _ => bail!(
                "no measurement for claim `{}`: add one to src/grokking/claims.rs or fix the id in \
                 experiments/claims/grokking.toml",
                c.id
            ),
        },
    }
}

/// 1 per run at `depths` that groks structurally (`GrokOnset::is_structural`), else 0.
fn structural(ev: &Evidence, task: &str, depths: &[usize]) -> Result<Measured> {
    let thr = ev.task(task)?.settings.eval.grok_threshold;
    let rs = ev.at(task, depths)?;
    let v: Vec<f64> = rs
        .iter()
        .map(|r| {
            let s = GrokOnset::of(&r.rows, thr).is_some_and(|o| o.is_structural());
            if s {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let named: Vec<(String, &RunCurve)> = rs.iter().map(|r| (task.to_string(), *r)).collect();
    values(
        v,
        ev.note_runs("1 = structural grokking, per run at depths 4 and 6", &named),
    )
}

/// Generalisation at the first evaluation with in-domain accuracy >= 0.95 (1 when never).
fn gen_at_saturation(ev: &Evidence, task: &str, depth: usize) -> Result<Measured> {
    let thr = ev.task(task)?.settings.eval.grok_threshold;
    let rs = ev.at(task, &[depth])?;
    let v = rs
        .iter()
        .map(|r| GrokOnset::of(&r.rows, thr).map_or(1.0, |o| o.gen_at_saturation))
        .collect();
    values(
        v,
        format!("gen at in-domain saturation, depth {depth}, per seed"),
    )
}

/// Final generalisation minus generalisation at the early stop, per seed at `depth`.
fn early_stop_gap(ev: &Evidence, task: &str, depth: usize) -> Result<Measured> {
    let rs = ev.at(task, &[depth])?;
    let mut v = Vec::new();
    let mut parts = Vec::new();
    for r in rs {
        let es = r.early_stop().context("a run with no evaluation")?;
        let end = last(r)?;
        v.push(end.gen_acc - es.gen_acc);
        parts.push(format!("{:.2} -> {:.2}", es.gen_acc, end.gen_acc));
    }
    values(
        v,
        format!(
            "depth {depth}, gen at early stop -> at the end: {}",
            parts.join(", ")
        ),
    )
}

/// Grok fraction at `best` minus the largest at `others`.
fn fraction_gap(ev: &Evidence, task: &str, best: usize, others: &[usize]) -> Result<Measured> {
    let fb = ev.grok_fraction(task, best)?;
    let mut fo = Vec::new();
    for &d in others {
        fo.push(ev.grok_fraction(task, d)?);
    }
    let max = fo.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tr = ev.task(task)?;
    let all: Vec<String> = tr.depths().iter().map(|&d| fraction_note(tr, d)).collect();
    values(
        vec![fb - max],
        format!(
            "seeds reaching 0.8 at some evaluation (the measure) and at the end: {}",
            all.join("; ")
        ),
    )
}

/// Grok fraction at `best` minus the largest at the deeper depths of `deeper` the runs have
/// (at least one; the CPU presets may stop at 8 where the paper goes to 10).
fn deep_side_gap(ev: &Evidence, task: &str, best: usize, deeper: &[usize]) -> Result<Measured> {
    let have = ev.task(task)?.depths();
    let present: Vec<usize> = deeper
        .iter()
        .copied()
        .filter(|d| have.contains(d))
        .collect();
    if present.is_empty() {
        bail!("no `{task}` runs at depths {deeper:?} at this scale");
    }
    let mut m = fraction_gap(ev, task, best, &present)?;
    if let Measured::Values { note, .. } = &mut m {
        *note = format!("depths compared: {best} vs {present:?}; {note}");
    }
    Ok(m)
}

/// Fractions of seeds at `depth` by both criteria, as a note: "final x/n, ever y/n".
fn fraction_note(tr: &TaskRuns, depth: usize) -> String {
    let n = tr.at_depth(depth).len();
    format!(
        "d{depth}: final {:.0}/{n}, ever {:.0}/{n}",
        tr.final_grok_fraction(depth) * n as f64,
        tr.grok_fraction(depth) * n as f64
    )
}

/// Per seed at `depth`: 1 when the final generalisation accuracy reaches the threshold, else 0
/// (stricter than the paper's count of seeds that reach it at some checkpoint); the note gives
/// both criteria at every depth.
fn final_fraction(ev: &Evidence, task: &str, depth: usize) -> Result<Measured> {
    let tr = ev.task(task)?;
    let thr = tr.settings.eval.grok_threshold;
    let rs = ev.at(task, &[depth])?;
    let v = rs
        .iter()
        .map(|r| {
            let fin = last(r)?.gen_acc;
            Ok(if fin >= thr { 1.0 } else { 0.0 })
        })
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<String> = tr.depths().iter().map(|&d| fraction_note(tr, d)).collect();
    values(
        v,
        format!(
            "1 = final generalisation >= {thr}, per seed at depth {depth}; {}",
            all.join("; ")
        ),
    )
}

/// Runs that recorded the paper's tscore (finite at their first and last evaluation).
fn with_paper_tscore<'a>(rs: impl IntoIterator<Item = &'a RunCurve>) -> Vec<&'a RunCurve> {
    rs.into_iter()
        .filter(|r| {
            r.rows.first().is_some_and(|e| e.tscore.is_finite())
                && r.rows.last().is_some_and(|e| e.tscore.is_finite())
        })
        .collect()
}

/// Per run that recorded the paper's tscore: final minus step-0 tscore.
fn tscore_growth(ev: &Evidence) -> Result<Measured> {
    let mut v = Vec::new();
    let mut named = Vec::new();
    for (t, r) in ev.runs() {
        if with_paper_tscore([r]).is_empty() {
            continue;
        }
        v.push(last(r)?.tscore - first(r)?.tscore);
        named.push((t.clone(), r));
    }
    if v.is_empty() {
        bail!("no run at this scale recorded the paper's tscore (runs written before it was)");
    }
    values(
        v,
        ev.note_runs(
            "the paper's tscore (best - mean split per node, 1,000 sentences), end - start",
            &named,
        ),
    )
}

/// Mean final paper tscore over the seeds at `best` minus at `shallow`; both depths must have
/// every seed with the tscore recorded.
fn tscore_gap(ev: &Evidence, task: &str, best: usize, shallow: usize) -> Result<Measured> {
    let mut means = Vec::new();
    let mut parts = Vec::new();
    for d in [best, shallow] {
        let rs = ev.at(task, &[d])?;
        let ok = with_paper_tscore(rs.iter().copied());
        if ok.len() != rs.len() {
            bail!(
                "{} of the {} `{task}` runs at depth {d} predate the paper's tscore: retrain them",
                rs.len() - ok.len(),
                rs.len()
            );
        }
        let xs = ok
            .iter()
            .map(|r| Ok(last(r)?.tscore))
            .collect::<Result<Vec<_>>>()?;
        let m = mean(&xs);
        parts.push(format!(
            "d{d} {m:.3} ({})",
            xs.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        means.push(m);
    }
    values(
        vec![means[0] - means[1]],
        format!(
            "final paper tscore, mean over seeds: {}",
            parts.join(" vs ")
        ),
    )
}

/// One value per run of every task: `f(run)`.
fn growth(ev: &Evidence, what: &str, f: impl Fn(&RunCurve) -> Result<f64>) -> Result<Measured> {
    let mut v = Vec::new();
    let mut named = Vec::new();
    for (t, r) in ev.runs() {
        v.push(f(r)?);
        named.push((t.clone(), r));
    }
    values(v, ev.note_runs(what, &named))
}

/// One value per QF/TI run (the tasks with gold trees): `f(run)`.
fn with_trees(ev: &Evidence, what: &str, f: impl Fn(&RunCurve) -> Result<f64>) -> Result<Measured> {
    let mut v = Vec::new();
    let mut named = Vec::new();
    for (t, r) in ev.runs().filter(|(t, _)| *t != "dyck") {
        v.push(f(r)?);
        named.push((t.clone(), r));
    }
    if v.is_empty() {
        bail!("no QF or TI runs at this scale");
    }
    values(v, ev.note_runs(what, &named))
}

/// The depth that generalises best among the deeper-than-shallowest ones: highest grok fraction,
/// then highest mean final generalisation.
fn best_deeper_depth(tr: &TaskRuns) -> Result<(usize, usize)> {
    let depths = tr.depths();
    let shallow = *depths.first().context("no runs")?;
    let mut best: Option<(usize, f64, f64)> = None;
    for &d in &depths[1..] {
        let (f, g) = (tr.grok_fraction(d), tr.mean_final_gen(d));
        if best.is_none_or(|(_, bf, bg)| f > bf || (f == bf && g > bg)) {
            best = Some((d, f, g));
        }
    }
    let best = best.context("only one depth: nothing to compare")?.0;
    Ok((shallow, best))
}

/// Per task: the mean final `f` at the shallowest depth minus at the best-generalising depth.
fn shallow_vs_best(
    ev: &Evidence,
    what: &str,
    f: impl Fn(&RunCurve) -> Result<f64>,
) -> Result<Measured> {
    let mut v = Vec::new();
    let mut parts = Vec::new();
    for (t, tr) in &ev.tasks {
        let (shallow, best) = best_deeper_depth(tr)?;
        let at = |d: usize| -> Result<f64> {
            let xs = tr
                .at_depth(d)
                .iter()
                .map(|r| f(r))
                .collect::<Result<Vec<_>>>()?;
            Ok(mean(&xs))
        };
        let (a, b) = (at(shallow)?, at(best)?);
        v.push(a - b);
        parts.push(format!("{t}: d{shallow} {a:.2} vs d{best} {b:.2}"));
    }
    values(
        v,
        format!(
            "final {what}, shallowest vs best-generalising depth: {}",
            parts.join("; ")
        ),
    )
}

fn projections(ev: &Evidence) -> Result<&[Projection]> {
    ev.projections
        .as_deref()
        .context("the projection check of final checkpoints exists only at the cpu scale")
}

/// The tasks the paper projects to trees (its tree-structuredness analysis covers question
/// formation and tense inflection; Dyck is reported beside them, not measured).
const TREE_TASKS: [&str; 2] = ["qf", "ti"];

/// Per task of [`TREE_TASKS`] whose runs recorded the paper's tscore at the best-generalising
/// depth and at least one other depth (every seed of each): the mean final tscore at the best
/// depth minus the largest at the other recorded depths. Tasks whose runs predate the tscore are
/// named in the note, and so is the same difference on the other tasks.
fn tscore_at_best_depth(ev: &Evidence) -> Result<Measured> {
    let mut v = Vec::new();
    let mut parts = Vec::new();
    let mut beside = Vec::new();
    let mut skipped = Vec::new();
    for (t, tr) in &ev.tasks {
        let best = tr.best_depth();
        let at = |d: usize| -> Option<f64> {
            let rs = tr.at_depth(d);
            let ok = with_paper_tscore(rs.iter().copied());
            if rs.is_empty() || ok.len() != rs.len() {
                return None;
            }
            let xs: Vec<f64> = ok
                .iter()
                .filter_map(|r| r.rows.last().map(|e| e.tscore))
                .collect();
            Some(mean(&xs))
        };
        let others: Vec<(usize, f64)> = tr
            .depths()
            .into_iter()
            .filter(|&d| d != best)
            .filter_map(|d| at(d).map(|x| (d, x)))
            .collect();
        let Some(b) = at(best).filter(|_| !others.is_empty()) else {
            skipped.push(t.clone());
            continue;
        };
        let max = others.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
        let o: Vec<String> = others.iter().map(|(d, x)| format!("d{d} {x:.3}")).collect();
        let line = format!("{t}: best d{best} {b:.3} vs {}", o.join(", "));
        if TREE_TASKS.contains(&t.as_str()) {
            v.push(b - max);
            parts.push(line);
        } else {
            beside.push(format!("{line} ({:+.3})", b - max));
        }
    }
    if v.is_empty() {
        bail!("no task has the paper's tscore recorded at its best depth and another depth");
    }
    if !beside.is_empty() {
        parts.push(format!("beside, not a paper claim: {}", beside.join("; ")));
    }
    if !skipped.is_empty() {
        parts.push(format!(
            "not measurable (runs predate the paper's tscore): {}",
            skipped.join(", ")
        ));
    }
    values(v, parts.join("; "))
}
