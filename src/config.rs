//! Loading experiment configs from TOML with errors that name the file, the field and the fix.
//!
//! Every config struct derives `Deserialize` with `#[serde(deny_unknown_fields)]`, so a typo is
//! an error naming the unknown key and the keys that exist, never a silently ignored setting.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads and parses a TOML config file into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    parse_toml(&read_config(path)?).with_context(|| format!("in config file `{}`", path.display()))
}

fn read_config(path: &Path) -> Result<String> {
    if !path.exists() {
        bail!(
            "config file `{}` does not exist: pass an existing file (see experiments/ for examples)",
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("could not read config file `{}`", path.display()))
}

/// Parses TOML text into `T`; the error carries toml's line/column and the offending key.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("invalid config: {e}"))
}

/// Fails with a message naming `field` unless `ok`; used for range checks after parsing.
pub fn require(ok: bool, field: &str, msg: impl std::fmt::Display) -> Result<()> {
    if !ok {
        bail!("invalid value for `{field}`: {msg}");
    }
    Ok(())
}

/// Which size of an experiment to run: every config file holds the three side by side.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Seconds: for tests and smoke runs.
    Tiny,
    /// Minutes to an hour on 2 CPU cores.
    #[default]
    Cpu,
    /// The paper's sizes.
    Paper,
}

impl Preset {
    /// The preset's table name in a config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Cpu => "cpu",
            Self::Paper => "paper",
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Applies `--set key.path=value` overrides to a parsed config file. A path is relative to the
/// `preset` table (`optim.lr=3e-4` sets `[cpu.optim] lr` under `--preset cpu`) unless the preset
/// table lacks its first key and the file's top level has it. Values are TOML (`3e-4`, `true`, `"post"`, `[2, 4]`); a bare
/// word is taken as a string. Unknown keys are caught when the result is deserialised.
pub fn apply_overrides(doc: &mut toml::Table, preset: Preset, sets: &[String]) -> Result<()> {
    for s in sets {
        let Some((path, raw)) = s.split_once('=') else {
            bail!("invalid value for `--set`: `{s}` is not `key.path=value` (e.g. `--set optim.lr=3e-4`)");
        };
        let path = path.trim();
        let keys: Vec<&str> = path.split('.').map(str::trim).collect();
        if keys.iter().any(|k| k.is_empty()) {
            bail!("invalid value for `--set`: `{path}` has an empty key");
        }
        let value =
            parse_value(raw.trim()).with_context(|| format!("invalid value for `--set {path}`"))?;
        let in_preset = doc
            .get(preset.name())
            .and_then(|t| t.as_table())
            .is_some_and(|t| t.contains_key(keys[0]));
        let keys: Vec<&str> = if !in_preset && doc.contains_key(keys[0]) {
            keys
        } else {
            std::iter::once(preset.name()).chain(keys).collect()
        };
        let mut table = &mut *doc;
        for (i, k) in keys[..keys.len() - 1].iter().enumerate() {
            let entry = table
                .entry(k.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => bail!(
                    "invalid value for `--set {path}`: `{}` is a value, not a table",
                    keys[..=i].join(".")
                ),
            };
        }
        table.insert(keys[keys.len() - 1].to_string(), value);
    }
    Ok(())
}

fn parse_value(raw: &str) -> Result<toml::Value> {
    if raw.is_empty() {
        bail!("the value is empty");
    }
    let doc: toml::Table = match toml::from_str(&format!("v = {raw}")) {
        Ok(t) => t,
        Err(_) => return Ok(toml::Value::String(raw.to_string())),
    };
    let v = doc.get("v").cloned().context("no value")?;
    if let toml::Value::Float(f) = v {
        if !f.is_finite() {
            bail!("`{raw}` is not a finite number");
        }
    }
    Ok(v)
}

/// Reads a config file, applies `--set` overrides for `preset`, and deserialises it into `T`.
pub fn load_toml_with<T: DeserializeOwned>(
    path: &Path,
    preset: Preset,
    sets: &[String],
) -> Result<T> {
    if sets.is_empty() {
        return load_toml(path);
    }
    let mut doc: toml::Table = load_toml(path)?;
    apply_overrides(&mut doc, preset, sets)?;
    let text = toml::to_string(&doc)?;
    parse_toml(&text).with_context(|| format!("in config file `{}` (after --set)", path.display()))
}

/// Fails naming `field` unless `x` is a finite number.
pub fn require_finite(x: f64, field: &str) -> Result<()> {
    require(
        x.is_finite(),
        field,
        format!("must be a finite number, not {x}"),
    )
}
