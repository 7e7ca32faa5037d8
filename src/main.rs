//! The `attnlab` command line: one binary, one subcommand per job.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "attnlab",
    version,
    about = "Train exact transformer models and check them against theory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sparse token selection (Wang, Wei, Hsu, Lee 2024): predictions, training, FCN bounds.
    Sts(attnlab::sts::cli::StsArgs),
    /// Regenerate the project's figures (PNG + CSV) from the configs under experiments/.
    Figures(attnlab::figures::FiguresArgs),
    /// Benchmark the transformer toolkit against a PyTorch reference on the CPU.
    Bench(attnlab::nn::bench::BenchArgs),
    /// LEGO reasoning task (Zhang et al. 2022).
    Lego(attnlab::lego::cli::LegoArgs),
    /// Straight-line program-execution task (LEGO's convolution study).
    Program(attnlab::lego::cli::ProgramArgs),
    /// Structural grokking (Murty et al. 2023).
    Grokking(attnlab::grokking::cli::GrokkingArgs),
    /// Check every paper claim of the ledger at one scale and report which hold.
    Verify(attnlab::verify::VerifyArgs),
}

fn main() -> std::process::ExitCode {
    restart_for_openblas();
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(attnlab::run::exit_code(&e))
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    attnlab::interrupt::install();
    attnlab::nn::blas::check_env()?;
    match cli.cmd {
        Cmd::Sts(a) => attnlab::sts::cli::run(a),
        Cmd::Figures(a) => attnlab::figures::run(a),
        Cmd::Bench(a) => attnlab::nn::bench::run(a),
        Cmd::Lego(a) => attnlab::lego::cli::run_lego(a),
        Cmd::Program(a) => attnlab::lego::cli::run_program(a),
        Cmd::Grokking(a) => attnlab::grokking::cli::run(a),
        Cmd::Verify(a) => attnlab::verify::run(a),
    }
}

/// Restarts the process with `OPENBLAS_CORETYPE` set when OpenBLAS loaded its generic kernels
/// on a CPU it does not know (see `nn::blas`): the variable is read only while the library
/// loads, before `main`. The same arguments and `argv[0]`; on failure the run goes on as is.
fn restart_for_openblas() {
    #[cfg(unix)]
    if let Some(core) = attnlab::nn::blas::coretype_to_set() {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("OPENBLAS_CORETYPE", core)
            .exec();
    }
}
