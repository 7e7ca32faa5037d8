//! The data of a run: the split of its task (Dyck from [`super::dyck`], question formation and
//! tense inflection from [`super::grammar`]) encoded as token ids for a decoder LM, one line per
//! example with `BOS` at position 0 and a `PAD` id after the task's own tokens.

use super::config::{Settings, Task};
use super::dyck::{self, DyckSplit};
use super::grammar::{self, GrammarSplit, GrammarTask};
use super::vocab::GrammarVocab;
use super::SplitSizes;
use anyhow::{Context, Result};

/// The data of one run, encoded as token ids with `BOS` at position 0.
pub struct RunData {
    pub task: Task,
    /// Bracket types (Dyck).
    pub k: usize,
    pub grammar: Option<(GrammarSplit, GrammarVocab)>,
    pub dyck: Option<DyckSplit>,
    pub train: Vec<Vec<u32>>,
    pub bos: u32,
    pub pad: u32,
    pub vocab_size: usize,
    pub max_len: usize,
}

impl RunData {
    /// Draws the split of `settings` for `task`.
    pub fn new(task: Task, settings: &Settings) -> Result<Self> {
        let sizes = SplitSizes {
            train: settings.data.train,
            val: settings.data.val,
            gen: settings.data.gen,
        };
        match task {
            Task::Dyck => {
                let d = settings
                    .data
                    .dyck
                    .as_ref()
                    .context("Dyck task without [data.dyck]")?;
                let split =
                    dyck::structure_split(&d.sampler(), sizes, d.split, settings.data.seed)?;
                let k = d.bracket_types;
                let (bos, pad) = (2 * k as u32, 2 * k as u32 + 1);
                let train: Vec<Vec<u32>> = split.train.iter().map(|s| dyck_line(bos, s)).collect();
                let max_len = split
                    .train
                    .iter()
                    .chain(&split.val)
                    .chain(&split.gen)
                    .map(|s| s.len() + 1)
                    .max()
                    .unwrap_or(1);
                Ok(Self {
                    task,
                    k,
                    grammar: None,
                    dyck: Some(split),
                    train,
                    bos,
                    pad,
                    vocab_size: 2 * k + 2,
                    max_len,
                })
            }
            Task::Qf | Task::Ti => {
                let gt = if task == Task::Qf {
                    GrammarTask::Qf
                } else {
                    GrammarTask::Ti
                };
                let split = grammar::grammar_split(gt, sizes, settings.data.seed)?;
                let vocab = GrammarVocab::new(gt);
                let (bos, pad) = (vocab.len() as u32, vocab.len() as u32 + 1);
                let mut train = Vec::with_capacity(split.train.len());
                for e in &split.train {
                    train.push(with_bos(bos, vocab.encode(&e.tokens())?));
                }
                let max_len = split
                    .train
                    .iter()
                    .chain(&split.val)
                    .chain(&split.gen)
                    .map(|e| e.tokens().len() + 3)
                    .max()
                    .unwrap_or(1);
                let vs = vocab.len() + 2;
                Ok(Self {
                    task,
                    k: 0,
                    grammar: Some((split, vocab)),
                    dyck: None,
                    train,
                    bos,
                    pad,
                    vocab_size: vs,
                    max_len,
                })
            }
        }
    }
}

/// `BOS` followed by the ids of a Dyck string.
pub fn dyck_line(bos: u32, s: &[u16]) -> Vec<u32> {
    std::iter::once(bos)
        .chain(s.iter().map(|&t| t as u32))
        .collect()
}

/// `BOS` followed by word ids.
pub fn with_bos(bos: u32, ids: Vec<usize>) -> Vec<u32> {
    std::iter::once(bos)
        .chain(ids.into_iter().map(|i| i as u32))
        .collect()
}
