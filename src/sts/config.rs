//! The STS configs: one run (`sts train`, and the run inside every figure), the FCN, and each
//! figure's study, read from TOML under `experiments/sts/`. Unknown keys are refused, and every
//! number is range-checked (non-finite ones and sizes past [`MAX_ENTRIES`] included) with an
//! error naming the field.

use super::model::MAX_ABS_C;
use super::task::{check_td, Encoding, TaskConfig, MAX_ENTRIES, MAX_TD};
use crate::config::{load_toml, load_toml_with, require, require_finite, Preset};
use crate::train::optim::{OptimConfig, OptimKind};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Most optimiser steps a run may take: the scalar prediction keeps one value per step.
pub const MAX_STEPS: usize = 10_000_000;
/// Most evaluations a run may make.
pub const MAX_POINTS: usize = 10_000;

/// Float type of the exact transformer's training arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    #[default]
    F64,
}

/// Gradient-descent settings for the exact transformer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub steps: usize,
    /// Step size eta of `W <- W - eta grad`.
    pub lr: f64,
    /// Examples per step.
    pub batch: usize,
    /// None: a fresh batch every step (population GD up to batch noise). Some(n): full-batch GD on
    /// one fixed dataset of n examples (then `batch` is ignored).
    #[serde(default)]
    pub dataset: Option<usize>,
    #[serde(default)]
    pub precision: Precision,
    /// Initial W = init_c I on the positional block.
    #[serde(default)]
    pub init_c: f64,
}

/// Evaluation settings shared by the models.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Test examples (fixed per run) for the measured population loss.
    #[serde(default = "default_eval_samples")]
    pub samples: usize,
    /// Number of log-spaced evaluation steps.
    #[serde(default = "default_points")]
    pub points: usize,
    /// Encoding samples behind the x-integrated theory estimates.
    #[serde(default = "default_theory_samples")]
    pub theory_samples: usize,
}

fn default_eval_samples() -> usize {
    4096
}
fn default_points() -> usize {
    30
}
fn default_theory_samples() -> usize {
    8192
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            samples: default_eval_samples(),
            points: default_points(),
            theory_samples: default_theory_samples(),
        }
    }
}

/// One training run: task, model, evaluation, seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub seed: u64,
    pub task: TaskConfig,
    #[serde(default)]
    pub transformer: Option<TransformerConfig>,
    #[serde(default)]
    pub fcn: Option<FcnConfig>,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// A run config file: one table per preset (`[tiny]`, `[cpu]`, `[paper]`), each optional; the
/// preset a command asks for must be there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    #[serde(default)]
    pub tiny: Option<RunConfig>,
    #[serde(default)]
    pub cpu: Option<RunConfig>,
    #[serde(default)]
    pub paper: Option<RunConfig>,
}

impl RunFile {
    /// Reads `path` and checks every preset it holds; errors name the file and the preset.
    pub fn load(path: &Path) -> Result<Self> {
        let f: Self = load_toml(path)?;
        f.check(path)?;
        Ok(f)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let mut any = false;
        for p in [Preset::Tiny, Preset::Cpu, Preset::Paper] {
            if let Some(c) = self.get(p) {
                any = true;
                c.validate()
                    .with_context(|| format!("in `{}` [{p}]", path.display()))?;
            }
        }
        if !any {
            bail!(
                "config file `{}` has no preset table: add `[cpu]` (and `[tiny]`, `[paper]`)",
                path.display()
            );
        }
        Ok(())
    }

    fn get(&self, p: Preset) -> Option<&RunConfig> {
        match p {
            Preset::Tiny => self.tiny.as_ref(),
            Preset::Cpu => self.cpu.as_ref(),
            Preset::Paper => self.paper.as_ref(),
        }
    }

    /// The run of preset `p`, or an error naming the presets the file has.
    pub fn preset(&self, p: Preset) -> Result<&RunConfig> {
        self.get(p).ok_or_else(|| {
            let have: Vec<&str> = [Preset::Tiny, Preset::Cpu, Preset::Paper]
                .into_iter()
                .filter(|&q| self.get(q).is_some())
                .map(Preset::name)
                .collect();
            anyhow!(
                "invalid value for `--preset`: the config file has no `[{p}]` table; pass one of {} or add the table",
                have.join(", ")
            )
        })
    }

    /// The run of preset `p` in `path` with `--set key.path=value` overrides applied to it,
    /// validated like the file.
    pub fn load_preset(path: &Path, p: Preset, sets: &[String]) -> Result<RunConfig> {
        let file = Self::load(path)?;
        file.preset(p)?;
        if sets.is_empty() {
            return Ok(file.preset(p)?.clone());
        }
        let file: Self = load_toml_with(path, p, sets)?;
        let cfg = file.preset(p)?.clone();
        cfg.validate()
            .with_context(|| format!("in `{}` [{p}] (after --set)", path.display()))?;
        Ok(cfg)
    }
}

impl RunConfig {
    pub fn validate(&self) -> Result<()> {
        let task = &self.task;
        task.validate()?;
        if self.transformer.is_none() && self.fcn.is_none() {
            bail!("the run trains nothing: add a `[transformer]` or an `[fcn]` table");
        }
        if let Some(t) = &self.transformer {
            t.validate(task)?;
        }
        if let Some(f) = &self.fcn {
            f.validate(task)?;
        }
        self.eval.validate(task)
    }
}

impl TransformerConfig {
    pub fn validate(&self, task: &TaskConfig) -> Result<()> {
        check_steps(self.steps, "transformer.steps")?;
        require_finite(self.lr, "transformer.lr")?;
        require(self.lr > 0.0, "transformer.lr", "must be a positive number")?;
        require(self.batch >= 1, "transformer.batch", "must be at least 1")?;
        task.check_examples(self.batch, "transformer.batch")?;
        if let Some(n) = self.dataset {
            require(
                n >= 1,
                "transformer.dataset",
                "must be at least 1 (or omitted for fresh batches)",
            )?;
            task.check_examples(n, "transformer.dataset")?;
        }
        require_finite(self.init_c, "transformer.init_c")?;
        require(
            self.init_c.abs() <= MAX_ABS_C,
            "transformer.init_c",
            format!(
                "must lie in [-{MAX_ABS_C:e}, {MAX_ABS_C:e}] (attention is one-hot long before)"
            ),
        )
    }
}

impl EvalConfig {
    pub fn validate(&self, task: &TaskConfig) -> Result<()> {
        require(self.samples >= 2, "eval.samples", "must be at least 2")?;
        task.check_examples(self.samples, "eval.samples")?;
        require(
            (2..=MAX_POINTS).contains(&self.points),
            "eval.points",
            format!("must be between 2 and {MAX_POINTS}"),
        )?;
        require(
            self.theory_samples >= 2,
            "eval.theory_samples",
            "must be at least 2",
        )?;
        require(
            self.theory_samples
                .checked_mul(2 * task.t)
                .is_some_and(|n| n <= MAX_ENTRIES),
            "eval.theory_samples",
            "its T scores and selections per sample are above the limit of 2^30 numbers (8 GiB)",
        )
    }
}

/// The same run at another d_e, with the step size the recursion needs: `lr` scales with d_e so
/// that the step in c, `lr L'(c) / d_e`, stays the same (at a fixed lr a small d_e takes steps too
/// large for the off-identity directions: lr 4 at d_e 16 ends at 1.41 against a floor of 0.81).
pub fn with_de(cfg: &RunConfig, de: usize) -> RunConfig {
    let mut c = cfg.clone();
    if let Some(tc) = c.transformer.as_mut() {
        tc.lr *= de as f64 / cfg.task.de as f64;
    }
    c.task.de = de;
    c
}

/// The same run with one fixed encoding table instead of stochastic encodings. A table's gradient
/// lives in the T-dimensional span of its rows, so the same lr moves it d_e / min(T, d_e) times
/// faster than stochastic encodings do; lr is scaled by min(T, d_e) / d_e to keep it stable.
pub fn with_fixed_table(cfg: &RunConfig) -> RunConfig {
    let mut c = cfg.clone();
    c.task.encoding = Encoding::Fixed;
    if let Some(tc) = c.transformer.as_mut() {
        tc.lr *= cfg.task.t.min(cfg.task.de) as f64 / cfg.task.de as f64;
    }
    c
}

fn check_steps(steps: usize, field: &str) -> Result<()> {
    require(
        (1..=MAX_STEPS).contains(&steps),
        field,
        format!("must be between 1 and {MAX_STEPS}"),
    )
}

/// How the FCN is trained: plain gradient descent or Adam (PyTorch's, no weight decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FcnOptimizer {
    Gd,
    Adam,
}

/// FCN architecture and training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcnConfig {
    /// First-layer width m.
    pub width: usize,
    /// 2 (one hidden layer) or 3 (two hidden layers of width m).
    #[serde(default = "default_depth")]
    pub depth: usize,
    pub optimizer: FcnOptimizer,
    pub lr: f64,
    pub steps: usize,
    pub batch: usize,
}

/// Default FCN depth: one hidden layer.
pub fn default_depth() -> usize {
    2
}

impl FcnConfig {
    pub fn validate(&self, task: &TaskConfig) -> Result<()> {
        require(self.width >= 1, "fcn.width", "must be at least 1")?;
        require(
            self.depth == 2 || self.depth == 3,
            "fcn.depth",
            "must be 2 or 3",
        )?;
        require_finite(self.lr, "fcn.lr")?;
        require(self.lr > 0.0, "fcn.lr", "must be a positive number")?;
        check_steps(self.steps, "fcn.steps")?;
        require(self.batch >= 1, "fcn.batch", "must be at least 1")?;
        // The certificate decomposes the (T d)^2 second moment.
        check_td(task.t, task.d).map_err(|_| {
            anyhow!(
                "invalid value for `task.t`: the FCN's certificate needs T d <= {MAX_TD}, here {} x {}; lower `t` or `d`",
                task.t,
                task.d
            )
        })?;
        let input = task.t * task.d + task.t;
        let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|n| n <= MAX_ENTRIES);
        require(
            fits(self.width, input) && (self.depth == 2 || fits(self.width, self.width)),
            "fcn.width",
            "the layers are above the limit of 2^30 numbers (8 GiB); lower `fcn.width`",
        )?;
        require(
            fits(self.batch, input.max(self.width)),
            "fcn.batch",
            "a batch's inputs or activations are above the limit of 2^30 numbers (8 GiB); lower `fcn.batch`",
        )?;
        task.check_examples(self.batch, "fcn.batch")
    }

    /// The optimiser this config asks for, on the shared optimiser: full-batch-style GD is SGD
    /// without momentum, Adam is PyTorch's Adam without weight decay.
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            kind: match self.optimizer {
                FcnOptimizer::Gd => OptimKind::Sgd,
                FcnOptimizer::Adam => OptimKind::Adam,
            },
            lr: self.lr,
            weight_decay: 0.0,
            ..OptimConfig::default()
        }
    }
}
