//! Running a LEGO experiment file: expand it into runs (models x seeds), train each with
//! checkpointing (a finished run's `result.json` is reused by every study that asks for the
//! same run), and collect the results the figures of [`crate::lego::figures`] are drawn from.
//!
//! Results go to `<dir>/<preset>/<label>-seed<S>/result.json` (atomic), program runs of the
//! convolution study to `<dir>/<preset>/program-<label>-seed<S>/result.json`.

use crate::lego::config::{Arch, ExperimentKind, Init, LegoExperiment, Preset};
use crate::lego::program_train::{program_key, train_program_run, ProgramResult, ProgramRun};
use crate::lego::train::{train_run, Checkpointing, LegoRun, RunResult};
use anyhow::{Context, Result};
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
            // the LEGO side of the study, when the preset has a task; the plain model is the
            // `bert-random` run the other studies train (same label, so it is reused)
            if preset.task.is_some() {
                let conv = preset.convolution.as_ref().context("no [*.convolution]")?;
                for c in &conv.configs {
                    for &s in seeds {
                        let k = c.qkv_conv();
                        let label = if k == 0 { PLAIN_LEGO } else { c.label.as_str() };
                        let mut r = LegoRun::new(label, Arch::Bert, Init::Random, s);
                        r.qkv_conv = k;
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

/// Trains (or reloads) every run, with run directories under `dir/<preset>/`; `None` when
/// stopped by `stop` (state saved).
#[allow(clippy::too_many_arguments)]
pub fn run_experiment(
    exp: &LegoExperiment,
    preset_name: &str,
    seeds: Option<&[u64]>,
    only: Option<&[String]>,
    dir: &Path,
    stop: &(dyn Fn() -> bool + Sync),
    log: &mut dyn FnMut(&str),
    verbose: bool,
) -> Result<Option<ExperimentResults>> {
    let preset = exp.preset(preset_name)?;
    let seeds = seeds.unwrap_or(&preset.seeds);
    let mut runs = expand_runs(exp, preset, seeds)?;
    let mut program_runs = expand_program_runs(exp, preset, seeds);
    if let Some(only) = only {
        runs.retain(|r| only.contains(&r.label));
        program_runs.retain(|r| only.contains(&r.label));
        if runs.is_empty() && program_runs.is_empty() {
            anyhow::bail!("`--runs` {only:?} matches no run label of the experiment");
        }
    }
    let head_sentences = exp
        .head_analysis
        .as_ref()
        .map(|h| h.n_sentences)
        .unwrap_or(100);
    let out = dir.join(preset_name);
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
            if verbose {
                eprintln!(
                    "  {label} epoch {:>3} loss {:.4} acc sup {:.3} extra {:.3}",
                    p.epoch, p.train_loss, p.acc_supervised, p.acc_extrapolated
                );
            }
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
    let mut programs = Vec::new();
    for run in &program_runs {
        let rdir = out.join(format!("program-{}-seed{}", slug(&run.label), run.seed));
        let result_path = rdir.join("result.json");
        if result_path.exists() {
            let text = std::fs::read_to_string(&result_path)?;
            let r: ProgramResult = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is damaged: delete it", result_path.display()))?;
            if r.run == *run && r.key == program_key(preset)? {
                log(&format!(
                    "program {} seed {}: reusing {}",
                    run.label,
                    run.seed,
                    result_path.display()
                ));
                programs.push(r);
                continue;
            }
        }
        log(&format!(
            "program {} seed {}: training",
            run.label, run.seed
        ));
        let ck = Checkpointing { dir: rdir, stop };
        let label = run.label.clone();
        let mut on_epoch = |p: &crate::lego::program_train::ProgramCurvePoint| {
            if verbose {
                eprintln!(
                    "  program {label} epoch {:>3} loss {:.4} acc {:.3}",
                    p.epoch, p.train_loss, p.accuracy
                );
            }
        };
        match train_program_run(preset, run, Some(&ck), &mut on_epoch)? {
            None => return Ok(None),
            Some(r) => {
                crate::io::write_json(&result_path, &r)?;
                log(&format!(
                    "program {} seed {}: done in {:.0}s, accuracy {:.3} (majority {:.3})",
                    run.label, run.seed, r.seconds, r.accuracy, r.majority
                ));
                programs.push(r);
            }
        }
    }
    let train_vars = preset.task.as_ref().map(|t| t.train_vars).unwrap_or(0);
    Ok(Some(ExperimentResults {
        name: exp.experiment.name.clone(),
        kind: exp.experiment.kind,
        train_vars,
        results,
        programs,
    }))
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
