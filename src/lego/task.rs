//! LEGO sentences: a chain of `n` binary variables written as shuffled clauses, with the
//! value of every variable as label, exactly as the official generator builds them
//! (github.com/yizhangzzz/transformers-lego, `lego_data.py`), on our own small vocabulary.
//!
//! A chain `x_0 -> x_1 -> ... -> x_{n-1}` has values in {+1, -1}. The root clause gives a
//! literal (`a = val 1 ,`), every later clause relates `x_k` to `x_{k-1}`: `b = val a ,`
//! (same value) or `b = not a ,` (opposite). The sentence is
//! `[CLS] clause_{order^-1(0)} ... clause_{order^-1(n-1)} [SEP]`, 5 tokens per clause, so
//! `5n + 2` tokens. The model reads the value of chain variable `k` at the token position of
//! the left-hand variable of its clause.
//!
//! Literal tokens: `1` is +1 and `0` is -1, as in the official code (values stored as 1/0).
//!
//! ```
//! use attnlab::lego::task::{LegoSentence, TaskSpec, token_str};
//! let mut rng = attnlab::rng::seeded(0);
//! let s = LegoSentence::generate(&TaskSpec::shuffled(4), &mut rng);
//! assert_eq!(s.tokens.len(), 4 * 5 + 2);
//! assert_eq!(token_str(s.tokens[0]), "[CLS]");
//! // the root (chain index 0) carries a literal equal to its label
//! let root_clause = s.order.iter().position(|&k| k == 0).unwrap();
//! let literal = token_str(s.tokens[1 + 5 * root_clause + 3]);
//! assert_eq!(literal, if s.values[0] == 1 { "1" } else { "0" });
//! ```

use crate::rng::{seeded, stream, Rng};
use anyhow::{bail, Result};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Number of variable names (a..z); also the largest chain length.
pub const N_NAMES: usize = 26;
/// Token id of `=`.
pub const EQ: u32 = 26;
/// Token id of `val` (same value as the right-hand side).
pub const VAL: u32 = 27;
/// Token id of `not` (opposite value).
pub const NOT: u32 = 28;
/// Token id of `,` (end of clause).
pub const COMMA: u32 = 29;
/// Token id of the literal `0` (value -1).
pub const ZERO: u32 = 30;
/// Token id of the literal `1` (value +1).
pub const ONE: u32 = 31;
/// Token id of `[CLS]` (first token).
pub const CLS: u32 = 32;
/// Token id of `[SEP]` (last token).
pub const SEP: u32 = 33;
/// Token id of `[PAD]` (fills batches of sentences of different lengths).
pub const PAD: u32 = 34;
/// Vocabulary size: 26 names, `=`, `val`, `not`, `,`, `0`, `1`, `[CLS]`, `[SEP]`, `[PAD]`.
pub const VOCAB_SIZE: usize = 35;
/// Tokens per clause: `lhs = op rhs ,`.
pub const CLAUSE_LEN: usize = 5;

const SYMBOLS: [&str; 9] = ["=", "val", "not", ",", "0", "1", "[CLS]", "[SEP]", "[PAD]"];
const NAMES: [&str; N_NAMES] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t", "u", "v", "w", "x", "y", "z",
];

/// The string of token `id`; `"?"` outside the vocabulary.
pub fn token_str(id: u32) -> &'static str {
    let i = id as usize;
    if i < N_NAMES {
        NAMES[i]
    } else if i < VOCAB_SIZE {
        SYMBOLS[i - N_NAMES]
    } else {
        "?"
    }
}

/// The id of token string `s`, if it is in the vocabulary.
pub fn token_id(s: &str) -> Option<u32> {
    NAMES
        .iter()
        .chain(SYMBOLS.iter())
        .position(|&t| t == s)
        .map(|i| i as u32)
}

/// Whether `id` is a variable name (a..z).
pub fn is_name(id: u32) -> bool {
    (id as usize) < N_NAMES
}

/// Token position of the left-hand variable of the clause at sentence position `clause`.
pub fn lhs_position(clause: usize) -> usize {
    1 + CLAUSE_LEN * clause
}

/// Sequence length of a sentence with `n_var` clauses: `5 n_var + 2`.
pub fn seq_len(n_var: usize) -> usize {
    CLAUSE_LEN * n_var + 2
}

/// In which order the clauses are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClauseOrder {
    /// A uniform random permutation (the official task).
    Shuffled,
    /// Chain order: root first, each clause right after the one it depends on.
    Chain,
    /// Reverse chain order: root last.
    Reversed,
}

/// How the relation (`val`/`not`) of each non-root clause is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relations {
    /// `not` with probability `p_not`, independently per clause (official: 0.5, since the
    /// official code draws every value uniformly and derives the relation).
    Random { p_not: f64 },
    /// Every clause is `val`: all variables equal the root literal.
    AllVal,
    /// Every clause is `not`: values alternate along the chain.
    AllNot,
}

/// How variable names are assigned to chain positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// `n` distinct names drawn uniformly from a..z for every sentence (official).
    Random,
    /// Chain position `k` is always the `k`-th letter (a, b, c, ...): the name gives the depth away.
    Alphabetical,
}

/// Everything that determines the distribution of a LEGO sentence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Chain length (1..=26).
    pub n_var: usize,
    pub order: ClauseOrder,
    pub relations: Relations,
    pub naming: Naming,
}

impl TaskSpec {
    /// The official task: shuffled clauses, uniform relations, random names.
    pub fn shuffled(n_var: usize) -> Self {
        Self {
            n_var,
            order: ClauseOrder::Shuffled,
            relations: Relations::Random { p_not: 0.5 },
            naming: Naming::Random,
        }
    }

    /// The official task with clauses kept in chain order (for the shortcut study).
    pub fn chain_ordered(n_var: usize) -> Self {
        Self {
            order: ClauseOrder::Chain,
            ..Self::shuffled(n_var)
        }
    }

    /// Fails with a message naming the field unless the spec can generate sentences.
    pub fn validate(&self) -> Result<()> {
        if self.n_var == 0 || self.n_var > N_NAMES {
            bail!(
                "invalid value for `n_var`: {} (must be 1..={N_NAMES}: one distinct name a..z per variable)",
                self.n_var
            );
        }
        if let Relations::Random { p_not } = self.relations {
            if !(0.0..=1.0).contains(&p_not) {
                bail!("invalid value for `p_not`: {p_not} (must be a probability in [0, 1])");
            }
        }
        Ok(())
    }
}

/// One LEGO sentence with its labels. Vectors indexed by chain position have length `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegoSentence {
    /// Token ids, `(5n + 2,)`: `[CLS]`, the clauses in sentence order, `[SEP]`.
    pub tokens: Vec<u32>,
    /// Value of every variable in chain order, `(n,)`, each +1 or -1.
    pub values: Vec<i8>,
    /// Name (token id 0..26) of every variable in chain order, `(n,)`.
    pub names: Vec<u32>,
    /// `order[s]` = chain index of the clause at sentence position `s`, `(n,)`: the
    /// permutation from sentence order to chain order (official `clause_idx`).
    pub order: Vec<usize>,
}

impl LegoSentence {
    /// Draws one sentence from `spec` (which must be valid, see [`TaskSpec::validate`]).
    pub fn generate(spec: &TaskSpec, rng: &mut Rng) -> Self {
        let n = spec.n_var;
        assert!((1..=N_NAMES).contains(&n), "n_var = {n} outside 1..=26");
        let names: Vec<u32> = match spec.naming {
            Naming::Random => rand::seq::index::sample(rng, N_NAMES, n)
                .into_iter()
                .map(|i| i as u32)
                .collect(),
            Naming::Alphabetical => (0..n as u32).collect(),
        };
        let mut values = Vec::with_capacity(n);
        values.push(if rng.gen_bool(0.5) { 1i8 } else { -1 });
        for k in 1..n {
            let flip = match spec.relations {
                Relations::Random { p_not } => rng.gen_bool(p_not),
                Relations::AllVal => false,
                Relations::AllNot => true,
            };
            let prev = values[k - 1];
            values.push(if flip { -prev } else { prev });
        }
        let order: Vec<usize> = match spec.order {
            ClauseOrder::Shuffled => {
                let mut p: Vec<usize> = (0..n).collect();
                p.shuffle(rng);
                p
            }
            ClauseOrder::Chain => (0..n).collect(),
            ClauseOrder::Reversed => (0..n).rev().collect(),
        };
        Self::from_parts(names, values, order)
    }

    /// Builds the sentence for given chain names, chain values and clause order.
    ///
    /// Panics unless the three have the same length, `order` is a permutation, names are
    /// distinct variable names and values are ±1 (this is a constructor for generators and
    /// tests, whose inputs are correct by construction).
    pub fn from_parts(names: Vec<u32>, values: Vec<i8>, order: Vec<usize>) -> Self {
        let n = names.len();
        assert_eq!(values.len(), n, "values and names differ in length");
        assert_eq!(order.len(), n, "order and names differ in length");
        assert!(names.iter().all(|&t| is_name(t)), "a name is not a..z");
        assert!(
            values.iter().all(|&v| v == 1 || v == -1),
            "a value is not ±1"
        );
        let mut seen = vec![false; n];
        for &k in &order {
            assert!(k < n && !seen[k], "order is not a permutation");
            seen[k] = true;
        }
        let mut tokens = Vec::with_capacity(seq_len(n));
        tokens.push(CLS);
        for &k in &order {
            tokens.extend_from_slice(&clause_tokens(&names, &values, k));
        }
        tokens.push(SEP);
        Self {
            tokens,
            values,
            names,
            order,
        }
    }

    /// Chain length `n`.
    pub fn n_var(&self) -> usize {
        self.values.len()
    }

    /// Token position where the value of chain variable `k` is read, for every `k`, `(n,)`:
    /// the left-hand variable of its clause.
    pub fn query_positions(&self) -> Vec<usize> {
        let mut pos = vec![0; self.n_var()];
        for (s, &k) in self.order.iter().enumerate() {
            pos[k] = lhs_position(s);
        }
        pos
    }

    /// Labels as binary targets in chain order, `(n,)`: 1 for +1, 0 for -1 (official encoding).
    pub fn labels01(&self) -> Vec<f32> {
        self.values
            .iter()
            .map(|&v| if v == 1 { 1.0 } else { 0.0 })
            .collect()
    }

    /// The token strings.
    pub fn token_strings(&self) -> Vec<&'static str> {
        self.tokens.iter().map(|&t| token_str(t)).collect()
    }

    /// The sentence as text, tokens separated by spaces.
    pub fn text(&self) -> String {
        self.token_strings().join(" ")
    }
}

/// The 5 tokens of chain clause `k`: `x_k = val LIT ,` for the root, `x_k = val|not x_{k-1} ,`.
fn clause_tokens(names: &[u32], values: &[i8], k: usize) -> [u32; CLAUSE_LEN] {
    if k == 0 {
        let lit = if values[0] == 1 { ONE } else { ZERO };
        [names[0], EQ, VAL, lit, COMMA]
    } else {
        let op = if values[k] == values[k - 1] { VAL } else { NOT };
        [names[k], EQ, op, names[k - 1], COMMA]
    }
}

/// `count` sentences from `spec`, determined by `seed` alone.
pub fn sample_sentences(spec: &TaskSpec, count: usize, seed: u64) -> Result<Vec<LegoSentence>> {
    spec.validate()?;
    let mut rng = seeded(seed);
    Ok((0..count)
        .map(|_| LegoSentence::generate(spec, &mut rng))
        .collect())
}

/// Training and test sentences for one run: independent streams of `seed`, so changing
/// `n_train` never changes the test set.
pub fn train_test_split(
    spec: &TaskSpec,
    n_train: usize,
    n_test: usize,
    seed: u64,
) -> Result<(Vec<LegoSentence>, Vec<LegoSentence>)> {
    spec.validate()?;
    let mut train_rng = stream(seed, 0);
    let mut test_rng = stream(seed, 1);
    let train = (0..n_train)
        .map(|_| LegoSentence::generate(spec, &mut train_rng))
        .collect();
    let test = (0..n_test)
        .map(|_| LegoSentence::generate(spec, &mut test_rng))
        .collect();
    Ok((train, test))
}

/// A batch of sentences as plain arrays, ready to become tensors. `B` = batch size,
/// `T` = longest sequence (shorter sentences padded with `[PAD]`), `N` = longest chain.
#[derive(Clone, Debug, PartialEq)]
pub struct LegoBatch {
    /// Token ids, `(B, T)`.
    pub tokens: Array2<u32>,
    /// 1 where a real token is, 0 on padding, `(B, T)`.
    pub token_mask: Array2<f32>,
    /// Binary targets in chain order (1 for +1, 0 for -1; 0 past the chain's end), `(B, N)`.
    pub labels: Array2<f32>,
    /// 1 for the chain positions that enter the training loss: the first `train_vars` of each
    /// chain, `(B, N)`.
    pub supervised: Array2<f32>,
    /// 1 for every chain position that exists (for test accuracy per chain position), `(B, N)`.
    pub present: Array2<f32>,
    /// Token position where chain variable `k` is read, `(B, N)` (0, i.e. `[CLS]`, past the
    /// chain's end; masked by `present`).
    pub query_positions: Array2<u32>,
    /// `order[b, s]` = chain index of clause `s` in the sentence, `(B, N)` (0 past the end).
    pub order: Array2<u32>,
}

impl LegoBatch {
    /// Stacks `sentences`; the first `train_vars` chain positions of each are supervised.
    pub fn new(sentences: &[LegoSentence], train_vars: usize) -> Result<Self> {
        if sentences.is_empty() {
            bail!("a batch needs at least one sentence");
        }
        let b = sentences.len();
        let t = sentences.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
        let n = sentences.iter().map(|s| s.n_var()).max().unwrap_or(0);
        let mut batch = Self {
            tokens: Array2::from_elem((b, t), PAD),
            token_mask: Array2::zeros((b, t)),
            labels: Array2::zeros((b, n)),
            supervised: Array2::zeros((b, n)),
            present: Array2::zeros((b, n)),
            query_positions: Array2::zeros((b, n)),
            order: Array2::zeros((b, n)),
        };
        for (i, s) in sentences.iter().enumerate() {
            for (j, &tok) in s.tokens.iter().enumerate() {
                batch.tokens[[i, j]] = tok;
                batch.token_mask[[i, j]] = 1.0;
            }
            let labels = s.labels01();
            let pos = s.query_positions();
            for k in 0..s.n_var() {
                batch.labels[[i, k]] = labels[k];
                batch.present[[i, k]] = 1.0;
                batch.supervised[[i, k]] = if k < train_vars { 1.0 } else { 0.0 };
                batch.query_positions[[i, k]] = pos[k] as u32;
                batch.order[[i, k]] = s.order[k] as u32;
            }
        }
        Ok(batch)
    }

    /// Batch size `B`.
    pub fn len(&self) -> usize {
        self.tokens.nrows()
    }

    /// Whether the batch has no sentence (never true for a batch built by [`LegoBatch::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
