//! `prompt2lora filter`: raw teacher output in, training data, rejects and a report out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use prompt2lora_core::jsonl::write_jsonl_atomic;
use prompt2lora_core::task::DriftAction;
use prompt2lora_core::{Embedder, Task};
use prompt2lora_filter::{FilterOptions, FilterOutcome};

use super::UserError;
use crate::logging::GlobalArgs;

/// Tokens per text for the embedder; longer texts are truncated.
const EMBED_MAX_LENGTH: usize = 128;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Samples to filter (JSONL, as `generate` writes them).
    pub input: PathBuf,
    /// The task file (TOML).
    #[arg(long)]
    pub task: PathBuf,
    /// Where the kept samples go (JSONL).
    #[arg(long)]
    pub out: PathBuf,
    /// Where the removed samples go, with stage and reason. Default: `rejects.jsonl` beside
    /// `--out`.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Where the funnel and histograms go (JSON); the plots are written beside it. Default:
    /// `filter_report.json` beside `--out`.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Share of each intent kept by the confidence cut, most confident first.
    #[arg(long, value_name = "FRACTION")]
    pub keep_fraction: Option<f64>,
    /// Keep samples whose combined confidence reaches this, instead of a share per intent.
    #[arg(long, value_name = "SCORE")]
    pub min_confidence: Option<f64>,
    /// Skip the semantic-duplicate stage (no embedding model is loaded).
    #[arg(long)]
    pub no_semantic: bool,
    /// Embedding model for semantic duplicates: an embedded name, a folder or `hf:ORG/NAME`.
    #[arg(long, value_name = "MODEL")]
    pub embedder: Option<String>,
    /// Similarity from which two texts are near duplicates (0 to 1).
    #[arg(long, value_name = "SIMILARITY")]
    pub near_threshold: Option<f64>,
    /// Cosine similarity from which two texts are semantic duplicates (0 to 1).
    #[arg(long, value_name = "COSINE")]
    pub semantic_threshold: Option<f64>,
    /// What to do with samples the teacher labelled differently from the intent they were
    /// written for.
    #[arg(long, value_enum)]
    pub drift: Option<Drift>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Drift {
    Drop,
    Relabel,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let task = super::load_task(&args.task)?;
    let mut options = resolve(&args, &task)?;
    let beside_out = |name: &str| args.out.parent().unwrap_or(Path::new("")).join(name);
    let rejects_path = args
        .rejects
        .clone()
        .unwrap_or_else(|| beside_out("rejects.jsonl"));
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| beside_out("filter_report.json"));

    // Read.
    let input = prompt2lora_filter::read_input(&args.input)
        .map_err(|e| UserError::new(format!("cannot read the samples: {e}")))?;
    let unreadable: Vec<&str> =
        prompt2lora_filter::input::describe_read_rejects(&input.rejects).collect();
    for line in unreadable.iter().take(5) {
        tracing::warn!("{line}");
    }
    if unreadable.len() > 5 {
        tracing::warn!(
            "... and {} more unreadable lines, all in {}",
            unreadable.len() - 5,
            rejects_path.display()
        );
    }

    // Embedder, only when the semantic stage will run.
    let embedder = match (&options.embedder_name, options.semantic) {
        (Some(name), true) => Some(load_embedder(name)?),
        _ => None,
    };
    options.progress = Some(progress_reporter(global));

    // Filter.
    let outcome = prompt2lora_filter::filter(input, &task, embedder.as_deref(), &options)?;
    write_outputs(&outcome, &args.out, &rejects_path, &report_path)?;
    if !global.quiet {
        print!("{}", outcome.report.summary());
    }
    if outcome.kept.is_empty() {
        let error = UserError::new("no sample survived the filter")
            .with_hint(format!("see why in {}", rejects_path.display()));
        return Err(error.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Command-line flags over the task file's `[filter]` settings.
fn resolve(args: &Args, task: &Task) -> anyhow::Result<FilterOptions> {
    let mut options = FilterOptions::from_task(task);
    let settings = &mut options.settings;
    if let Some(f) = args.keep_fraction {
        settings.keep_fraction = f;
    }
    if args.min_confidence.is_some() {
        settings.min_confidence = args.min_confidence;
    }
    if let Some(t) = args.near_threshold {
        settings.near_duplicate_threshold = t;
    }
    if let Some(t) = args.semantic_threshold {
        settings.semantic_threshold = t;
    }
    if let Some(drift) = args.drift {
        settings.drift = match drift {
            Drift::Drop => DriftAction::Drop,
            Drift::Relabel => DriftAction::Relabel,
        };
    }
    if let Some(embedder) = &args.embedder {
        settings.embedder = Some(embedder.clone());
    }
    options.embedder_name = settings.embedder.clone().or_else(|| Some(task.embedder()));
    options.semantic = !args.no_semantic;
    if !options.semantic {
        options.embedder_name = None;
    }
    options
        .validate()
        .map_err(|e| UserError::new(e.to_string()))?;
    Ok(options)
}

fn load_embedder(name: &str) -> anyhow::Result<Box<dyn Embedder>> {
    tracing::info!("loading embedding model {name}");
    let embedder =
        prompt2lora_encoder::SentenceEmbedder::load(name, EMBED_MAX_LENGTH).map_err(|e| {
            UserError::new(format!("cannot load the embedding model `{name}`: {e}")).with_hint(
                "fetch it with `prompt2lora models fetch`, name another with --embedder, or skip \
             the stage with --no-semantic",
            )
        })?;
    Ok(Box::new(embedder))
}

/// A progress bar that appears on the first report of work (embedding is the slow part).
fn progress_reporter(global: &GlobalArgs) -> prompt2lora_filter::Progress {
    let global = global.clone();
    let bar: OnceLock<indicatif::ProgressBar> = OnceLock::new();
    Box::new(move |what, done, total| {
        let bar = bar.get_or_init(|| global.progress(total as u64, what));
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}

fn write_outputs(
    outcome: &FilterOutcome,
    out: &Path,
    rejects: &Path,
    report: &Path,
) -> anyhow::Result<()> {
    for path in [out, rejects, report] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs_err::create_dir_all(parent)?;
        }
    }
    write_jsonl_atomic(out, &outcome.kept)?;
    write_jsonl_atomic(rejects, &outcome.rejects)?;
    let json = serde_json::to_string_pretty(&outcome.report)?;
    fs_err::write(report, json + "\n")?;
    let dir = report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match prompt2lora_filter::plot::write_plots(&outcome.report, dir) {
        Ok(paths) => tracing::debug!("plots: {paths:?}"),
        // Plots are a convenience; the numbers are in the report.
        Err(e) => tracing::warn!("could not draw the filter plots: {e}"),
    }
    tracing::info!(
        "kept {} samples in {}, {} rejects in {}",
        outcome.kept.len(),
        out.display(),
        outcome.rejects.len(),
        rejects.display()
    );
    Ok(())
}
