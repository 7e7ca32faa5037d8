//! The claims ledger: every paper claim as data (`experiments/claims/<paper>.toml`), with the rule
//! that decides it, so a claim's verdict is computed the same way by `attnlab verify` and by the
//! tests.

use crate::config::{load_toml, require};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The scale a claim is checked at.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Every paper in at most 10 minutes on 2 cores, from nothing cached.
    Quick,
    /// The CPU presets behind the committed figures (about 2 hours in all).
    Cpu,
    /// The papers' own sizes.
    Paper,
}

impl Scale {
    pub const ALL: [Scale; 3] = [Scale::Quick, Scale::Cpu, Scale::Paper];
    pub fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Cpu => "cpu",
            Self::Paper => "paper",
        }
    }
}

/// Whether a check is evidence for the paper or only a consistency check of what we implemented
/// (a theorem we coded cannot fail except by a bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Empirical,
    Consistency,
}

/// How the measured values (one per seed, or one) decide a claim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The mean is at least `value`.
    AtLeast { value: f64 },
    /// The mean is at most `value`.
    AtMost { value: f64 },
    /// The mean lies in `[low, high]`.
    Between { low: f64, high: f64 },
    /// At least `fraction` of the values are at least `value`.
    SeedsAtLeast { value: f64, fraction: f64 },
    /// At least `fraction` of the values are at most `value`.
    SeedsAtMost { value: f64, fraction: f64 },
}

impl Rule {
    fn validate(&self) -> Result<()> {
        let finite = |x: f64, f: &str| require(x.is_finite(), f, "must be a finite number");
        match *self {
            Rule::AtLeast { value } | Rule::AtMost { value } => finite(value, "rule.value"),
            Rule::Between { low, high } => {
                finite(low, "rule.low")?;
                finite(high, "rule.high")?;
                require(low <= high, "rule.low", "must be at most rule.high")
            }
            Rule::SeedsAtLeast { value, fraction } | Rule::SeedsAtMost { value, fraction } => {
                finite(value, "rule.value")?;
                require(
                    fraction > 0.0 && fraction <= 1.0,
                    "rule.fraction",
                    "must be in (0, 1]",
                )
            }
        }
    }

    /// Whether `values` satisfy the rule (none: no).
    pub fn holds(&self, values: &[f64]) -> bool {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return false;
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let frac = |ok: &dyn Fn(f64) -> bool| {
            values.iter().filter(|&&v| ok(v)).count() as f64 / values.len() as f64
        };
        match *self {
            Rule::AtLeast { value } => mean >= value,
            Rule::AtMost { value } => mean <= value,
            Rule::Between { low, high } => (low..=high).contains(&mean),
            Rule::SeedsAtLeast { value, fraction } => frac(&|v| v >= value) >= fraction - 1e-12,
            Rule::SeedsAtMost { value, fraction } => frac(&|v| v <= value) >= fraction - 1e-12,
        }
    }

    /// The rule in words, for the table.
    pub fn describe(&self) -> String {
        match *self {
            Rule::AtLeast { value } => format!("mean >= {value}"),
            Rule::AtMost { value } => format!("mean <= {value}"),
            Rule::Between { low, high } => format!("mean in [{low}, {high}]"),
            Rule::SeedsAtLeast { value, fraction } => {
                format!("{:.0}% of seeds >= {value}", 100.0 * fraction)
            }
            Rule::SeedsAtMost { value, fraction } => {
                format!("{:.0}% of seeds <= {value}", 100.0 * fraction)
            }
        }
    }
}

/// One claim of one paper.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// `<paper>/<name>`, e.g. `sts/floor-vs-de`.
    pub id: String,
    /// The claim in one sentence, in our words.
    pub statement: String,
    /// The paper's own number or shape, where it has one.
    #[serde(default)]
    pub paper_value: Option<String>,
    /// What we measure, with its unit.
    pub measured: String,
    pub rule: Rule,
    pub kind: Kind,
    /// Scales the claim can be checked at; at the others its verdict is "not shown at this
    /// scale" with `reason`.
    pub scales: Vec<Scale>,
    /// Why the claim cannot be checked at the scales it lacks.
    #[serde(default)]
    pub reason: Option<String>,
    /// The test that asserts it (`tests/<file>.rs::<name>`), if any.
    #[serde(default)]
    pub test: Option<String>,
    /// The figure that shows it (`<paper>/<name>`), if any.
    #[serde(default)]
    pub figure: Option<String>,
}

impl Claim {
    /// The paper part of the id.
    pub fn paper(&self) -> &str {
        self.id.split_once('/').map_or("", |(p, _)| p)
    }
}

/// One paper's file of claims.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    /// Full citation of the paper.
    paper: String,
    #[serde(rename = "claim")]
    claims: Vec<Claim>,
}

/// Every claim, in file order: `sts`, `lego`, `grokking`.
pub const PAPERS: [&str; 3] = ["sts", "lego", "grokking"];

/// Reads `<dir>/<paper>.toml` for every paper and checks each claim.
pub fn load(dir: &Path) -> Result<Vec<(String, Claim)>> {
    let mut all = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for paper in PAPERS {
        let path = dir.join(format!("{paper}.toml"));
        let f: LedgerFile = load_toml(&path)?;
        for c in f.claims {
            let ctx = || format!("claim `{}` in `{}`", c.id, path.display());
            if c.paper() != paper {
                bail!("{}: the id must start with `{paper}/`", ctx());
            }
            c.rule.validate().with_context(ctx)?;
            require(
                !c.scales.is_empty() || c.reason.is_some(),
                "reason",
                "a claim checked at no scale needs a reason",
            )
            .with_context(ctx)?;
            require(
                c.scales.len() == Scale::ALL.len() || c.reason.is_some(),
                "reason",
                "says why the claim is not checked at the scales it lacks",
            )
            .with_context(ctx)?;
            if !seen.insert(c.id.clone()) {
                bail!("{}: the id is used twice", ctx());
            }
            all.push((f.paper.clone(), c));
        }
    }
    Ok(all)
}
