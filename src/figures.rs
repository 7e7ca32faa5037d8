//! `attnlab figures`: regenerates every figure of the project from the configs under
//! `experiments/`. Each figure is registered once (name, config file, what it shows, the function
//! that computes it) and written as `<out>/<paper>/<name>.png`, beside `<name>.csv` (every plotted
//! number) and `<name>.json` (the cache key and the key numbers). `<out>/README.md` indexes them.
//!
//! A figure is recomputed only when its cache key changes: the SHA-256 of the config file's
//! contents, the preset, the crate version and the sources behind it (or with `--force`).

use crate::plot::Chart;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::config::Preset as FigurePreset;
pub use crate::plot::figure::{Figure, FigureContext, FigureFile, FigureOutput};

#[derive(clap::Args, Debug)]
pub struct FiguresArgs {
    /// Which preset of every figure config to use.
    #[arg(long, value_enum, default_value_t = FigurePreset::Cpu)]
    pub preset: FigurePreset,
    /// Regenerate only this figure (e.g. `sts/loss_curve`); repeatable.
    #[arg(long)]
    pub only: Vec<String>,
    /// Recompute even when the cache key matches.
    #[arg(long)]
    pub force: bool,
    /// Where the figures go (default: `figures/` for the CPU preset, whose figures are
    /// committed; `figures/paper/` for the paper's sizes; a scratch `runs/figures-tiny/` for the
    /// tiny preset, which shows nothing and must never overwrite a committed figure).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where the figure configs are read from (`<dir>/<paper>/figures/<name>.toml`).
    #[arg(long, default_value = "experiments")]
    pub experiments: PathBuf,
    /// Where figures that train models keep their run directories (checkpoints and results,
    /// reused across invocations and resumed after Ctrl-C; not committed).
    #[arg(long, default_value = "runs/figures")]
    pub runs: PathBuf,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Redraw the PNGs (and rewrite the CSVs) from the charts stored in each figure's JSON,
    /// computing nothing; for changes to the plotting code.
    #[arg(long, conflicts_with = "force")]
    pub replot: bool,
    /// List the registered figures and exit.
    #[arg(long)]
    pub list: bool,
}

/// Every figure of the project. Papers add theirs here.
pub fn registry() -> Vec<Figure> {
    let mut all = crate::sts::figures::figures();
    all.extend(crate::lego::figures::registered());
    all.extend(crate::grokking::figures::registered());
    all
}

/// The JSON written beside each figure.
#[derive(Serialize, Deserialize)]
pub struct FigureRecord {
    pub figure: String,
    pub cache_key: String,
    pub preset: FigurePreset,
    pub config: String,
    pub version: String,
    pub seconds: f64,
    pub summary: serde_json::Value,
    /// Every panel as drawn, so `--replot` can redraw without recomputing.
    #[serde(default)]
    pub charts: Vec<Chart>,
}

/// SHA-256 of the sources a paper's figures depend on (its folder and everything shared),
/// computed by `build.rs`.
pub fn source_hash(paper: &str) -> &'static str {
    match paper {
        "sts" => env!("ATTNLAB_SOURCE_HASH_STS"),
        "lego" => env!("ATTNLAB_SOURCE_HASH_LEGO"),
        "grokking" => env!("ATTNLAB_SOURCE_HASH_GROKKING"),
        _ => "",
    }
}

/// SHA-256 over the config contents, the preset, the crate version and the sources behind the
/// figure (`figure` is `<paper>/<name>`), so editing the code re-runs what it affects.
pub fn cache_key(config_text: &str, preset: FigurePreset, figure: &str) -> String {
    let mut h = Sha256::new();
    h.update(config_text.as_bytes());
    h.update([0]);
    h.update(preset.name().as_bytes());
    h.update([0]);
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    h.update(source_hash(figure.split('/').next().unwrap_or("")).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn files(out: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = out.join(name);
    (
        base.with_extension("png"),
        base.with_extension("csv"),
        base.with_extension("json"),
    )
}

/// Where the figures of `preset` go unless `--out` says otherwise.
pub fn default_out(preset: FigurePreset) -> PathBuf {
    match preset {
        FigurePreset::Cpu => PathBuf::from("figures"),
        FigurePreset::Paper => PathBuf::from("figures/paper"),
        FigurePreset::Tiny => PathBuf::from("runs/figures-tiny"),
    }
}

pub fn run(a: FiguresArgs) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| default_out(a.preset));
    let all = registry();
    if a.list {
        for f in &all {
            println!("{}  {}", f.name, f.what);
        }
        return Ok(());
    }
    for o in &a.only {
        if !all.iter().any(|f| f.name == o) {
            let names: Vec<&str> = all.iter().map(|f| f.name).collect();
            bail!(
                "invalid value for `--only`: no figure named `{o}`; choose one of {}",
                names.join(", ")
            );
        }
    }
    let chosen: Vec<&Figure> = all
        .iter()
        .filter(|f| a.only.is_empty() || a.only.iter().any(|o| o == f.name))
        .collect();
    let start = std::time::Instant::now();
    for f in chosen {
        let cfg = f.config_path(&a.experiments);
        let text = std::fs::read_to_string(&cfg).with_context(|| {
            format!(
                "figure `{}` needs its config `{}`: create it or pass --experiments <dir>",
                f.name,
                cfg.display()
            )
        })?;
        let key = cache_key(&text, a.preset, f.name);
        let (png, csv, json) = files(&out, f.name);
        let record = std::fs::read_to_string(&json)
            .ok()
            .and_then(|s| serde_json::from_str::<FigureRecord>(&s).ok());
        if a.replot {
            let Some(rec) = record.filter(|r| !r.charts.is_empty()) else {
                bail!(
                    "`--replot` needs `{}` with stored charts: run without --replot first",
                    json.display()
                );
            };
            crate::plot::draw_png(&png, &rec.charts)?;
            crate::io::write_atomic(&csv, crate::plot::charts_csv(&rec.charts).as_bytes())?;
            eprintln!("{}: redrawn {}", f.name, png.display());
            continue;
        }
        let cached = record.is_some_and(|r| r.cache_key == key) && png.exists() && csv.exists();
        if cached && !a.force {
            eprintln!(
                "{}: up to date (cache key matches; --force recomputes)",
                f.name
            );
            continue;
        }
        eprintln!("{}: computing ({} preset)", f.name, a.preset.name());
        let t0 = std::time::Instant::now();
        let ctx = FigureContext {
            config: &cfg,
            preset: a.preset,
            quiet: a.quiet,
            runs: &a.runs,
        };
        let out = (f.compute)(&ctx).with_context(|| format!("figure `{}`", f.name))?;
        crate::plot::draw_png(&png, &out.charts)?;
        crate::io::write_atomic(&csv, crate::plot::charts_csv(&out.charts).as_bytes())?;
        let seconds = t0.elapsed().as_secs_f64();
        crate::io::write_json(
            &json,
            &FigureRecord {
                figure: f.name.to_string(),
                cache_key: key,
                preset: a.preset,
                config: cfg.display().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                seconds,
                summary: out.summary,
                charts: out.charts,
            },
        )?;
        eprintln!("{}: written {} ({seconds:.1} s)", f.name, png.display());
    }
    write_index(&out, &all)?;
    eprintln!(
        "figures done in {:.1} s; index {}",
        start.elapsed().as_secs_f64(),
        out.join("README.md").display()
    );
    Ok(())
}

/// `<out>/README.md`: one line per figure present, with the config and command that made it.
fn write_index(out: &Path, all: &[Figure]) -> Result<()> {
    let mut s = String::from(
        "# Figures\n\nGenerated by `scripts/figures` (= `attnlab figures`); do not edit by hand. Each PNG \
         has beside it the CSV of every plotted number (`panel,series,x,y,y_lo,y_hi`, bands are \
         min..max over seeds) and a JSON with the cache key and the key numbers.\n\n",
    );
    let records: Vec<(&Figure, FigureRecord)> = all
        .iter()
        .filter_map(|f| {
            let (png, _, json) = files(out, f.name);
            let rec = std::fs::read_to_string(&json)
                .ok()
                .and_then(|t| serde_json::from_str::<FigureRecord>(&t).ok())?;
            png.exists().then_some((f, rec))
        })
        .collect();
    for (f, rec) in &records {
        // Figures of one config draw on the same runs, trained by whichever came first: the
        // group's total is the real cost of each of them.
        let siblings: Vec<&(&Figure, FigureRecord)> = records
            .iter()
            .filter(|(g, r)| r.config == rec.config && g.name != f.name)
            .collect();
        let time = if siblings.is_empty() {
            format!("{:.0} s", rec.seconds)
        } else {
            let total: f64 = rec.seconds + siblings.iter().map(|(_, r)| r.seconds).sum::<f64>();
            let names: Vec<String> = siblings
                .iter()
                .map(|(g, _)| format!("`{}`", g.name))
                .collect();
            format!(
                "{:.0} s; its runs are shared with {}: {total:.0} s together",
                rec.seconds,
                names.join(", ")
            )
        };
        s.push_str(&format!(
            "- [`{name}`]({name}.png): {what} Config `{cfg}`, command `attnlab figures --only {name} --preset {p}` ({time}).\n",
            name = f.name,
            what = f.what,
            cfg = rec.config,
            p = rec.preset.name(),
        ));
    }
    crate::io::write_atomic(&out.join("README.md"), s.as_bytes())
}
