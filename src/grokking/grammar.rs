//! Question formation (QF) and tense inflection (TI) in the style of McCoy, Frank, Linzen (2020):
//! our own small context-free grammar, the training / validation / generalisation splits, the
//! linear-rule baseline outputs and gold binary parse trees (the vocabulary and the two accuracy
//! helpers are in [`super::vocab`]).
//!
//! **Grammar.** `S -> NP_subj Aux VP` (QF) or `S -> NP_subj VP` (TI, past tense);
//! `NP_subj, NP_obj -> Det N | Det N PP | Det N RC`; `PP -> P Det N`;
//! `RC -> R Aux VP | R Det N Aux V_trans` (QF) or `R VP | R Det N V_trans` (TI);
//! `VP -> V_intr | V_trans NP` (the object of the main verb may carry a PP or RC, noun phrases
//! inside PPs and RCs are plain `Det N`). Auxiliaries (`do does don't doesn't`) and present-tense
//! verbs agree in number with their subject: the head noun for the main clause and for
//! subject-relative clauses, the clause's own `Det N` for object-relative clauses.
//!
//! **Gold trees** (binary, over the input sentence's word indices, as McCoy's `pos_to_parse`):
//! `NP = (Det N)`, `(NP PP)`, `(NP RC)`; `PP = (P NP)`; `RC = (R (Aux VP))`, `(R (NP (Aux V)))`
//! (QF), `(R VP)`, `(R (NP V))` (TI); `VP = V` or `(V NP)`; `S = (NP (Aux VP))` (QF), `(NP VP)` (TI).
//!
//! **Examples.** A line is `input . marker output P`: QF `quest` -> the question (main auxiliary
//! moved to the front, `P = ?`) or `decl` -> the same sentence (`P = .`); TI `PRESENT` -> every
//! verb re-inflected to present tense in agreement with its subject, or `PAST` -> a copy.
//! The *linear rule* moves the first auxiliary (QF) or makes each verb agree with the nearest
//! preceding noun (TI, the code's `tense_nearest`).
//!
//! **Splits** (100k / 1k / 10k by default). Training and validation: half identity examples
//! (`decl`/`PAST`, any sentence) and half transformations on which the linear and hierarchical
//! rules agree (QF questions have no relative clause on the subject; TI `PRESENT` examples have no
//! noun of the other number between subject and main verb). Generalisation: transformations only,
//! on which they disagree (QF: a relative clause on the subject whose auxiliary differs from the
//! main auxiliary; TI: the nearest noun before the main verb differs in number from the subject).
//!
//! ```
//! use attnlab::grokking::grammar::{grammar_split, GrammarTask};
//! use attnlab::grokking::SplitSizes;
//! let sizes = SplitSizes { train: 50, val: 5, gen: 5 };
//! let split = grammar_split(GrammarTask::Qf, sizes, 7).unwrap();
//! let g = &split.gen[0];
//! assert_ne!(g.output[0], g.linear_output[0]); // moving the first auxiliary is wrong here
//! assert!(g.tree.spans_sentence(g.input.len()));
//! ```

use super::tree::BinaryTree;
use super::SplitSizes;
use crate::rng::{stream, Rng};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::Rng as _;
use std::collections::HashSet;

/// Which of the two McCoy tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrammarTask {
    /// Question formation.
    Qf,
    /// Tense inflection.
    Ti,
}

/// Part of speech of a word of the input sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Pos {
    Det,
    Noun,
    Aux,
    Verb,
    Prep,
    Rel,
}

/// What follows the subject's `Det N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Modifier {
    None,
    Pp,
    Rc,
}

pub const DETERMINERS: [&str; 6] = ["the", "some", "my", "your", "our", "her"];
pub const NOUNS_SG: [&str; 13] = [
    "newt",
    "orangutan",
    "peacock",
    "quail",
    "raven",
    "salamander",
    "tyrannosaurus",
    "unicorn",
    "vulture",
    "walrus",
    "xylophone",
    "yak",
    "zebra",
];
pub const NOUNS_PL: [&str; 13] = [
    "newts",
    "orangutans",
    "peacocks",
    "quails",
    "ravens",
    "salamanders",
    "tyrannosauruses",
    "unicorns",
    "vultures",
    "walruses",
    "xylophones",
    "yaks",
    "zebras",
];
pub const PREPOSITIONS: [&str; 8] = [
    "around", "near", "with", "upon", "by", "behind", "above", "below",
];
pub const RELATIVIZERS: [&str; 2] = ["who", "that"];
/// The four QF auxiliaries, the candidates of the first-word metric.
pub const QF_AUXILIARIES: [&str; 4] = ["do", "does", "don't", "doesn't"];
const AUX_SG: [&str; 2] = ["does", "doesn't"];
const AUX_PL: [&str; 2] = ["do", "don't"];

/// A verb: base (present plural), present singular, past; and whether it takes an object.
pub struct Verb {
    pub base: &'static str,
    pub third: &'static str,
    pub past: &'static str,
    pub transitive: bool,
}

const fn v(base: &'static str, third: &'static str, past: &'static str, transitive: bool) -> Verb {
    Verb {
        base,
        third,
        past,
        transitive,
    }
}

pub const VERBS: [Verb; 18] = [
    v("giggle", "giggles", "giggled", false),
    v("smile", "smiles", "smiled", false),
    v("sleep", "sleeps", "slept", false),
    v("swim", "swims", "swam", false),
    v("wait", "waits", "waited", false),
    v("move", "moves", "moved", false),
    v("change", "changes", "changed", false),
    v("read", "reads", "read", false),
    v("eat", "eats", "ate", false),
    v("entertain", "entertains", "entertained", true),
    v("amuse", "amuses", "amused", true),
    v("high_five", "high_fives", "high_fived", true),
    v("applaud", "applauds", "applauded", true),
    v("confuse", "confuses", "confused", true),
    v("admire", "admires", "admired", true),
    v("accept", "accepts", "accepted", true),
    v("remember", "remembers", "remembered", true),
    v("comfort", "comforts", "comforted", true),
];

impl GrammarTask {
    /// The identity marker and the transformation marker.
    pub fn markers(self) -> (&'static str, &'static str) {
        match self {
            GrammarTask::Qf => ("decl", "quest"),
            GrammarTask::Ti => ("PAST", "PRESENT"),
        }
    }
}

/// One word of a generated sentence with what re-inflection needs.
#[derive(Clone, Copy, Debug)]
struct Word {
    text: &'static str,
    pos: Pos,
    /// Nouns: own number. Auxiliaries and verbs: the number of their subject.
    plural: bool,
    /// Verbs: index into `VERBS`.
    verb: usize,
}

/// One line of QF or TI: input sentence, marker, target output, with its gold tree and
/// annotations.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GrammarExample {
    pub task: GrammarTask,
    /// The declarative (QF) or past-tense (TI) sentence, without the final `.`.
    pub input: Vec<&'static str>,
    /// `decl` / `quest` (QF), `PAST` / `PRESENT` (TI).
    pub marker: &'static str,
    /// The target, without its final punctuation.
    pub output: Vec<&'static str>,
    /// What the linear rule would output.
    pub linear_output: Vec<&'static str>,
    /// Gold binary parse over the indices of `input`.
    pub tree: BinaryTree,
    /// Part of speech of each input word.
    pub pos: Vec<Pos>,
    /// Index in `input` of the main auxiliary (QF) or main verb (TI).
    pub main_index: usize,
    /// What modifies the subject noun.
    pub subject_modifier: Modifier,
}

impl GrammarExample {
    /// Whether this example asks for the transformation (`quest` / `PRESENT`).
    pub fn is_transform(&self) -> bool {
        self.marker == self.task.markers().1
    }

    /// The final punctuation of the output.
    pub fn output_end(&self) -> &'static str {
        if self.task == GrammarTask::Qf && self.is_transform() {
            "?"
        } else {
            "."
        }
    }

    /// The whole line the LM trains on: `input . marker output P`.
    pub fn tokens(&self) -> Vec<&'static str> {
        let mut t = self.input.clone();
        t.push(".");
        t.push(self.marker);
        t.extend(&self.output);
        t.push(self.output_end());
        t
    }

    /// Length of the prompt `input . marker`; the output starts at this token index.
    pub fn prompt_len(&self) -> usize {
        self.input.len() + 2
    }

    /// Whether the linear rule gives the same output as the hierarchical one.
    pub fn is_ambiguous(&self) -> bool {
        self.output == self.linear_output
    }
}

struct Builder<'a> {
    task: GrammarTask,
    words: Vec<Word>,
    rng: &'a mut Rng,
}

impl Builder<'_> {
    fn push(&mut self, text: &'static str, pos: Pos, plural: bool, verb: usize) -> BinaryTree {
        self.words.push(Word {
            text,
            pos,
            plural,
            verb,
        });
        BinaryTree::Leaf(self.words.len() - 1)
    }

    fn pick(&mut self, list: &[&'static str]) -> &'static str {
        list.choose(self.rng).copied().unwrap()
    }

    /// `(Det N)` and its number.
    fn np_plain(&mut self) -> (BinaryTree, bool) {
        let det = self.pick(&DETERMINERS);
        let plural = self.rng.gen_bool(0.5);
        let noun = self.pick(if plural { &NOUNS_PL } else { &NOUNS_SG });
        let d = self.push(det, Pos::Det, false, 0);
        let n = self.push(noun, Pos::Noun, plural, 0);
        (BinaryTree::node(d, n), plural)
    }

    fn np(&mut self, modifier: Modifier) -> (BinaryTree, bool) {
        let (head, plural) = self.np_plain();
        let tree = match modifier {
            Modifier::None => head,
            Modifier::Pp => {
                let p = self.pick(&PREPOSITIONS);
                let p = self.push(p, Pos::Prep, false, 0);
                let (obj, _) = self.np_plain();
                BinaryTree::node(head, BinaryTree::node(p, obj))
            }
            Modifier::Rc => {
                let rc = self.relative_clause(plural);
                BinaryTree::node(head, rc)
            }
        };
        (tree, plural)
    }

    fn random_modifier(&mut self) -> Modifier {
        *[Modifier::None, Modifier::Pp, Modifier::Rc]
            .choose(self.rng)
            .unwrap()
    }

    fn verb_index(&mut self, transitive: bool) -> usize {
        let candidates: Vec<usize> = (0..VERBS.len())
            .filter(|&i| VERBS[i].transitive == transitive)
            .collect();
        *candidates.choose(self.rng).unwrap()
    }

    /// A verb agreeing with `plural`: base form after an auxiliary (QF), past tense (TI).
    fn verb(&mut self, transitive: bool, plural: bool) -> BinaryTree {
        let i = self.verb_index(transitive);
        let text = match self.task {
            GrammarTask::Qf => VERBS[i].base,
            GrammarTask::Ti => VERBS[i].past,
        };
        self.push(text, Pos::Verb, plural, i)
    }

    fn aux(&mut self, plural: bool) -> BinaryTree {
        let a = self.pick(if plural { &AUX_PL } else { &AUX_SG });
        self.push(a, Pos::Aux, plural, 0)
    }

    /// `V` or `(V NP)`; the object may be modified only in the main clause.
    fn vp(&mut self, plural: bool, main_clause: bool) -> BinaryTree {
        let transitive = self.rng.gen_bool(0.5);
        let v = self.verb(transitive, plural);
        if !transitive {
            return v;
        }
        let modifier = if main_clause {
            self.random_modifier()
        } else {
            Modifier::None
        };
        let (obj, _) = self.np(modifier);
        BinaryTree::node(v, obj)
    }

    /// `(Aux VP)` in QF, `VP` in TI.
    fn predicate(&mut self, plural: bool, main_clause: bool) -> BinaryTree {
        match self.task {
            GrammarTask::Qf => {
                let a = self.aux(plural);
                let vp = self.vp(plural, main_clause);
                BinaryTree::node(a, vp)
            }
            GrammarTask::Ti => self.vp(plural, main_clause),
        }
    }

    fn relative_clause(&mut self, head_plural: bool) -> BinaryTree {
        let r = self.pick(&RELATIVIZERS);
        let r = self.push(r, Pos::Rel, false, 0);
        if self.rng.gen_bool(0.5) {
            // Subject relative: the head noun is the clause's subject.
            let pred = self.predicate(head_plural, false);
            BinaryTree::node(r, pred)
        } else {
            // Object relative: the clause has its own subject and a transitive verb.
            let (subj, plural) = self.np_plain();
            let pred = match self.task {
                GrammarTask::Qf => {
                    let a = self.aux(plural);
                    let v = self.verb(true, plural);
                    BinaryTree::node(a, v)
                }
                GrammarTask::Ti => self.verb(true, plural),
            };
            BinaryTree::node(r, BinaryTree::node(subj, pred))
        }
    }
}

/// Generates one sentence with the given subject modifier and builds the example.
fn generate(
    task: GrammarTask,
    subject_modifier: Modifier,
    transform: bool,
    rng: &mut Rng,
) -> GrammarExample {
    let mut b = Builder {
        task,
        words: Vec::new(),
        rng,
    };
    let (subj, plural) = b.np(subject_modifier);
    let main_index = b.words.len(); // the main auxiliary / verb comes right after the subject
    let pred = b.predicate(plural, true);
    let tree = BinaryTree::node(subj, pred);
    let words = b.words;
    let input: Vec<&'static str> = words.iter().map(|w| w.text).collect();
    let pos: Vec<Pos> = words.iter().map(|w| w.pos).collect();
    let (identity, transformation) = task.markers();
    let (output, linear_output) = if !transform {
        (input.clone(), input.clone())
    } else {
        match task {
            GrammarTask::Qf => {
                let first_aux = pos.iter().position(|&p| p == Pos::Aux).unwrap();
                (front(&input, main_index), front(&input, first_aux))
            }
            GrammarTask::Ti => (present_agreeing(&words), present_nearest(&words)),
        }
    };
    GrammarExample {
        task,
        input,
        marker: if transform { transformation } else { identity },
        output,
        linear_output,
        tree,
        pos,
        main_index,
        subject_modifier,
    }
}

/// Moves word `i` to the front.
fn front(words: &[&'static str], i: usize) -> Vec<&'static str> {
    let mut out = vec![words[i]];
    out.extend(words[..i].iter().chain(&words[i + 1..]));
    out
}

fn present(w: &Word, plural: bool) -> &'static str {
    if plural {
        VERBS[w.verb].base
    } else {
        VERBS[w.verb].third
    }
}

/// Present tense, each verb agreeing with its own subject.
fn present_agreeing(words: &[Word]) -> Vec<&'static str> {
    words
        .iter()
        .map(|w| match w.pos {
            Pos::Verb => present(w, w.plural),
            _ => w.text,
        })
        .collect()
}

/// Present tense, each verb agreeing with the nearest preceding noun (the linear rule).
fn present_nearest(words: &[Word]) -> Vec<&'static str> {
    let mut last_plural = false;
    words
        .iter()
        .map(|w| match w.pos {
            Pos::Noun => {
                last_plural = w.plural;
                w.text
            }
            Pos::Verb => present(w, last_plural),
            _ => w.text,
        })
        .collect()
}

/// Training, in-domain validation and generalisation examples.
#[derive(Clone, Debug)]
pub struct GrammarSplit {
    pub train: Vec<GrammarExample>,
    pub val: Vec<GrammarExample>,
    pub gen: Vec<GrammarExample>,
}

const REJECTION_LIMIT: usize = 10_000;

/// One in-domain example: half identity (any sentence), half transformations on which the linear
/// and hierarchical rules agree.
pub fn sample_in_domain(task: GrammarTask, rng: &mut Rng) -> GrammarExample {
    let transform = rng.gen_bool(0.5);
    if !transform {
        let m = *[Modifier::None, Modifier::Pp, Modifier::Rc]
            .choose(rng)
            .unwrap();
        return generate(task, m, false, rng);
    }
    match task {
        // Without a relative clause on the subject, the first auxiliary is the main one.
        GrammarTask::Qf => {
            let m = *[Modifier::None, Modifier::Pp].choose(rng).unwrap();
            generate(task, m, true, rng)
        }
        GrammarTask::Ti => rejection(
            |rng| {
                let m = *[Modifier::None, Modifier::Pp, Modifier::Rc]
                    .choose(rng)
                    .unwrap();
                generate(task, m, true, rng)
            },
            |e| e.is_ambiguous(),
            rng,
        ),
    }
}

/// One generalisation example: a transformation that the linear rule gets wrong at the metric's
/// position (QF: the first output word; TI: the main verb).
pub fn sample_generalisation(task: GrammarTask, rng: &mut Rng) -> GrammarExample {
    match task {
        GrammarTask::Qf => rejection(
            |rng| generate(task, Modifier::Rc, true, rng),
            |e| e.output[0] != e.linear_output[0],
            rng,
        ),
        GrammarTask::Ti => rejection(
            |rng| {
                let m = *[Modifier::Pp, Modifier::Rc].choose(rng).unwrap();
                generate(task, m, true, rng)
            },
            |e| e.output[e.main_index] != e.linear_output[e.main_index],
            rng,
        ),
    }
}

fn rejection<G, A>(gen: G, accept: A, rng: &mut Rng) -> GrammarExample
where
    G: Fn(&mut Rng) -> GrammarExample,
    A: Fn(&GrammarExample) -> bool,
{
    for _ in 0..REJECTION_LIMIT {
        let e = gen(rng);
        if accept(&e) {
            return e;
        }
    }
    // Each condition holds with probability about 1/2 per draw; reaching here is a grammar bug.
    panic!("no acceptable example in {REJECTION_LIMIT} draws");
}

/// Draws the split deterministically from `seed`: training from stream
/// [`TRAIN_SET`](super::streams::TRAIN_SET), validation from [`HELD_OUT`](super::streams::HELD_OUT)
/// (lines that occur in training are redrawn), generalisation from
/// [`GRAMMAR_GEN`](super::streams::GRAMMAR_GEN).
pub fn grammar_split(task: GrammarTask, sizes: SplitSizes, seed: u64) -> Result<GrammarSplit> {
    let mut rng = stream(seed, super::streams::TRAIN_SET);
    let train: Vec<GrammarExample> = (0..sizes.train)
        .map(|_| sample_in_domain(task, &mut rng))
        .collect();
    let seen: HashSet<Vec<&'static str>> = train.iter().map(|e| e.tokens()).collect();
    let mut rng = stream(seed, super::streams::HELD_OUT);
    let mut val = Vec::with_capacity(sizes.val);
    let budget = 100 * sizes.val + 100_000;
    let mut draws = 0;
    while val.len() < sizes.val {
        draws += 1;
        if draws > budget {
            bail!(
                "could not draw {} validation lines absent from the {} training lines in {budget} draws",
                sizes.val,
                sizes.train
            );
        }
        let e = sample_in_domain(task, &mut rng);
        if !seen.contains(&e.tokens()) {
            val.push(e);
        }
    }
    let mut rng = stream(seed, super::streams::GRAMMAR_GEN);
    let gen = (0..sizes.gen)
        .map(|_| sample_generalisation(task, &mut rng))
        .collect();
    Ok(GrammarSplit { train, val, gen })
}
