//! The vocabulary of a grammar task of [`super::grammar`] (word ids and parts of speech) and the
//! two accuracy helpers that read a model's output through it.

use super::grammar::{
    GrammarExample, GrammarTask, Pos, DETERMINERS, NOUNS_PL, NOUNS_SG, PREPOSITIONS,
    QF_AUXILIARIES, RELATIVIZERS, VERBS,
};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// The words of a task, in a fixed order, with their ids; markers and punctuation included,
/// no special tokens (a model appends its own after these).
#[derive(Clone, Debug)]
pub struct GrammarVocab {
    words: Vec<&'static str>,
    ids: HashMap<&'static str, usize>,
    pos: HashMap<&'static str, Pos>,
}

impl GrammarVocab {
    pub fn new(task: GrammarTask) -> Self {
        let mut entries: Vec<(&'static str, Option<Pos>)> = Vec::new();
        entries.extend(DETERMINERS.iter().map(|w| (*w, Some(Pos::Det))));
        entries.extend(
            NOUNS_SG
                .iter()
                .chain(&NOUNS_PL)
                .map(|w| (*w, Some(Pos::Noun))),
        );
        entries.extend(PREPOSITIONS.iter().map(|w| (*w, Some(Pos::Prep))));
        entries.extend(RELATIVIZERS.iter().map(|w| (*w, Some(Pos::Rel))));
        match task {
            GrammarTask::Qf => {
                entries.extend(QF_AUXILIARIES.iter().map(|w| (*w, Some(Pos::Aux))));
                entries.extend(VERBS.iter().map(|v| (v.base, Some(Pos::Verb))));
            }
            GrammarTask::Ti => {
                for v in &VERBS {
                    for w in [v.past, v.third, v.base] {
                        entries.push((w, Some(Pos::Verb)));
                    }
                }
            }
        }
        let (identity, transformation) = task.markers();
        entries.extend([".", "?", identity, transformation].map(|w| (w, None)));
        let mut vocab = GrammarVocab {
            words: Vec::new(),
            ids: HashMap::new(),
            pos: HashMap::new(),
        };
        for (w, p) in entries {
            if let std::collections::hash_map::Entry::Vacant(e) = vocab.ids.entry(w) {
                e.insert(vocab.words.len());
                vocab.words.push(w);
            }
            if let Some(p) = p {
                vocab.pos.insert(w, p);
            }
        }
        vocab
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The id of `word`.
    pub fn id(&self, word: &str) -> Option<usize> {
        self.ids.get(word).copied()
    }

    /// The word with id `id`.
    pub fn word(&self, id: usize) -> Option<&'static str> {
        self.words.get(id).copied()
    }

    /// Part of speech of a sentence word (`None` for markers, punctuation and unknown words).
    pub fn pos(&self, word: &str) -> Option<Pos> {
        self.pos.get(word).copied()
    }

    /// Ids of `words`; fails naming the first unknown word.
    pub fn encode(&self, words: &[&str]) -> Result<Vec<usize>> {
        words
            .iter()
            .map(|w| {
                self.id(w)
                    .ok_or_else(|| anyhow::anyhow!("word `{w}` is not in the vocabulary"))
            })
            .collect()
    }
}

/// QF first-word accuracy on one example: `scores` (length = vocabulary size) are the model's
/// scores for the token right after `quest`; correct when, among the four auxiliaries only, the
/// target's first word scores highest (first maximum on ties).
pub fn qf_first_word_correct(
    example: &GrammarExample,
    scores: &[f32],
    vocab: &GrammarVocab,
) -> Result<bool> {
    if example.task != GrammarTask::Qf || !example.is_transform() {
        bail!("first-word accuracy applies to question-formation `quest` examples only");
    }
    if scores.len() < vocab.len() {
        bail!(
            "scores have {} entries, fewer than the {} vocabulary words",
            scores.len(),
            vocab.len()
        );
    }
    let mut best: Option<(&str, f32)> = None;
    for aux in QF_AUXILIARIES {
        let id = vocab.id(aux).ok_or_else(|| {
            anyhow::anyhow!("the vocabulary lacks `{aux}`: pass the question-formation vocabulary")
        })?;
        let s = scores[id];
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((aux, s));
        }
    }
    Ok(best.map(|(w, _)| w) == Some(example.output[0]))
}

/// TI main-verb accuracy on one example, given the decoded output (words after the marker, a
/// final `.` and anything after it ignored): as the official `main_right_tense`, correct when
/// the decoded words have the target's part-of-speech sequence and the main verb is the target's.
pub fn ti_main_verb_correct(
    example: &GrammarExample,
    decoded: &[&str],
    vocab: &GrammarVocab,
) -> bool {
    let end = decoded
        .iter()
        .position(|w| *w == ".")
        .unwrap_or(decoded.len());
    let decoded = &decoded[..end];
    if decoded.len() != example.output.len() {
        return false;
    }
    let same_pos = decoded
        .iter()
        .zip(&example.pos)
        .all(|(w, p)| vocab.pos(w) == Some(*p));
    same_pos && decoded[example.main_index] == example.output[example.main_index]
}
