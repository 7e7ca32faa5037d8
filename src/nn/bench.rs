//! `attnlab bench`: the toolkit against a PyTorch reference (not yet implemented; see issue 5).

use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

pub fn run(_a: BenchArgs) -> Result<()> {
    bail!("`attnlab bench` is not implemented yet")
}
