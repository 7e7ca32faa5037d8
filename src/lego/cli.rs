//! `attnlab lego ...` and `attnlab program ...`: print sampled LEGO sentences and programs,
//! check experiment configs.
//!
//! `attnlab lego sample --n-var 12 --count 3 --seed 0 --json` prints one JSON object a line:
//! `tokens` (strings), `labels` (chain order, +1/-1), `order` (`order[s]` = chain index of the
//! clause at sentence position `s`), `query_positions` (token position of each chain
//! variable's left-hand occurrence, chain order) and `names` (chain order).
//!
//! `attnlab lego flops --preset paper` prints the exact FLOPs of each LEGO attention-module
//! configuration; `attnlab lego check-config` validates `experiments/lego/*.toml`.
//!
//! `attnlab program sample --count 3 --seed 0 --json` prints `tokens`, `source`, `outputs`
//! (printed values in order) and `print_positions`.

use crate::lego::config;
use crate::lego::flops::{encoder_flops, flop_saving, EncoderShape};
use crate::lego::program::{sample_programs, ProgramSpec};
use crate::lego::task::{seq_len, token_str, N_NAMES};
use crate::lego::variants::Variant;
use anyhow::{bail, Result};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LegoArgs {
    #[command(subcommand)]
    cmd: LegoCmd,
}

#[derive(clap::Subcommand, Debug)]
enum LegoCmd {
    /// Print LEGO sentences with their labels.
    Sample(LegoSampleArgs),
    /// Exact forward FLOPs per sentence of each LEGO attention-module configuration.
    Flops {
        /// A config with `[*.lego_attention]` sections.
        #[arg(long, default_value = "experiments/lego/lego_attention.toml")]
        config: PathBuf,
        /// `cpu` or `paper`.
        #[arg(long, default_value = "paper")]
        preset: String,
    },
    /// Train the models of one experiment file and print their results (figures: `attnlab
    /// figures --only lego/...`).
    Train(LegoTrainArgs),
    /// Parse and check experiment configs (files, or every .toml under a directory).
    CheckConfig {
        /// Config files or directories.
        #[arg(default_value = "experiments/lego")]
        paths: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct LegoTrainArgs {
    /// Experiment file under experiments/lego/.
    #[arg(long)]
    config: PathBuf,
    /// `cpu`, `paper` or `tiny`.
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Run only this seed (default: the preset's seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Train only the runs with these labels (comma-separated).
    #[arg(long, value_delimiter = ',')]
    runs: Option<Vec<String>>,
    /// Root of the run directories (`<root>/<experiment.out_dir>/<preset>/<run>/`).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Print the per-run results as one JSON array on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct LegoSampleArgs {
    /// Chain length (1..=26).
    #[arg(long, default_value_t = 12)]
    n_var: usize,
    /// Number of sentences (>= 1).
    #[arg(long, default_value_t = 5)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Task variant: shuffled (official), chain_order, reversed, all_val, all_not,
    /// alphabetical, rotated, biased_not.
    #[arg(long, default_value = "shuffled")]
    variant: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ProgramArgs {
    #[command(subcommand)]
    cmd: ProgramCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ProgramCmd {
    /// Print programs with their outputs.
    Sample(ProgramSampleArgs),
}

#[derive(clap::Args, Debug)]
struct ProgramSampleArgs {
    /// Number of programs (>= 1).
    #[arg(long, default_value_t = 5)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Variables per program (1..=26).
    #[arg(long, default_value_t = ProgramSpec::default().n_vars)]
    vars: usize,
    /// Random assignments after the initial literals.
    #[arg(long, default_value_t = ProgramSpec::default().n_statements)]
    statements: usize,
    /// Print statements (>= 1).
    #[arg(long, default_value_t = ProgramSpec::default().n_prints)]
    prints: usize,
    /// Arithmetic modulus (2..=10).
    #[arg(long, default_value_t = ProgramSpec::default().modulus)]
    modulus: u32,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// Fails with a message naming command-line flag `flag` unless `ok`.
fn check_flag(ok: bool, flag: &str, msg: impl std::fmt::Display) -> Result<()> {
    if !ok {
        bail!("invalid value for `{flag}`: {msg}");
    }
    Ok(())
}

pub fn run_lego(a: LegoArgs) -> Result<()> {
    match a.cmd {
        LegoCmd::Sample(s) => lego_sample(s),
        LegoCmd::CheckConfig { paths } => check_configs(&paths),
        LegoCmd::Train(t) => lego_train(t),
        LegoCmd::Flops { config, preset } => print_flops(&config, &preset),
    }
}

fn lego_train(a: LegoTrainArgs) -> Result<()> {
    let exp = config::load(&a.config)?;
    exp.preset(&a.preset)
        .map_err(|e| anyhow::anyhow!("invalid value for `--preset`: {e}"))?;
    crate::interrupt::install();
    let seeds = a.seed.map(|s| vec![s]);
    let stop = crate::interrupt::requested;
    let started = std::time::Instant::now();
    let res = crate::lego::experiments::run_experiment(
        &exp,
        &a.preset,
        seeds.as_deref(),
        a.runs.as_deref(),
        &a.root.join(&exp.experiment.out_dir),
        &stop,
        &mut |m| eprintln!("{m}"),
        true,
    )?;
    let Some(res) = res else {
        eprintln!("stopped: state saved; run the same command to resume");
        return Ok(());
    };
    eprintln!(
        "{}: {} runs in {:.0}s",
        res.name,
        res.results.len(),
        started.elapsed().as_secs_f64()
    );
    if a.json {
        println!("{}", serde_json::to_string(&res.results)?);
        if !res.programs.is_empty() {
            println!("{}", serde_json::to_string(&res.programs)?);
        }
    } else {
        for r in &res.results {
            let acc: Vec<String> = r.per_position.iter().map(|x| format!("{x:.3}")).collect();
            println!("{} seed {}: {}", r.run.label, r.run.seed, acc.join(" "));
        }
        for r in &res.programs {
            println!(
                "program {} seed {}: accuracy {:.3} (majority {:.3}), {} parameters",
                r.run.label, r.run.seed, r.accuracy, r.majority, r.params
            );
        }
    }
    Ok(())
}

fn lego_sample(a: LegoSampleArgs) -> Result<()> {
    check_flag(
        (1..=N_NAMES).contains(&a.n_var),
        "--n-var",
        format!(
            "{} (must be 1..=26: one distinct name a..z per variable)",
            a.n_var
        ),
    )?;
    check_flag(a.count >= 1, "--count", "0 (must be at least 1)")?;
    let variant = Variant::parse(&a.variant).map_err(|e| anyhow::anyhow!("`--variant`: {e}"))?;
    let sentences = variant.sample(a.n_var, a.count, a.seed)?;
    let mut out = std::io::stdout().lock();
    for s in &sentences {
        if a.json {
            let line = json!({
                "tokens": s.token_strings(),
                "labels": s.values,
                "order": s.order,
                "query_positions": s.query_positions(),
                "names": s.names.iter().map(|&t| token_str(t)).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}")?;
        } else {
            let names: Vec<&str> = s.names.iter().map(|&t| token_str(t)).collect();
            let chain: Vec<String> = names
                .iter()
                .zip(&s.values)
                .map(|(n, v)| format!("{n}={v:+}"))
                .collect();
            writeln!(out, "{}\n  chain: {}", s.text(), chain.join(" "))?;
        }
    }
    Ok(())
}

fn check_configs(paths: &[PathBuf]) -> Result<()> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    if files.is_empty() {
        bail!("no .toml config found under the given paths");
    }
    for f in &files {
        let exp = config::load(f)?;
        println!("ok  {}  ({:?})", f.display(), exp.experiment.kind);
    }
    Ok(())
}

fn print_flops(path: &std::path::Path, preset: &str) -> Result<()> {
    let exp = config::load(path)?;
    let p = exp
        .preset(preset)
        .map_err(|e| anyhow::anyhow!("`--preset`: {e}"))?;
    let (Some(task), Some(study)) = (&p.task, &p.lego_attention) else {
        bail!(
            "`--config`: `{}` has no [{preset}.task] and [{preset}.lego_attention] sections",
            path.display()
        );
    };
    let shape = EncoderShape {
        layers: p.model.layers as u64,
        hidden: p.model.hidden as u64,
        heads: p.model.heads as u64,
        ffn: p.model.ffn as u64,
    };
    let t = seq_len(task.n_var) as u64;
    println!("# {preset}: {shape:?}, T = {t} tokens; matrix-product FLOPs per sentence, forward");
    println!("label,fixed_heads_per_layer,flops,saving");
    for c in &study.configs {
        let fixed = (c.local_heads + c.association_heads) as u64;
        let flops = encoder_flops(&shape, t, fixed)?;
        let saving = flop_saving(&shape, t, fixed)?;
        println!("{},{fixed},{flops},{saving:.4}", c.label);
    }
    Ok(())
}

pub fn run_program(a: ProgramArgs) -> Result<()> {
    match a.cmd {
        ProgramCmd::Sample(s) => program_sample(s),
    }
}

fn program_sample(a: ProgramSampleArgs) -> Result<()> {
    check_flag(a.count >= 1, "--count", "0 (must be at least 1)")?;
    check_flag(
        (1..=26).contains(&a.vars),
        "--vars",
        format!("{} (must be 1..=26)", a.vars),
    )?;
    check_flag(a.prints >= 1, "--prints", "0 (must be at least 1)")?;
    check_flag(
        (2..=10).contains(&a.modulus),
        "--modulus",
        format!("{} (must be 2..=10: values are single digits)", a.modulus),
    )?;
    check_flag(
        a.statements <= 10_000,
        "--statements",
        format!("{} (at most 10000)", a.statements),
    )?;
    let spec = ProgramSpec {
        n_vars: a.vars,
        n_statements: a.statements,
        n_prints: a.prints,
        modulus: a.modulus,
    };
    let programs = sample_programs(&spec, a.count, a.seed)?;
    let mut out = std::io::stdout().lock();
    for p in &programs {
        if a.json {
            let line = json!({
                "tokens": p.token_strings(),
                "source": p.source(),
                "outputs": p.outputs(),
                "print_positions": p.print_positions(),
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}  -> {:?}\n", p.source(), p.outputs())?;
        }
    }
    Ok(())
}
