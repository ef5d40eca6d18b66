//! `prompt2lora task check`: validate a task file and print a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::logging::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a task file and print a summary of it.
    Check {
        /// The task file (TOML).
        file: PathBuf,
    },
}

pub fn run(command: Command, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { file } => check(&file),
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let task = super::load_task(file)?;
    println!("{}: ok", file.display());
    println!("task      {}", task.name);
    println!("language  {}", task.language);
    println!("catch-all {}", task.catch_all().unwrap_or("(none)"));
    println!("intents   {}", task.intents.len());
    for intent in &task.intents {
        println!(
            "  {:<24} {} example(s)  {}",
            intent.name.get_ref(),
            intent.examples.len(),
            intent.description
        );
    }
    let teacher = match &task.teacher.base_url {
        Some(url) => format!("{} at {url}", task.teacher.model),
        None => format!(
            "{} (in process, unless OPENAI_BASE_URL is set)",
            task.teacher.model
        ),
    };
    println!("teacher   {teacher}");
    println!("samples   {}", task.teacher.samples);
    println!("student   {} (rank {})", task.student(), task.train.rank);
    println!("embedder  {}", task.embedder());
    Ok(ExitCode::SUCCESS)
}
