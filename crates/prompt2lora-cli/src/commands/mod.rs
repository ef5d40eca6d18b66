//! One module per subcommand. Each has an `Args` (or `Command`) type and a `run` function.

use std::process::ExitCode;

pub mod eval;
pub mod filter;
pub mod generate;
pub mod models;
pub mod predict;
pub mod run;
pub mod serve;
pub mod task;
pub mod train;

/// Bad input or data: the user can fix it.
pub const EXIT_BAD_INPUT: u8 = 1;
/// Internal error, or a stage that is not available.
pub const EXIT_INTERNAL: u8 = 2;

/// An error the user caused (bad file, bad flag, bad data): exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn new(message: impl Into<String>) -> Self {
        UserError {
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Prints `error: ...`, one `caused by: ...` line per cause and a `hint:` where there is one.
pub fn report_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    let user = error.chain().find_map(|e| e.downcast_ref::<UserError>());
    let task = error.chain().any(|e| e.is::<prompt2lora_core::TaskError>());
    if let Some(hint) = user.and_then(|u| u.hint.as_ref()) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(if user.is_some() || task {
        EXIT_BAD_INPUT
    } else {
        EXIT_INTERNAL
    })
}

/// Loads a task file; its errors carry the file, line and key.
pub fn load_task(path: &std::path::Path) -> anyhow::Result<prompt2lora_core::Task> {
    Ok(prompt2lora_core::Task::load(path)?)
}
