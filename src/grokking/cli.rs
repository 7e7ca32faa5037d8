//! `attnlab grokking ...`: train an experiment's runs, compare tree projections on their
//! checkpoints, print samples of the Dyck / QF / TI splits, check the experiment configs.
//!
//! `train` and `project` take `--config`, `--preset tiny|cpu|paper`, repeatable `--set
//! key.path=value`, `--steps` (`--set train.steps=N`), `--depth`, `--seed` and `--out` (the root
//! of the run directories). An interrupted `train` saves and exits 130; the same command resumes.
//!
//! `attnlab grokking sample --task dyck|qf|ti --split train|val|gen --count K --seed S --json`
//! prints the first `K` examples of the split, one JSON object per line. The whole split is
//! drawn deterministically from the seed on every call (no cache): the paper-sized Dyck split
//! (200k / 20k / 20k) takes about a second in release mode, QF / TI (100k / 1k / 10k) less.

use super::config::{GrokkingExperiment, Settings, Task, MAX_DEPTH};
use super::dyck::{self, DyckConfig, SplitCriterion};
use super::experiments::{run_dir, train_run};
use super::grammar::{self, GrammarExample, GrammarTask};
use super::measure::projection_check;
use super::task::RunData;
use super::train::{load_run_model, RunOpts, RunSpec};
use super::SplitSizes;
use crate::config::Preset;
use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GrokkingArgs {
    #[command(subcommand)]
    pub cmd: GrokkingCmd,
}

#[derive(Subcommand, Debug)]
pub enum GrokkingCmd {
    /// Print examples of a task's split (deterministic in --seed).
    Sample(SampleArgs),
    /// Train the depth sweep (or one depth / seed) of an experiment, writing a metrics CSV per run.
    Train(TrainArgs),
    /// Greedy vs optimal tree projection on trained runs' checkpoints (the step each was written at).
    Project(ProjectArgs),
    /// Parse and validate experiment configs (default: every file in experiments/grokking/).
    CheckConfigs {
        /// Files to check.
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    Dyck,
    Qf,
    Ti,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    Gen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// The paper: the whole open/close pattern must be unseen.
    WholeString,
    /// The official code: some top-level segment must be unseen.
    Segments,
}

#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    #[arg(long, value_enum)]
    pub task: TaskArg,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Number of examples to print (the first K of the split).
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    /// Seed the split is drawn from.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per line instead of plain text.
    #[arg(long)]
    pub json: bool,
    /// Training-set size (default: the paper's, 200k Dyck, 100k QF/TI).
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Validation-set size (default: 20k Dyck, 1k QF/TI).
    #[arg(long)]
    pub val_size: Option<usize>,
    /// Generalisation-set size (default: 20k Dyck, 10k QF/TI).
    #[arg(long)]
    pub gen_size: Option<usize>,
    /// Dyck bracket types k.
    #[arg(long, default_value_t = 20)]
    pub bracket_types: usize,
    /// Dyck maximum depth m.
    #[arg(long, default_value_t = 10)]
    pub max_depth: usize,
    /// Dyck: resample strings longer than this many tokens (default: no limit).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Dyck split criterion.
    #[arg(long, value_enum, default_value = "whole-string")]
    pub criterion: CriterionArg,
}

pub fn run(a: GrokkingArgs) -> Result<()> {
    match a.cmd {
        GrokkingCmd::Sample(s) => sample(&s),
        GrokkingCmd::CheckConfigs { files } => check_configs(files),
        GrokkingCmd::Train(t) => train(&t),
        GrokkingCmd::Project(p) => project(&p),
    }
}

/// Which runs of an experiment: the config (with overrides), preset, depth and seed, and the
/// root of the run directories.
#[derive(clap::Args, Debug)]
pub struct RunSelection {
    /// Experiment file (experiments/grokking/<task>.toml).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Preset::Cpu)]
    pub preset: Preset,
    /// Override one value of the preset (`key.path=value`, e.g. `optim.lr=3e-4`,
    /// `train.steps=500`), validated like the file; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Training steps: shorthand for `--set train.steps=N`.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Run only this depth (default: every depth of the preset).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Run only this seed (default: seeds 0..preset.seeds).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory: the root of the run directories (<out>/<task, or the file's `runs`>/<preset>/depth<L>_seed<S>/).
    #[arg(long, default_value = "runs/grokking")]
    pub out: PathBuf,
}

/// A loaded selection: the task, the preset and its settings, and the (depth, seed) pairs in order.
struct Selected {
    task: Task,
    /// The experiment's folder of runs.
    folder: String,
    preset: Preset,
    settings: Settings,
    runs: Vec<(usize, u64)>,
}

impl Selected {
    fn spec(&self, depth: usize, seed: u64) -> RunSpec<'_> {
        RunSpec {
            task: self.task,
            preset: self.preset,
            settings: &self.settings,
            depth,
            seed,
        }
    }
}

impl RunSelection {
    fn load(&self) -> Result<Selected> {
        let mut sets = self.set.clone();
        if let Some(s) = self.steps {
            sets.push(format!("train.steps={s}"));
        }
        let exp = GrokkingExperiment::load_with(&self.config, self.preset, &sets)?;
        let settings = exp
            .preset(self.preset)
            .with_context(|| format!("in config file `{}`", self.config.display()))?
            .clone();
        if let Some(d) = self.depth {
            if !(1..=MAX_DEPTH).contains(&d) {
                bail!("invalid value for `--depth`: must be in 1..={MAX_DEPTH}, got {d}");
            }
        }
        let depths = self
            .depth
            .map_or_else(|| settings.depths.clone(), |d| vec![d]);
        let seeds: Vec<u64> = self
            .seed
            .map_or_else(|| (0..settings.seeds as u64).collect(), |s| vec![s]);
        let runs = depths
            .iter()
            .flat_map(|&d| seeds.iter().map(move |&s| (d, s)))
            .collect();
        Ok(Selected {
            task: exp.task,
            folder: exp.runs_folder(),
            preset: self.preset,
            settings,
            runs,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub runs: RunSelection,
    /// Print one JSON summary per run instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub runs: RunSelection,
    /// Training sentences (two or more words, every length) to project.
    #[arg(long, default_value_t = 200)]
    pub sentences: usize,
}

fn project(a: &ProjectArgs) -> Result<()> {
    if a.sentences == 0 {
        bail!("invalid value for `--sentences`: must be at least 1");
    }
    let sel = a.runs.load()?;
    let data = RunData::new(sel.task, &sel.settings)?;
    let device = crate::nn::device()?;
    for &(depth, seed) in &sel.runs {
        let dir = run_dir(&a.runs.out, &sel.folder, sel.preset, depth, seed);
        let (model, step) = load_run_model(&sel.spec(depth, seed), &data, &dir, &device)?;
        let c = projection_check(&model, &data, a.sentences, &device)?;
        let mut v = serde_json::to_value(&c)?;
        v["depth"] = json!(depth);
        v["seed"] = json!(seed);
        v["step"] = json!(step);
        println!("{v}");
    }
    Ok(())
}

fn train(a: &TrainArgs) -> Result<()> {
    let sel = a.runs.load()?;
    let data = RunData::new(sel.task, &sel.settings)?;
    let device = crate::nn::device()?;
    for &(depth, seed) in &sel.runs {
        let dir = run_dir(&a.runs.out, &sel.folder, sel.preset, depth, seed);
        let t0 = std::time::Instant::now();
        let opts = RunOpts {
            dir: dir.clone(),
            stop: &crate::interrupt::requested,
            progress: (!a.json).then(|| format!("depth {depth} seed {seed}")),
            device: &device,
        };
        let r = train_run(&sel.spec(depth, seed), &data, &opts)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            let last = r.curve.last();
            println!(
                "depth {depth} seed {seed}: done in {:.0}s; in-domain {:.3}, gen {:.3}, early stop at {:?} (gen {:.3}), grokked {}; {}",
                t0.elapsed().as_secs_f64(),
                last.map_or(f64::NAN, |l| l.in_domain_acc),
                last.map_or(f64::NAN, |l| l.gen_acc),
                r.early_stop_step,
                r.gen_at_early_stop.unwrap_or(f64::NAN),
                r.grokked,
                dir.join("metrics.csv").display()
            );
        }
    }
    Ok(())
}

fn check_configs(mut files: Vec<PathBuf>) -> Result<()> {
    if files.is_empty() {
        let dir = PathBuf::from("experiments/grokking");
        if !dir.is_dir() {
            bail!("no files given and `{}` is not a directory: run from the repository root or pass files", dir.display());
        }
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "toml") {
                files.push(p);
            }
        }
        files.sort();
    }
    for f in &files {
        let e = GrokkingExperiment::load(f)?;
        println!("{}: ok (task {:?})", f.display(), e.task);
    }
    Ok(())
}

/// The split sizes from the size flags (defaulting to `paper`), checked against `--count`.
fn sizes_from_flags(a: &SampleArgs, paper: SplitSizes) -> Result<SplitSizes> {
    let sizes = SplitSizes {
        train: a.train_size.unwrap_or(paper.train),
        val: a.val_size.unwrap_or(paper.val),
        gen: a.gen_size.unwrap_or(paper.gen),
    };
    sizes.validate(["--train-size", "--val-size", "--gen-size"])?;
    let len = match a.split {
        SplitArg::Train => sizes.train,
        SplitArg::Val => sizes.val,
        SplitArg::Gen => sizes.gen,
    };
    if a.count > len {
        bail!(
            "--count {} exceeds the size of the {:?} split ({len}); lower --count or raise the split's size flag",
            a.count,
            a.split
        );
    }
    Ok(sizes)
}

fn sample(a: &SampleArgs) -> Result<()> {
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    match a.task {
        TaskArg::Dyck => {
            let sizes = sizes_from_flags(a, SplitSizes::DYCK_PAPER)?;
            let cfg = DyckConfig {
                bracket_types: a.bracket_types,
                max_depth: a.max_depth,
                max_len: a.max_len,
                ..DyckConfig::default()
            };
            if let Err(e) = cfg.validate() {
                bail!("--bracket-types / --max-depth / --max-len: {e}");
            }
            let criterion = match a.criterion {
                CriterionArg::WholeString => SplitCriterion::WholeString,
                CriterionArg::Segments => SplitCriterion::Segments,
            };
            let split = dyck::structure_split(&cfg, sizes, criterion, a.seed)?;
            let set = match a.split {
                SplitArg::Train => &split.train,
                SplitArg::Val => &split.val,
                SplitArg::Gen => &split.gen,
            };
            let k = cfg.bracket_types;
            for (i, s) in set.iter().take(a.count).enumerate() {
                let names: Vec<String> = s.iter().map(|&t| dyck::token_name(t, k)).collect();
                if a.json {
                    let pattern: String = dyck::structure(s, k)
                        .iter()
                        .map(|&o| if o { '1' } else { '0' })
                        .collect();
                    let line = json!({"index": i, "tokens": names, "ids": s, "structure": pattern});
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", names.join(" "))?;
                }
            }
        }
        TaskArg::Qf | TaskArg::Ti => {
            let task = if a.task == TaskArg::Qf {
                GrammarTask::Qf
            } else {
                GrammarTask::Ti
            };
            let sizes = sizes_from_flags(a, SplitSizes::GRAMMAR_PAPER)?;
            let split = grammar::grammar_split(task, sizes, a.seed)?;
            let set = match a.split {
                SplitArg::Train => &split.train,
                SplitArg::Val => &split.val,
                SplitArg::Gen => &split.gen,
            };
            for (i, e) in set.iter().take(a.count).enumerate() {
                if a.json {
                    writeln!(out, "{}", example_json(i, e))?;
                } else {
                    writeln!(
                        out,
                        "{}    {}",
                        e.tokens().join(" "),
                        e.tree.render(&e.input)
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn example_json(i: usize, e: &GrammarExample) -> serde_json::Value {
    json!({
        "index": i,
        "tokens": e.tokens(),
        "input": e.input,
        "marker": e.marker,
        "output": e.output,
        "tree": e.tree,
        "brackets": e.tree.brackets(),
        "main_index": e.main_index,
        "ambiguous": e.is_ambiguous(),
    })
}
