//! A small program-execution task of our own (the LEGO paper's convolution study runs on
//! C-program execution; its programs are not public, so this is a stand-in of the same
//! kind): straight-line C-like programs over a few integer variables, arithmetic modulo `m`,
//! and `print` statements; the model predicts every printed value.
//!
//! A program first sets every variable to a literal (`a = 3;`), then runs `n_statements`
//! random assignments, each one of
//! `x = k;`, `x = y;`, `x = y + k;`, `x = y - k;`, `x = y + z;`, `x = y - z;`
//! (all mod `m`, `x`, `y`, `z` any variables, possibly equal), with `n_prints` statements
//! `print(x);` placed at random points, the last one at the end. Variable names are drawn
//! from a..z for every program, without repetition.
//!
//! Tokens: `[CLS]`, then per statement `x = y + k ;` / `print x ;`, then `[SEP]`; the value
//! of a print is read at the token position of its variable.
//!
//! ```
//! use attnlab::lego::program::{Program, ProgramSpec};
//! let mut rng = attnlab::rng::seeded(3);
//! let p = Program::generate(&ProgramSpec::default(), &mut rng);
//! assert_eq!(p.outputs().len(), ProgramSpec::default().n_prints);
//! assert!(p.source().ends_with(");\n"));
//! ```

use crate::rng::{seeded, Rng};
use anyhow::{bail, Result};
use ndarray::Array2;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Number of variable names (a..z).
pub const PROGRAM_NAMES: usize = 26;
/// Largest modulus: literals and values are the single tokens `0`..`9`.
pub const MAX_MODULUS: u32 = 10;
/// Most assignments after the literals (a program stays a few tens of thousands of tokens).
pub const MAX_STATEMENTS: usize = 10_000;
/// Most print statements.
pub const MAX_PRINTS: usize = 10_000;
/// Token id of `=`.
pub const P_EQ: u32 = 36;
/// Token id of `+`.
pub const P_PLUS: u32 = 37;
/// Token id of `-`.
pub const P_MINUS: u32 = 38;
/// Token id of `;`.
pub const P_SEMI: u32 = 39;
/// Token id of `print`.
pub const P_PRINT: u32 = 40;
/// Token id of `[CLS]`.
pub const P_CLS: u32 = 41;
/// Token id of `[SEP]`.
pub const P_SEP: u32 = 42;
/// Token id of `[PAD]`.
pub const P_PAD: u32 = 43;
/// Vocabulary: 26 names (ids 0..26), digits `0`..`9` (ids 26..36), `=`, `+`, `-`, `;`,
/// `print`, `[CLS]`, `[SEP]`, `[PAD]`.
pub const PROGRAM_VOCAB_SIZE: usize = 44;

const NAMES: &str = "abcdefghijklmnopqrstuvwxyz";
const SYMBOLS: [&str; 8] = ["=", "+", "-", ";", "print", "[CLS]", "[SEP]", "[PAD]"];
const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Token id of the literal `k` (0..10).
pub fn digit_token(k: u32) -> u32 {
    assert!(k < MAX_MODULUS, "literal {k} is not a single digit");
    PROGRAM_NAMES as u32 + k
}

/// The string of program token `id`; `"?"` outside the vocabulary.
pub fn program_token_str(id: u32) -> &'static str {
    let i = id as usize;
    if i < PROGRAM_NAMES {
        &NAMES[i..i + 1]
    } else if i < PROGRAM_NAMES + 10 {
        DIGITS[i - PROGRAM_NAMES]
    } else if i < PROGRAM_VOCAB_SIZE {
        SYMBOLS[i - PROGRAM_NAMES - 10]
    } else {
        "?"
    }
}

/// Sizes of the program distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// Number of variables (1..=26).
    pub n_vars: usize,
    /// Random assignments after the initial literals.
    pub n_statements: usize,
    /// `print` statements (at least 1; the last one ends the program).
    pub n_prints: usize,
    /// Arithmetic is modulo this (2..=10).
    pub modulus: u32,
}

impl Default for ProgramSpec {
    fn default() -> Self {
        Self {
            n_vars: 3,
            n_statements: 8,
            n_prints: 3,
            modulus: 10,
        }
    }
}

impl ProgramSpec {
    /// Fails with a message naming the field unless the spec can generate programs.
    pub fn validate(&self) -> Result<()> {
        crate::config::require(
            (1..=PROGRAM_NAMES).contains(&self.n_vars),
            "n_vars",
            format!("{} (must be 1..=26: one name a..z each)", self.n_vars),
        )?;
        crate::config::require(
            self.n_prints >= 1,
            "n_prints",
            "0 (a program needs at least one print to predict)",
        )?;
        crate::config::require(
            self.n_prints <= MAX_PRINTS,
            "n_prints",
            format!("{} (at most {MAX_PRINTS})", self.n_prints),
        )?;
        crate::config::require(
            (2..=MAX_MODULUS).contains(&self.modulus),
            "modulus",
            format!(
                "{} (must be 2..={MAX_MODULUS}: values are single-digit tokens)",
                self.modulus
            ),
        )?;
        crate::config::require(
            self.n_statements <= MAX_STATEMENTS,
            "n_statements",
            format!("{} (at most {MAX_STATEMENTS})", self.n_statements),
        )
    }
}

/// Right-hand side of an assignment; variables are indices into [`Program::names`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    Lit(u32),
    Var(usize),
    AddLit(usize, u32),
    SubLit(usize, u32),
    AddVar(usize, usize),
    SubVar(usize, usize),
}

/// One statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statement {
    Assign { target: usize, expr: Expr },
    Print(usize),
}

/// A straight-line program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// Name token (0..26) of every variable.
    pub names: Vec<u32>,
    pub statements: Vec<Statement>,
    pub modulus: u32,
}

impl Program {
    /// Programs of `spec` one after another, determined by `seed` alone (the first `n` are
    /// [`sample_programs`]`(spec, n, seed)`).
    pub fn stream(spec: &ProgramSpec, seed: u64) -> Result<impl Iterator<Item = Program>> {
        spec.validate()?;
        let spec = *spec;
        let mut rng = seeded(seed);
        Ok(std::iter::repeat_with(move || {
            Program::generate(&spec, &mut rng)
        }))
    }

    /// Draws one program from `spec` (which must be valid, see [`ProgramSpec::validate`]).
    pub fn generate(spec: &ProgramSpec, rng: &mut Rng) -> Self {
        let (v, m) = (spec.n_vars, spec.modulus);
        let names = rand::seq::index::sample(rng, PROGRAM_NAMES, v)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let mut statements: Vec<Statement> = (0..v)
            .map(|x| Statement::Assign {
                target: x,
                expr: Expr::Lit(rng.gen_range(0..m)),
            })
            .collect();
        // print slot s = "after s random assignments"; the last print ends the program
        let mut slots: Vec<usize> = (0..spec.n_prints - 1)
            .map(|_| rng.gen_range(0..=spec.n_statements))
            .collect();
        slots.push(spec.n_statements);
        slots.sort_unstable();
        let mut next_slot = 0;
        for s in 0..=spec.n_statements {
            while next_slot < slots.len() && slots[next_slot] == s {
                statements.push(Statement::Print(rng.gen_range(0..v)));
                next_slot += 1;
            }
            if s == spec.n_statements {
                break;
            }
            let (y, z, k) = (
                rng.gen_range(0..v),
                rng.gen_range(0..v),
                rng.gen_range(0..m),
            );
            let expr = match rng.gen_range(0..6) {
                0 => Expr::Lit(k),
                1 => Expr::Var(y),
                2 => Expr::AddLit(y, k),
                3 => Expr::SubLit(y, k),
                4 => Expr::AddVar(y, z),
                _ => Expr::SubVar(y, z),
            };
            statements.push(Statement::Assign {
                target: rng.gen_range(0..v),
                expr,
            });
        }
        Self {
            names,
            statements,
            modulus: m,
        }
    }

    /// The printed values in order, `(n_prints,)`, each in `0..modulus`.
    pub fn outputs(&self) -> Vec<u32> {
        let m = self.modulus;
        let mut vals = vec![0u32; self.names.len()];
        let mut out = Vec::new();
        for st in &self.statements {
            match *st {
                Statement::Print(x) => out.push(vals[x]),
                Statement::Assign { target, expr } => {
                    vals[target] = match expr {
                        Expr::Lit(k) => k % m,
                        Expr::Var(y) => vals[y],
                        Expr::AddLit(y, k) => (vals[y] + k) % m,
                        Expr::SubLit(y, k) => (vals[y] + m - k % m) % m,
                        Expr::AddVar(y, z) => (vals[y] + vals[z]) % m,
                        Expr::SubVar(y, z) => (vals[y] + m - vals[z]) % m,
                    }
                }
            }
        }
        out
    }

    fn statement_tokens(&self, st: &Statement) -> Vec<u32> {
        let n = |x: usize| self.names[x];
        match *st {
            Statement::Print(x) => vec![P_PRINT, n(x), P_SEMI],
            Statement::Assign { target, expr } => {
                let mut t = vec![n(target), P_EQ];
                match expr {
                    Expr::Lit(k) => t.push(digit_token(k)),
                    Expr::Var(y) => t.push(n(y)),
                    Expr::AddLit(y, k) => t.extend([n(y), P_PLUS, digit_token(k)]),
                    Expr::SubLit(y, k) => t.extend([n(y), P_MINUS, digit_token(k)]),
                    Expr::AddVar(y, z) => t.extend([n(y), P_PLUS, n(z)]),
                    Expr::SubVar(y, z) => t.extend([n(y), P_MINUS, n(z)]),
                }
                t.push(P_SEMI);
                t
            }
        }
    }

    /// Token ids, `(T,)`: `[CLS]`, the statements, `[SEP]`.
    pub fn tokens(&self) -> Vec<u32> {
        let mut t = vec![P_CLS];
        for st in &self.statements {
            t.extend(self.statement_tokens(st));
        }
        t.push(P_SEP);
        t
    }

    /// Token position of the variable of every print, `(n_prints,)`: where its value is read.
    pub fn print_positions(&self) -> Vec<usize> {
        let mut pos = 1;
        let mut out = Vec::new();
        for st in &self.statements {
            if matches!(st, Statement::Print(_)) {
                out.push(pos + 1);
            }
            pos += self.statement_tokens(st).len();
        }
        out
    }

    /// The token strings.
    pub fn token_strings(&self) -> Vec<&'static str> {
        self.tokens()
            .iter()
            .map(|&t| program_token_str(t))
            .collect()
    }

    /// C-like source text, one statement a line: `b = a + 3;`, `print(b);`.
    pub fn source(&self) -> String {
        let mut s = String::new();
        for st in &self.statements {
            let toks = self.statement_tokens(st);
            let words: Vec<&str> = toks.iter().map(|&t| program_token_str(t)).collect();
            match st {
                Statement::Print(_) => s.push_str(&format!("print({});\n", words[1])),
                Statement::Assign { .. } => {
                    s.push_str(&words[..words.len() - 1].join(" "));
                    s.push_str(";\n");
                }
            }
        }
        s
    }
}

/// `count` programs from `spec`, determined by `seed` alone.
pub fn sample_programs(spec: &ProgramSpec, count: usize, seed: u64) -> Result<Vec<Program>> {
    Ok(Program::stream(spec, seed)?.take(count).collect())
}

/// A batch of programs as plain arrays. `B` = batch size, `T` = longest program (shorter ones
/// padded with `[PAD]`), `P` = most prints.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramBatch {
    /// Token ids, `(B, T)`.
    pub tokens: Array2<u32>,
    /// 1 on real tokens, 0 on padding, `(B, T)`.
    pub token_mask: Array2<f32>,
    /// Printed values (class ids `0..modulus`), `(B, P)`.
    pub outputs: Array2<u32>,
    /// Token position where each print is read, `(B, P)`.
    pub print_positions: Array2<u32>,
    /// 1 for prints that exist, `(B, P)`.
    pub present: Array2<f32>,
}

impl ProgramBatch {
    /// Stacks `programs`.
    pub fn new(programs: &[Program]) -> Result<Self> {
        if programs.is_empty() {
            bail!("a batch needs at least one program");
        }
        let tokens: Vec<Vec<u32>> = programs.iter().map(|p| p.tokens()).collect();
        let outputs: Vec<Vec<u32>> = programs.iter().map(|p| p.outputs()).collect();
        let positions: Vec<Vec<usize>> = programs.iter().map(|p| p.print_positions()).collect();
        let b = programs.len();
        let t = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let np = outputs.iter().map(Vec::len).max().unwrap_or(0);
        let mut batch = Self {
            tokens: Array2::from_elem((b, t), P_PAD),
            token_mask: Array2::zeros((b, t)),
            outputs: Array2::zeros((b, np)),
            print_positions: Array2::zeros((b, np)),
            present: Array2::zeros((b, np)),
        };
        for i in 0..b {
            for (j, &tok) in tokens[i].iter().enumerate() {
                batch.tokens[[i, j]] = tok;
                batch.token_mask[[i, j]] = 1.0;
            }
            for k in 0..outputs[i].len() {
                batch.outputs[[i, k]] = outputs[i][k];
                batch.print_positions[[i, k]] = positions[i][k] as u32;
                batch.present[[i, k]] = 1.0;
            }
        }
        Ok(batch)
    }
}
