//! `prompt2lora predict`: classifies messages (plain lines or JSONL, from a file or stdin) with
//! an adapter and writes JSONL with the intent, its probability and the top-k alternatives.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use prompt2lora_eval::predict::{InputFormat, PredictOptions, predict_stream};

use super::{EXIT_BAD_INPUT, UserError};
use crate::logging::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Adapter folder written by `train`.
    pub adapter: PathBuf,
    /// Messages: one per line, or JSONL with `text` (and optionally `id`); `-` for stdin.
    #[arg(default_value = "-")]
    pub input: PathBuf,
    /// Where to write the JSONL answers [default: stdout].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// How to read the input.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Messages per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Messages read ahead and sorted by length together before they are cut into batches
    /// (fewer padding tokens); only messages that have already arrived are taken.
    #[arg(long, default_value_t = 256)]
    pub sort_window: usize,
    /// Intents per message: the best and the next `top_k - 1`.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Milliseconds a partly filled batch waits for more input.
    #[arg(long, default_value_t = 0)]
    pub batch_wait_ms: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// JSONL if the first line is a JSON object with `text`, else lines.
    Auto,
    Lines,
    Jsonl,
}

pub fn run(args: Args, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    if args.batch_size == 0 || args.top_k == 0 {
        return Err(UserError::new("--batch-size and --top-k must be at least 1").into());
    }
    let classifier = prompt2lora_encoder::AdapterClassifier::load(&args.adapter)
        .with_context(|| format!("loading the adapter {}", args.adapter.display()))?
        .with_batch_size(args.batch_size);
    let options = PredictOptions {
        window: args.sort_window.max(args.batch_size),
        top_k: args.top_k,
        format: match args.format {
            Format::Auto => InputFormat::Auto,
            Format::Lines => InputFormat::Lines,
            Format::Jsonl => InputFormat::Jsonl,
        },
        max_wait: Duration::from_millis(args.batch_wait_ms),
    };

    let from_stdin = args.input.as_os_str() == "-";
    let source = if from_stdin {
        "stdin".to_string()
    } else {
        args.input.display().to_string()
    };
    let input: Box<dyn std::io::BufRead + Send> = if from_stdin {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::with_capacity(
            1 << 16,
            fs_err::File::open(&args.input).map_err(|e| UserError::new(e.to_string()))?,
        ))
    };
    let output: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(fs_err::File::create(path)?)),
        None => Box::new(std::io::stdout().lock()),
    };

    let started = Instant::now();
    let summary = predict_stream(&classifier, input, output, &source, &options)
        .with_context(|| format!("predicting {source}"))?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "{} messages in {seconds:.2} s ({:.0}/s; {:.0}/s in the model, {} calls)",
        summary.messages,
        summary.messages as f64 / seconds,
        summary.messages as f64 / summary.classify_time.as_secs_f64().max(1e-9),
        summary.calls
    );
    if !summary.bad_lines.is_empty() {
        tracing::warn!(
            "{} bad line(s) in {source} were skipped (listed above)",
            summary.bad_lines.len()
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    Ok(ExitCode::SUCCESS)
}
