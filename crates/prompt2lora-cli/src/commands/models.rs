//! `prompt2lora models`.

use std::process::ExitCode;

use crate::logging::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fetch embedded models into the cache.
    Fetch {
        /// Short names; none fetches the defaults.
        names: Vec<String>,
    },
    /// List the embedded models and whether they are in the cache.
    List,
}

pub fn run(_command: Command, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    super::not_available("models")
}
