//! Experiment configs of the structural-grokking replication (`experiments/grokking/*.toml`):
//! one file per task, a `[cpu]` and a `[paper]` preset side by side, each holding the depth sweep,
//! the data sizes, the model, the optimiser, the training length and the evaluation schedule.
//!
//! Unknown keys are errors (`deny_unknown_fields`), and [`GrokkingExperiment::validate`] checks
//! ranges, naming the field.

use super::dyck::{DyckConfig, ShortStrings, SplitCriterion};
use crate::config::{load_toml, require};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Which task the experiment trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Dyck,
    Qf,
    Ti,
}

/// One experiment file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrokkingExperiment {
    /// What the study shows and which figure it feeds.
    pub description: String,
    pub task: Task,
    /// A small run for this machine's CPU.
    pub cpu: Preset,
    /// The paper's settings.
    pub paper: Preset,
    /// Seconds on a CPU, for the tests of `attnlab figures` (optional: older files lack it).
    #[serde(default)]
    pub tiny: Option<Preset>,
}

/// A full set of settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
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
    pub optim: OptimConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

/// Data sizes and the seed the split is drawn from.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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

/// Where LayerNorm sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Pre,
    Post,
}

/// Position encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    Sinusoidal,
    Learned,
}

/// The decoder-only transformer LM (depth comes from `depths`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub d_model: usize,
    pub heads: usize,
    pub ffn: usize,
    pub dropout: f64,
    pub norm: Norm,
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

/// Learning-rate schedule after the linear warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warmup.
    Constant,
    /// Linear decay to zero at `decay_steps` (the official code: 2M steps).
    LinearDecay,
}

/// AdamW and its schedule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    /// Step at which the linear decay reaches zero (`linear_decay` only).
    #[serde(default)]
    pub decay_steps: Option<usize>,
    /// Global gradient-norm clip.
    pub clip_norm: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch: usize,
    pub steps: usize,
}

/// What is measured, how often, on how many examples.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Steps between evaluations.
    pub every: usize,
    /// Training examples for weight norm, attention sparsity and tree projections.
    pub train_examples: usize,
    /// Generalisation accuracy above which a seed counts as grokked.
    pub grok_threshold: f64,
    /// Dyck: minimum opening-to-closing distance of a scored closing bracket.
    #[serde(default)]
    pub min_dist: Option<usize>,
}

impl GrokkingExperiment {
    /// Reads and validates an experiment file.
    pub fn load(path: &Path) -> Result<Self> {
        let e: GrokkingExperiment = load_toml(path)?;
        e.validate()
            .with_context(|| format!("in config file `{}`", path.display()))?;
        Ok(e)
    }

    /// Range checks of every preset present.
    pub fn validate(&self) -> Result<()> {
        self.cpu.validate(self.task).context("in [cpu]")?;
        self.paper.validate(self.task).context("in [paper]")?;
        if let Some(t) = &self.tiny {
            t.validate(self.task).context("in [tiny]")?;
        }
        Ok(())
    }

    /// The preset called `name` (`cpu`, `paper` or `tiny`); an error naming it when the file
    /// lacks it.
    pub fn preset(&self, name: &str) -> Result<&Preset> {
        match name {
            "cpu" => Ok(&self.cpu),
            "paper" => Ok(&self.paper),
            "tiny" => self.tiny.as_ref().with_context(|| {
                "the experiment file has no [tiny] preset: add a [tiny] table (as in \
                 experiments/grokking/dyck.toml) or choose --preset cpu|paper"
                    .to_string()
            }),
            _ => anyhow::bail!("unknown preset `{name}`: choose cpu, paper or tiny"),
        }
    }
}

impl Preset {
    fn validate(&self, task: Task) -> Result<()> {
        require(
            !self.depths.is_empty() && self.depths.iter().all(|&d| d >= 1),
            "depths",
            "give at least one depth, each >= 1",
        )?;
        require(self.seeds >= 1, "seeds", "must be >= 1")?;
        let d = &self.data;
        require(d.train >= 1, "data.train", "must be >= 1")?;
        require(d.val >= 1, "data.val", "must be >= 1")?;
        require(d.gen >= 1, "data.gen", "must be >= 1")?;
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
        require(m.d_model >= 1, "model.d_model", "must be >= 1")?;
        require(
            m.heads >= 1 && m.d_model.is_multiple_of(m.heads),
            "model.heads",
            format!("must divide d_model = {}", m.d_model),
        )?;
        require(m.ffn >= 1, "model.ffn", "must be >= 1")?;
        require(
            (0.0..1.0).contains(&m.dropout),
            "model.dropout",
            "must be in [0, 1)",
        )?;
        let o = &self.optim;
        require(o.lr > 0.0, "optim.lr", "must be > 0")?;
        require(
            (0.0..1.0).contains(&o.beta1),
            "optim.beta1",
            "must be in [0, 1)",
        )?;
        require(
            (0.0..1.0).contains(&o.beta2),
            "optim.beta2",
            "must be in [0, 1)",
        )?;
        require(o.eps > 0.0, "optim.eps", "must be > 0")?;
        require(o.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0")?;
        require(o.clip_norm > 0.0, "optim.clip_norm", "must be > 0")?;
        require(
            (o.schedule == Schedule::LinearDecay)
                == o.decay_steps.is_some_and(|s| s > o.warmup_steps),
            "optim.decay_steps",
            "give decay_steps > warmup_steps with schedule = \"linear_decay\", and only then",
        )?;
        require(self.train.batch >= 1, "train.batch", "must be >= 1")?;
        require(self.train.steps >= 1, "train.steps", "must be >= 1")?;
        let e = &self.eval;
        require(e.every >= 1, "eval.every", "must be >= 1")?;
        require(e.train_examples >= 1, "eval.train_examples", "must be >= 1")?;
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
}
