//! Global flags, logging to stderr and the one place that decides whether progress bars show.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// More log output: -v for debug, -vv for trace. `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl GlobalArgs {
    /// Progress bars show only on an interactive stderr and when not quiet.
    pub fn show_progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// A progress bar for `len` steps, hidden where [`GlobalArgs::show_progress`] says so.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if !self.show_progress() {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(len);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>10.bold} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar
    }
}

pub fn init(args: &GlobalArgs) {
    let default = match (args.quiet, args.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Dependencies stay at warn unless asked for by name in RUST_LOG.
        EnvFilter::new(format!("warn,prompt2lora={default},prompt2lora_core={default},prompt2lora_hub={default},prompt2lora_encoder={default},prompt2lora_teacher={default},prompt2lora_local={default},prompt2lora_filter={default},prompt2lora_eval={default},prompt2lora_cli={default}"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(args.verbose > 0)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}
