//! `attnlab lego ...` and `attnlab program ...` (not yet implemented; see issue 6).

use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct LegoArgs {}

#[derive(clap::Args, Debug)]
pub struct ProgramArgs {}

pub fn run_lego(_a: LegoArgs) -> Result<()> {
    bail!("`attnlab lego` is not implemented yet")
}

pub fn run_program(_a: ProgramArgs) -> Result<()> {
    bail!("`attnlab program` is not implemented yet")
}
