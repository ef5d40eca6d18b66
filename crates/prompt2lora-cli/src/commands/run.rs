//! `prompt2lora run`: generate -> filter -> train -> eval into one run folder, with a report,
//! and the closed loop (`--rounds`) that goes back to generate for the weakest intents.
//!
//! Each stage is the same code as its own subcommand, called with the arguments a user would
//! type, so `run` and the single commands can never disagree. A stage whose inputs and settings
//! are unchanged since it last finished (content hashes in `stages.json`) is skipped; the
//! generate stage is always entered because it resumes by itself. A killed run therefore
//! continues where it stopped, in whichever round that was: a round's plan depends only on the
//! validation scores of the rounds before it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use prompt2lora_core::jsonl::{SampleRules, read_samples, write_jsonl_atomic};
use prompt2lora_core::{Sample, Task};
use prompt2lora_eval::Comparison;
use prompt2lora_eval::metrics::Metrics;
use serde::{Deserialize, Serialize};

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
    /// Samples to generate in the first round; overrides `[teacher] samples`.
    #[arg(short = 'n', long)]
    pub samples: Option<usize>,
    /// In the first round, label the messages of FILE (one per line, or JSONL with a `text`
    /// field; real but unlabelled messages, such as a support inbox) instead of writing new
    /// ones. Later rounds still write targeted messages.
    #[arg(long, value_name = "FILE")]
    pub label: Option<PathBuf>,
    /// Stop generating when this many USD have been spent, over all rounds.
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
    /// Rounds in all. Every round after the first generates samples for the intents the
    /// student scores worst on the validation set, written so as not to be confused with the
    /// intent they are most often mistaken for; retrains; and is kept only if validation
    /// macro-F1 improved.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rounds: usize,
    /// Samples generated in each round after the first [default: a quarter of the first
    /// round's].
    #[arg(long, value_name = "N")]
    pub round_samples: Option<usize>,
    /// Intents targeted in each round after the first, the weakest first.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub weak_intents: usize,
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
    pub const VALIDATION_SET: &str = "validation.jsonl";
    pub const SYNTHETIC_TEST: &str = "test_synthetic.jsonl";
    pub const ADAPTER: &str = "adapter";
    pub const VALIDATION: &str = "validation";
    pub const EVAL: &str = "eval";
    pub const ROUNDS: &str = "rounds";
    pub const ROUNDS_RECORD: &str = "rounds.json";
    /// A later round's samples together with those of the rounds it builds on.
    pub const ROUND_INPUT: &str = "input.jsonl";
    pub const REPORT: &str = "report.html";
}

/// Where one round's files live: round 1 in the run folder itself, round `k` in `rounds/k/`.
#[derive(Debug, Clone)]
pub struct Round {
    pub number: usize,
    pub dir: PathBuf,
}

impl Round {
    pub fn new(run_dir: &Path, number: usize) -> Round {
        let dir = match number {
            1 => run_dir.to_path_buf(),
            k => run_dir.join(files::ROUNDS).join(k.to_string()),
        };
        Round { number, dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The name of a stage of this round in `stages.json`.
    fn stage(&self, name: &str) -> String {
        match self.number {
            1 => name.to_string(),
            k => format!("{name}.r{k}"),
        }
    }
}

/// One round as `rounds.json` and the report show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    /// The intents this round generated samples for (none in the first round).
    pub targets: Vec<Target>,
    /// Samples the teacher wrote in this round.
    pub generated: usize,
    pub train_examples: usize,
    pub validation_macro_f1: f64,
    /// Whether later rounds build on this one (it improved validation macro-F1).
    pub kept: bool,
    pub adapter: PathBuf,
}

/// A weak intent and what a round asks the teacher for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub intent: String,
    /// Its validation F1 in the round the plan was made from.
    pub f1: f64,
    /// The intent it is most confused with, in either direction, if any.
    pub contrast: Option<String>,
    pub samples: usize,
}

/// What every stage of a run shares.
struct Context<'a> {
    args: &'a Args,
    global: &'a GlobalArgs,
    task: &'a Task,
    dir: PathBuf,
    task_file: PathBuf,
    stages: Stages,
}

pub fn run(args: Args, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut task = super::load_task(&args.task)?;
    if let Some(rank) = &args.rank {
        task.train.rank = rank.clone();
    }
    check_args(&args, &task)?;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(&task.name));
    fs_err::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    fs_err::copy(&args.task, dir.join(files::TASK))?;
    tracing::info!("run folder {}", dir.display());
    let started = Instant::now();
    let mut cx = Context {
        args: &args,
        global,
        task: &task,
        task_file: dir.join(files::TASK),
        stages: Stages::load(&dir)?,
        dir,
    };

    // Round 1: generate, filter, split off the validation and test sets, train, validate.
    let first = Round::new(&cx.dir, 1);
    cx.generate(&first, &[])?;
    cx.filter(&first, &first.file(files::SAMPLES))?;
    let test_set = cx.split(&first)?;
    let mut records = vec![cx.train_and_validate(&first, Vec::new(), 0)?];
    records[0].kept = true;
    save_records(&cx.dir, &records)?;

    // Later rounds: targeted samples for the weakest intents, kept only if they help.
    let mut chain = vec![first.clone()];
    for number in 2..=args.rounds {
        let best = chain.last().expect("round 1 is kept");
        let metrics = validation_metrics(best)?;
        let targets = plan(&metrics, args.weak_intents, cx.round_samples());
        if targets.is_empty() {
            tracing::info!("every intent is right on the validation set; no round {number}");
            break;
        }
        let round = Round::new(&cx.dir, number);
        fs_err::create_dir_all(&round.dir)?;
        let described: Vec<String> = targets.iter().map(describe).collect();
        tracing::info!("round {number}: {}", described.join("; "));
        cx.generate(&round, &targets)?;
        let generated = count_lines(&round.file(files::SAMPLES))?;
        let input = round.file(files::ROUND_INPUT);
        concatenate(chain.iter().map(|r| r.file(files::SAMPLES)), &round, &input)?;
        cx.filter(&round, &input)?;
        let mut record = cx.train_and_validate(&round, targets, generated)?;
        let best_f1 = records
            .iter()
            .filter(|r| r.kept)
            .map(|r| r.validation_macro_f1)
            .fold(f64::MIN, f64::max);
        record.kept = generated > 0 && record.validation_macro_f1 > best_f1;
        tracing::info!(
            "round {number}: validation macro-F1 {:.4} against {best_f1:.4}; {}",
            record.validation_macro_f1,
            if record.kept { "kept" } else { "discarded" }
        );
        if record.kept {
            chain.push(round);
        }
        records.push(record);
        save_records(&cx.dir, &records)?;
        if cx.budget_spent()? {
            tracing::warn!("the budget is spent; no further rounds");
            break;
        }
    }

    // Eval: the best round's student, and the teacher zero-shot, on the test set.
    let best = chain.last().expect("round 1 is kept");
    cx.eval(&best.file(files::ADAPTER), &test_set)?;

    // Report.
    let report = crate::pipeline_report::build(
        &cx.dir,
        &task,
        best,
        &records,
        args.eval.is_some(),
        args.price_per_label,
    )?;
    let report_path = cx.dir.join(files::REPORT);
    fs_err::write(&report_path, report.html)?;
    println!();
    for line in &report.summary {
        println!("{line}");
    }
    println!("adapter: {}", best.file(files::ADAPTER).display());
    println!(
        "run took {:.1} min; report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        report_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn check_args(args: &Args, task: &Task) -> anyhow::Result<()> {
    if !(0.0..0.9).contains(&args.holdout) {
        let message = format!("--holdout {} must be in [0, 0.9)", args.holdout);
        return Err(UserError::new(message).into());
    }
    if let Some(label) = args.label.as_ref().filter(|l| !l.is_file()) {
        let message = format!("--label {}: no such file", label.display());
        return Err(UserError::new(message).into());
    }
    if args.rounds == 0 {
        return Err(UserError::new("--rounds must be at least 1").into());
    }
    if args.rounds > 1 && task.train.validation_fraction <= 0.0 {
        let message = "--rounds compares rounds on a validation set, and \
                       train.validation_fraction is 0";
        return Err(UserError::new(message)
            .with_hint("set train.validation_fraction in the task file, e.g. 0.1")
            .into());
    }
    if args.rounds > 1 && args.weak_intents == 0 {
        return Err(UserError::new("--weak-intents must be at least 1").into());
    }
    Ok(())
}

impl Context<'_> {
    /// The generate stage of `round`: the first round's even spread, or the targets of a later
    /// one. Every round books into the run's one ledger, so the budget covers them all.
    fn generate(&mut self, round: &Round, targets: &[Target]) -> anyhow::Result<()> {
        let samples = round.file(files::SAMPLES);
        let mut argv = vec![path(&self.task_file), "--out".into(), path(&samples)];
        argv.extend(["--ledger".into(), path(&self.dir.join(files::LEDGER))]);
        push_opt(&mut argv, "--budget", self.args.budget);
        let mut inputs = InputHash::new("generate").file(&self.task_file)?;
        if round.number == 1 {
            push_opt(&mut argv, "--samples", self.args.samples);
            if let Some(label) = &self.args.label {
                push_opt(&mut argv, "--label", Some(path(label)));
                inputs = inputs.file(label)?;
            }
        } else {
            push_opt(&mut argv, "--seed", Some(round.number));
            for target in targets {
                push_opt(
                    &mut argv,
                    "--quota",
                    Some(format!("{}={}", target.intent, target.samples)),
                );
                if let Some(other) = &target.contrast {
                    push_opt(
                        &mut argv,
                        "--contrast",
                        Some(format!("{}={other}", target.intent)),
                    );
                }
            }
        }
        let inputs = inputs.value(&argv)?.finish();
        self.stage(&round.stage("generate"), inputs, true, |g| {
            call::<super::generate::Args>("generate", &argv, g, super::generate::run)
        })
    }

    fn filter(&mut self, round: &Round, input: &Path) -> anyhow::Result<()> {
        let argv = vec![
            path(input),
            "--task".into(),
            path(&self.task_file),
            "--out".into(),
            path(&round.file(files::CLEAN)),
            "--rejects".into(),
            path(&round.file(files::REJECTS)),
            "--report".into(),
            path(&round.file(files::FILTER_REPORT)),
        ];
        let inputs = InputHash::new("filter")
            .file(input)?
            .value(&self.task.filter)?
            .finish();
        self.stage(&round.stage("filter"), inputs, false, |g| {
            call::<super::filter::Args>("filter", &argv, g, super::filter::run)
        })
    }

    /// Splits the first round's clean samples into training, validation and (without
    /// `--eval`) synthetic test sets; returns the test set. The validation and test sets stay
    /// the same in every later round, so the rounds' scores compare.
    fn split(&self, first: &Round) -> anyhow::Result<PathBuf> {
        let test_share = if self.args.eval.is_some() {
            0.0
        } else {
            self.args.holdout
        };
        let samples = read_clean(&first.file(files::CLEAN), self.task)?;
        let [train, validation, test] = split_samples(
            samples,
            self.task,
            test_share,
            self.task.train.validation_fraction,
        );
        write_jsonl_atomic(&first.file(files::VALIDATION_SET), validation)?;
        let test_set = match &self.args.eval {
            Some(eval) => eval
                .canonicalize()
                .with_context(|| format!("cannot read {}", eval.display()))?,
            None => {
                if test.is_empty() {
                    anyhow::bail!(
                        "too few filtered samples to hold out a test set; generate more (-n) or \
                         pass --eval"
                    );
                }
                let path = self.dir.join(files::SYNTHETIC_TEST);
                write_jsonl_atomic(&path, test)?;
                path
            }
        };
        let held = self.held_out_ids(&test_set)?;
        write_jsonl_atomic(
            &first.file(files::TRAIN_SET),
            train.into_iter().filter(|s| !held.contains(&s.id)),
        )?;
        Ok(test_set)
    }

    /// Ids of the validation and test messages, which no round may train on.
    fn held_out_ids(&self, test_set: &Path) -> anyhow::Result<HashSet<String>> {
        let mut held = HashSet::new();
        for file in [&self.dir.join(files::VALIDATION_SET), test_set] {
            let text = fs_err::read_to_string(file)?;
            for line in text.lines() {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
                    && let Some(text) = value.get("text").and_then(|t| t.as_str())
                {
                    held.insert(Sample::id_for(text));
                }
            }
        }
        Ok(held)
    }

    /// Trains the round's student and scores it on the validation set.
    fn train_and_validate(
        &mut self,
        round: &Round,
        targets: Vec<Target>,
        generated: usize,
    ) -> anyhow::Result<RoundRecord> {
        let train_set = round.file(files::TRAIN_SET);
        if round.number > 1 {
            let held = self.held_out_ids(&self.test_set_path())?;
            let clean = read_clean(&round.file(files::CLEAN), self.task)?;
            write_jsonl_atomic(
                &train_set,
                clean.into_iter().filter(|s| !held.contains(&s.id)),
            )?;
        }
        let validation = self.dir.join(files::VALIDATION_SET);
        let has_validation = count_lines(&validation)? > 0;
        if self.args.rounds > 1 && !has_validation {
            anyhow::bail!("too few filtered samples for a validation set; generate more (-n)");
        }

        // Train.
        let adapter = round.file(files::ADAPTER);
        let mut argv = vec![
            path(&train_set),
            "--task".into(),
            path(&self.task_file),
            "--out".into(),
            path(&adapter),
        ];
        if has_validation {
            argv.extend(["--validation".into(), path(&validation)]);
        }
        let inputs = InputHash::new("train")
            .file(&train_set)?
            .file(&validation)?
            .value(&self.task.train)?
            .finish();
        self.stage(&round.stage("train"), inputs, false, |g| {
            call::<super::train::Args>("train", &argv, g, super::train::run)
        })?;

        // Validate: the student alone, on the fixed validation set.
        let mut validation_macro_f1 = 0.0;
        if has_validation {
            let out = round.file(files::VALIDATION);
            let argv = vec![
                path(&adapter),
                "--data".into(),
                path(&validation),
                "--task".into(),
                path(&self.task_file),
                "--out".into(),
                path(&out),
            ];
            let inputs = InputHash::new("validate")
                .dir(&adapter)?
                .file(&validation)?
                .finish();
            self.stage(&round.stage("eval.validation"), inputs, false, |g| {
                call::<super::eval::Args>("eval", &argv, g, super::eval::run)
            })?;
            validation_macro_f1 = validation_metrics(round)?.macro_f1;
        }
        Ok(RoundRecord {
            round: round.number,
            targets,
            generated,
            train_examples: count_lines(&train_set)?,
            validation_macro_f1,
            kept: false,
            adapter,
        })
    }

    /// The student, and the teacher zero-shot, on the test set.
    fn eval(&mut self, adapter: &Path, test_set: &Path) -> anyhow::Result<()> {
        let mut argv = vec![
            path(adapter),
            "--data".into(),
            path(test_set),
            "--task".into(),
            path(&self.task_file),
            "--out".into(),
            path(&self.dir.join(files::EVAL)),
        ];
        if !self.args.no_teacher_eval {
            argv.push("--teacher".into());
        }
        let inputs = InputHash::new("eval")
            .dir(adapter)?
            .file(test_set)?
            .value(&argv)?
            .value(&self.task.teacher.model)?
            .finish();
        self.stage("eval", inputs, false, |g| {
            call::<super::eval::Args>("eval", &argv, g, super::eval::run)
        })
    }

    fn test_set_path(&self) -> PathBuf {
        match &self.args.eval {
            Some(eval) => eval.clone(),
            None => self.dir.join(files::SYNTHETIC_TEST),
        }
    }

    fn round_samples(&self) -> usize {
        self.args
            .round_samples
            .unwrap_or_else(|| {
                self.args
                    .samples
                    .unwrap_or(self.task.teacher.samples)
                    .div_ceil(4)
            })
            .max(1)
    }

    fn budget_spent(&self) -> anyhow::Result<bool> {
        let Some(budget) = self.args.budget else {
            return Ok(false);
        };
        let ledger = prompt2lora_teacher::Ledger::load(&self.dir.join(files::LEDGER))?;
        Ok(ledger.total_usd() >= budget)
    }

    /// Runs `work` unless the stage is fresh; records it when it succeeds.
    fn stage(
        &mut self,
        name: &str,
        inputs: String,
        always: bool,
        work: impl FnOnce(&GlobalArgs) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if !always && self.stages.is_fresh(name, &inputs) {
            tracing::info!("{name}: up to date, skipped");
            return Ok(());
        }
        tracing::info!("{name}: starting");
        let started = Instant::now();
        work(self.global).with_context(|| format!("the {name} stage failed"))?;
        let seconds = started.elapsed().as_secs_f64();
        // A rerun of a fresh always-entered stage costs little: keep the first full duration.
        let seconds = match self.stages.get(name) {
            Some(previous) if always && previous.inputs == inputs => previous.seconds.max(seconds),
            _ => seconds,
        };
        self.stages.finish(name, inputs, seconds)
    }
}

/// The weakest intents of `metrics` (lowest F1 first, perfect ones never), at most `weak`, each
/// with the intent it is most confused with and an even share of `samples`.
pub fn plan(metrics: &Metrics, weak: usize, samples: usize) -> Vec<Target> {
    let mut order: Vec<usize> = (0..metrics.per_intent.len())
        .filter(|&i| metrics.per_intent[i].support > 0 && metrics.per_intent[i].f1 < 1.0)
        .collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (metrics.per_intent[a].f1, metrics.per_intent[b].f1);
        fa.total_cmp(&fb).then(a.cmp(&b))
    });
    order.truncate(weak);
    let n = order.len().max(1);
    order
        .iter()
        .enumerate()
        .map(|(rank, &i)| {
            let confused = |j: usize| metrics.confusion[i][j] + metrics.confusion[j][i];
            let contrast = (0..metrics.labels.len())
                .filter(|&j| j != i && confused(j) > 0)
                .max_by(|&a, &b| confused(a).cmp(&confused(b)).then(b.cmp(&a)))
                .map(|j| metrics.labels[j].clone());
            Target {
                intent: metrics.per_intent[i].intent.clone(),
                f1: metrics.per_intent[i].f1,
                contrast,
                samples: (samples / n + usize::from(rank < samples % n)).max(1),
            }
        })
        .collect()
}

fn describe(target: &Target) -> String {
    let contrast = target
        .contrast
        .as_ref()
        .map_or(String::new(), |c| format!(", against {c}"));
    format!(
        "{} samples of {} (validation F1 {:.3}{contrast})",
        target.samples, target.intent, target.f1
    )
}

/// The student's scores on the validation set in `round`.
fn validation_metrics(round: &Round) -> anyhow::Result<Metrics> {
    let path = round.file(files::VALIDATION).join("metrics.json");
    let text = fs_err::read_to_string(&path)?;
    let comparison: Comparison =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(comparison.student)
}

fn save_records(dir: &Path, records: &[RoundRecord]) -> anyhow::Result<()> {
    let path = dir.join(files::ROUNDS_RECORD);
    let tmp = path.with_extension("json.tmp");
    fs_err::write(&tmp, serde_json::to_string_pretty(records)?)?;
    fs_err::rename(&tmp, &path)?;
    Ok(())
}

/// Writes the rounds' sample files, then this round's, into `out`.
fn concatenate(
    earlier: impl Iterator<Item = PathBuf>,
    round: &Round,
    out: &Path,
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    for file in earlier.chain([round.file(files::SAMPLES)]) {
        let mut text = fs_err::read(&file)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            text.push(b'\n');
        }
        bytes.extend(text);
    }
    let tmp = out.with_extension("jsonl.tmp");
    fs_err::write(&tmp, bytes)?;
    fs_err::rename(&tmp, out)?;
    Ok(())
}

fn count_lines(path: &Path) -> anyhow::Result<usize> {
    match fs_err::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn read_clean(clean: &Path, task: &Task) -> anyhow::Result<Vec<Sample>> {
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
    Ok(report.records)
}

/// Splits samples into training, validation and test sets, stratified by intent. Membership
/// depends only on each sample's id, so the split is stable across reruns and a sample never
/// moves between the sets. An intent with fewer than 4 samples goes to training whole.
fn split_samples(
    samples: Vec<Sample>,
    task: &Task,
    test_share: f64,
    validation_share: f64,
) -> [Vec<Sample>; 3] {
    let mut sets: [Vec<Sample>; 3] = Default::default();
    for intent in task.intent_names() {
        let mut group: Vec<&Sample> = samples.iter().filter(|s| s.intent == intent).collect();
        group.sort_by_key(|s| split_key(&s.id));
        let share = |f: f64| {
            if group.len() >= 4 {
                ((group.len() as f64) * f).round() as usize
            } else {
                0
            }
        };
        let n_test = share(test_share);
        let n_validation = share(validation_share).min(group.len() - n_test - 1);
        sets[2].extend(group[..n_test].iter().map(|s| (*s).clone()));
        let rest = &group[n_test..];
        sets[1].extend(rest[..n_validation].iter().map(|s| (*s).clone()));
        sets[0].extend(rest[n_validation..].iter().map(|s| (*s).clone()));
    }
    sets
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

fn split_key(id: &str) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("holdout:{id}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(labels: &[&str], confusion: Vec<Vec<usize>>) -> Metrics {
        let gold: Vec<usize> = confusion
            .iter()
            .enumerate()
            .flat_map(|(g, row)| std::iter::repeat_n(g, row.iter().sum()))
            .collect();
        let predicted: Vec<usize> = confusion
            .iter()
            .flat_map(|row| {
                row.iter()
                    .enumerate()
                    .flat_map(|(p, &n)| std::iter::repeat_n(p, n))
            })
            .collect();
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        Metrics::compute(&gold, &predicted, None, &labels).unwrap()
    }

    #[test]
    fn plan_targets_the_weakest_intents_against_their_confusions() {
        // return is often predicted as exchange; invoice is perfect.
        let m = metrics(
            &["return", "exchange", "invoice", "other"],
            vec![
                vec![5, 4, 0, 1],
                vec![1, 8, 0, 1],
                vec![0, 0, 10, 0],
                vec![0, 1, 0, 9],
            ],
        );
        let targets = plan(&m, 2, 9);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].intent, "return");
        assert_eq!(targets[0].contrast.as_deref(), Some("exchange"));
        assert_eq!(targets[0].samples + targets[1].samples, 9);
        assert!(targets[0].f1 <= targets[1].f1);
        assert!(targets.iter().all(|t| t.intent != "invoice"));
    }

    #[test]
    fn plan_is_empty_when_every_intent_is_right() {
        let m = metrics(&["a", "b"], vec![vec![3, 0], vec![0, 2]]);
        assert!(plan(&m, 2, 10).is_empty());
    }

    #[test]
    fn split_is_stratified_disjoint_and_stable() {
        let task = Task::parse(
            r#"
            name = "t"
            language = "en"
            catch_all = "other"
            [[intents]]
            name = "a"
            description = "a"
            [[intents]]
            name = "other"
            description = "other"
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample::new(format!("text {i}"), if i % 4 == 0 { "other" } else { "a" }))
            .chain([Sample::new("lonely", "other")])
            .collect();
        let [train, validation, test] = split_samples(samples.clone(), &task, 0.2, 0.1);
        assert_eq!(train.len() + validation.len() + test.len(), samples.len());
        assert_eq!(test.iter().filter(|s| s.intent == "a").count(), 6);
        assert_eq!(validation.iter().filter(|s| s.intent == "a").count(), 3);
        let ids = |set: &[Sample]| set.iter().map(|s| s.id.clone()).collect::<HashSet<_>>();
        assert!(ids(&train).is_disjoint(&ids(&validation)));
        assert!(ids(&train).is_disjoint(&ids(&test)));
        let again = split_samples(samples, &task, 0.2, 0.1);
        assert_eq!(ids(&again[1]), ids(&validation));
    }
}
