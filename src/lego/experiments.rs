//! Running a LEGO experiment file: expand it into runs (models x seeds), train each with
//! checkpointing (a finished run's `result.json` is reused), and compute the figure tables.
//!
//! Results go to `<out_dir>/<label>-seed<S>/result.json` (atomic); figure data to
//! `figures/lego/<experiment>_*.csv` (see [`crate::lego::figures`]).

use crate::lego::config::{Arch, ExperimentKind, Init, LegoExperiment, Preset};
use crate::lego::figures::{self, Table};
use crate::lego::train::{train_run, Checkpointing, LegoRun, RunResult};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The runs an experiment file asks for at `preset`, in order.
pub fn expand_runs(exp: &LegoExperiment, preset: &Preset, seeds: &[u64]) -> Result<Vec<LegoRun>> {
    let mut runs = Vec::new();
    match exp.experiment.kind {
        ExperimentKind::LengthExtrapolation
        | ExperimentKind::Mimicking
        | ExperimentKind::HeadAnalysis => {
            for r in &exp.runs {
                for &s in seeds {
                    runs.push(LegoRun::new(&r.label, r.arch, r.init, s));
                }
            }
        }
        ExperimentKind::LegoAttention => {
            let la = preset
                .lego_attention
                .as_ref()
                .context("no [*.lego_attention]")?;
            let base = exp
                .runs
                .first()
                .context("lego_attention needs one [[runs]]")?;
            for c in &la.configs {
                for &s in seeds {
                    let mut r = LegoRun::new(&c.label, base.arch, base.init, s);
                    r.fixed_local = c.local_heads;
                    r.fixed_association = c.association_heads;
                    runs.push(r);
                }
            }
        }
        ExperimentKind::Shortcuts => {
            let sc = exp.shortcuts.as_ref().context("no [shortcuts]")?;
            for g in &sc.regimes {
                for &s in seeds {
                    let mut r = LegoRun::new(&g.label, g.arch, Init::Random, s);
                    r.train_mix = g
                        .variants
                        .iter()
                        .copied()
                        .zip(g.weights.iter().copied())
                        .collect();
                    r.test_variants = sc.test_variants.clone();
                    runs.push(r);
                }
            }
        }
        ExperimentKind::Convolution => {
            bail!("the convolution study (program task) is not implemented yet")
        }
    }
    Ok(runs)
}

/// Every finished run of one experiment.
pub struct ExperimentResults {
    pub name: String,
    pub kind: ExperimentKind,
    pub train_vars: usize,
    pub results: Vec<RunResult>,
}

/// Trains (or reloads) every run; `None` when stopped by `stop` (state saved).
pub fn run_experiment(
    exp: &LegoExperiment,
    preset_name: &str,
    seeds: Option<&[u64]>,
    only: Option<&[String]>,
    root: &Path,
    stop: &(dyn Fn() -> bool + Sync),
    log: &mut dyn FnMut(&str),
) -> Result<Option<ExperimentResults>> {
    let preset = exp.preset(preset_name)?;
    let seeds = seeds.unwrap_or(&preset.seeds);
    let mut runs = expand_runs(exp, preset, seeds)?;
    if let Some(only) = only {
        runs.retain(|r| only.contains(&r.label));
        if runs.is_empty() {
            bail!("`--runs` {only:?} matches no run label of the experiment");
        }
    }
    let head_sentences = exp
        .head_analysis
        .as_ref()
        .map(|h| h.n_sentences)
        .unwrap_or(100);
    let out = root.join(&exp.experiment.out_dir).join(preset_name);
    let mut results = Vec::new();
    for run in &runs {
        let dir = out.join(format!("{}-seed{}", slug(&run.label), run.seed));
        let result_path = dir.join("result.json");
        if result_path.exists() {
            let text = std::fs::read_to_string(&result_path)?;
            let r: RunResult = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is damaged: delete it", result_path.display()))?;
            if r.run == *run && r.key == crate::lego::train::run_key(preset, run)? {
                log(&format!(
                    "{} seed {}: reusing {}",
                    run.label,
                    run.seed,
                    result_path.display()
                ));
                results.push(r);
                continue;
            }
        }
        log(&format!("{} seed {}: training", run.label, run.seed));
        let ck = Checkpointing {
            dir: dir.clone(),
            stop,
        };
        let label = run.label.clone();
        let mut on_epoch = |p: &crate::lego::train::CurvePoint| {
            eprintln!(
                "  {label} epoch {:>3} loss {:.4} acc sup {:.3} extra {:.3}",
                p.epoch, p.train_loss, p.acc_supervised, p.acc_extrapolated
            );
        };
        match train_run(preset, run, head_sentences, Some(&ck), &mut on_epoch)? {
            None => return Ok(None),
            Some(r) => {
                crate::io::write_json(&result_path, &r)?;
                log(&format!(
                    "{} seed {}: done in {:.0}s, per position {:?}",
                    run.label,
                    run.seed,
                    r.seconds,
                    r.per_position
                        .iter()
                        .map(|a| (a * 1000.0).round() / 1000.0)
                        .collect::<Vec<_>>()
                ));
                results.push(r);
            }
        }
    }
    let train_vars = preset.task.as_ref().map(|t| t.train_vars).unwrap_or(0);
    Ok(Some(ExperimentResults {
        name: exp.experiment.name.clone(),
        kind: exp.experiment.kind,
        train_vars,
        results,
    }))
}

/// The figure tables of an experiment's results.
pub fn tables(r: &ExperimentResults) -> Result<Vec<Table>> {
    let mut t = vec![
        figures::per_position(r)?,
        figures::curves(r)?,
        figures::run_index(r)?,
    ];
    if r.results.iter().any(|x| !x.head_scores.is_empty()) {
        t.push(figures::head_scores(r)?);
    }
    if r.results.iter().any(|x| !x.mimic_losses.is_empty()) {
        t.push(figures::mimic_curve(r)?);
    }
    match r.kind {
        ExperimentKind::LegoAttention => t.push(figures::accuracy_vs_flops(r)?),
        ExperimentKind::Shortcuts => t.push(figures::shortcut_robustness(r)?),
        _ => {}
    }
    Ok(t)
}

/// Writes the tables as `<dir>/<experiment>_<table>.csv`; returns the paths.
pub fn write_tables(r: &ExperimentResults, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for t in tables(r)? {
        let p = dir.join(format!("{}_{}.csv", r.name, t.name));
        let header: Vec<&str> = t.header.iter().map(|s| s.as_str()).collect();
        crate::io::write_csv(&p, &header, &t.rows)?;
        paths.push(p);
    }
    paths.extend(figures::render(r, dir)?);
    Ok(paths)
}

/// `"1 local + 1 association"` -> `"1-local-1-association"`.
pub fn slug(label: &str) -> String {
    let mut s = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}

/// Architecture name for tables.
pub fn arch_code(a: Arch) -> f64 {
    match a {
        Arch::Bert => 0.0,
        Arch::Albert => 1.0,
    }
}
