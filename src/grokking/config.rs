//! Experiment configs of the structural-grokking replication (`experiments/grokking/*.toml`):
//! one file per task, `[cpu]`, `[paper]` and (optionally) `[tiny]` presets side by side, each
//! holding the depth sweep, the data sizes, the model, the optimiser (the shared
//! [`crate::train::OptimConfig`], schedule included), the training length and the evaluation
//! schedule.
//!
//! Unknown keys are errors (`deny_unknown_fields`), and [`GrokkingExperiment::validate`] checks
//! ranges and refuses non-finite numbers, naming the field.

use super::dyck::{DyckConfig, ShortStrings, SplitCriterion};
use super::SplitSizes;
use crate::config::{load_toml_with, parse_toml, require, require_finite, Preset};
use crate::nn::{NormPlacement, Positions};
use crate::train::{OptimConfig, ScheduleKind};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which task the experiment trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Dyck,
    Qf,
    Ti,
}

/// Largest model width, FFN width, depth and batch a config may ask for: far above the paper's
/// (512, 2048, 10, 8), low enough that a typo fails here instead of in the allocator.
pub const MAX_WIDTH: usize = 16_384;
pub const MAX_DEPTH: usize = 256;
pub const MAX_BATCH: usize = 65_536;

/// One experiment file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrokkingExperiment {
    /// What the study shows and which figure it feeds.
    pub description: String,
    pub task: Task,
    /// The folder of its runs under an output root (default: the task's name), so that a
    /// variant of a task's presets (another data size) keeps its runs apart from the task's.
    #[serde(default)]
    pub runs: Option<String>,
    /// A small run for this machine's CPU.
    pub cpu: Settings,
    /// The paper's settings.
    pub paper: Settings,
    /// Seconds on a CPU, for tests and smoke runs (optional).
    #[serde(default)]
    pub tiny: Option<Settings>,
}

/// A full set of settings: one preset of an experiment file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// True while the settings are a guess not yet checked by a run.
    #[serde(default)]
    pub provisional: bool,
    /// Where the settings come from, and deviations.
    #[serde(default)]
    pub note: String,
    /// Numbers of layers to sweep.
    pub depths: Vec<usize>,
    /// Training seeds per depth.
    pub seeds: usize,
    pub data: DataConfig,
    pub model: ModelConfig,
    /// AdamW (or another [`crate::train::OptimKind`]) with its schedule under `[optim.schedule]`.
    pub optim: OptimConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

/// Data sizes and the seed the split is drawn from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub train: usize,
    pub val: usize,
    pub gen: usize,
    pub seed: u64,
    /// Dyck-(k, m) parameters (Dyck experiments only).
    #[serde(default)]
    pub dyck: Option<DyckDataConfig>,
}

/// Dyck-(k, m) parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DyckDataConfig {
    pub bracket_types: usize,
    pub max_depth: usize,
    pub min_len: usize,
    pub short_strings: ShortStrings,
    pub split: SplitCriterion,
    /// Resample strings longer than this (absent: no limit, as the paper).
    #[serde(default)]
    pub max_len: Option<usize>,
}

impl DyckDataConfig {
    /// The sampler's parameters.
    pub fn sampler(&self) -> DyckConfig {
        DyckConfig {
            bracket_types: self.bracket_types,
            max_depth: self.max_depth,
            min_len: self.min_len,
            short_strings: self.short_strings,
            max_len: self.max_len,
        }
    }
}

/// The decoder-only transformer LM (depth comes from `depths`; vocabulary and length from the
/// data). Mapped onto [`crate::nn::TransformerConfig`] by [`super::model::model_config`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    pub dropout: f64,
    pub norm: NormPlacement,
    pub positions: Positions,
    pub tied_embeddings: bool,
    /// Token-embedding initialisation std (absent: the toolkit's 0.02). The official code keeps
    /// PyTorch's `nn.Embedding` default, N(0, 1).
    #[serde(default)]
    pub embedding_init_std: Option<f64>,
    /// Multiply token embeddings by sqrt(d_model) before adding positions (the official code's
    /// `scale_mode = "opennmt"`).
    #[serde(default)]
    pub embedding_scale_sqrt_d: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch: usize,
    pub steps: usize,
}

/// What is measured, how often, on how many examples.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Steps between evaluations.
    pub every: usize,
    /// Training examples for attention sparsity.
    pub train_examples: usize,
    /// Training sentences (two or more words, every length) whose tree projections (tscore,
    /// tparseval) are computed at each evaluation; absent: [`DEFAULT_TREE_SENTENCES`].
    #[serde(default = "default_tree_sentences")]
    pub tree_sentences: usize,
    /// Generalisation accuracy above which a seed counts as grokked.
    pub grok_threshold: f64,
    /// Dyck: minimum opening-to-closing distance of a scored closing bracket.
    #[serde(default)]
    pub min_dist: Option<usize>,
}

/// Tree-projection sentences per evaluation when a preset does not say (the paper: 10k).
pub const DEFAULT_TREE_SENTENCES: usize = 1000;

fn default_tree_sentences() -> usize {
    DEFAULT_TREE_SENTENCES
}

impl GrokkingExperiment {
    /// Reads and validates an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Preset::Cpu, &[])
    }

    /// Reads an experiment file, applies `--set key.path=value` overrides to `preset` (see
    /// [`crate::config::apply_overrides`]) and validates every preset.
    pub fn load_with(path: &Path, preset: Preset, sets: &[String]) -> Result<Self> {
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read config file `{}`", path.display()))?;
            let doc: toml::Table = parse_toml(&text)
                .with_context(|| format!("in config file `{}`", path.display()))?;
            old_optim_layout(&doc)
                .with_context(|| format!("in config file `{}`", path.display()))?;
            // An override of a preset the file lacks would create a partial table; say so first.
            if !sets.is_empty() && !doc.contains_key(preset.name()) {
                anyhow::bail!(
                    "in config file `{}`: {}",
                    path.display(),
                    missing_preset(preset)
                );
            }
        }
        let e: GrokkingExperiment = load_toml_with(path, preset, sets)?;
        e.validate()
            .with_context(|| format!("in config file `{}`", path.display()))?;
        Ok(e)
    }

    /// The folder of its runs: `runs`, or the task's name.
    pub fn runs_folder(&self) -> String {
        self.runs
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.task).to_lowercase())
    }

    /// Range checks of every preset present.
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = &self.runs {
            let ok = !r.is_empty()
                && r.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                anyhow::bail!(
                    "invalid value for `runs`: {r:?} must be a folder name of lowercase letters, \
                     digits and `_` (or leave it out to use the task's name)"
                );
            }
        }
        self.cpu.validate(self.task).context("in [cpu]")?;
        self.paper.validate(self.task).context("in [paper]")?;
        if let Some(t) = &self.tiny {
            t.validate(self.task).context("in [tiny]")?;
        }
        Ok(())
    }

    /// The settings of `preset`; an error naming it when the file lacks it.
    pub fn preset(&self, preset: Preset) -> Result<&Settings> {
        match preset {
            Preset::Cpu => Ok(&self.cpu),
            Preset::Paper => Ok(&self.paper),
            Preset::Tiny => self
                .tiny
                .as_ref()
                .with_context(|| missing_preset(Preset::Tiny)),
        }
    }
}

/// Files written before the optimiser became [`OptimConfig`] kept the schedule in `[optim]`
/// (`schedule = "constant"`, `warmup_steps`, `decay_steps`): name the new layout instead of
/// leaving serde's "unknown field".
fn old_optim_layout(doc: &toml::Table) -> Result<()> {
    for (name, t) in doc {
        let Some(o) = t.get("optim").and_then(|o| o.as_table()) else {
            continue;
        };
        if o.get("schedule").is_some_and(|s| s.is_str())
            || o.contains_key("warmup_steps")
            || o.contains_key("decay_steps")
        {
            anyhow::bail!(
                "[{name}.optim] has the old schedule keys: move them into [{name}.optim.schedule] as \
                 `kind = \"constant\"` or `kind = \"linear\"`, `warmup_steps`, and `total_steps` (was \
                 `decay_steps`), as in experiments/grokking/dyck.toml"
            );
        }
    }
    Ok(())
}

fn missing_preset(p: Preset) -> String {
    format!(
        "the experiment file has no [{p}] preset: add a [{p}] table (as in \
         experiments/grokking/dyck.toml) or choose another --preset"
    )
}

impl Settings {
    fn validate(&self, task: Task) -> Result<()> {
        require(
            !self.depths.is_empty() && self.depths.iter().all(|&d| (1..=MAX_DEPTH).contains(&d)),
            "depths",
            format!("give at least one depth, each in 1..={MAX_DEPTH}"),
        )?;
        require(self.seeds >= 1, "seeds", "must be >= 1")?;
        let d = &self.data;
        SplitSizes {
            train: d.train,
            val: d.val,
            gen: d.gen,
        }
        .validate(["data.train", "data.val", "data.gen"])?;
        require(
            (task == Task::Dyck) == d.dyck.is_some(),
            "data.dyck",
            "give [data.dyck] for Dyck experiments and only for them",
        )?;
        if let Some(k) = &d.dyck {
            k.sampler()
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid value in [data.dyck]: {e}"))?;
        }
        let m = &self.model;
        require(
            (1..=MAX_WIDTH).contains(&m.d_model),
            "model.d_model",
            format!("must be in 1..={MAX_WIDTH}"),
        )?;
        require(
            m.heads >= 1 && m.d_model.is_multiple_of(m.heads),
            "model.heads",
            format!("must divide d_model = {}", m.d_model),
        )?;
        require(
            (1..=MAX_WIDTH).contains(&m.ffn),
            "model.ffn",
            format!("must be in 1..={MAX_WIDTH}"),
        )?;
        require_finite(m.dropout, "model.dropout")?;
        require(
            (0.0..1.0).contains(&m.dropout),
            "model.dropout",
            "must be in [0, 1)",
        )?;
        if let Some(s) = m.embedding_init_std {
            require_finite(s, "model.embedding_init_std")?;
            require(
                s > 0.0,
                "model.embedding_init_std",
                "must be > 0 (or absent)",
            )?;
        }
        self.validate_optim()?;
        require(
            (1..=MAX_BATCH).contains(&self.train.batch),
            "train.batch",
            format!("must be in 1..={MAX_BATCH}"),
        )?;
        require(self.train.steps >= 1, "train.steps", "must be >= 1")?;
        let e = &self.eval;
        require(e.every >= 1, "eval.every", "must be >= 1")?;
        require(e.train_examples >= 1, "eval.train_examples", "must be >= 1")?;
        require(e.tree_sentences >= 1, "eval.tree_sentences", "must be >= 1")?;
        require_finite(e.grok_threshold, "eval.grok_threshold")?;
        require(
            (0.0..=1.0).contains(&e.grok_threshold),
            "eval.grok_threshold",
            "must be in [0, 1]",
        )?;
        require(
            (task == Task::Dyck) == e.min_dist.is_some(),
            "eval.min_dist",
            "give min_dist for Dyck experiments and only for them",
        )
    }

    fn validate_optim(&self) -> Result<()> {
        let o = &self.optim;
        for (field, x) in [
            ("lr", o.lr),
            ("beta1", o.beta1),
            ("beta2", o.beta2),
            ("eps", o.eps),
            ("weight_decay", o.weight_decay),
            ("momentum", o.momentum),
            ("clip_norm", o.clip_norm),
            ("schedule.final_ratio", o.schedule.final_ratio),
        ] {
            require_finite(x, &format!("optim.{field}"))?;
        }
        o.validate().context("in [optim]")?;
        // A constant schedule reads neither key: refuse them rather than ignore them.
        require(
            o.schedule.kind != ScheduleKind::Constant
                || (o.schedule.total_steps == 0 && o.schedule.final_ratio == 0.0),
            "optim.schedule.total_steps",
            "total_steps and final_ratio apply to decaying schedules only (kind = \"linear\" or \"cosine\")",
        )
    }
}
