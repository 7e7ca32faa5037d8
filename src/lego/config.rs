//! Experiment configs of the LEGO replication (`experiments/lego/*.toml`): one file per
//! study, with a `[cpu]` and a `[paper]` preset side by side.
//!
//! A file holds `[experiment]` (name, kind, what it reproduces), the two presets (task or
//! program sizes, model, training, and the study's own sizes), and the study design that does
//! not depend on scale (`[[runs]]`, `[shortcuts]`, `[head_analysis]`). Every struct denies
//! unknown fields, so a typo is an error. [`load`] parses and then checks ranges and that the
//! sections the experiment's kind needs are present.
//!
//! The `[paper]` preset follows the official code (BERT-base, 120k/12k sentences with n = 12,
//! batch 1000, Adam 5e-5, cosine over 200 epochs). The `[cpu]` presets are the timed CPU scale
//! of `attnlab figures` (paper_notes section 2); `[tiny]` runs in seconds, for the tests of the
//! figures command.

use crate::config::{load_toml, require};
use crate::lego::program::ProgramSpec;
use crate::lego::task::N_NAMES;
use crate::lego::variants::Variant;
use anyhow::{bail, Context, Result};
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
    pub head_analysis: Option<HeadAnalysis>,
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
    /// Training distribution (default: the official shuffled task).
    #[serde(default = "default_variant")]
    pub variant: Variant,
}

fn default_variant() -> Variant {
    Variant::Shuffled
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
    /// ALBERT's factorised embedding width (albert-base: 128); unused by BERT.
    pub albert_embedding: usize,
    /// Largest sequence length the position embedding covers.
    pub max_positions: usize,
}

/// Optimisation of the LEGO (or program) objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub schedule: Schedule,
    pub loss: Loss,
    /// Test accuracy per chain position is recorded every this many epochs.
    pub eval_every: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adam,
    AdamW,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine annealing to 0 over `epochs`, stepped once per epoch (official `CosineAnnealingLR`).
    Cosine,
    Constant,
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
    pub lr: f64,
    pub schedule: Schedule,
    /// Head of every layer trained towards the local 1,2,4,2,1 map (official 0).
    pub local_head: usize,
    /// Head of every layer trained towards the association map (official 1).
    pub association_head: usize,
}

/// Architecture of a compared model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Independent layers.
    Bert,
    /// One layer's weights shared by every layer, factorised embedding.
    Albert,
}

/// How a compared model starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    Random,
    /// Random, then mimicking pretraining (`[*.mimic]`).
    Mimic,
}

/// One compared model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub label: String,
    pub arch: Arch,
    pub init: Init,
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

/// What the head analysis scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadAnalysis {
    /// Model states to score.
    pub checkpoints: Vec<Checkpoint>,
    /// Window radius of the window locality score.
    pub locality_radius: usize,
    /// Test sentences the scores are averaged over.
    pub n_sentences: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// Random initialisation, before any training.
    Init,
    /// After mimicking pretraining, before fine-tuning.
    Mimicked,
    /// After training on LEGO.
    Trained,
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
/// centred) after the query, key and value projections; `kernel_size = 1` with `maps = []` is
/// the plain linear model. The toolkit convolves the fused `[q | k | v]` projection, so `maps`
/// lists all three or none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvolutionConfig {
    pub label: String,
    pub kernel_size: usize,
    pub maps: Vec<QkvMap>,
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
    let exp: LegoExperiment = load_toml(path)?;
    exp.validate()
        .with_context(|| format!("in config file `{}`", path.display()))?;
    Ok(exp)
}

impl LegoExperiment {
    /// The preset called `name` (`cpu`, `paper` or `tiny`).
    pub fn preset(&self, name: &str) -> Result<&Preset> {
        match name {
            "cpu" => Ok(&self.cpu),
            "paper" => Ok(&self.paper),
            "tiny" => Ok(&self.tiny),
            _ => bail!("unknown preset `{name}`: expected `cpu`, `paper` or `tiny`"),
        }
    }

    fn presets(&self) -> [(&'static str, &Preset); 3] {
        [
            ("cpu", &self.cpu),
            ("paper", &self.paper),
            ("tiny", &self.tiny),
        ]
    }

    /// Range checks, and that the sections the kind needs are present.
    pub fn validate(&self) -> Result<()> {
        use ExperimentKind::*;
        let kind = self.experiment.kind;
        for (name, p) in self.presets() {
            p.validate(kind)
                .with_context(|| format!("in preset `[{name}]`"))?;
        }
        let needs_runs = matches!(kind, LengthExtrapolation | Mimicking | HeadAnalysis);
        require(
            !needs_runs || !self.runs.is_empty(),
            "runs",
            "this kind of experiment compares models: add [[runs]] entries",
        )?;
        if self.runs.iter().any(|r| r.init == Init::Mimic) {
            for (name, p) in self.presets() {
                require(
                    p.mimic.is_some(),
                    &format!("{name}.mimic"),
                    "a run starts from mimicking: add the section",
                )?;
            }
        }
        if kind == Shortcuts {
            let s = self
                .shortcuts
                .as_ref()
                .context("a shortcut study needs [shortcuts]")?;
            require(!s.regimes.is_empty(), "shortcuts.regimes", "empty")?;
            require(
                !s.test_variants.is_empty(),
                "shortcuts.test_variants",
                "empty",
            )?;
            for r in &s.regimes {
                require(
                    r.variants.len() == r.weights.len() && !r.variants.is_empty(),
                    "shortcuts.regimes.weights",
                    format!("regime `{}`: one weight per variant", r.label),
                )?;
                let sum: f64 = r.weights.iter().sum();
                require(
                    (sum - 1.0).abs() < 1e-9 && r.weights.iter().all(|&w| w >= 0.0),
                    "shortcuts.regimes.weights",
                    format!(
                        "regime `{}`: weights must be >= 0 and sum to 1, got {sum}",
                        r.label
                    ),
                )?;
            }
        }
        if kind == HeadAnalysis {
            let h = self
                .head_analysis
                .as_ref()
                .context("a head analysis needs [head_analysis]")?;
            require(
                !h.checkpoints.is_empty(),
                "head_analysis.checkpoints",
                "empty",
            )?;
            require(
                h.n_sentences > 0,
                "head_analysis.n_sentences",
                "must be > 0",
            )?;
        }
        Ok(())
    }
}

impl Preset {
    fn validate(&self, kind: ExperimentKind) -> Result<()> {
        require(!self.seeds.is_empty(), "seeds", "give at least one seed")?;
        let m = &self.model;
        require(m.layers > 0, "model.layers", "must be > 0")?;
        require(
            m.heads > 0 && m.hidden.is_multiple_of(m.heads),
            "model.heads",
            format!("{} must divide model.hidden = {}", m.heads, m.hidden),
        )?;
        require(m.ffn > 0, "model.ffn", "must be > 0")?;
        require(
            (0.0..1.0).contains(&m.dropout),
            "model.dropout",
            "must be in [0, 1)",
        )?;
        let t = &self.train;
        require(t.epochs > 0, "train.epochs", "must be > 0")?;
        require(t.batch_size > 0, "train.batch_size", "must be > 0")?;
        require(t.lr > 0.0, "train.lr", "must be > 0")?;
        require(t.eval_every > 0, "train.eval_every", "must be > 0")?;
        let mut seq = 0;
        if kind == ExperimentKind::Convolution {
            let p = self
                .program
                .as_ref()
                .context("a convolution study needs [*.program]")?;
            p.spec().validate()?;
            require(
                p.n_train > 0 && p.n_test > 0,
                "program.n_train",
                "needs data",
            )?;
            let c = self
                .convolution
                .as_ref()
                .context("a convolution study needs [*.convolution]")?;
            require(!c.configs.is_empty(), "convolution.configs", "empty")?;
            for cc in &c.configs {
                require(
                    !cc.kernel_size.is_multiple_of(2),
                    "convolution.configs.kernel_size",
                    format!("config `{}`: must be odd (centred window)", cc.label),
                )?;
                let all = [QkvMap::Query, QkvMap::Key, QkvMap::Value];
                let every = all.iter().all(|m| cc.maps.contains(m)) && cc.maps.len() == 3;
                require(
                    (cc.maps.is_empty() && cc.kernel_size == 1) || (every && cc.kernel_size > 1),
                    "convolution.configs.maps",
                    format!(
                        "config `{}`: the toolkit convolves q, k and v together: use \
                         maps = [\"query\", \"key\", \"value\"] with kernel_size > 1, or \
                         maps = [] with kernel_size = 1 (plain attention)",
                        cc.label
                    ),
                )?;
            }
            // programs always train with cross-entropy; `train.loss` names the LEGO runs' loss
            require(
                t.loss == Loss::CrossEntropy || self.task.is_some(),
                "train.loss",
                "a convolution study without [*.task] trains programs only: use cross_entropy",
            )?;
            // [CLS] + init (4 tokens each) + statements (<= 6) + prints (3) + [SEP]
            seq = 2 + 4 * p.n_vars + 6 * p.n_statements + 3 * p.n_prints;
        }
        if let Some(task) = &self.task {
            require(
                (1..=N_NAMES).contains(&task.n_var),
                "task.n_var",
                format!("{} (must be 1..=26)", task.n_var),
            )?;
            require(
                (1..=task.n_var).contains(&task.train_vars),
                "task.train_vars",
                format!("{} (must be 1..=n_var = {})", task.train_vars, task.n_var),
            )?;
            require(
                task.n_train > 0 && task.n_test > 0,
                "task.n_train",
                "needs data",
            )?;
            require(
                t.loss == Loss::Bce,
                "train.loss",
                "LEGO labels are binary: use bce (with [*.task] in a convolution study too; \
                 its program runs use cross-entropy regardless)",
            )?;
            seq = seq.max(crate::lego::task::seq_len(task.n_var));
        } else if kind != ExperimentKind::Convolution {
            bail!("invalid value for `task`: LEGO studies need [*.task]");
        }
        require(
            m.max_positions >= seq,
            "model.max_positions",
            format!("{} < sequence length {seq}", m.max_positions),
        )?;
        if let Some(mm) = &self.mimic {
            require(
                mm.local_head < m.heads && mm.association_head < m.heads,
                "mimic.local_head",
                "mimicked heads must exist",
            )?;
            require(
                mm.local_head != mm.association_head,
                "mimic.association_head",
                "must differ from mimic.local_head",
            )?;
            require(
                mm.steps_per_epoch > 0,
                "mimic.steps_per_epoch",
                "must be > 0",
            )?;
            require(mm.batch_size > 0, "mimic.batch_size", "must be > 0")?;
        }
        if kind == ExperimentKind::LegoAttention {
            let la = self
                .lego_attention
                .as_ref()
                .context("a LEGO attention study needs [*.lego_attention]")?;
            require(!la.configs.is_empty(), "lego_attention.configs", "empty")?;
            for c in &la.configs {
                require(
                    c.local_heads + c.association_heads <= m.heads,
                    "lego_attention.configs",
                    format!("config `{}`: more fixed heads than model.heads", c.label),
                )?;
            }
        }
        Ok(())
    }
}
