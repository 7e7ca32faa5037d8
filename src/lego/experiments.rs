//! Running a LEGO experiment file: expand it into runs (models x seeds), train each on the run
//! engine in its own locked, identity-checked run directory (a finished run's `result.json` is
//! reused by every study that asks for the same run), and collect the results the figures of
//! [`crate::lego::figures`] are drawn from.
//!
//! Run directories are `<dir>/<preset>/<label>-seed<S>/` (program runs of the convolution study
//! `<dir>/<preset>/program-<label>-seed<S>/`), each with the engine's checkpoint(s), metrics
//! log(s) and `result.json` (atomic). A run's identity is its [`LegoRun`] (or [`ProgramRun`]),
//! its [`run_key`] (or [`program_key`]), the preset and the seed.

use crate::config::Preset as PresetName;
use crate::lego::config::{Arch, ExperimentKind, Init, LegoExperiment, Preset};
use crate::lego::program_train::{program_key, train_program_run, ProgramResult, ProgramRun};
use crate::lego::train::{run_key, train_run, LegoRun, RunOpts, RunResult, HEAD_SCORE_SENTENCES};
use crate::run::{Identity, RunDir};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// The runs an experiment file asks for at `preset`, in order.
pub fn expand_runs(exp: &LegoExperiment, preset: &Preset, seeds: &[u64]) -> Result<Vec<LegoRun>> {
    let mut runs = Vec::new();
    match exp.experiment.kind {
        ExperimentKind::LengthExtrapolation
        | ExperimentKind::Mimicking
        | ExperimentKind::HeadAnalysis => {
            for r in &exp.runs {
                for &s in seeds {
                    let mut run = LegoRun::new(&r.label, r.arch, r.init, s);
                    run.fixed_local = r.fixed_local;
                    run.fixed_association = r.fixed_association;
                    runs.push(run);
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
            // the LEGO side of the study, when the preset has a task; the plain model is the
            // `bert-random` run the other studies train (same label, so it is reused)
            if preset.task.is_some() {
                let conv = preset.convolution.as_ref().context("no [*.convolution]")?;
                for c in &conv.configs {
                    for &s in seeds {
                        let k = c.qkv_conv();
                        let plain = k == 0 && c.fixed_local + c.fixed_association == 0;
                        let label = if plain { PLAIN_LEGO } else { c.label.as_str() };
                        let mut r = LegoRun::new(label, Arch::Bert, Init::Random, s);
                        r.qkv_conv = k;
                        r.qkv_conv_maps = c.qkv_conv_maps();
                        r.fixed_local = c.fixed_local;
                        r.fixed_association = c.fixed_association;
                        runs.push(r);
                    }
                }
            }
        }
    }
    Ok(runs)
}

/// Label of the plain random-init BERT-like LEGO run shared by the studies.
pub const PLAIN_LEGO: &str = "bert-random";

/// The program runs of a convolution study at `preset` (none for other kinds).
pub fn expand_program_runs(
    exp: &LegoExperiment,
    preset: &Preset,
    seeds: &[u64],
) -> Vec<ProgramRun> {
    let (ExperimentKind::Convolution, Some(conv)) = (exp.experiment.kind, &preset.convolution)
    else {
        return Vec::new();
    };
    conv.configs
        .iter()
        .flat_map(|c| {
            seeds.iter().map(|&s| ProgramRun {
                label: c.label.clone(),
                qkv_conv: c.qkv_conv(),
                qkv_conv_maps: c.qkv_conv_maps(),
                fixed_local: c.fixed_local,
                fixed_association: c.fixed_association,
                seed: s,
            })
        })
        .collect()
}

/// Every finished run of one experiment.
pub struct ExperimentResults {
    pub name: String,
    pub kind: ExperimentKind,
    pub train_vars: usize,
    pub results: Vec<RunResult>,
    /// Program runs (convolution study).
    pub programs: Vec<ProgramResult>,
}

/// How [`run_experiment`] runs.
pub struct ExperimentOpts<'a> {
    /// Seeds to run instead of the preset's.
    pub seeds: Option<&'a [u64]>,
    /// Labels of the runs to train (all when `None`).
    pub only: Option<&'a [String]>,
    /// Root of the run directories (`<dir>/<preset>/<run>/`).
    pub dir: &'a Path,
    /// Root of committed per-run results (`<committed>/<preset>/<run>/result.json`), read when
    /// the run directory has none and written for every run obtained otherwise, so that a fresh
    /// checkout redraws instead of retraining.
    pub committed: Option<&'a Path>,
    /// Polled before every update: true saves and stops with [`crate::run::Interrupted`].
    pub stop: &'a (dyn Fn() -> bool + Sync),
    /// Progress lines (training, reusing, done).
    pub log: &'a mut dyn FnMut(&str),
    /// Progress bars.
    pub verbose: bool,
    pub dev: &'a Device,
}

/// The result in `dir` when it was written by the same run (`same`), else `None`.
fn reuse<R: DeserializeOwned>(dir: &Path, same: impl Fn(&R) -> bool) -> Result<Option<R>> {
    let path = dir.join("result.json");
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading `{}`", path.display()))?;
    let r: R = serde_json::from_str(&text).with_context(|| {
        format!(
            "`{}` is damaged: delete it (the run's checkpoint makes it again)",
            path.display()
        )
    })?;
    Ok(same(&r).then_some(r))
}

/// The result of the run `name` in `out` or else in `committed` (when written by the same run,
/// `same`); a result found only in `out` is copied to `committed`.
fn reuse_or_committed<R: DeserializeOwned + Serialize>(
    out: &Path,
    committed: Option<&Path>,
    name: &str,
    same: impl Fn(&R) -> bool,
) -> Result<Option<(R, std::path::PathBuf)>> {
    if let Some(r) = reuse(&out.join(name), &same)? {
        commit(committed, name, &r, &same)?;
        return Ok(Some((r, out.join(name).join("result.json"))));
    }
    if let Some(c) = committed {
        if let Some(r) = reuse(&c.join(name), &same)? {
            return Ok(Some((r, c.join(name).join("result.json"))));
        }
    }
    Ok(None)
}

/// Writes `r` as the committed result of run `name`, unless that already holds the same run
/// (`same`): a result of another run or config there is stale and is replaced.
fn commit<R: Serialize + DeserializeOwned>(
    committed: Option<&Path>,
    name: &str,
    r: &R,
    same: impl Fn(&R) -> bool,
) -> Result<()> {
    if let Some(c) = committed {
        if !matches!(reuse(&c.join(name), same), Ok(Some(_))) {
            crate::io::write_json(&c.join(name).join("result.json"), r)?;
        }
    }
    Ok(())
}

/// Opens `dir` for the run `(run, key)` under `preset`.
fn open<R: Serialize>(
    dir: &Path,
    run: &R,
    key: &str,
    preset: PresetName,
    seed: u64,
) -> Result<RunDir> {
    RunDir::open(dir, Identity::of(&(run, key), preset.name(), seed)?)
}

/// Trains (or reloads) every run of `exp` at `preset`; stops with
/// [`crate::run::Interrupted`] when `opts.stop` answers true (state saved).
pub fn run_experiment(
    exp: &LegoExperiment,
    preset_name: PresetName,
    opts: ExperimentOpts,
) -> Result<ExperimentResults> {
    let preset = exp.preset(preset_name);
    let seeds = opts.seeds.unwrap_or(&preset.seeds);
    let mut runs = expand_runs(exp, preset, seeds)?;
    let mut program_runs = expand_program_runs(exp, preset, seeds);
    if let Some(only) = opts.only {
        runs.retain(|r| only.contains(&r.label));
        program_runs.retain(|r| only.contains(&r.label));
        if runs.is_empty() && program_runs.is_empty() {
            let mut labels: Vec<String> = expand_runs(exp, preset, seeds)?
                .into_iter()
                .map(|r| r.label)
                .chain(
                    expand_program_runs(exp, preset, seeds)
                        .into_iter()
                        .map(|r| r.label),
                )
                .collect();
            labels.dedup();
            anyhow::bail!(
                "invalid value for `--only`: {only:?} matches no run label of the experiment (its labels: {})",
                labels.join(", ")
            );
        }
    }
    let log = opts.log;
    let out = opts.dir.join(preset_name.name());
    let committed = opts.committed.map(|c| c.join(preset_name.name()));
    let committed = committed.as_deref();
    let mut results = Vec::new();
    for run in &runs {
        let name = format!("{}-seed{}", slug(&run.label), run.seed);
        let dir = out.join(&name);
        let key = run_key(preset, run)?;
        let what = format!("{} seed {}", run.label, run.seed);
        let same = |r: &RunResult| r.run == *run && r.key == key;
        if let Some((r, from)) = reuse_or_committed(&out, committed, &name, same)? {
            log(&format!("{what}: reusing {}", from.display()));
            results.push(r);
            continue;
        }
        log(&format!("{what}: training"));
        let rd = open(&dir, run, &key, preset_name, run.seed)?;
        let ro = RunOpts {
            dir: Some(&rd),
            stop: opts.stop,
            progress: opts.verbose.then(|| what.clone()),
            dev: opts.dev,
        };
        let r = train_run(preset, run, HEAD_SCORE_SENTENCES, &ro)
            .with_context(|| format!("run `{}` seed {}", run.label, run.seed))?;
        crate::io::write_json(&dir.join("result.json"), &r)?;
        commit(committed, &name, &r, same)?;
        log(&format!(
            "{what}: done in {:.0}s, per position {:?}",
            r.seconds,
            r.per_position
                .iter()
                .map(|a| (a * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        ));
        results.push(r);
    }
    let mut programs = Vec::new();
    for run in &program_runs {
        let name = format!("program-{}-seed{}", slug(&run.label), run.seed);
        let dir = out.join(&name);
        let key = program_key(preset)?;
        let what = format!("program {} seed {}", run.label, run.seed);
        let same = |r: &ProgramResult| r.run == *run && r.key == key;
        if let Some((r, from)) = reuse_or_committed(&out, committed, &name, same)? {
            log(&format!("{what}: reusing {}", from.display()));
            programs.push(r);
            continue;
        }
        log(&format!("{what}: training"));
        let rd = open(&dir, run, &key, preset_name, run.seed)?;
        let ro = RunOpts {
            dir: Some(&rd),
            stop: opts.stop,
            progress: opts.verbose.then(|| what.clone()),
            dev: opts.dev,
        };
        let r = train_program_run(preset, run, &ro)
            .with_context(|| format!("program run `{}` seed {}", run.label, run.seed))?;
        crate::io::write_json(&dir.join("result.json"), &r)?;
        commit(committed, &name, &r, same)?;
        log(&format!(
            "{what}: done in {:.0}s, accuracy {:.3} (majority {:.3})",
            r.seconds, r.accuracy, r.majority
        ));
        programs.push(r);
    }
    let train_vars = preset.task.as_ref().map(|t| t.train_vars).unwrap_or(0);
    Ok(ExperimentResults {
        name: exp.experiment.name.clone(),
        kind: exp.experiment.kind,
        train_vars,
        results,
        programs,
    })
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
