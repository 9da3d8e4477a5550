//! `quiesce anonymize` (being built).

use std::process::ExitCode;

/// Options of `quiesce anonymize`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `quiesce anonymize`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("anonymize is not built yet")
}
