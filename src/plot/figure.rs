//! What a figure is, for the papers that define figures and the `figures` command that runs
//! them: the context a figure function gets, what it returns, its registration, and the
//! per-preset config file. Kept apart from the command so the papers depend on this module and
//! not on the command that depends on them.

use crate::config::Preset;
use crate::plot::Chart;
use anyhow::Result;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a figure function gets.
pub struct FigureContext<'a> {
    pub config: &'a Path,
    pub preset: Preset,
    pub quiet: bool,
    /// Root for the run directories of figures that train models (`--runs`).
    pub runs: &'a Path,
}

/// What a figure function returns: its panels (drawn side by side into one PNG, and written as
/// CSV) and the key numbers it shows (into the JSON beside them).
pub struct FigureOutput {
    pub charts: Vec<Chart>,
    pub summary: serde_json::Value,
}

/// One registered figure.
pub struct Figure {
    /// `<paper>/<name>`, e.g. `sts/loss_curve`.
    pub name: &'static str,
    /// What it shows, one line (goes into the index).
    pub what: &'static str,
    pub compute: fn(&FigureContext) -> Result<FigureOutput>,
    /// Config file relative to the experiments directory; `None` means
    /// `<paper>/figures/<name>.toml`. Several figures may share one experiment file.
    pub config: Option<&'static str>,
    /// Parses and range-checks the config file (every preset) without computing anything.
    pub check: fn(&Path) -> Result<()>,
}

impl Figure {
    /// The config file under the experiments directory: `<paper>/figures/<name>.toml`.
    pub fn config_path(&self, experiments: &Path) -> PathBuf {
        if let Some(c) = self.config {
            return experiments.join(c);
        }
        let (paper, name) = self.name.split_once('/').unwrap_or(("misc", self.name));
        experiments
            .join(paper)
            .join("figures")
            .join(format!("{name}.toml"))
    }
}

/// A figure config file: one table per preset, each of the figure's own schema.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureFile<P> {
    pub cpu: P,
    pub paper: P,
    pub tiny: P,
}

impl<P: Clone + serde::de::DeserializeOwned> FigureFile<P> {
    pub fn load(path: &Path) -> Result<Self> {
        crate::config::load_toml(path)
    }
    pub fn preset(&self, p: Preset) -> P {
        match p {
            Preset::Cpu => self.cpu.clone(),
            Preset::Paper => self.paper.clone(),
            Preset::Tiny => self.tiny.clone(),
        }
    }
}
