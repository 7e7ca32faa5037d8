//! Masked-language-model pretraining of the LEGO encoder on real English text, then transfer
//! into the LEGO model: the CPU-sized stand-in for the paper's pretrained BERT (study 2: does
//! pretraining on text give the structured attention LEGO needs?).
//!
//! - Corpus: a text file, or every plain file of a directory (names without an extension, not
//!   links: the layout of the Debian package `fortunes`, which `scripts/install-text-corpus`
//!   installs). Lines that are a lone `%` (the fortune separator) are dropped.
//! - Words: lower-cased runs of letters, digits and apostrophes; every other visible character
//!   is a token of its own. The vocabulary is `[PAD] [UNK] [CLS] [SEP] [MASK]`, then LEGO's own
//!   token strings (`a`..`z`, `=`, `val`, `not`, `,`, `0`, `1`) so that every LEGO token has a
//!   pretrained row where the text uses it, then the `vocab_words` most frequent other words.
//! - Objective (BERT): windows of the LEGO sentence length (`[CLS]` text `[SEP]`) at random
//!   offsets of the first 95 % of the token stream; each text token is masked with
//!   `mask_prob`, and a masked token becomes `[MASK]` (80 %), a random word (10 %) or stays
//!   (10 %); cross-entropy at the masked positions. The last 5 % is held out: masked-word
//!   accuracy on fixed windows of it at every evaluation.
//! - Transfer: every parameter of the same name and shape (positions, blocks, final norm); the
//!   token embedding row of each LEGO token is the text embedding of the same string; the output
//!   layer stays the LEGO model's own (one logit).

use crate::lego::config::{optim_for, Arch, TextPretrainConfig};
use crate::lego::epochs::update;
use crate::lego::measure::{association_score_where, uniform_attention};
use crate::lego::model::{encoder_config, LegoModel, LegoRun};
use crate::lego::task::{seq_len, token_str, VOCAB_SIZE};
use crate::nn::{cross_entropy, ForwardOpts, Transformer, TransformerConfig};
use crate::rng::Rng;
use crate::run::{State, StepOutcome, Trainer};
use crate::train::Optimizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rand::Rng as _;
use std::collections::HashMap;
use std::path::Path;

/// The special tokens, in vocabulary order.
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const UNK: u32 = 1;
const CLS: u32 = 2;
const SEP: u32 = 3;
const MASK: u32 = 4;
/// Fraction of the token stream held out for the masked-word accuracy.
const HELD_OUT: f64 = 0.05;
/// Held-out windows scored at every evaluation.
const EVAL_WINDOWS: usize = 512;
/// Evaluations over a pretraining run.
const EVALS: u64 = 10;

/// A tokenised corpus and its vocabulary.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub vocab: Vec<String>,
    ids: HashMap<String, u32>,
    /// Token ids of the training part of the stream.
    pub train: Vec<u32>,
    /// Token ids of the held-out part.
    pub held_out: Vec<u32>,
    /// Fraction of training tokens that are `[UNK]`.
    pub unk_rate: f64,
}

/// Words and single-character tokens of `text`, lower-cased.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' {
            cur.extend(c.to_lowercase());
            continue;
        }
        if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if !c.is_whitespace() && !c.is_control() {
            out.push(c.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The text of `path` (a file, or the plain files of a directory in name order).
fn read_corpus(path: &Path) -> Result<String> {
    let missing = || {
        format!(
            "pretrain.corpus: `{}` not found: install the English text corpus with \
             `scripts/install-text-corpus` (the Debian package `fortunes`), or point \
             pretrain.corpus at a text file or directory",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).with_context(missing)?;
    let files = if meta.is_dir() {
        let mut f: Vec<_> = std::fs::read_dir(path)
            .with_context(missing)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .filter(|p| p.extension().is_none())
            .collect();
        f.sort();
        f
    } else {
        vec![path.to_path_buf()]
    };
    let mut text = String::new();
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading `{}`", f.display()))?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            if line.trim() != "%" {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    Ok(text)
}

impl Corpus {
    /// Reads and tokenises `path` with a vocabulary of the specials, LEGO's tokens and the
    /// `vocab_words` most frequent other words (ties in string order).
    pub fn load(path: &Path, vocab_words: usize) -> Result<Self> {
        Self::from_text(&read_corpus(path)?, vocab_words)
            .with_context(|| format!("pretrain.corpus `{}`", path.display()))
    }

    pub fn from_text(text: &str, vocab_words: usize) -> Result<Self> {
        let toks = words(text);
        let mut vocab: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        for i in 0..VOCAB_SIZE as u32 {
            let s = token_str(i);
            if !vocab.iter().any(|v| v == s) {
                vocab.push(s.to_string());
            }
        }
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in &toks {
            *counts.entry(w.as_str()).or_default() += 1;
        }
        let mut by_count: Vec<(&str, usize)> = counts
            .into_iter()
            .filter(|(w, _)| !vocab.iter().any(|v| v == w))
            .collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        vocab.extend(
            by_count
                .iter()
                .take(vocab_words)
                .map(|(w, _)| w.to_string()),
        );
        let ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        let stream: Vec<u32> = toks
            .iter()
            .map(|w| ids.get(w).copied().unwrap_or(UNK))
            .collect();
        let cut = ((1.0 - HELD_OUT) * stream.len() as f64) as usize;
        let (train, held_out) = (stream[..cut].to_vec(), stream[cut..].to_vec());
        let unk_rate =
            train.iter().filter(|&&t| t == UNK).count() as f64 / train.len().max(1) as f64;
        Ok(Self {
            vocab,
            ids,
            train,
            held_out,
            unk_rate,
        })
    }

    /// The vocabulary id of `word`.
    pub fn id(&self, word: &str) -> Option<u32> {
        self.ids.get(word).copied()
    }
}

/// A masked batch: inputs, targets and the masked positions (weights), all `(B, T)`.
#[derive(Clone)]
struct Masked {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    weights: Vec<f32>,
}

/// `b` windows of `t` tokens (`[CLS]` text `[SEP]`) from `src`, masked as BERT does.
fn masked_batch(src: &[u32], b: usize, t: usize, p: f64, vocab: usize, rng: &mut Rng) -> Masked {
    let w = t - 2;
    let mut m = Masked {
        inputs: Vec::with_capacity(b * t),
        targets: Vec::with_capacity(b * t),
        weights: Vec::with_capacity(b * t),
    };
    for _ in 0..b {
        let start = rng.gen_range(0..=src.len() - w);
        m.inputs.push(CLS);
        m.targets.push(CLS);
        m.weights.push(0.0);
        for &tok in &src[start..start + w] {
            let masked = rng.gen::<f64>() < p;
            let r = rng.gen::<f64>();
            let input = if !masked || r >= 0.9 {
                tok
            } else if r < 0.8 {
                MASK
            } else {
                rng.gen_range(SPECIALS.len() as u32..vocab as u32)
            };
            m.inputs.push(input);
            m.targets.push(tok);
            m.weights.push(if masked { 1.0 } else { 0.0 });
        }
        m.inputs.push(SEP);
        m.targets.push(SEP);
        m.weights.push(0.0);
    }
    // a batch with nothing masked would have no loss: mask the first text token
    if m.weights.iter().all(|&x| x == 0.0) {
        m.inputs[1] = MASK;
        m.weights[1] = 1.0;
    }
    m
}

/// The masked-LM encoder of `run`'s architecture over `corpus`'s vocabulary.
pub fn mlm_config(
    m: &crate::lego::config::ModelConfig,
    run: &LegoRun,
    vocab: usize,
) -> TransformerConfig {
    TransformerConfig {
        vocab_size: vocab,
        n_out: vocab,
        share_layers: run.arch == Arch::Albert,
        ..encoder_config(m)
    }
}

/// Masked-LM pretraining (see the module doc). Batches of step `s` come from the seed and `s`
/// alone, so a resumed run sees the same data.
pub struct TextTrainer<'a> {
    pub model: Transformer,
    pub varmap: VarMap,
    opt: Optimizer,
    corpus: &'a Corpus,
    cfg: &'a TextPretrainConfig,
    t: usize,
    seed: u64,
    eval: Masked,
    /// Loss of every update.
    pub losses: Vec<f64>,
    /// Held-out masked-word accuracy of the latest evaluation.
    pub held_out_accuracy: f64,
}

impl<'a> TextTrainer<'a> {
    pub fn new(
        m: &crate::lego::config::ModelConfig,
        run: &LegoRun,
        n_var: usize,
        corpus: &'a Corpus,
        cfg: &'a TextPretrainConfig,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let t = seq_len(n_var);
        if corpus.train.len() < t || corpus.held_out.len() < t {
            bail!(
                "pretrain.corpus: {} tokens is too short for windows of {t}: use a larger corpus",
                corpus.train.len() + corpus.held_out.len()
            );
        }
        let mc = mlm_config(m, run, corpus.vocab.len());
        let (model, varmap) = Transformer::build(
            &mc,
            crate::lego::seeds::model_init(run.seed),
            DType::F32,
            dev,
        )?;
        let opt = Optimizer::new(optim_for(&cfg.optim, cfg.steps as u64), &varmap)
            .context("invalid value in `pretrain.optim`")?;
        let eval = masked_batch(
            &corpus.held_out,
            EVAL_WINDOWS,
            t,
            cfg.mask_prob,
            corpus.vocab.len(),
            &mut crate::lego::seeds::text_eval(),
        );
        Ok(Self {
            model,
            varmap,
            opt,
            corpus,
            cfg,
            t,
            seed: run.seed,
            eval,
            losses: Vec::new(),
            held_out_accuracy: f64::NAN,
        })
    }

    fn tensors(&self, m: &Masked, b: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = &self.model_device();
        Ok((
            Tensor::from_vec(m.inputs.clone(), (b, self.t), dev)?,
            Tensor::from_vec(m.targets.clone(), (b, self.t), dev)?,
            Tensor::from_vec(m.weights.clone(), (b, self.t), dev)?,
        ))
    }

    fn model_device(&self) -> candle_core::Device {
        self.varmap
            .all_vars()
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(candle_core::Device::Cpu)
    }

    /// Association score of every head, layer-major, on the held-out windows without masks: for
    /// each word (not a special, not `[UNK]`) that occurs again in its window, the attention mass
    /// on its other occurrences, averaged over such words and windows; and the score of uniform
    /// attention on the same windows. The LEGO sentences' association score, measured on text.
    pub fn text_association(&self) -> Result<(Vec<Vec<f64>>, f64)> {
        let (b, t) = (EVAL_WINDOWS, self.t);
        let dev = self.model_device();
        let x = Tensor::from_vec(self.eval.targets.clone(), (b, t), &dev)?;
        let out = self.model.forward_with(
            &x,
            ForwardOpts {
                capture_attention: true,
                ..Default::default()
            },
        )?;
        let word = |id: u32| id >= SPECIALS.len() as u32;
        let uniform = uniform_attention(t);
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let mut uni = Vec::new();
        for w in self.eval.targets.chunks(t) {
            uni.extend(association_score_where(uniform.view(), w, word)?);
        }
        let mut per_layer = Vec::new();
        for a in &out.attention {
            let h = a.dim(1)?;
            let m = a.flatten_all()?.to_vec1::<f32>()?;
            let mut heads = vec![Vec::new(); h];
            for (i, w) in self.eval.targets.chunks(t).enumerate() {
                for (hi, scores) in heads.iter_mut().enumerate() {
                    let off = (i * h + hi) * t * t;
                    let map = ndarray::ArrayView2::from_shape((t, t), &m[off..off + t * t])?;
                    scores.extend(association_score_where(map, w, word)?);
                }
            }
            per_layer.push(heads.into_iter().map(mean).collect());
        }
        Ok((per_layer, mean(uni)))
    }

    /// Masked-word accuracy on the held-out windows.
    fn held_out(&self) -> Result<f64> {
        let (x, y, w) = self.tensors(&self.eval, EVAL_WINDOWS)?;
        let logits = self.model.forward(&x)?;
        crate::nn::accuracy(&logits, &y, Some(&w))
    }

    /// Masked-word accuracy on the held-out windows over the masked words that are in the
    /// vocabulary (`[UNK]` targets, which the model may learn to predict, left out).
    pub fn held_out_known(&self) -> Result<f64> {
        let mut known = self.eval.clone();
        for (w, &t) in known.weights.iter_mut().zip(&known.targets) {
            if t == UNK {
                *w = 0.0;
            }
        }
        let (x, y, w) = self.tensors(&known, EVAL_WINDOWS)?;
        let logits = self.model.forward(&x)?;
        crate::nn::accuracy(&logits, &y, Some(&w))
    }
}

impl Trainer for TextTrainer<'_> {
    fn total_steps(&self) -> u64 {
        self.cfg.steps as u64
    }

    fn eval_columns(&self) -> Vec<String> {
        vec!["held_out_masked_accuracy".into()]
    }

    fn eval_due(&self, step: u64) -> bool {
        let every = (self.cfg.steps as u64 / EVALS).max(1);
        step > 0 && (step.is_multiple_of(every) || step == self.cfg.steps as u64)
    }

    fn lr(&self) -> f64 {
        self.opt.current_lr()
    }

    fn step(&mut self, step: u64) -> Result<StepOutcome> {
        let b = self.cfg.batch_size;
        let mut rng = crate::lego::seeds::text_batch(self.seed, step);
        let m = masked_batch(
            &self.corpus.train,
            b,
            self.t,
            self.cfg.mask_prob,
            self.corpus.vocab.len(),
            &mut rng,
        );
        let (x, y, w) = self.tensors(&m, b)?;
        let logits = self.model.forward(&x)?;
        let out = update(&cross_entropy(&logits, &y, Some(&w))?, &mut self.opt)?;
        if out.loss.is_finite() {
            self.losses.push(out.loss);
        }
        Ok(out)
    }

    fn evaluate(&mut self, _step: u64) -> Result<Vec<f64>> {
        self.held_out_accuracy = self.held_out()?;
        Ok(vec![self.held_out_accuracy])
    }

    fn save(&self, st: &mut State) -> Result<()> {
        crate::lego::train::save_weights_and_losses(st, &self.varmap, &self.opt, &self.losses)
    }

    fn load(&mut self, st: &State) -> Result<()> {
        self.losses = crate::lego::train::load_weights_and_losses(st, &self.varmap, &mut self.opt)?;
        self.held_out_accuracy = self.held_out()?;
        Ok(())
    }

    fn diverged(&self, _step: u64, outcome: &StepOutcome) -> Option<String> {
        crate::lego::epochs::loss_diverged(outcome, self.losses.first().copied())
    }
}

/// Copies the pretrained encoder in `mlm` into `lm` (see the module doc); returns how many
/// parameters were copied whole.
pub fn transfer(mlm: &VarMap, corpus: &Corpus, lm: &LegoModel) -> Result<usize> {
    let src = mlm.data().lock().expect("VarMap lock poisoned");
    let dst = lm.varmap.data().lock().expect("VarMap lock poisoned");
    let mut copied = 0;
    for (name, var) in dst.iter() {
        let Some(s) = src.get(name) else { continue };
        if name == "tok_emb" {
            let rows: Vec<u32> = (0..VOCAB_SIZE as u32)
                .map(|i| {
                    corpus
                        .id(token_str(i))
                        .context("a LEGO token missing from the text vocabulary")
                })
                .collect::<Result<_>>()?;
            let idx = Tensor::from_vec(rows, VOCAB_SIZE, s.device())?;
            var.set(&s.as_tensor().index_select(&idx, 0)?)?;
        } else if s.shape() == var.shape() {
            var.set(s.as_tensor())?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_follows_berts_rates_and_spares_cls_and_sep() {
        let src: Vec<u32> = (0..10_000).map(|i| 40 + (i % 100)).collect();
        let (b, t, p) = (400, 32, 0.15);
        let m = masked_batch(&src, b, t, p, 200, &mut crate::rng::seeded(3));
        let masked: Vec<usize> = (0..b * t).filter(|&i| m.weights[i] == 1.0).collect();
        let n = (b * (t - 2)) as f64;
        // 12,000 text tokens: the masked fraction is within 4 standard deviations of p
        let sd = (p * (1.0 - p) / n).sqrt();
        let frac = masked.len() as f64 / n;
        assert!((frac - p).abs() < 4.0 * sd, "masked fraction {frac}");
        let as_mask = masked.iter().filter(|&&i| m.inputs[i] == MASK).count() as f64;
        let kept = masked
            .iter()
            .filter(|&&i| m.inputs[i] == m.targets[i])
            .count() as f64;
        let k = masked.len() as f64;
        assert!(
            (as_mask / k - 0.8).abs() < 0.05,
            "[MASK] share {}",
            as_mask / k
        );
        // kept: the 10 % left as they are, plus random words that drew the same word (1/195)
        assert!((kept / k - 0.1).abs() < 0.04, "kept share {}", kept / k);
        for r in 0..b {
            assert_eq!((m.inputs[r * t], m.weights[r * t]), (CLS, 0.0));
            assert_eq!(
                (m.inputs[r * t + t - 1], m.weights[r * t + t - 1]),
                (SEP, 0.0)
            );
        }
    }
}
