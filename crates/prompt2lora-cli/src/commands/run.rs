//! `prompt2lora run`: generate -> filter -> train -> eval into one run folder, with a report.
//!
//! Each stage is the same code as its own subcommand, called with the arguments a user would
//! type, so `run` and the single commands can never disagree. A stage whose inputs and settings
//! are unchanged since it last finished (content hashes in `stages.json`) is skipped; the
//! generate stage is always entered because it resumes by itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use prompt2lora_core::jsonl::{SampleRules, read_samples, write_jsonl_atomic};
use prompt2lora_core::{Sample, Task};

use super::UserError;
use crate::logging::GlobalArgs;
use crate::stages::{InputHash, Stages};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task file (TOML).
    pub task: PathBuf,
    /// Run folder. Default: `runs/<task name>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A real labelled test set (JSONL with `text` and `label`). Without it the student is
    /// scored on a held-out slice of the filtered synthetic data, labelled as such in the
    /// report.
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Samples to generate; overrides `[teacher] samples`.
    #[arg(short = 'n', long)]
    pub samples: Option<usize>,
    /// Stop generating when this many USD have been spent.
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
    /// LoRA rank: a number, `auto` or `sweep`; overrides `[train] rank`.
    #[arg(long)]
    pub rank: Option<String>,
    /// Do not score the teacher zero-shot on the test set (it costs one labelling request per
    /// test message).
    #[arg(long)]
    pub no_teacher_eval: bool,
    /// Share of the filtered samples held out as the synthetic test set when `--eval` is not
    /// given.
    #[arg(long, default_value_t = 0.15, value_name = "SHARE")]
    pub holdout: f64,
    /// What one human label costs, in USD, for the report's cost comparison.
    #[arg(long, default_value_t = 0.08, value_name = "USD")]
    pub price_per_label: f64,
}

/// Files of a run folder.
pub mod files {
    pub const TASK: &str = "task.toml";
    pub const SAMPLES: &str = "samples.jsonl";
    pub const LEDGER: &str = "ledger.json";
    pub const CLEAN: &str = "clean.jsonl";
    pub const REJECTS: &str = "rejects.jsonl";
    pub const FILTER_REPORT: &str = "filter_report.json";
    pub const TRAIN_SET: &str = "train.jsonl";
    pub const SYNTHETIC_TEST: &str = "test_synthetic.jsonl";
    pub const ADAPTER: &str = "adapter";
    pub const EVAL: &str = "eval";
    pub const REPORT: &str = "report.html";
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut task = super::load_task(&args.task)?;
    if let Some(rank) = &args.rank {
        task.train.rank = rank.clone();
    }
    if !(0.0..0.9).contains(&args.holdout) {
        return Err(
            UserError::new(format!("--holdout {} must be in [0, 0.9)", args.holdout)).into(),
        );
    }
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&task.name));
    fs_err::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    fs_err::copy(&args.task, dir.join(files::TASK))?;
    let task_file = dir.join(files::TASK);
    let mut stages = Stages::load(&dir)?;
    tracing::info!("run folder {}", dir.display());
    let started = Instant::now();

    // Generate: always entered; it resumes from samples.jsonl and returns at once when done.
    let samples = dir.join(files::SAMPLES);
    let mut generate = vec![path(&task_file), "--out".into(), path(&samples)];
    push_opt(&mut generate, "--samples", args.samples);
    push_opt(&mut generate, "--budget", args.budget);
    let inputs = InputHash::new("generate")
        .file(&task_file)?
        .value(&generate)?
        .finish();
    stage(&mut stages, "generate", inputs, true, || {
        call::<super::generate::Args>("generate", &generate, global, super::generate::run)
    })?;

    // Filter.
    let clean = dir.join(files::CLEAN);
    let filter = vec![
        path(&samples),
        "--task".into(),
        path(&task_file),
        "--out".into(),
        path(&clean),
        "--rejects".into(),
        path(&dir.join(files::REJECTS)),
        "--report".into(),
        path(&dir.join(files::FILTER_REPORT)),
    ];
    let inputs = InputHash::new("filter")
        .file(&samples)?
        .value(&task.filter)?
        .finish();
    stage(&mut stages, "filter", inputs, false, || {
        call::<super::filter::Args>("filter", &filter, global, super::filter::run)
    })?;

    // Split: a real test set, or a stratified synthetic hold-out.
    let train_set = dir.join(files::TRAIN_SET);
    let test_set = match &args.eval {
        Some(eval) => {
            fs_err::copy(&clean, &train_set)?;
            eval.canonicalize()
                .with_context(|| format!("cannot read {}", eval.display()))?
        }
        None => {
            let test = dir.join(files::SYNTHETIC_TEST);
            hold_out(&clean, &task, args.holdout, &train_set, &test)?;
            test
        }
    };

    // Train.
    let adapter = dir.join(files::ADAPTER);
    let train = vec![
        path(&train_set),
        "--task".into(),
        path(&task_file),
        "--out".into(),
        path(&adapter),
    ];
    let inputs = InputHash::new("train")
        .file(&train_set)?
        .value(&task.train)?
        .finish();
    stage(&mut stages, "train", inputs, false, || {
        call::<super::train::Args>("train", &train, global, super::train::run)
    })?;

    // Eval: the student, and the teacher zero-shot on the same messages.
    let eval_dir = dir.join(files::EVAL);
    let mut eval = vec![
        path(&adapter),
        "--data".into(),
        path(&test_set),
        "--task".into(),
        path(&task_file),
        "--out".into(),
        path(&eval_dir),
    ];
    if !args.no_teacher_eval {
        eval.push("--teacher".into());
    }
    let inputs = InputHash::new("eval")
        .dir(&adapter)?
        .file(&test_set)?
        .value(&eval)?
        .value(&task.teacher.model)?
        .finish();
    stage(&mut stages, "eval", inputs, false, || {
        call::<super::eval::Args>("eval", &eval, global, super::eval::run)
    })?;

    // Report.
    let report =
        crate::pipeline_report::build(&dir, &task, args.eval.is_some(), args.price_per_label)?;
    let report_path = dir.join(files::REPORT);
    fs_err::write(&report_path, report.html)?;
    println!();
    for line in &report.summary {
        println!("{line}");
    }
    println!(
        "run took {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        report_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` unless the stage is fresh; records it when it succeeds.
fn stage(
    stages: &mut Stages,
    name: &str,
    inputs: String,
    always: bool,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !always && stages.is_fresh(name, &inputs) {
        tracing::info!("{name}: up to date, skipped");
        return Ok(());
    }
    tracing::info!("{name}: starting");
    let started = Instant::now();
    work().with_context(|| format!("the {name} stage failed"))?;
    let seconds = started.elapsed().as_secs_f64();
    // A rerun of a fresh always-entered stage costs little: keep the first full duration.
    let seconds = match stages.get(name) {
        Some(previous) if always && previous.inputs == inputs => previous.seconds.max(seconds),
        _ => seconds,
    };
    stages.finish(name, inputs, seconds)
}

/// Parses `argv` as the subcommand's arguments, as if typed by the user, and runs it.
fn call<A: clap::Args>(
    name: &str,
    argv: &[String],
    global: &GlobalArgs,
    run: impl FnOnce(A, &GlobalArgs) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<()> {
    #[derive(Parser)]
    struct Wrapper<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let parsed =
        Wrapper::<A>::try_parse_from(std::iter::once(name.to_string()).chain(argv.iter().cloned()))
            .with_context(|| format!("bad arguments for {name}: {}", argv.join(" ")))?;
    let code = run(parsed.args, global)?;
    if code != ExitCode::SUCCESS {
        anyhow::bail!("prompt2lora {name} did not succeed");
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn push_opt<T: ToString>(argv: &mut Vec<String>, flag: &str, value: Option<T>) {
    if let Some(value) = value {
        argv.push(flag.into());
        argv.push(value.to_string());
    }
}

/// Splits the filtered samples into a training file and a synthetic test file, stratified by
/// intent. Membership depends only on each sample's id, so the split is stable across reruns
/// and a sample never moves between the two.
fn hold_out(
    clean: &Path,
    task: &Task,
    share: f64,
    train: &Path,
    test: &Path,
) -> anyhow::Result<()> {
    let intents = task.intent_names();
    let rules = SampleRules {
        intents: Some(&intents),
        max_chars: usize::MAX,
    };
    let report = read_samples(clean, &rules)?;
    if let Some(error) = report.errors.first() {
        anyhow::bail!(
            "{} bad line(s) in filtered data, first: {error}",
            report.errors.len()
        );
    }
    let (mut kept, mut held): (Vec<Sample>, Vec<Sample>) = (Vec::new(), Vec::new());
    for intent in &intents {
        let mut group: Vec<&Sample> = report
            .records
            .iter()
            .filter(|s| &s.intent == intent)
            .collect();
        group.sort_by_key(|s| split_key(&s.id));
        let n_test = if group.len() >= 4 {
            ((group.len() as f64) * share).round() as usize
        } else {
            0
        };
        held.extend(group[..n_test].iter().map(|s| (*s).clone()));
        kept.extend(group[n_test..].iter().map(|s| (*s).clone()));
    }
    if held.is_empty() {
        anyhow::bail!(
            "too few filtered samples to hold out a test set; generate more (-n) or pass --eval"
        );
    }
    write_jsonl_atomic(train, kept)?;
    write_jsonl_atomic(test, held)?;
    Ok(())
}

fn split_key(id: &str) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("holdout:{id}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}
