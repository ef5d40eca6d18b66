//! `prompt2lora predict`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::logging::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input file.
    pub input: Option<PathBuf>,
}

pub fn run(_args: Args, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    super::not_available("predict")
}
