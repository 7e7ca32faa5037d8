//! Range checks of LEGO experiment configs ([`crate::lego::config`]): every number finite,
//! every size within [`limits`], and the sections each kind of study needs present. Errors
//! name the field (`train.optim`, `task.n_var`, ...) and the fix.

use crate::config::require;
use crate::lego::config::{
    optim_for, ExperimentKind, Init, LegoExperiment, Loss, ModelConfig, Preset, TrainConfig,
};
use crate::lego::task::N_NAMES;
use crate::train::OptimConfig;
use anyhow::{bail, Context, Result};

/// Largest sizes a config may ask for: far above the paper's, small enough that the data and
/// one step fit in memory, and that step counts cannot overflow.
pub mod limits {
    /// Training or test sentences (programs) of a run, and head-score sentences.
    pub const EXAMPLES: usize = 10_000_000;
    /// Sentences (programs) in one batch.
    pub const BATCH: usize = 100_000;
    /// Epochs of training or of mimicking, and mimicking steps per epoch.
    pub const EPOCHS: usize = 1_000_000;
    /// Total optimiser updates of a run.
    pub const STEPS: u64 = 1_000_000_000;
    /// `model.layers`.
    pub const LAYERS: usize = 256;
    /// `model.hidden`, `model.ffn`, `model.heads`.
    pub const WIDTH: usize = 65_536;
    /// `model.max_positions`.
    pub const POSITIONS: usize = 65_536;
    /// Words in a text-pretraining vocabulary.
    pub const VOCAB: usize = 1_000_000;
    /// Estimated memory of the parameters, optimiser state and one batch's activations.
    pub const MEMORY_GIB: f64 = 256.0;
}

fn at_most(x: usize, max: usize, field: &str) -> Result<()> {
    require(
        x <= max,
        field,
        format!("{x} is above the limit {max}: pick a smaller value"),
    )
}

/// Rough bytes of one training step: parameters with gradient and two Adam moments (16 bytes
/// each), and a batch's saved activations (8 d + 2 d_ff + 3 heads T floats per token a layer,
/// twice for the backward pass).
fn step_memory(m: &ModelConfig, vocab: usize, seq: usize, batch: usize) -> f64 {
    let (l, d, f, h) = (
        m.layers as f64,
        m.hidden as f64,
        m.ffn as f64,
        m.heads as f64,
    );
    let params = (vocab + m.max_positions) as f64 * d + l * (4.0 * d * d + 2.0 * d * f + 10.0 * d);
    let acts = batch as f64 * seq as f64 * l * (8.0 * d + 2.0 * f + 3.0 * h * seq as f64);
    16.0 * params + 8.0 * acts
}

impl LegoExperiment {
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
        for r in &self.runs {
            for (name, p) in self.presets() {
                require(
                    r.fixed_local.saturating_add(r.fixed_association) <= p.model.heads,
                    "runs",
                    format!(
                        "run `{}`: more fixed heads than {name}.model.heads",
                        r.label
                    ),
                )?;
            }
        }
        if self.runs.iter().any(|r| r.init == Init::Mimic) {
            for (name, p) in self.presets() {
                require(
                    p.mimic.is_some(),
                    &format!("{name}.mimic"),
                    "a run starts from mimicking: add the section",
                )?;
            }
        }
        if self.runs.iter().any(|r| r.init == Init::Text) {
            for (name, p) in self.presets() {
                require(
                    p.pretrain.is_some(),
                    &format!("{name}.pretrain"),
                    "a run starts from text pretraining: add the section",
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
                        "regime `{}`: weights must be finite, >= 0 and sum to 1, got sum {sum}",
                        r.label
                    ),
                )?;
            }
        }
        Ok(())
    }
}

/// Checks `cfg` as the optimiser of a run of `total` updates, naming `field`.
fn check_optim(cfg: &OptimConfig, total: u64, field: &str) -> Result<()> {
    optim_for(cfg, total)
        .validate()
        .with_context(|| format!("invalid value in `{field}`"))
}

/// Checks `data.n_train` and `data.n_test`, and the training run over them.
fn check_data(t: &TrainConfig, data: &str, n_train: usize, n_test: usize) -> Result<()> {
    require(
        n_train > 0 && n_test > 0,
        &format!("{data}.n_train"),
        "needs data",
    )?;
    at_most(n_train, limits::EXAMPLES, &format!("{data}.n_train"))?;
    at_most(n_test, limits::EXAMPLES, &format!("{data}.n_test"))?;
    let total = (t.epochs * n_train.div_ceil(t.batch_size)) as u64;
    require(
        total <= limits::STEPS,
        "train.epochs",
        format!("{total} updates is above the limit {}", limits::STEPS),
    )?;
    check_optim(&t.optim, total, "train.optim")
}

impl Preset {
    fn validate(&self, kind: ExperimentKind) -> Result<()> {
        require(!self.seeds.is_empty(), "seeds", "give at least one seed")?;
        let m = &self.model;
        require(m.layers > 0, "model.layers", "must be > 0")?;
        for (field, x, max) in [
            ("model.layers", m.layers, limits::LAYERS),
            ("model.hidden", m.hidden, limits::WIDTH),
            ("model.ffn", m.ffn, limits::WIDTH),
            ("model.max_positions", m.max_positions, limits::POSITIONS),
        ] {
            at_most(x, max, field)?;
        }
        require(
            m.heads > 0 && m.hidden.is_multiple_of(m.heads),
            "model.heads",
            format!("{} must divide model.hidden = {}", m.heads, m.hidden),
        )?;
        require(m.ffn > 0, "model.ffn", "must be > 0")?;
        require(
            (0.0..1.0).contains(&m.dropout),
            "model.dropout",
            format!("{} (must be a finite number in [0, 1))", m.dropout),
        )?;
        let t = &self.train;
        require(t.epochs > 0, "train.epochs", "must be > 0")?;
        at_most(t.epochs, limits::EPOCHS, "train.epochs")?;
        require(t.batch_size > 0, "train.batch_size", "must be > 0")?;
        at_most(t.batch_size, limits::BATCH, "train.batch_size")?;
        require(t.eval_every > 0, "train.eval_every", "must be > 0")?;
        let mut seq = 0;
        let mut memory: f64 = 0.0;
        if kind == ExperimentKind::Convolution {
            let p = self
                .program
                .as_ref()
                .context("a convolution study needs [*.program]")?;
            p.spec().validate().context("in `[*.program]`")?;
            check_data(t, "program", p.n_train, p.n_test)?;
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
                at_most(
                    cc.kernel_size,
                    limits::POSITIONS,
                    "convolution.configs.kernel_size",
                )?;
                let distinct = cc
                    .maps
                    .iter()
                    .enumerate()
                    .all(|(i, m)| !cc.maps[..i].contains(m));
                require(
                    (cc.maps.is_empty() && cc.kernel_size == 1)
                        || (!cc.maps.is_empty() && distinct && cc.kernel_size > 1),
                    "convolution.configs.maps",
                    format!(
                        "config `{}`: list the convolved maps once each, from \"query\", \"key\" \
                         and \"value\", with kernel_size > 1, or maps = [] with kernel_size = 1 \
                         (plain attention)",
                        cc.label
                    ),
                )?;
                require(
                    cc.fixed_local.saturating_add(cc.fixed_association) <= self.model.heads,
                    "convolution.configs.fixed_local",
                    format!(
                        "config `{}`: fixed_local + fixed_association is more than model.heads = {}",
                        cc.label, self.model.heads
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
            let vocab = crate::lego::program::PROGRAM_VOCAB_SIZE;
            memory = step_memory(m, vocab, seq, t.batch_size.min(p.n_train));
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
            check_data(t, "task", task.n_train, task.n_test)?;
            require(
                t.loss == Loss::Bce,
                "train.loss",
                "LEGO labels are binary: use bce (with [*.task] in a convolution study too; \
                 its program runs use cross-entropy regardless)",
            )?;
            let lego_seq = crate::lego::task::seq_len(task.n_var);
            seq = seq.max(lego_seq);
            let vocab = crate::lego::task::VOCAB_SIZE;
            memory = memory.max(step_memory(
                m,
                vocab,
                lego_seq,
                t.batch_size.min(task.n_train),
            ));
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
            for (field, e) in [
                ("mimic.epochs_bert", mm.epochs_bert),
                ("mimic.epochs_albert", mm.epochs_albert),
                ("mimic.steps_per_epoch", mm.steps_per_epoch),
            ] {
                require(e > 0, field, "must be > 0")?;
                at_most(e, limits::EPOCHS, field)?;
            }
            require(mm.batch_size > 0, "mimic.batch_size", "must be > 0")?;
            at_most(mm.batch_size, limits::BATCH, "mimic.batch_size")?;
            let longest = mm.epochs_bert.max(mm.epochs_albert) as u64 * mm.steps_per_epoch as u64;
            require(
                longest <= limits::STEPS,
                "mimic.steps_per_epoch",
                format!("{longest} updates is above the limit {}", limits::STEPS),
            )?;
            check_optim(&mm.optim, longest, "mimic.optim")?;
            if let Some(task) = &self.task {
                let s = crate::lego::task::seq_len(task.n_var);
                let vocab = crate::lego::task::VOCAB_SIZE;
                memory = memory.max(step_memory(m, vocab, s, mm.batch_size));
            }
        }
        if let Some(pt) = &self.pretrain {
            require(pt.vocab_words > 0, "pretrain.vocab_words", "must be > 0")?;
            at_most(pt.vocab_words, limits::VOCAB, "pretrain.vocab_words")?;
            require(pt.steps > 0, "pretrain.steps", "must be > 0")?;
            at_most(pt.steps, limits::STEPS as usize, "pretrain.steps")?;
            require(pt.batch_size > 0, "pretrain.batch_size", "must be > 0")?;
            at_most(pt.batch_size, limits::BATCH, "pretrain.batch_size")?;
            require(
                pt.mask_prob > 0.0 && pt.mask_prob < 1.0,
                "pretrain.mask_prob",
                format!("{} is not in (0, 1): BERT masks 0.15", pt.mask_prob),
            )?;
            check_optim(&pt.optim, pt.steps as u64, "pretrain.optim")?;
            if let Some(task) = &self.task {
                let s = crate::lego::task::seq_len(task.n_var);
                let vocab = pt.vocab_words + 2 * crate::lego::task::VOCAB_SIZE;
                // plus the logits over the vocabulary and their gradient
                let logits = 8.0 * (pt.batch_size * s) as f64 * vocab as f64;
                memory = memory.max(step_memory(m, vocab, s, pt.batch_size) + logits);
            }
        }
        let gib = memory / (1u64 << 30) as f64;
        require(
            gib <= limits::MEMORY_GIB,
            "model",
            format!(
                "one training step would need about {gib:.0} GiB (parameters, optimiser state and \
                 a batch's activations), above the limit {} GiB: make model.hidden, model.ffn, \
                 model.layers or the batch size smaller",
                limits::MEMORY_GIB
            ),
        )?;
        if kind == ExperimentKind::LegoAttention {
            let la = self
                .lego_attention
                .as_ref()
                .context("a LEGO attention study needs [*.lego_attention]")?;
            require(!la.configs.is_empty(), "lego_attention.configs", "empty")?;
            for c in &la.configs {
                require(
                    c.local_heads.saturating_add(c.association_heads) <= m.heads,
                    "lego_attention.configs",
                    format!("config `{}`: more fixed heads than model.heads", c.label),
                )?;
            }
        }
        Ok(())
    }
}
