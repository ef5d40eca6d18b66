//! `prompt2lora train`: fine-tunes the student on filtered samples and writes a PEFT adapter.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prompt2lora_core::jsonl::{SampleRules, read_samples};
use prompt2lora_core::text::char_len;
use prompt2lora_encoder::train::log::{EpochRecord, StepRecord};
use prompt2lora_encoder::train::{Observer, TrainOptions, TrainSummary};

use super::UserError;
use crate::logging::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training samples (JSONL with `text` and `intent` or `label`), usually the filter's
    /// clean.jsonl.
    pub input: PathBuf,
    /// The task file; its `[train]` section holds the defaults of the flags below.
    #[arg(long)]
    pub task: PathBuf,
    /// Adapter folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Validation samples scored every epoch (same format as the input), instead of holding
    /// out `train.validation_fraction` of the input.
    #[arg(long, value_name = "FILE")]
    pub validation: Option<PathBuf>,
    /// LoRA rank: a number, `auto` (from the data's confidence) or `sweep`.
    #[arg(long)]
    pub rank: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Tokens per message after truncation.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Steps between checkpoints (0: none).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Checkpoint folder; default `checkpoints` beside the adapter folder.
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// Continue from the newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Also write merged full weights to OUT/merged for fast inference.
    #[arg(long)]
    pub merge: bool,
    /// Base encoder: an embedded name (minilm-l6, e5-small), a folder, or hf:ORG/NAME.
    #[arg(long)]
    pub student: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads, 0 for all cores.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Set by Ctrl-C; the training loop saves a checkpoint and stops.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Settings: the task's [train] section, overridden by flags.
    let mut task = super::load_task(&args.task)?;
    let t = &mut task.train;
    if let Some(rank) = &args.rank {
        if prompt2lora_encoder::train::rank::RankChoice::parse(rank).is_none() {
            return Err(UserError::new(format!(
                "--rank {rank}: not a positive number, `auto` or `sweep`"
            ))
            .into());
        }
        t.rank = rank.clone();
    }
    t.epochs = args.epochs.unwrap_or(t.epochs);
    t.batch_size = args.batch_size.unwrap_or(t.batch_size);
    t.learning_rate = args.lr.unwrap_or(t.learning_rate);
    t.max_length = args.max_length.unwrap_or(t.max_length);
    t.save_steps = args.save_steps.unwrap_or(t.save_steps);
    t.seed = args.seed.unwrap_or(t.seed);
    t.threads = args.threads.unwrap_or(t.threads);
    if let Some(student) = &args.student {
        t.student = Some(student.clone());
    }

    // Samples: every bad line is reported; training goes on with the good ones.
    let intents = task.intent_names();
    let max_chars = task
        .filter
        .max_chars
        .max(prompt2lora_core::jsonl::DEFAULT_MAX_CHARS);
    let rules = SampleRules {
        intents: Some(&intents),
        max_chars,
    };
    let report = read_samples(&args.input, &rules)
        .map_err(|e| UserError::new(format!("cannot read samples: {e}")))?;
    for error in &report.errors {
        tracing::warn!("{error}; line skipped");
    }
    let validation = match &args.validation {
        None => None,
        Some(path) => {
            let validation = read_samples(path, &rules)
                .map_err(|e| UserError::new(format!("cannot read validation samples: {e}")))?;
            if let Some(error) = validation.errors.first() {
                return Err(UserError::new(format!(
                    "{} bad validation line(s), first: {error}",
                    validation.errors.len()
                ))
                .into());
            }
            Some(validation.records)
        }
    };
    if report.records.is_empty() {
        return Err(
            UserError::new(format!("{}: no usable samples", args.input.display()))
                .with_hint(
                    "each line needs `text` and an `intent` (or `label`) that the task file lists",
                )
                .into(),
        );
    }
    let longest = report
        .records
        .iter()
        .map(|s| char_len(&s.text))
        .max()
        .unwrap_or(0);
    tracing::debug!(
        "{} samples read, longest {longest} characters",
        report.records.len()
    );

    // Ctrl-C stops after the current step with a checkpoint; a second one exits at once. The
    // handler is installed once per process (`run` trains once per round).
    static HANDLER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    HANDLER
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!(
                    "\nstopping after this step; saving a checkpoint (Ctrl-C again to quit now)"
                );
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
        .context("cannot install the Ctrl-C handler")?;

    let mut progress = Progress { bar: None, global };
    let options = TrainOptions {
        out_dir: args.out.clone(),
        checkpoint_dir: args.checkpoints.clone(),
        resume: args.resume,
        merge: args.merge,
        stop: Some(&STOP),
        validation: validation.as_deref(),
        observer: &mut progress,
    };
    let result = prompt2lora_encoder::train::train(&task, &report.records, options);
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(summary) => {
            print_summary(&summary);
            Ok(ExitCode::SUCCESS)
        }
        Err(prompt2lora_encoder::Error::Interrupted(path)) => {
            eprintln!("interrupted; checkpoint saved in {}", path.display());
            eprintln!("hint: run the same command with --resume to continue");
            Ok(ExitCode::from(130))
        }
        Err(
            e @ (prompt2lora_encoder::Error::Data(_) | prompt2lora_encoder::Error::Settings(_)),
        ) => Err(UserError::new(e.to_string()).into()),
        Err(e) => Err(anyhow::Error::new(e).context("training failed")),
    }
}

fn print_summary(s: &TrainSummary) {
    let f1 = s
        .validation_macro_f1
        .map_or("n/a".to_string(), |f| format!("{f:.4}"));
    let best = s.best_epoch.map_or("n/a".to_string(), |e| e.to_string());
    eprintln!(
        "trained {} steps over {} epoch(s){}: best epoch {best}, validation macro-F1 {f1}",
        s.steps,
        s.epochs_run,
        if s.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    eprintln!(
        "rank {} ({}): {}",
        s.rank.rank, s.rank.method, s.rank.reason
    );
    let memory = s.peak_rss_bytes.map_or(String::new(), |b| {
        format!(", peak memory {} MiB", b / (1 << 20))
    });
    eprintln!("{:.1} examples/s{memory}", s.examples_per_second);
    eprintln!("adapter: {}", s.adapter_dir.display());
    if let Some(merged) = &s.merged_dir {
        eprintln!("merged weights: {}", merged.display());
    }
    eprintln!(
        "log: {}  plot: {}",
        s.log_path.display(),
        s.plot_path.display()
    );
}

/// The progress bar: position in steps, loss and examples/s in the message.
struct Progress<'a> {
    bar: Option<indicatif::ProgressBar>,
    global: &'a GlobalArgs,
}

impl Observer for Progress<'_> {
    fn start(&mut self, total_steps: usize, first_step: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let bar = self.global.progress(total_steps as u64, "train");
        bar.set_position(first_step as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn step(&mut self, record: &StepRecord) {
        if let Some(bar) = &self.bar {
            bar.set_position(record.step as u64);
            bar.set_message(format!(
                "epoch {} loss {:.4} {:.0} ex/s",
                record.epoch, record.loss, record.examples_per_second
            ));
        }
    }

    fn epoch(&mut self, record: &EpochRecord) {
        let line = match record.validation_macro_f1 {
            Some(f1) => format!(
                "epoch {}: train loss {:.4}, validation macro-F1 {f1:.4}",
                record.epoch, record.train_loss
            ),
            None => format!(
                "epoch {}: train loss {:.4}",
                record.epoch, record.train_loss
            ),
        };
        self.message(&line);
    }

    fn message(&mut self, text: &str) {
        match self.bar.as_ref().filter(|b| !b.is_hidden()) {
            Some(bar) => bar.println(text),
            None if !self.global.quiet => eprintln!("{text}"),
            None => {}
        }
    }
}
