//! This paper's claims of the ledger (`experiments/claims/lego.toml`), measured for
//! `attnlab verify`.
//!
//! - **quick**: a handful of small runs (`experiments/lego/verify/quick.toml`: chains of 4, the first
//!   2 supervised) trained on the run engine under `<ctx.runs>/lego/code-<H>/<label>-seed<S>/`
//!   (`H`: the hash of the sources behind them, so a code change retrains), each
//!   once for every claim that needs it, so a second `verify` (or the test) reuses them and
//!   Ctrl-C resumes.
//! - **cpu**: read from the committed figures of the CPU presets (`figures/lego/*.json`), no
//!   training.
//! - **paper**: not runnable on a CPU (BERT-base, 24,000 steps of batch 1000).
//!
//! A claim's measured quantity is computed the same way from both sources, through [`Source`].

use crate::config::load_toml;
use crate::lego::config::{Arch, Init, Preset};
use crate::lego::model::LegoRun;
use crate::lego::task::seq_len;
use crate::lego::train::{run_key, train_run, RunOpts, RunResult, HEAD_SCORE_SENTENCES};
use crate::lego::variants::Variant;
use crate::run::{Identity, RunDir};
use crate::verify::{Claim, Ctx, Measured, Scale};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `experiments/lego/verify/quick.toml`: the sizes of the quick-scale runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuickFile {
    quick: Preset,
}

/// What a claim's measurement reads, whatever the scale.
trait Source {
    /// Chain positions in the loss.
    fn train_vars(&self) -> usize;
    /// Seeds (or the one mean) of the measured values.
    fn seeds(&self) -> Vec<u64>;
    /// Test accuracy per chain position of run `label` at `seed`.
    fn per_position(&self, label: &str, seed: u64) -> Result<Vec<f64>>;
    /// Accuracy per chain position of `label` on test variant `v`.
    fn variant(&self, label: &str, v: Variant, seed: u64) -> Result<Vec<f64>>;
    /// (association, window locality) of every head, layer-major, at `stage`.
    fn heads(&self, label: &str, stage: &str, seed: u64) -> Result<Vec<Vec<(f64, f64)>>>;
    /// Exact forward FLOPs per sentence of `label` and the model's (layers, hidden, heads, T).
    fn flops(&self, label: &str, seed: u64) -> Result<(u64, [u64; 4])>;
    /// Program accuracy of the convolution study's config `label`.
    fn program(&self, label: &str, seed: u64) -> Result<f64>;
    /// Best association and best window locality over the heads of the text-pretrained model
    /// at `stage`, one value per seed.
    fn text_heads(&self, stage: &str) -> Result<[Vec<f64>; 2]>;
}

/// Config labels of the convolution study (`experiments/lego/convolution.toml`).
const PROGRAM_LINEAR: &str = "linear q/k/v";
const PROGRAM_CONV: &str = "conv3 q/k/v";
const PROGRAM_FIXED: &str = "1 local + 1 association";
const PROGRAM_FIXED_CONV: &str = "1 local + 1 association, conv3 q/k/v";

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Mean accuracy over the supervised positions.
fn sup(src: &dyn Source, label: &str, seed: u64) -> Result<f64> {
    let p = src.per_position(label, seed)?;
    Ok(mean(&p[..src.train_vars().min(p.len())]))
}

/// Mean accuracy over the extrapolated (unsupervised) positions.
fn ext(src: &dyn Source, label: &str, seed: u64) -> Result<f64> {
    let p = src.per_position(label, seed)?;
    Ok(mean(&p[src.train_vars().min(p.len())..]))
}

/// Accuracy at the last supervised chain position.
fn deepest(src: &dyn Source, label: &str, seed: u64) -> Result<f64> {
    let p = src.per_position(label, seed)?;
    Ok(p[src.train_vars().min(p.len()).max(1) - 1])
}

/// Per seed, the smaller of (`label`'s accuracy at the deepest supervised position minus
/// [`LEARNED`]) and ([`LEARNED`] minus random init's): at least 0 exactly when `label` learns the
/// position and random init does not; with the note naming both.
fn learns_deepest(
    src: &dyn Source,
    seeds: &[u64],
    label: &str,
    name: &str,
) -> Result<(Vec<f64>, String)> {
    let at = |l: &str| -> Result<Vec<f64>> { seeds.iter().map(|&s| deepest(src, l, s)).collect() };
    let (x, r) = (at(label)?, at(BERT)?);
    let v = x
        .iter()
        .zip(&r)
        .map(|(x, r)| (x - LEARNED).min(LEARNED - r))
        .collect();
    Ok((
        v,
        format!("deepest supervised position: {name} {x:.3?}, random init {r:.3?}"),
    ))
}

/// Supervised accuracy on chain-ordered minus on shuffled test sentences.
fn order_gap(src: &dyn Source, label: &str, seed: u64) -> Result<f64> {
    let tv = src.train_vars();
    let o = src.variant(label, Variant::ChainOrder, seed)?;
    let s = src.variant(label, Variant::Shuffled, seed)?;
    Ok(mean(&o[..tv.min(o.len())]) - mean(&s[..tv.min(s.len())]))
}

/// The labels of the runs each claim compares (quick and cpu runs share them; see
/// [`cpu_label`]).
const BERT: &str = "bert";
const ALBERT: &str = "albert";
const FIXED: &str = "fixed";
const MIMIC: &str = "bert-mimic";
const ORDERED: &str = "bert-ordered";
const ALBERT_ORDERED: &str = "albert-ordered";
/// The all-learned BERT-like baseline of a comparison with fixed heads, and with mimicking: the
/// same quick run ([`BERT`]), but at the CPU scale the run of that comparison's own figure.
const BERT_VS_FIXED: &str = "bert/fixed";
const BERT_VS_MIMIC: &str = "bert/mimic";
/// The extrapolation pair started from the best initialisation of the structured-attention
/// study (one fixed local and one fixed association head per layer); CPU scale only.
const BERT_FIXED: &str = "bert-fixed";
const ALBERT_FIXED: &str = "albert-fixed";
/// Mimicking-initialised BERT of the extrapolation study (depth = chain length; CPU scale only).
const MIMIC_DEEP: &str = "bert-mimic/deep";
/// BERT pretrained by masked-LM on English text, of the extrapolation study (CPU scale only).
const TEXT: &str = "bert-text";
/// Accuracy that counts as having learned a chain position (structured-attention study).
const LEARNED: f64 = 0.9;
/// Supervised accuracy both models need before extrapolation means anything.
const FIT: f64 = 0.95;

/// One claim measured on `src`.
fn claim(name: &str, src: &dyn Source) -> Result<Measured> {
    let seeds = src.seeds();
    let per_seed = |f: &dyn Fn(u64) -> Result<f64>| -> Result<Vec<f64>> {
        seeds.iter().map(|&s| f(s)).collect()
    };
    let (values, note) = match name {
        "classical-generalisation" => {
            let b = per_seed(&|s| sup(src, BERT, s))?;
            let a = per_seed(&|s| sup(src, ALBERT, s))?;
            let v = b.iter().zip(&a).map(|(b, a)| b.min(*a)).collect();
            (
                v,
                format!("supervised accuracy BERT {b:.3?}, ALBERT {a:.3?}"),
            )
        }
        "albert-extrapolates" => {
            // from the best initialisation of the structured-attention study
            let (bl, al, init) = (BERT_FIXED, ALBERT_FIXED, "fixed local + association heads");
            let b = per_seed(&|s| sup(src, bl, s))?;
            let a = per_seed(&|s| sup(src, al, s))?;
            let eb = per_seed(&|s| ext(src, bl, s))?;
            let ea = per_seed(&|s| ext(src, al, s))?;
            let numbers = format!(
                "{init}: supervised accuracy BERT {b:.3?}, ALBERT {a:.3?}; extrapolated BERT {eb:.3?}, ALBERT {ea:.3?}"
            );
            if b.iter().chain(&a).any(|&x| x < FIT) {
                return Ok(Measured::NotShown(format!(
                    "the supervised positions are not learnt (below {FIT}), so there is nothing to extrapolate from: {numbers}"
                )));
            }
            let v = ea.iter().zip(&eb).map(|(a, b)| a - b).collect();
            (v, numbers)
        }
        "structured-attention-helps" | "attention-module-accuracy" => {
            let f = per_seed(&|s| sup(src, FIXED, s))?;
            let b = per_seed(&|s| sup(src, BERT_VS_FIXED, s))?;
            let v = f.iter().zip(&b).map(|(f, b)| f - b).collect();
            (
                v,
                format!("supervised accuracy fixed heads {f:.3?}, all learned {b:.3?}"),
            )
        }
        "association-heads" | "local-heads" => {
            let i = usize::from(name == "local-heads");
            let v = per_seed(&|s| {
                let h = src.heads(BERT, "trained", s)?;
                Ok(h.iter()
                    .flatten()
                    .map(|p| if i == 0 { p.0 } else { p.1 })
                    .fold(0.0, f64::max))
            })?;
            (v, "best head of the trained BERT-like model".into())
        }
        "mimicking-init" => {
            let m = per_seed(&|s| sup(src, MIMIC, s))?;
            let b = per_seed(&|s| sup(src, BERT_VS_MIMIC, s))?;
            let v = m.iter().zip(&b).map(|(m, b)| m - b).collect();
            (
                v,
                format!("supervised accuracy mimicking init {m:.3?}, random {b:.3?}"),
            )
        }
        "structured-attention-deepest-position" => {
            // depth = chain length (the extrapolation study's models): one layer per hop of the
            // deepest supervised position leaves no slack, and there every init stalls
            let f = per_seed(&|s| deepest(src, BERT_FIXED, s))?;
            let m = per_seed(&|s| deepest(src, MIMIC_DEEP, s))?;
            let r = per_seed(&|s| deepest(src, BERT, s))?;
            // >= 0 iff both structured models reach LEARNED and random init stays below it
            let v = (0..seeds.len())
                .map(|i| (f[i].min(m[i]) - LEARNED).min(LEARNED - r[i]))
                .collect();
            (
                v,
                format!(
                    "deepest supervised position: fixed heads {f:.3?}, mimicking init {m:.3?}, random init {r:.3?}"
                ),
            )
        }
        "fixed-heads-deepest-position" => learns_deepest(src, &seeds, BERT_FIXED, "fixed heads")?,
        "mimicking-installs-heads" => {
            let v = per_seed(&|s| {
                let h = src.heads(MIMIC, "mimicked", s)?;
                // head 0 mimics the local map, head 1 the association map (both presets)
                Ok(h.iter()
                    .map(|l| l[0].1.min(l[1].0))
                    .fold(f64::INFINITY, f64::min))
            })?;
            (
                v,
                "worst layer: min(local head's window locality, association head's score)".into(),
            )
        }
        "shortcut-chain-order" => (
            per_seed(&|s| order_gap(src, ORDERED, s))?,
            "trained on chain-ordered clauses".into(),
        ),
        "shortcut-albert-resists" => (
            per_seed(&|s| order_gap(src, ALBERT_ORDERED, s))?,
            "ALBERT-like, trained on chain-ordered clauses".into(),
        ),
        "shortcut-prevented-by-shuffling" => (
            per_seed(&|s| order_gap(src, BERT, s).map(f64::abs))?,
            "trained on shuffled clauses".into(),
        ),
        "attention-module-flops" => {
            let v = per_seed(&|s| {
                let (vanilla, [layers, d, h, t]) = src.flops(BERT_VS_FIXED, s)?;
                let (fixed, _) = src.flops(FIXED, s)?;
                // two fixed heads a layer drop their q/k projections (2 x 2 T d d_h) and QK^T
                // (2 T^2 d_h)
                let dh = d / h;
                let hand = layers * 2 * t * (4 * d * dh + 2 * t * dh);
                Ok(vanilla as f64 - fixed as f64 - hand as f64)
            })?;
            let (f, _) = src.flops(BERT_VS_FIXED, seeds[0])?;
            let (g, _) = src.flops(FIXED, seeds[0])?;
            (
                v,
                format!(
                    "{f} -> {g} FLOPs a sentence ({:.1}% saved)",
                    100.0 * (f - g) as f64 / f as f64
                ),
            )
        }
        "text-pretraining-helps" => learns_deepest(src, &seeds, TEXT, "text-pretrained")?,
        "text-pretraining-supervised" => {
            let t = per_seed(&|s| sup(src, TEXT, s))?;
            let r = per_seed(&|s| sup(src, BERT, s))?;
            let v = t.iter().zip(&r).map(|(t, r)| t - r).collect();
            (
                v,
                format!("supervised accuracy text-pretrained {t:.3?}, random init {r:.3?}"),
            )
        }
        "text-pretraining-association-heads" | "text-pretraining-local-heads" => {
            let k = usize::from(name == "text-pretraining-local-heads");
            let [a, w] = src.text_heads("pretrained")?;
            let [a0, w0] = src.text_heads("init")?;
            let (v, v0) = if k == 0 { (a, a0) } else { (w, w0) };
            (
                v.clone(),
                format!(
                    "best head per seed after text pretraining {v:.3?}, at random init {v0:.3?}"
                ),
            )
        }
        "convolution-programs"
        | "convolution-programs-fixed-heads"
        | "structured-attention-programs" => {
            let (a, b) = match name {
                "convolution-programs" => (PROGRAM_CONV, PROGRAM_LINEAR),
                "convolution-programs-fixed-heads" => (PROGRAM_FIXED_CONV, PROGRAM_FIXED),
                _ => (PROGRAM_FIXED, PROGRAM_LINEAR),
            };
            let x = per_seed(&|s| src.program(a, s))?;
            let y = per_seed(&|s| src.program(b, s))?;
            let v = x.iter().zip(&y).map(|(x, y)| x - y).collect();
            (v, format!("program accuracy `{a}` {x:.3?}, `{b}` {y:.3?}"))
        }
        n => bail!("no measurement for claim `lego/{n}`: add one in src/lego/claims.rs"),
    };
    Ok(Measured::Values { values, note })
}

/// Measures `claims` at `ctx.scale`, one result per claim.
pub fn measure(claims: &[&Claim], ctx: &Ctx) -> Result<Vec<Result<Measured>>> {
    let src: Box<dyn Source> = match ctx.scale {
        Scale::Quick => Box::new(Quick::train(claims, ctx)?),
        Scale::Cpu => Box::new(Figures::read(ctx)?),
        Scale::Paper => {
            return Ok(claims
                .iter()
                .map(|_| {
                    Ok(Measured::NotShown(
                        "the paper scale (BERT-base, 24,000 steps of batch 1000) needs GPUs".into(),
                    ))
                })
                .collect())
        }
    };
    Ok(claims
        .iter()
        .map(|c| {
            let name = c.id.strip_prefix("lego/").unwrap_or(&c.id);
            claim(name, src.as_ref())
        })
        .collect())
}

/// The runs a claim needs at the quick scale.
fn needs(name: &str) -> &'static [&'static str] {
    match name {
        "classical-generalisation" => &[BERT, ALBERT],
        "albert-extrapolates" => &[BERT_FIXED, ALBERT_FIXED],
        "structured-attention-helps" | "attention-module-accuracy" | "attention-module-flops" => {
            &[BERT, FIXED]
        }
        "association-heads" | "local-heads" | "shortcut-prevented-by-shuffling" => &[BERT],
        "mimicking-init" => &[BERT, MIMIC],
        "mimicking-installs-heads" => &[MIMIC],
        "shortcut-chain-order" => &[ORDERED],
        "shortcut-albert-resists" => &[ALBERT_ORDERED],
        _ => &[],
    }
}

/// The quick-scale run of `label` at `seed`.
fn quick_run(label: &str, seed: u64) -> LegoRun {
    let tests = vec![Variant::Shuffled, Variant::ChainOrder];
    let mut r = LegoRun::new(label, Arch::Bert, Init::Random, seed);
    match label {
        ALBERT => r.arch = Arch::Albert,
        BERT_FIXED | ALBERT_FIXED => {
            if label == ALBERT_FIXED {
                r.arch = Arch::Albert;
            }
            r.fixed_local = 1;
            r.fixed_association = 1;
        }
        FIXED => {
            r.fixed_local = 1;
            r.fixed_association = 1;
        }
        MIMIC => r.init = Init::Mimic,
        ORDERED | ALBERT_ORDERED => {
            if label == ALBERT_ORDERED {
                r.arch = Arch::Albert;
            }
            r.train_mix = vec![(Variant::ChainOrder, 1.0)];
            r.test_variants = tests;
        }
        _ => r.test_variants = tests,
    }
    r
}

/// Finished quick-scale runs.
struct Quick {
    preset: Preset,
    runs: BTreeMap<(String, u64), RunResult>,
}

impl Quick {
    /// Trains (or reloads) every run `claims` need, once each, for every seed.
    fn train(claims: &[&Claim], ctx: &Ctx) -> Result<Self> {
        let path = ctx
            .experiments
            .join("lego")
            .join("verify")
            .join("quick.toml");
        let preset = load_toml::<QuickFile>(&path)?.quick;
        preset
            .task
            .as_ref()
            .with_context(|| format!("`{}`: add [quick.task] (the LEGO data)", path.display()))?;
        let mut labels: Vec<&str> = Vec::new();
        for c in claims {
            for l in needs(c.id.strip_prefix("lego/").unwrap_or(&c.id)) {
                if !labels.contains(l) {
                    labels.push(l);
                }
            }
        }
        let dev = crate::nn::device()?;
        let mut runs = BTreeMap::new();
        for &seed in &preset.seeds {
            for &label in &labels {
                let run = quick_run(label, seed);
                let r = train_quick(&preset, &run, ctx, &dev)?;
                runs.insert((label.to_string(), seed), r);
            }
        }
        Ok(Self { preset, runs })
    }

    fn get(&self, label: &str, seed: u64) -> Result<&RunResult> {
        let label = label.split('/').next().unwrap_or(label);
        self.runs
            .get(&(label.to_string(), seed))
            .with_context(|| format!("quick run `{label}` seed {seed} was not trained"))
    }
}

/// Trains one quick run in `<ctx.runs>/lego/code-<H>/<label>-seed<S>/`, or reloads its result.
/// `H` is the hash of the sources behind the LEGO models: a kernel change that only moves
/// rounding can flip a quick claim (paper_notes 2.12), so runs of other code are never reused.
fn train_quick(
    preset: &Preset,
    run: &LegoRun,
    ctx: &Ctx,
    dev: &candle_core::Device,
) -> Result<RunResult> {
    let code = crate::figures::source_hash("lego");
    let dir = ctx
        .runs
        .join("lego")
        .join(format!("code-{}", &code[..code.len().min(12)]))
        .join(format!("{}-seed{}", run.label, run.seed));
    let key = run_key(preset, run)?;
    let done = dir.join("result.json");
    if done.exists() {
        let text = std::fs::read_to_string(&done)
            .with_context(|| format!("reading `{}`", done.display()))?;
        if let Ok(r) = serde_json::from_str::<RunResult>(&text) {
            if r.run == *run && r.key == key {
                return Ok(r);
            }
        }
    }
    let what = format!("lego {} seed {}", run.label, run.seed);
    let rd = RunDir::open(&dir, Identity::of(&(run, &key), "quick", run.seed)?)?;
    let ro = RunOpts {
        dir: Some(&rd),
        stop: &crate::interrupt::requested,
        progress: (!ctx.quiet).then_some(what.clone()),
        dev,
    };
    let r = train_run(preset, run, HEAD_SCORE_SENTENCES, &ro).with_context(|| what)?;
    crate::io::write_json(&done, &r)?;
    Ok(r)
}

impl Source for Quick {
    fn train_vars(&self) -> usize {
        self.preset.task.as_ref().map_or(0, |t| t.train_vars)
    }
    fn seeds(&self) -> Vec<u64> {
        self.preset.seeds.clone()
    }
    fn per_position(&self, label: &str, seed: u64) -> Result<Vec<f64>> {
        Ok(self.get(label, seed)?.per_position.clone())
    }
    fn variant(&self, label: &str, v: Variant, seed: u64) -> Result<Vec<f64>> {
        let r = self.get(label, seed)?;
        r.variant_accuracy
            .iter()
            .find(|(w, _)| *w == v)
            .map(|(_, a)| a.clone())
            .with_context(|| format!("quick run `{label}` was not tested on `{v:?}`"))
    }
    fn heads(&self, label: &str, stage: &str, seed: u64) -> Result<Vec<Vec<(f64, f64)>>> {
        let r = self.get(label, seed)?;
        let s = r
            .head_scores
            .iter()
            .find(|s| s.stage == stage)
            .with_context(|| format!("quick run `{label}` has no `{stage}` head scores"))?;
        Ok(s.scores
            .iter()
            .map(|l| {
                l.iter()
                    .map(|h| {
                        (
                            h.association.unwrap_or(f64::NAN),
                            h.window_locality.unwrap_or(f64::NAN),
                        )
                    })
                    .collect()
            })
            .collect())
    }
    fn flops(&self, label: &str, seed: u64) -> Result<(u64, [u64; 4])> {
        let r = self.get(label, seed)?;
        let m = &self.preset.model;
        let n = self.preset.task.as_ref().map_or(0, |t| t.n_var);
        let shape = [m.layers, m.hidden, m.heads, seq_len(n)].map(|x| x as u64);
        Ok((r.forward_flops, shape))
    }
    fn program(&self, _label: &str, _seed: u64) -> Result<f64> {
        bail!("the program runs are not part of the quick scale")
    }
    fn text_heads(&self, _stage: &str) -> Result<[Vec<f64>; 2]> {
        bail!("text pretraining is not part of the quick scale")
    }
}

/// The CPU-preset results behind the committed figures (`figures/lego/*.json`).
struct Figures {
    figs: BTreeMap<&'static str, (std::path::PathBuf, Value)>,
    train_vars: usize,
    /// (layers, hidden, heads, n_var) of the CPU preset.
    model: [u64; 4],
}

/// Figure and series holding each label's CPU-scale run.
fn cpu_label(label: &str) -> Result<(&'static str, &'static str)> {
    Ok(match label {
        BERT => ("per_position", "bert-random"),
        BERT_VS_FIXED => ("attention_flops", "bert-random"),
        BERT_VS_MIMIC => ("mimicking", "bert-random"),
        ALBERT => ("per_position", "albert-random"),
        BERT_FIXED => ("per_position", "bert-fixed"),
        MIMIC_DEEP => ("per_position", "bert-mimic"),
        TEXT => ("per_position", "bert-text"),
        ALBERT_FIXED => ("per_position", "albert-fixed"),
        FIXED => ("attention_flops", "1 local + 1 association"),
        MIMIC => ("mimicking", "bert-mimic"),
        ORDERED => ("shortcuts", "bert-ordered"),
        ALBERT_ORDERED => ("shortcuts", "albert-ordered"),
        "bert-shuffled" => ("shortcuts", "bert-shuffled"),
        l => bail!("no CPU-scale run for `{l}`"),
    })
}

impl Figures {
    fn read(ctx: &Ctx) -> Result<Self> {
        let mut figs = BTreeMap::new();
        for name in [
            "per_position",
            "attention_flops",
            "mimicking",
            "shortcuts",
            "head_scores",
            "convolution",
            "text_pretraining",
        ] {
            let p = ctx.figures.join("lego").join(format!("{name}.json"));
            let text = std::fs::read_to_string(&p).with_context(|| {
                format!(
                    "reading `{}`: draw it with `attnlab figures --only lego/{name}`",
                    p.display()
                )
            })?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("`{}` is not JSON", p.display()))?;
            figs.insert(name, (p, v));
        }
        let exp =
            crate::lego::config::load(&ctx.experiments.join("lego").join("lego_attention.toml"))?;
        let task = exp
            .cpu
            .task
            .as_ref()
            .context("lego_attention.toml: no [cpu.task]")?;
        let m = &exp.cpu.model;
        Ok(Self {
            figs,
            train_vars: task.train_vars,
            model: [m.layers, m.hidden, m.heads, task.n_var].map(|x| x as u64),
        })
    }

    /// The number (or array) at `path` under the figure's `summary`.
    fn at(&self, fig: &str, path: &[&str]) -> Result<&Value> {
        let (p, v) = self.figs.get(fig).context("figure not read")?;
        let mut cur = v.get("summary");
        for k in path {
            cur = cur.and_then(|c| c.get(*k));
        }
        cur.with_context(|| {
            format!(
                "`{}` has no `summary.{}`: redraw it with `attnlab figures --only lego/{fig}`",
                p.display(),
                path.join(".")
            )
        })
    }

    fn num(&self, fig: &str, path: &[&str]) -> Result<f64> {
        self.at(fig, path)?
            .as_f64()
            .with_context(|| format!("`summary.{}` of lego/{fig} is not a number", path.join(".")))
    }

    fn nums(&self, fig: &str, path: &[&str]) -> Result<Vec<f64>> {
        self.at(fig, path)?
            .as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            .with_context(|| {
                format!(
                    "`summary.{}` of lego/{fig} is not a list of numbers",
                    path.join(".")
                )
            })
    }
}

impl Source for Figures {
    fn train_vars(&self) -> usize {
        self.train_vars
    }
    fn seeds(&self) -> Vec<u64> {
        // the figures hold means over their seeds: one value
        vec![0]
    }
    fn per_position(&self, label: &str, _seed: u64) -> Result<Vec<f64>> {
        let (fig, series) = cpu_label(label)?;
        if fig == "attention_flops" {
            // only the means survive in this figure's summary: as many positions as it
            // averages, so `sup` gives the supervised mean and `ext` the extrapolated one
            let s = self.num(fig, &[series, "acc_supervised"])?;
            let e = self.num(fig, &[series, "acc_extrapolated"])?;
            let mut v = vec![s; self.train_vars];
            v.extend(vec![e; self.model[3] as usize - self.train_vars]);
            return Ok(v);
        }
        self.nums(fig, &["runs", series, "per_position_mean"])
    }
    fn variant(&self, label: &str, v: Variant, _seed: u64) -> Result<Vec<f64>> {
        // the shortcut study supervises every position and keeps the mean over them
        let label = if label == BERT {
            "bert-shuffled"
        } else {
            label
        };
        let (fig, series) = cpu_label(label)?;
        let name = serde_json::to_value(v)?;
        let name = name.as_str().context("variant name")?;
        let x = self.num(fig, &[series, name])?;
        Ok(vec![x; self.model[3] as usize])
    }
    fn heads(&self, label: &str, stage: &str, _seed: u64) -> Result<Vec<Vec<(f64, f64)>>> {
        let series = match label {
            BERT => "bert-random",
            MIMIC => "bert-mimic",
            l => bail!("no CPU-scale head scores for `{l}`"),
        };
        let key = format!("{series} {stage}");
        let a = self.nums("head_scores", &[&key, "association"])?;
        let w = self.nums("head_scores", &[&key, "window_locality"])?;
        let h = self.model[2] as usize;
        Ok(a.chunks(h)
            .zip(w.chunks(h))
            .map(|(a, w)| a.iter().copied().zip(w.iter().copied()).collect())
            .collect())
    }
    fn flops(&self, label: &str, _seed: u64) -> Result<(u64, [u64; 4])> {
        let series = cpu_label(label)?.1;
        let f = self.num("attention_flops", &[series, "forward_flops_per_sentence"])?;
        let [l, d, h, n] = self.model;
        Ok((f as u64, [l, d, h, seq_len(n as usize) as u64]))
    }
    fn program(&self, label: &str, _seed: u64) -> Result<f64> {
        self.num("convolution", &[&format!("program {label}"), "accuracy"])
    }
    fn text_heads(&self, stage: &str) -> Result<[Vec<f64>; 2]> {
        Ok([
            self.nums("text_pretraining", &[TEXT, stage, "best_association"])?,
            self.nums("text_pretraining", &[TEXT, stage, "best_window_locality"])?,
        ])
    }
}
