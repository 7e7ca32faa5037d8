//! `attnlab verify`: every paper claim of the ledger (`experiments/claims/`) measured at one
//! scale and decided by its rule; prints the table and writes `results/<scale>.json`,
//! `results.json` (every scale) and `RESULTS.md` (every claim at every scale that has been run).
//!
//! Each paper measures its own claims (`<paper>::claims::measure`), sharing runs between claims;
//! training goes through the run engine, so a finished run is reused and an interrupted one
//! resumes.

pub mod ledger;
pub mod report;

pub use ledger::{Claim, Kind, Rule, Scale};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The scale to check the claims at.
    #[arg(long, value_enum, default_value_t = Scale::Quick)]
    pub preset: Scale,
    /// Only the claims whose id starts with this (`sts`, `lego/mimicking-init`); repeatable.
    #[arg(long)]
    pub only: Vec<String>,
    /// One JSON object per claim on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The ledger directory (`<dir>/<paper>.toml`).
    #[arg(long, default_value = "experiments/claims")]
    pub claims: PathBuf,
    /// Where results go: `<out>/results/<scale>.json`, `<out>/results.json`, `<out>/RESULTS.md`.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Root of the run directories the measurements train (reused across invocations).
    #[arg(long, default_value = "runs/verify")]
    pub runs: PathBuf,
    /// The committed figures (their JSON and CSVs hold the CPU-scale runs' results).
    #[arg(long, default_value = "figures")]
    pub figures: PathBuf,
    /// The experiment configs.
    #[arg(long, default_value = "experiments")]
    pub experiments: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// What a paper's measurement of one claim gives.
#[derive(Clone, Debug)]
pub enum Measured {
    /// The measured quantity, one value per seed (or one), and a short note (e.g. the runs).
    Values { values: Vec<f64>, note: String },
    /// The claim cannot be decided at this scale, and why.
    NotShown(String),
}

/// What a paper's measurement function gets.
pub struct Ctx<'a> {
    pub scale: Scale,
    /// Root of this scale's run directories: `<runs>/<scale>/`.
    pub runs: &'a Path,
    pub figures: &'a Path,
    pub experiments: &'a Path,
    pub quiet: bool,
}

/// The verdict on one claim at one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    Fails,
    NotShownAtThisScale,
    NotRun,
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Self::Holds => "holds",
            Self::Fails => "fails",
            Self::NotShownAtThisScale => "not shown at this scale",
            Self::NotRun => "not run",
        }
    }
}

/// One claim checked at one scale (what `results/<scale>.json` holds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimResult {
    pub id: String,
    pub scale: Scale,
    pub verdict: Verdict,
    /// Measured values (per seed); empty when not measured.
    pub values: Vec<f64>,
    /// Mean, spread and count of `values`, or the reason there are none.
    pub summary: String,
    pub note: String,
    /// The rule as it stood when this was decided.
    pub rule: String,
    /// Seconds the paper's measurements took (shared by its claims).
    pub seconds: f64,
}

/// Mean ± standard deviation [min, max] (n) of `v`.
pub fn summarise(v: &[f64]) -> String {
    let n = v.len();
    if n == 0 {
        return "no values".into();
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return report::num(mean);
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    format!(
        "{} ± {} [{}, {}] (n={n})",
        report::num(mean),
        report::num(sd),
        report::num(lo),
        report::num(hi)
    )
}

/// Decides `claim` from what its paper measured.
pub fn decide(claim: &Claim, scale: Scale, m: Result<Measured>, seconds: f64) -> ClaimResult {
    let (verdict, values, summary, note) = match m {
        Ok(Measured::Values { values, note }) => {
            let v = if claim.rule.holds(&values) {
                Verdict::Holds
            } else {
                Verdict::Fails
            };
            let s = summarise(&values);
            (v, values, s, note)
        }
        Ok(Measured::NotShown(why)) => (Verdict::NotShownAtThisScale, vec![], why, String::new()),
        Err(e) => (
            Verdict::NotRun,
            vec![],
            format!("error: {e:#}"),
            String::new(),
        ),
    };
    ClaimResult {
        id: claim.id.clone(),
        scale,
        verdict,
        values,
        summary,
        note,
        rule: claim.rule.describe(),
        seconds,
    }
}

/// Measures `claims` (all of one paper) at `ctx.scale`; one result per claim, in order.
pub fn measure_paper(paper: &str, claims: &[&Claim], ctx: &Ctx) -> Result<Vec<Result<Measured>>> {
    let out = match paper {
        "sts" => crate::sts::claims::measure(claims, ctx)?,
        "lego" => crate::lego::claims::measure(claims, ctx)?,
        "grokking" => crate::grokking::claims::measure(claims, ctx)?,
        p => bail!("no measurements for paper `{p}`"),
    };
    if out.len() != claims.len() {
        bail!(
            "`{paper}` measured {} claims of {}",
            out.len(),
            claims.len()
        );
    }
    Ok(out)
}

/// Checks every selected claim at one scale; the results in ledger order.
pub fn check(ledger: &[(String, Claim)], only: &[String], ctx: &Ctx) -> Result<Vec<ClaimResult>> {
    let selected: Vec<&Claim> = ledger
        .iter()
        .map(|(_, c)| c)
        .filter(|c| only.is_empty() || only.iter().any(|o| c.id.starts_with(o.as_str())))
        .collect();
    if selected.is_empty() {
        let ids: Vec<&str> = ledger.iter().map(|(_, c)| c.id.as_str()).collect();
        bail!(
            "`--only {}` matches no claim: use a paper (`sts`, `lego`, `grokking`) or a claim id, one of {}",
            only.join(" --only "),
            ids.join(", ")
        );
    }
    let mut results = Vec::new();
    for paper in ledger::PAPERS {
        let claims: Vec<&Claim> = selected
            .iter()
            .copied()
            .filter(|c| c.paper() == paper)
            .collect();
        let (run, skip): (Vec<&Claim>, Vec<&Claim>) =
            claims.iter().partition(|c| c.scales.contains(&ctx.scale));
        let started = std::time::Instant::now();
        let measured = if run.is_empty() {
            vec![]
        } else {
            if !ctx.quiet {
                eprintln!(
                    "{paper}: measuring {} claims at the {} scale",
                    run.len(),
                    ctx.scale.name()
                );
            }
            measure_paper(paper, &run, ctx)?
        };
        let secs = started.elapsed().as_secs_f64();
        let mut by_id: std::collections::HashMap<&str, ClaimResult> = run
            .iter()
            .zip(measured)
            .map(|(c, m)| (c.id.as_str(), decide(c, ctx.scale, m, secs)))
            .collect();
        for c in &claims {
            if let Some(r) = by_id.remove(c.id.as_str()) {
                results.push(r);
            } else if skip.iter().any(|s| s.id == c.id) {
                let why = c.reason.clone().unwrap_or_default();
                results.push(decide(c, ctx.scale, Ok(Measured::NotShown(why)), 0.0));
            }
        }
    }
    Ok(results)
}

pub fn run(a: VerifyArgs) -> Result<()> {
    let ledger = ledger::load(&a.claims)?;
    let runs = a.runs.join(a.preset.name());
    let ctx = Ctx {
        scale: a.preset,
        runs: &runs,
        figures: &a.figures,
        experiments: &a.experiments,
        quiet: a.quiet || a.json,
    };
    let started = std::time::Instant::now();
    let results = check(&ledger, &a.only, &ctx)?;
    report::store(&a.out, a.preset, &results)?;
    report::write_markdown(&a.out, &ledger)?;
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!("{}", report::table(&ledger, &results));
        println!(
            "{} claims at the {} scale in {:.0} s; RESULTS.md and results/{}.json updated",
            results.len(),
            a.preset.name(),
            started.elapsed().as_secs_f64(),
            a.preset.name()
        );
    }
    if let Some(r) = results.iter().find(|r| r.verdict == Verdict::NotRun) {
        return Err(crate::run::failed(format!(
            "claim `{}` could not be measured: {}",
            r.id, r.summary
        )));
    }
    Ok(())
}
