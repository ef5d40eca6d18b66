//! `prompt2lora generate`: the first stage, from a task file to labelled samples (JSONL), with
//! the teacher chosen here: an OpenAI-compatible endpoint, or the in-process model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use prompt2lora_core::{Task, Teacher, TeacherError};
use prompt2lora_teacher::generate::{Estimate, Speed, estimate};
use prompt2lora_teacher::ledger::builtin_price;
use prompt2lora_teacher::{
    ApiKey, GenerateError, GenerateOptions, GenerateSummary, LabelMethod, OpenAiConfig,
    OpenAiTeacher, Price, Stop,
};

use super::UserError;
use crate::logging::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task file (TOML).
    pub task: PathBuf,
    /// Output JSONL file. Samples are appended as they arrive; rerunning the same command
    /// continues where it stopped.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Samples the output should hold, spread evenly over the intents [default: teacher.samples;
    /// with --label, every message].
    #[arg(short = 'n', long, value_name = "N")]
    pub samples: Option<usize>,
    /// Label the messages of FILE (one per line, or JSONL with a `text` field) instead of
    /// writing new ones.
    #[arg(long, value_name = "FILE")]
    pub label: Option<PathBuf>,
    /// Extra labels sampled per message for the agreement signal [default:
    /// teacher.self_consistency].
    #[arg(long, value_name = "K")]
    pub self_consistency: Option<usize>,
    /// auto, score, json or both [default: teacher.label_method].
    #[arg(long, value_name = "METHOD")]
    pub label_method: Option<LabelMethod>,
    /// Estimate requests, tokens, money and time, then stop without calling the teacher.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop cleanly once this many USD are spent (money in the ledger counts) [default:
    /// teacher.budget_usd].
    #[arg(long, value_name = "USD")]
    pub budget: Option<f64>,
    /// Requests in flight at once [default: teacher.concurrency].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// OpenAI-compatible endpoint [default: teacher.base_url, then OPENAI_BASE_URL; none: the
    /// in-process teacher].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Teacher model [default: teacher.model].
    #[arg(long)]
    pub model: Option<String>,
    /// Seed for prompts, few-shot picks and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cost ledger to continue and update [default: ledger.json beside the output].
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Write messages for the named intents only, until the output holds N samples requested
    /// for each (repeatable; replaces the even spread of --samples).
    #[arg(long, value_name = "INTENT=N", value_parser = parse_pair)]
    pub quota: Vec<(String, String)>,
    /// Write the messages of INTENT so that they cannot be mistaken for OTHER, an intent the
    /// student confuses it with (repeatable).
    #[arg(long, value_name = "INTENT=OTHER", value_parser = parse_pair)]
    pub contrast: Vec<(String, String)>,
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() && !value.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("`{text}` is not of the form KEY=VALUE")),
    }
}

/// `--quota` and `--contrast`, checked against the task's intents.
fn targets(args: &Args, task: &Task, options: &mut GenerateOptions) -> anyhow::Result<()> {
    let names = task.intent_names();
    let known = |name: &str, flag: &str| {
        if names.iter().any(|n| n == name) {
            Ok(())
        } else {
            Err(UserError::new(format!(
                "{flag} {name}: no such intent in {}",
                args.task.display()
            ))
            .with_hint(format!("the intents are: {}", names.join(", "))))
        }
    };
    if !args.quota.is_empty() {
        if args.label.is_some() {
            return Err(
                UserError::new("--quota writes new messages; it cannot go with --label").into(),
            );
        }
        let mut quotas = vec![0; names.len()];
        for (intent, n) in &args.quota {
            known(intent, "--quota")?;
            let n: usize = n.parse().map_err(|_| {
                UserError::new(format!("--quota {intent}={n}: not a number of samples"))
            })?;
            let i = names.iter().position(|x| x == intent).expect("known");
            quotas[i] = n;
        }
        options.quotas = Some(quotas);
    }
    for (intent, other) in &args.contrast {
        known(intent, "--contrast")?;
        known(other, "--contrast")?;
        options.contrast.insert(intent.clone(), other.clone());
    }
    Ok(())
}

/// The teacher and options after merging flags over the environment over the task file.
struct Settings {
    endpoint: Option<String>,
    model: String,
    options: GenerateOptions,
}

fn resolve(args: &Args, task: &mut Task) -> anyhow::Result<Settings> {
    if let Some(model) = &args.model {
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
    let mut options = GenerateOptions::from_task(task)
        .map_err(|e| UserError::new(format!("{}: teacher.{e}", args.task.display())))?;
    if let Some(n) = args.samples {
        options.samples = n;
    } else if args.label.is_some() {
        options.samples = usize::MAX;
    }
    options.label_input = args.label.clone();
    if let Some(k) = args.self_consistency {
        options.label.self_consistency = k;
    }
    if let Some(method) = args.label_method {
        options.label.method = method;
    }
    if let Some(c) = args.concurrency {
        if c == 0 {
            return Err(UserError::new("--concurrency must be at least 1").into());
        }
        options.concurrency = c;
        task.teacher.concurrency = c;
    }
    if let Some(budget) = args.budget {
        if !(budget.is_finite() && budget > 0.0) {
            return Err(UserError::new(format!(
                "--budget {budget}: give a positive amount of USD"
            ))
            .into());
        }
        options.budget_usd = Some(budget);
    }
    options.seed = args.seed;
    options.label.seed = Some(args.seed);
    targets(args, task, &mut options)?;
    let ledger = args
        .ledger
        .clone()
        .unwrap_or_else(|| beside(&args.out, "ledger.json"));
    options.ledger_path = Some(ledger);
    options.price = price(endpoint.as_deref(), &task.teacher.model, options.price);
    Ok(Settings {
        endpoint,
        model: task.teacher.model.clone(),
        options,
    })
}

/// The price of the teacher's tokens: the task file's, the built-in list's, or free for the
/// in-process teacher and servers on this machine.
fn price(endpoint: Option<&str>, model: &str, configured: Option<Price>) -> Option<Price> {
    if configured.is_some() {
        return configured;
    }
    let Some(url) = endpoint else {
        return Some(Price::FREE);
    };
    let local = reqwest_host(url)
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]");
    if local {
        return Some(Price::FREE);
    }
    let known = builtin_price(model);
    if known.is_none() {
        tracing::warn!(
            "no price known for model `{model}`: tokens are counted, money is not; set \
             teacher.price_prompt and teacher.price_completion (USD per million tokens)"
        );
    }
    known
}

fn reqwest_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?']).next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    Some(match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
        None => host.split(':').next().unwrap_or_default().to_string(),
    })
}

fn beside(path: &Path, name: &str) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from(name), |p| p.join(name))
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut task = super::load_task(&args.task)?;
    let settings = resolve(&args, &mut task)?;

    if args.dry_run {
        let speed = match &settings.endpoint {
            Some(_) => Speed::endpoint(
                settings.options.concurrency,
                task.teacher.requests_per_minute,
                task.teacher.tokens_per_minute,
            ),
            None => Speed::in_process(),
        };
        let estimate = estimate(
            &task,
            &settings.options,
            &args.out,
            settings.endpoint.is_none(),
            speed,
        )
        .map_err(|e| generate_error(e, &args))?;
        print_estimate(&estimate, &settings);
        return Ok(ExitCode::SUCCESS);
    }

    let teacher: Arc<dyn Teacher> = match &settings.endpoint {
        Some(url) => {
            let mut config = OpenAiConfig::from_settings(url, &task.teacher);
            let key_var = &task.teacher.api_key_env;
            config.api_key = std::env::var(key_var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(ApiKey::new);
            if config.api_key.is_none() {
                tracing::debug!("{key_var} is not set: sending requests without an API key");
            }
            Arc::new(
                OpenAiTeacher::new(config).map_err(|e| UserError::new(format!("teacher: {e}")))?,
            )
        }
        None => Arc::new(load_local(&task, args.seed)?),
    };
    tracing::info!(
        "teacher {} {}",
        settings.model,
        settings
            .endpoint
            .as_deref()
            .map_or("in process".to_string(), |u| format!("at {u}"))
    );

    let bar = global.progress(0, "generate");
    let report = |p: prompt2lora_teacher::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("${:.4}", p.usd));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(prompt2lora_teacher::generate(
        &task,
        teacher,
        &settings.options,
        &args.out,
        &report,
    ));
    bar.finish_and_clear();
    let summary = result.map_err(|e| generate_error(e, &args))?;
    print_summary(&summary, &args.out);
    Ok(ExitCode::SUCCESS)
}

/// The in-process teacher: `teacher.model` as an embedded short name or a `.gguf` file.
fn load_local(task: &Task, seed: u64) -> anyhow::Result<prompt2lora_local::LocalTeacher> {
    let name = &task.teacher.model;
    let files = prompt2lora_hub::resolve(name)
        .with_context(|| format!("finding the teacher model `{name}`"))?;
    let Some(gguf) = files.gguf else {
        let message = format!("teacher model `{name}` has no GGUF file to run in process");
        let hint = "name a GGUF teacher (e.g. qwen2.5-1.5b), or set --base-url for an endpoint";
        return Err(UserError::new(message).with_hint(hint).into());
    };
    tracing::info!("loading the teacher {}", gguf.display());
    let options = prompt2lora_local::LocalOptions {
        threads: task.teacher.threads,
        seed,
        model_id: files.id,
    };
    prompt2lora_local::LocalTeacher::load(&gguf, options)
        .with_context(|| format!("loading {}", gguf.display()))
}

fn generate_error(error: GenerateError, args: &Args) -> anyhow::Error {
    let rerun = "rerun the same command to continue: the samples written so far are kept";
    match error {
        GenerateError::BadLines(lines) => {
            let mut message = format!("{} bad line(s):", lines.len());
            for line in lines.iter().take(5) {
                message.push_str(&format!("\n  {line}"));
            }
            let hint = format!(
                "{} is read to resume or to label; fix or remove these lines, or write to another --out",
                lines[0].path.display()
            );
            UserError::new(message).with_hint(hint).into()
        }
        GenerateError::Settings(message) => {
            UserError::new(format!("{}: {message}", args.task.display())).into()
        }
        GenerateError::Teacher(TeacherError::Fatal(message)) => {
            UserError::new(format!("the teacher refused: {message}"))
                .with_hint(
                    "check --model, --base-url and the API key variable (teacher.api_key_env)",
                )
                .into()
        }
        GenerateError::Teacher(error) => {
            anyhow::Error::new(error).context(format!("generate stopped; {rerun}"))
        }
        other => anyhow::Error::new(other).context("generate stopped"),
    }
}

fn print_estimate(estimate: &Estimate, settings: &Settings) {
    let s = &estimate.speed;
    println!("dry run: nothing was sent to the teacher");
    println!(
        "samples    {} in the file, {} to make",
        estimate.existing, estimate.remaining
    );
    println!("requests   {}", estimate.requests);
    println!(
        "tokens     {} prompt + {} completion",
        estimate.usage.prompt_tokens, estimate.usage.completion_tokens
    );
    match estimate.usd {
        Some(usd) => println!("money      ${usd:.4}"),
        None => println!("money      unknown (no price for `{}`)", settings.model),
    }
    println!("time       {}", duration(estimate.seconds));
    println!(
        "assuming   {} prompt and {} completion tokens/s per request, {:.1} s per request, {} at once",
        s.prompt_tokens_per_second, s.completion_tokens_per_second, s.request_seconds, s.parallel
    );
}

fn print_summary(summary: &GenerateSummary, out: &Path) {
    println!(
        "{}: {} samples ({} new, {} from before) in {}",
        out.display(),
        summary.total,
        summary.written,
        summary.resumed,
        duration(summary.seconds)
    );
    let width = summary
        .per_intent
        .keys()
        .chain(summary.requested.keys())
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let synthesized = !summary.requested.is_empty();
    if synthesized {
        println!(
            "  {:<width$} {:>9} {:>9}",
            "intent", "requested", "labelled"
        );
    } else {
        println!("  {:<width$} {:>9}", "intent", "labelled");
    }
    let names: std::collections::BTreeSet<&String> = summary
        .per_intent
        .keys()
        .chain(summary.requested.keys())
        .collect();
    for name in names {
        let labelled = summary.per_intent.get(name).copied().unwrap_or(0);
        match synthesized {
            true => println!(
                "  {name:<width$} {:>9} {labelled:>9}",
                summary.requested.get(name).copied().unwrap_or(0)
            ),
            false => println!("  {name:<width$} {labelled:>9}"),
        }
    }
    for (model, cost) in &summary.ledger.models {
        let money = cost.price.map_or("money not counted".to_string(), |_| {
            format!("${:.4}", cost.usd)
        });
        println!(
            "teacher {model}: {} requests, {} prompt + {} completion tokens, {money}",
            cost.requests, cost.prompt_tokens, cost.completion_tokens
        );
    }
    if summary.earlier_usd > 0.0 {
        println!("earlier runs spent ${:.4}", summary.earlier_usd);
    }
    let d = &summary.dropped;
    let dropped =
        d.duplicates + d.surplus + d.too_long + d.unusable_generations + d.unusable_labels;
    if dropped > 0 {
        println!(
            "not kept: {} duplicates, {} surplus, {} too long, {} unusable generation answers, {} unusable labels",
            d.duplicates, d.surplus, d.too_long, d.unusable_generations, d.unusable_labels
        );
    }
    match summary.stop {
        Stop::Complete => {}
        Stop::Budget { spent_usd } => tracing::warn!(
            "stopped at the budget (${spent_usd:.4} spent) with {} samples; rerun with a larger --budget to continue",
            summary.total
        ),
        Stop::OutOfMessages => tracing::warn!(
            "every message is labelled or failed; {} samples",
            summary.total
        ),
    }
}

fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.1} s"),
        s if s < 5400.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers_are_free_and_hosted_models_priced() {
        assert_eq!(
            price(Some("http://127.0.0.1:8000/v1"), "qwen", None),
            Some(Price::FREE)
        );
        assert_eq!(
            price(Some("http://localhost:11434"), "llama3", None),
            Some(Price::FREE)
        );
        assert_eq!(price(None, "qwen2.5-1.5b", None), Some(Price::FREE));
        assert_eq!(
            price(Some("https://api.openai.com/v1"), "gpt-4o-mini", None)
                .unwrap()
                .prompt,
            0.15
        );
        assert_eq!(price(Some("https://example.com/v1"), "mystery", None), None);
        let set = Some(Price {
            prompt: 1.0,
            completion: 2.0,
        });
        assert_eq!(price(Some("https://example.com/v1"), "mystery", set), set);
        assert_eq!(
            reqwest_host("http://user:pw@[::1]:80/v1").as_deref(),
            Some("[::1]")
        );
    }
}
