//! Experiment configs of the LEGO replication (`experiments/lego/*.toml`): one file per
//! study, with a `[cpu]` and a `[paper]` preset side by side.
//!
//! A file holds `[experiment]` (name, kind, what it reproduces), the three presets (task or
//! program sizes, model, training, and the study's own sizes), and the study design that does
//! not depend on scale (`[[runs]]`, `[shortcuts]`). Optimisers are the shared
//! [`crate::train::OptimConfig`] (`[*.train.optim]`, `[*.mimic.optim]`), whose schedule length
//! defaults to the run's length. Every struct denies unknown fields, so a typo is an error.
//! [`load_with`] parses, applies `--set` overrides and then checks ranges (finite numbers, and
//! sizes within [`crate::lego::validate::limits`]) and that the sections the experiment's kind
//! needs are present ([`crate::lego::validate`]).
//!
//! The `[paper]` preset follows the official code (BERT-base, 120k/12k sentences with n = 12,
//! batch 1000, Adam 5e-5, cosine over 200 epochs). The `[cpu]` presets are the timed CPU scale
//! of `attnlab figures` (paper_notes section 2); `[tiny]` runs in seconds, for the tests of the
//! figures command.

use crate::config::{load_toml_with, Preset as PresetName};
use crate::lego::program::ProgramSpec;
use crate::lego::variants::Variant;
use crate::nn::config::QkvConvMaps;
use crate::train::{OptimConfig, Schedule};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegoExperiment {
    pub experiment: ExperimentMeta,
    pub cpu: Preset,
    pub paper: Preset,
    /// Seconds-long smoke preset (`attnlab figures --preset tiny`).
    pub tiny: Preset,
    /// The models compared (architecture x initialisation); empty where the kind fixes them.
    #[serde(default)]
    pub runs: Vec<RunSpec>,
    pub shortcuts: Option<ShortcutStudy>,
}

/// What the experiment is and what it reproduces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentMeta {
    pub name: String,
    pub kind: ExperimentKind,
    pub description: String,
    /// Figure(s) of the paper notes this study produces.
    pub figures: Vec<String>,
    /// Where results go, relative to the repository root.
    pub out_dir: String,
}

/// The six LEGO studies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentKind {
    LengthExtrapolation,
    Mimicking,
    HeadAnalysis,
    Shortcuts,
    LegoAttention,
    Convolution,
}

/// Sizes and settings at one scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// True while the sizes are a guess that has not been timed or checked to learn.
    pub provisional: bool,
    pub note: String,
    /// One run per seed.
    pub seeds: Vec<u64>,
    /// The LEGO data (all kinds but `convolution`).
    pub task: Option<LegoTaskConfig>,
    /// The program data (`convolution`).
    pub program: Option<ProgramTaskConfig>,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Mimicking pretraining (kinds that compare a mimicking initialisation).
    pub mimic: Option<MimicConfig>,
    /// Masked-LM pretraining on text (kinds that compare a text-pretrained initialisation).
    pub pretrain: Option<TextPretrainConfig>,
    /// Hard-coded heads (`lego_attention`).
    pub lego_attention: Option<LegoAttentionStudy>,
    /// Convolutional query/key/value maps (`convolution`).
    pub convolution: Option<ConvolutionStudy>,
}

/// LEGO data of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegoTaskConfig {
    /// Chain length (official 12).
    pub n_var: usize,
    /// Chain positions in the loss: the first `train_vars` (official 6 for length extrapolation).
    pub train_vars: usize,
    pub n_train: usize,
    pub n_test: usize,
}

/// Program data of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramTaskConfig {
    pub n_vars: usize,
    pub n_statements: usize,
    pub n_prints: usize,
    pub modulus: u32,
    pub n_train: usize,
    pub n_test: usize,
}

impl ProgramTaskConfig {
    /// The generator's spec.
    pub fn spec(&self) -> ProgramSpec {
        ProgramSpec {
            n_vars: self.n_vars,
            n_statements: self.n_statements,
            n_prints: self.n_prints,
            modulus: self.modulus,
        }
    }
}

/// Encoder size; the architecture (weight tying) comes from each run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    /// Feed-forward width (BERT: 4 x hidden).
    pub ffn: usize,
    pub dropout: f64,
    /// Largest sequence length the position embedding covers.
    pub max_positions: usize,
}

/// Optimisation of the LEGO (or program) objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Optimiser and learning-rate schedule; see [`optim_for`] for the schedule's length.
    pub optim: OptimConfig,
    pub loss: Loss,
    /// Test accuracy per chain position is recorded every this many epochs.
    pub eval_every: usize,
}

/// `cfg` for a run of `total_steps` updates: a schedule without `total_steps` (0) decays over
/// the whole run (the official `CosineAnnealingLR` over every epoch).
pub fn optim_for(cfg: &OptimConfig, total_steps: u64) -> OptimConfig {
    let mut c = cfg.clone();
    if c.schedule.total_steps == 0 {
        c.schedule = Schedule {
            total_steps: total_steps.max(1),
            ..c.schedule
        };
    }
    c
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// One logit per chain position, binary cross-entropy averaged over supervised positions
    /// (official `demo.ipynb`).
    Bce,
    /// Softmax cross-entropy over classes (program outputs).
    CrossEntropy,
}

/// Mimicking pretraining (official `pretrain_mimic.py`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MimicConfig {
    /// Epochs for BERT-like models (official 10).
    pub epochs_bert: usize,
    /// Epochs for ALBERT-like models (official 50).
    pub epochs_albert: usize,
    /// Steps per epoch, each on fresh sentences (official 100).
    pub steps_per_epoch: usize,
    pub batch_size: usize,
    /// Optimiser and schedule of the mimicking steps (schedule over all of them by default).
    pub optim: OptimConfig,
    /// Head of every layer trained towards the local 1,2,4,2,1 map (official 0).
    pub local_head: usize,
    /// Head of every layer trained towards the association map (official 1).
    pub association_head: usize,
}

/// Masked-LM pretraining of the encoder on English text ([`crate::lego::text_pretrain`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPretrainConfig {
    /// A text file or a directory of them, relative to the working directory (the Debian
    /// package `fortunes`: `/usr/share/games/fortunes`).
    pub corpus: std::path::PathBuf,
    /// Most frequent words in the vocabulary besides the specials and LEGO's tokens.
    pub vocab_words: usize,
    pub steps: usize,
    /// Windows of the LEGO sentence length per step.
    pub batch_size: usize,
    /// Fraction of text tokens masked (BERT 0.15).
    pub mask_prob: f64,
    /// Optimiser and schedule (over all the steps by default).
    pub optim: OptimConfig,
}

/// Architecture of a compared model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Independent layers.
    Bert,
    /// One layer's weights shared by every layer (the toolkit has no factorised embedding, so
    /// the embedding is as wide as the model).
    Albert,
}

/// How a compared model starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    Random,
    /// Random, then mimicking pretraining (`[*.mimic]`).
    Mimic,
    /// Random, then masked-LM pretraining on English text (`[*.pretrain]`).
    Text,
}

/// One compared model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub label: String,
    pub arch: Arch,
    pub init: Init,
    /// Heads per layer replaced by the fixed local map (as in `lego_attention`; default 0).
    #[serde(default)]
    pub fixed_local: usize,
    /// Heads per layer replaced by the fixed association map (default 0).
    #[serde(default)]
    pub fixed_association: usize,
}

/// Training regimes and test variants of the shortcut study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortcutStudy {
    pub regimes: Vec<ShortcutRegime>,
    /// Every trained model is tested on each of these.
    pub test_variants: Vec<Variant>,
}

/// Training data as a mixture of variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShortcutRegime {
    pub label: String,
    pub arch: Arch,
    pub variants: Vec<Variant>,
    /// Fraction of training sentences from each variant (same length as `variants`, sums to 1).
    pub weights: Vec<f64>,
}

/// LEGO attention module: some heads of every layer replaced by fixed maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegoAttentionStudy {
    pub configs: Vec<LegoAttentionConfig>,
}

/// Heads per layer replaced by a fixed local map and by the association map (no query-key
/// product); the rest stay ordinary heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegoAttentionConfig {
    pub label: String,
    pub local_heads: usize,
    pub association_heads: usize,
}

/// Convolutional query/key/value maps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvolutionStudy {
    pub configs: Vec<ConvolutionConfig>,
}

/// One compared model: a depthwise 1-D convolution over positions of width `kernel_size` (odd,
/// centred) after the projections that `maps` lists (any non-empty subset of `"query"`, `"key"`,
/// `"value"`; the toolkit's `qkv_conv_maps`); `kernel_size = 1` with `maps = []` is the plain
/// linear model. `fixed_local` / `fixed_association` heads per layer attend by the fixed
/// patterns of the LEGO attention module (window and same-token maps of the model's input)
/// instead of learned scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvolutionConfig {
    pub label: String,
    pub kernel_size: usize,
    pub maps: Vec<QkvMap>,
    #[serde(default)]
    pub fixed_local: usize,
    #[serde(default)]
    pub fixed_association: usize,
}

impl ConvolutionConfig {
    /// The toolkit's `qkv_conv` width (0 = no convolution).
    pub fn qkv_conv(&self) -> usize {
        if self.maps.is_empty() {
            0
        } else {
            self.kernel_size
        }
    }

    /// The toolkit's `qkv_conv_maps`: which of q, k, v the convolution covers (all three when
    /// `maps` is empty, where there is no convolution).
    pub fn qkv_conv_maps(&self) -> QkvConvMaps {
        if self.maps.is_empty() {
            return QkvConvMaps::ALL;
        }
        QkvConvMaps {
            query: self.maps.contains(&QkvMap::Query),
            key: self.maps.contains(&QkvMap::Key),
            value: self.maps.contains(&QkvMap::Value),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkvMap {
    Query,
    Key,
    Value,
}

/// Reads `path` and checks it (see [`LegoExperiment::validate`]).
pub fn load(path: &Path) -> Result<LegoExperiment> {
    load_with(path, PresetName::Cpu, &[])
}

/// Reads `path`, applies `--set key.path=value` overrides to `preset`'s table, and checks the
/// result like the file itself.
pub fn load_with(path: &Path, preset: PresetName, sets: &[String]) -> Result<LegoExperiment> {
    let exp: LegoExperiment = load_toml_with(path, preset, sets)?;
    exp.validate()
        .with_context(|| format!("in config file `{}`", path.display()))?;
    Ok(exp)
}

impl LegoExperiment {
    /// The sizes of `preset`.
    pub fn preset(&self, preset: PresetName) -> &Preset {
        match preset {
            PresetName::Cpu => &self.cpu,
            PresetName::Paper => &self.paper,
            PresetName::Tiny => &self.tiny,
        }
    }
}
