//! `prompt2lora eval`: scores an adapter (and, with `--teacher`, the teacher zero-shot) on a
//! labelled test set; prints the tables and writes `metrics.json`, the confusion heat map and
//! per-message predictions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use prompt2lora_core::sample::now_rfc3339;
use prompt2lora_core::{Classifier, Sample, Task, Teacher};
use prompt2lora_eval::evaluate::{
    self, Answers, Comparison, EvalError, TeacherCache, TestSet, files,
};
use prompt2lora_eval::report;
use prompt2lora_teacher::{ApiKey, LabelOptions, Ledger, OpenAiConfig, OpenAiTeacher, Price};

use super::UserError;
use crate::logging::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Adapter folder written by `train` (labels.json, adapter weights, task.toml).
    pub adapter: PathBuf,
    /// Labelled test set: JSONL with `text` and `label` (or `intent`).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Task file for `[eval] label_map` and the catch-all intent [default: task.toml in the
    /// adapter folder].
    #[arg(long, value_name = "FILE")]
    pub task: Option<PathBuf>,
    /// Folder for metrics.json, confusion.svg and predictions.jsonl [default: the folder that
    /// holds the adapter folder].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also label the test set zero-shot with the teacher and report both side by side. Labels
    /// are cached in teacher_labels.jsonl in the output folder, so a rerun continues.
    #[arg(long)]
    pub teacher: bool,
    /// Teacher model [default: teacher.model of the task].
    #[arg(long, requires = "teacher")]
    pub teacher_model: Option<String>,
    /// OpenAI-compatible endpoint of the teacher [default: teacher.base_url, then
    /// OPENAI_BASE_URL, else the in-process teacher].
    #[arg(long, requires = "teacher", value_name = "URL")]
    pub base_url: Option<String>,
    /// Messages per student forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // The adapter, its label set and the task that maps test labels onto it.
    let task = load_task(&args)?;
    let classifier = prompt2lora_encoder::AdapterClassifier::load(&args.adapter)
        .with_context(|| format!("loading the adapter {}", args.adapter.display()))?;
    let labels = classifier.labels().to_vec();
    let test = TestSet::load(&args.data, task.as_ref(), &labels).map_err(user_error)?;
    let out = args.out.clone().unwrap_or_else(|| parent_of(&args.adapter));
    tracing::info!(
        "scoring {} test messages with {} intents",
        test.len(),
        labels.len()
    );

    // The student.
    let bar = global.progress(test.len() as u64, "student");
    let started = Instant::now();
    let student = evaluate::classify_all(&classifier, &test.texts, args.batch_size, |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "student: {} messages in {seconds:.1} s ({:.0}/s)",
        test.len(),
        test.len() as f64 / seconds
    );

    // The teacher, zero-shot, from the cache where it can.
    let teacher = match (&args.teacher, &task) {
        (false, _) => None,
        (true, None) => {
            let message = "--teacher needs the task file: the teacher labels with its intents";
            return Err(UserError::new(message).with_hint("give --task FILE").into());
        }
        (true, Some(task)) => Some(score_teacher(&args, task, &test, &labels, &out, global)?),
    };

    // Metrics, files, tables.
    let catch_all = task.as_ref().and_then(Task::catch_all);
    let teacher_ref = teacher
        .as_ref()
        .map(|(model, answers)| (model.as_str(), answers));
    let comparison = Comparison::compute(&test, &labels, catch_all, &student, teacher_ref)?;
    let messages =
        evaluate::scored_messages(&test, &labels, &student, teacher.as_ref().map(|t| &t.1));
    let written = evaluate::write_outputs(&out, &comparison, &messages)?;
    print_report(&comparison);
    for path in written {
        tracing::info!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(comparison: &Comparison) {
    println!("{}\n", report::summary(comparison));
    println!("{}\n", report::per_intent_table(comparison));
    println!("confusion (rows: gold, columns: predicted)");
    println!("{}", report::confusion_table(&comparison.student));
    if let Some(teacher) = &comparison.teacher {
        println!("\nteacher confusion");
        println!("{}", report::confusion_table(&teacher.metrics));
    }
}

/// `--task`, else the adapter's own copy of the task file, else none (no label map, no
/// catch-all threshold).
fn load_task(args: &Args) -> anyhow::Result<Option<Task>> {
    if let Some(path) = &args.task {
        return super::load_task(path).map(Some);
    }
    let beside = args.adapter.join("task.toml");
    if beside.is_file() {
        return super::load_task(&beside).map(Some);
    }
    tracing::warn!(
        "no task file in {}: test labels must match the adapter's intents exactly, and no \
         catch-all threshold is searched (give --task)",
        args.adapter.display()
    );
    Ok(None)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Test-set problems are the user's to fix; the label mismatch gets a hint.
fn user_error(error: EvalError) -> anyhow::Error {
    match error {
        EvalError::UnknownLabels {
            ref unknown,
            ref known,
            ..
        } => {
            let (label, _) = unknown.iter().next().expect("at least one unknown label");
            let hint = format!(
                "map test labels onto intents in the task file, e.g.\n  [eval]\n  label_map = {{ \"{label}\" = \"{}\" }}",
                known.first().map_or("INTENT", String::as_str)
            );
            UserError::new(error.to_string()).with_hint(hint).into()
        }
        EvalError::BadLines { .. } | EvalError::EmptyTestSet { .. } => {
            UserError::new(error.to_string()).into()
        }
        other => other.into(),
    }
}

/// Labels every test message with the teacher (resuming from `teacher_labels.jsonl`) and
/// returns its model id and answers. Its tokens are booked in `ledger.json` in the output folder.
fn score_teacher(
    args: &Args,
    task: &Task,
    test: &TestSet,
    labels: &[String],
    out: &Path,
    global: &GlobalArgs,
) -> anyhow::Result<(String, Answers)> {
    let mut task = task.clone();
    if let Some(model) = &args.teacher_model {
        task.teacher.model = model.clone();
    }
    let env_url = std::env::var("OPENAI_BASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let endpoint = args
        .base_url
        .clone()
        .or_else(|| task.teacher.base_url.clone())
        .or(env_url);
    let mut options = LabelOptions::from_task(&task)
        .map_err(|e| UserError::new(format!("task file: teacher.{e}")))?;
    let mut cache = TeacherCache::open(
        &out.join(files::TEACHER_LABELS),
        &task.teacher.model,
        &options.prompt_id(),
    )?;
    let missing = cache.missing(&test.texts);
    tracing::info!(
        "teacher: {} of {} messages cached",
        test.len() - missing.len(),
        test.len()
    );
    if !missing.is_empty() {
        let teacher = build_teacher(&task, endpoint.as_deref())?;
        let price = teacher_price(&task, endpoint.is_none());
        let ledger = out.join("ledger.json");
        label_missing(
            teacher.as_ref(),
            &task,
            &missing,
            &mut options,
            &mut cache,
            global,
            |requests, usage, seconds| {
                book_tokens(
                    &ledger,
                    &task.teacher.model,
                    requests,
                    usage,
                    seconds,
                    price,
                )
            },
        )?;
    }
    let answers = cache.answers(test, labels)?;
    Ok((task.teacher.model, answers))
}

fn build_teacher(task: &Task, endpoint: Option<&str>) -> anyhow::Result<Arc<dyn Teacher>> {
    let Some(url) = endpoint else {
        let name = &task.teacher.model;
        let files = prompt2lora_hub::resolve(name)
            .with_context(|| format!("finding the teacher model `{name}`"))?;
        let Some(gguf) = files.gguf else {
            let message = format!("teacher model `{name}` has no GGUF file to run in process");
            let hint =
                "name a GGUF teacher (e.g. qwen2.5-1.5b) with --teacher-model, or set --base-url";
            return Err(UserError::new(message).with_hint(hint).into());
        };
        tracing::info!("loading the teacher {}", gguf.display());
        let options = prompt2lora_local::LocalOptions {
            threads: task.teacher.threads,
            seed: 0,
            model_id: files.id,
        };
        let teacher = prompt2lora_local::LocalTeacher::load(&gguf, options)
            .with_context(|| format!("loading {}", gguf.display()))?;
        return Ok(Arc::new(teacher));
    };
    let mut config = OpenAiConfig::from_settings(url, &task.teacher);
    config.api_key = std::env::var(&task.teacher.api_key_env)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .map(ApiKey::new);
    let teacher =
        OpenAiTeacher::new(config).map_err(|e| UserError::new(format!("teacher: {e}")))?;
    Ok(Arc::new(teacher))
}

fn label_missing(
    teacher: &dyn Teacher,
    task: &Task,
    missing: &[&str],
    options: &mut LabelOptions,
    cache: &mut TeacherCache,
    global: &GlobalArgs,
    book: impl FnOnce(u64, prompt2lora_core::Usage, f64),
) -> anyhow::Result<()> {
    let bar = global.progress(missing.len() as u64, "teacher");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let started = Instant::now();
    let mut usage = prompt2lora_core::Usage::default();
    let mut requests = 0u64;
    let outcome: anyhow::Result<()> = runtime.block_on(async {
        let prior_usage = options
            .prepare(teacher, task)
            .await
            .context("measuring the teacher's prior for calibration")?;
        if let Some(prior_usage) = prior_usage {
            usage += prior_usage;
            requests += prompt2lora_teacher::label::PRIOR_REQUESTS;
        }
        let options = &*options;
        let mut labels = futures::stream::iter(missing.iter().copied())
            .map(|text| async move {
                (
                    text,
                    prompt2lora_teacher::label_text(teacher, task, text, options).await,
                )
            })
            .buffer_unordered(teacher.concurrency().max(1));
        while let Some((text, label)) = labels.next().await {
            let label = label.with_context(|| {
                format!(
                    "labelling `{}` with the teacher; rerun to continue from the {} labels cached",
                    short(text),
                    cache.len()
                )
            })?;
            usage += label.usage;
            requests += u64::from(label.requests);
            let mut sample = Sample::new(text, label.intent);
            sample.confidence = label.confidence;
            sample.label_logprob = label.label_logprob;
            sample.agreement = label.agreement;
            sample.reason = label.reason;
            sample.provenance.source = Some("label".into());
            sample.provenance.created = Some(now_rfc3339());
            cache.insert(sample)?;
            bar.inc(1);
        }
        Ok(())
    });
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "teacher: labelled {} messages in {seconds:.0} s",
        missing.len()
    );
    book(requests, usage, seconds);
    outcome
}

/// The task file's price, else free in process, else the built-in price list's.
fn teacher_price(task: &Task, in_process: bool) -> Option<Price> {
    match (task.teacher.price_prompt, task.teacher.price_completion) {
        (Some(prompt), Some(completion)) => Some(Price { prompt, completion }),
        _ if in_process => Some(Price::FREE),
        _ => prompt2lora_teacher::ledger::builtin_price(&task.teacher.model),
    }
}

/// Adds the teacher's eval tokens to `ledger.json`; a ledger that cannot be written is only
/// worth a warning, the labels are safe in the cache.
fn book_tokens(
    path: &Path,
    model: &str,
    requests: u64,
    usage: prompt2lora_core::Usage,
    seconds: f64,
    price: Option<Price>,
) {
    let result = Ledger::load(path).and_then(|mut ledger| {
        ledger.record(model, requests, usage, seconds, price);
        ledger.save(path)
    });
    if let Err(e) = result {
        tracing::warn!(
            "could not book the teacher's tokens in {}: {e}",
            path.display()
        );
    }
}

fn short(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}
