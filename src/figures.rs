//! `attnlab figures`: regenerates every figure of the project (not yet implemented; see issue 4).

use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct FiguresArgs {}

pub fn run(_a: FiguresArgs) -> Result<()> {
    bail!("`attnlab figures` is not implemented yet")
}
