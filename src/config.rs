//! Loading experiment configs from TOML with errors that name the file, the field and the fix.
//!
//! Every config struct derives `Deserialize` with `#[serde(deny_unknown_fields)]`, so a typo is
//! an error naming the unknown key and the keys that exist, never a silently ignored setting.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads and parses a TOML config file into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    if !path.exists() {
        bail!(
            "config file `{}` does not exist: pass an existing file (see experiments/ for examples)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read config file `{}`", path.display()))?;
    parse_toml(&text).with_context(|| format!("in config file `{}`", path.display()))
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
