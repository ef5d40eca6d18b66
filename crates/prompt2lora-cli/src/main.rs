//! The `prompt2lora` binary: argument parsing and glue. Each subcommand lives in
//! `commands/<name>.rs` and calls into the library crates, where the work is done.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod logging;
mod pipeline_report;
mod report;
mod stages;

/// Zero-label intent classifiers: a teacher LLM writes and labels samples, a filter keeps the
/// good ones, and a small encoder learns LoRA adapters from them.
#[derive(Debug, Parser)]
#[command(name = "prompt2lora", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: logging::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline (generate, filter, train, eval) into one run folder with a report.
    Run(commands::run::Args),
    /// Write and label samples with the teacher.
    Generate(commands::generate::Args),
    /// Remove invalid, drifted, duplicate and doubtful samples.
    Filter(commands::filter::Args),
    /// Train LoRA adapters and a classification head on a student encoder.
    Train(commands::train::Args),
    /// Score an adapter (and optionally the teacher) on a labelled test set.
    Eval(commands::eval::Args),
    /// Classify messages from a file or stdin, writing JSONL.
    Predict(commands::predict::Args),
    /// Serve adapters over HTTP.
    Serve(commands::serve::Args),
    /// Fetch and list the embedded models.
    #[command(subcommand)]
    Models(commands::models::Command),
    /// Check task files.
    #[command(subcommand)]
    Task(commands::task::Command),
}

/// The encoder's kernels allocate their outputs op by op; glibc's allocator handed large
/// buffers back to the kernel and took page faults on every batch, mimalloc reuses them
/// (training 8-15% faster, bench/results/train.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    prompt2lora_core::cpu::quiet_candle_workers();
    let cli = Cli::parse();
    logging::init(&cli.global);
    match run(cli) {
        Ok(code) => code,
        Err(error) => commands::report_error(&error),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => commands::run::run(args, &cli.global),
        Command::Generate(args) => commands::generate::run(args, &cli.global),
        Command::Filter(args) => commands::filter::run(args, &cli.global),
        Command::Train(args) => commands::train::run(args, &cli.global),
        Command::Eval(args) => commands::eval::run(args, &cli.global),
        Command::Predict(args) => commands::predict::run(args, &cli.global),
        Command::Serve(args) => commands::serve::run(args, &cli.global),
        Command::Models(command) => commands::models::run(command, &cli.global),
        Command::Task(command) => commands::task::run(command, &cli.global),
    }
}
