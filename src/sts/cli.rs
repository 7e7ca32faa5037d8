//! `attnlab sts ...`

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct StsArgs {}

pub fn run(_a: StsArgs) -> Result<()> {
    Ok(())
}
