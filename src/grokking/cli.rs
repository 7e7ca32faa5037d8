//! `attnlab grokking ...` (not yet implemented; see issue 7).

use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct GrokkingArgs {}

pub fn run(_a: GrokkingArgs) -> Result<()> {
    bail!("`attnlab grokking` is not implemented yet")
}
