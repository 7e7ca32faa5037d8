//! `attnlab lego ...` and `attnlab program ...`: print sampled LEGO sentences and programs,
//! check experiment configs.
//!
//! `attnlab lego sample --n-var 12 --count 3 --seed 0 --json` prints one JSON object a line:
//! `tokens` (strings), `labels` (chain order, +1/-1), `order` (`order[s]` = chain index of the
//! clause at sentence position `s`), `query_positions` (token position of each chain
//! variable's left-hand occurrence, chain order) and `names` (chain order).
//!
//! `attnlab lego flops --preset paper` prints the exact FLOPs of each LEGO attention-module
//! configuration; `attnlab lego check-config` validates `experiments/lego/*.toml` (every
//! preset); `attnlab lego train --config F [--preset P] [--set key=value]...` trains a study.
//!
//! `attnlab program sample --count 3 --seed 0 --json` prints `tokens`, `source`, `outputs`
//! (printed values in order) and `print_positions`.
//!
//! Samplers write one item at a time, so any `--count` streams; a closed pipe (`| head`) ends
//! the output quietly.

use crate::config::Preset as PresetName;
use crate::lego::config;
use crate::lego::flops::{encoder_flops, flop_saving, EncoderShape};
use crate::lego::program::{Program, ProgramSpec, MAX_PRINTS, MAX_STATEMENTS};
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
        /// Which preset of the config.
        #[arg(long, value_enum, default_value_t = PresetName::Paper)]
        preset: PresetName,
        /// Override one config value of the preset, `key.path=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
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
    /// Which preset of the config.
    #[arg(long, value_enum, default_value_t = PresetName::Cpu)]
    preset: PresetName,
    /// Override one config value of the preset, `key.path=value` (repeatable), e.g.
    /// `--set train.optim.lr=3e-4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run only this seed (default: the preset's seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Train only the runs with these labels (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Output directory: run directories go to `<out>/<preset>/<label>-seed<S>/` (default:
    /// the experiment's `out_dir`).
    #[arg(long)]
    out: Option<PathBuf>,
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
    /// Random assignments after the initial literals (at most 10000).
    #[arg(long, default_value_t = ProgramSpec::default().n_statements)]
    statements: usize,
    /// Print statements (1..=10000).
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
        LegoCmd::Flops {
            config,
            preset,
            sets,
        } => print_flops(&config, preset, &sets),
    }
}

fn lego_train(a: LegoTrainArgs) -> Result<()> {
    let exp = config::load_with(&a.config, a.preset, &a.sets)?;
    let seeds = a.seed.map(|s| vec![s]);
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(&exp.experiment.out_dir));
    let dev = crate::nn::device()?;
    let started = std::time::Instant::now();
    let res = crate::lego::experiments::run_experiment(
        &exp,
        a.preset,
        crate::lego::experiments::ExperimentOpts {
            seeds: seeds.as_deref(),
            only: a.only.as_deref(),
            dir: &out,
            committed: None,
            stop: &crate::interrupt::requested,
            log: &mut |m| eprintln!("{m}"),
            verbose: true,
            dev: &dev,
        },
    )?;
    eprintln!(
        "{}: {} runs in {:.0}s",
        res.name,
        res.results.len() + res.programs.len(),
        started.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&res.results)?)?;
        if !res.programs.is_empty() {
            writeln!(out, "{}", serde_json::to_string(&res.programs)?)?;
        }
    } else {
        for r in &res.results {
            let acc: Vec<String> = r.per_position.iter().map(|x| format!("{x:.3}")).collect();
            writeln!(
                out,
                "{} seed {}: {}",
                r.run.label,
                r.run.seed,
                acc.join(" ")
            )?;
        }
        for r in &res.programs {
            writeln!(
                out,
                "program {} seed {}: accuracy {:.3} (majority {:.3}), {} parameters",
                r.run.label, r.run.seed, r.accuracy, r.majority, r.params
            )?;
        }
    }
    Ok(())
}

/// Writes `items` to stdout one line each; a reader that closes the pipe ends it quietly.
fn stream_lines<T>(items: impl Iterator<Item = T>, line: impl Fn(&T) -> String) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let write = || -> std::io::Result<()> {
        for it in items {
            writeln!(out, "{}", line(&it))?;
        }
        out.flush()
    };
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
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
    let variant = Variant::parse(&a.variant)
        .map_err(|e| anyhow::anyhow!("invalid value for `--variant`: {e}"))?;
    let sentences = variant.stream(a.n_var, a.seed)?.take(a.count);
    stream_lines(sentences, |s| {
        if a.json {
            json!({
                "tokens": s.token_strings(),
                "labels": s.values,
                "order": s.order,
                "query_positions": s.query_positions(),
                "names": s.names.iter().map(|&t| token_str(t)).collect::<Vec<_>>(),
            })
            .to_string()
        } else {
            let names: Vec<&str> = s.names.iter().map(|&t| token_str(t)).collect();
            let chain: Vec<String> = names
                .iter()
                .zip(&s.values)
                .map(|(n, v)| format!("{n}={v:+}"))
                .collect();
            format!("{}\n  chain: {}", s.text(), chain.join(" "))
        }
    })
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

fn print_flops(path: &std::path::Path, preset: PresetName, sets: &[String]) -> Result<()> {
    let exp = config::load_with(path, preset, sets)?;
    let p = exp.preset(preset);
    let (Some(task), Some(study)) = (&p.task, &p.lego_attention) else {
        bail!(
            "invalid value for `--config`: `{}` has no [{preset}.task] and [{preset}.lego_attention] sections (see experiments/lego/lego_attention.toml)",
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
    check_flag(
        (1..=MAX_PRINTS).contains(&a.prints),
        "--prints",
        format!("{} (must be 1..={MAX_PRINTS})", a.prints),
    )?;
    check_flag(
        (2..=10).contains(&a.modulus),
        "--modulus",
        format!("{} (must be 2..=10: values are single digits)", a.modulus),
    )?;
    check_flag(
        a.statements <= MAX_STATEMENTS,
        "--statements",
        format!("{} (at most {MAX_STATEMENTS})", a.statements),
    )?;
    let spec = ProgramSpec {
        n_vars: a.vars,
        n_statements: a.statements,
        n_prints: a.prints,
        modulus: a.modulus,
    };
    let programs = Program::stream(&spec, a.seed)?.take(a.count);
    stream_lines(programs, |p| {
        if a.json {
            json!({
                "tokens": p.token_strings(),
                "source": p.source(),
                "outputs": p.outputs(),
                "print_positions": p.print_positions(),
            })
            .to_string()
        } else {
            format!("{}  -> {:?}\n", p.source(), p.outputs())
        }
    })
}
