//! The generate stage: asks the teacher for new messages per intent (synthesize mode) or takes
//! existing ones (label mode), labels each, and appends the samples to a JSONL file exactly
//! once. Rerunning the same command resumes: what the file holds counts, ids are stable, and a
//! kill at any moment loses at most the record being written (which is then redone).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prompt2lora_core::jsonl::{SampleRules, read_samples};
use prompt2lora_core::sample::{Provenance, now_rfc3339};
use prompt2lora_core::text::char_len;
use prompt2lora_core::{ChatRequest, JsonlWriter, LineError, Sample, Task, Teacher, TeacherError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::fewshot::{Example, pick_diverse};
use crate::label::{LabelError, LabelOptions, label_text};
use crate::ledger::{Ledger, LedgerError, Price};
use crate::prompts::{self, MAX_MESSAGE_CHARS};

/// Everything the generate stage needs besides the task, the teacher and the output file.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Samples the output file should hold at the end (spread evenly over the intents in
    /// synthesize mode; at most the number of distinct messages in label mode).
    pub samples: usize,
    /// Label mode: the messages to label (see [`read_messages`]); `None` synthesizes.
    pub label_input: Option<PathBuf>,
    pub label: LabelOptions,
    pub per_request: usize,
    pub few_shot: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Jobs (a generation request and its labels, or one label) run at once.
    pub concurrency: usize,
    pub seed: u64,
    /// Stop launching requests once this much money is spent (the ledger's earlier entries
    /// count, so a resumed run does not get a fresh budget).
    pub budget_usd: Option<f64>,
    /// Price of the teacher's tokens; `None` counts tokens but no money.
    pub price: Option<Price>,
    /// The ledger file to continue and keep up to date; `None` keeps the ledger in memory.
    pub ledger_path: Option<PathBuf>,
    /// Generation requests in a row that may bring no new sample for an intent before the run
    /// gives up on the teacher.
    pub max_fruitless: usize,
    /// Synthesize mode: samples the output should hold per intent (the task's intent order),
    /// instead of `samples` spread evenly. The closed loop of `run` asks for weak intents only.
    pub quotas: Option<Vec<usize>>,
    /// Synthesize mode: for an intent, another intent the student confuses it with; its
    /// messages are then written to be clearly the one and not the other.
    pub contrast: BTreeMap<String, String>,
}

impl GenerateOptions {
    /// Options from a task's `[teacher]` section.
    pub fn from_task(task: &Task) -> Result<Self, GenerateError> {
        let t = &task.teacher;
        Ok(GenerateOptions {
            samples: t.samples,
            label_input: None,
            label: LabelOptions::from_task(task).map_err(GenerateError::Settings)?,
            per_request: t.per_request.max(1),
            few_shot: t.few_shot,
            temperature: t.temperature,
            top_p: t.top_p,
            concurrency: t.concurrency.max(1),
            seed: 0,
            budget_usd: t.budget_usd,
            price: match (t.price_prompt, t.price_completion) {
                (None, None) => None,
                (p, c) => Some(Price {
                    prompt: p.unwrap_or(0.0),
                    completion: c.unwrap_or(0.0),
                }),
            },
            ledger_path: None,
            max_fruitless: 10,
            quotas: None,
            contrast: BTreeMap::new(),
        })
    }
}

/// Reported after every written sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Samples in the file, earlier runs included.
    pub done: usize,
    pub total: usize,
    /// Money spent, earlier runs included.
    pub usd: f64,
}

/// Why the stage stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Stop {
    /// The file holds the requested number of samples.
    Complete,
    /// The budget was reached; rerunning with a larger one continues.
    Budget { spent_usd: f64 },
    /// Label mode: every message is labelled or failed, short of the requested number.
    OutOfMessages,
}

/// Messages that did not become samples, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Generated again although already in the file or a seed example.
    pub duplicates: usize,
    /// Generated beyond what the intent still needed.
    pub surplus: usize,
    /// Longer than the sample length limit.
    pub too_long: usize,
    /// Generation answers that held no usable message, even after a repair request.
    pub unusable_generations: usize,
    /// Messages whose label answer was unusable, even after a repair request.
    pub unusable_labels: usize,
}

/// What a generate run did.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    /// Samples in the file at the end.
    pub total: usize,
    /// Samples this run wrote.
    pub written: usize,
    /// Samples found in the file at the start.
    pub resumed: usize,
    /// Samples in the file per teacher label.
    pub per_intent: BTreeMap<String, usize>,
    /// Synthesize mode: samples in the file per requested intent.
    pub requested: BTreeMap<String, usize>,
    pub dropped: Dropped,
    /// What this run spent.
    pub ledger: Ledger,
    /// Money spent by earlier runs on the same ledger.
    pub earlier_usd: f64,
    pub seconds: f64,
    pub stop: Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Lines of an existing output or of a label input that are not what they should be.
    #[error("{} bad line(s), first: {}", .0.len(), .0[0])]
    BadLines(Vec<LineError>),
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    #[error(
        "the teacher gave no new usable message for intent `{intent}` in {requests} requests in \
         a row (duplicates or unusable answers)"
    )]
    Fruitless { intent: String, requests: usize },
}

/// Runs the generate stage into `out`; see the module documentation.
pub async fn generate(
    task: &Task,
    teacher: Arc<dyn Teacher>,
    options: &GenerateOptions,
    out: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<GenerateSummary, GenerateError> {
    let started = Instant::now();

    // Resume: the file's records count, a torn last record is cut off and redone.
    let existing = open_existing(out, task)?;
    let messages = match &options.label_input {
        Some(path) => Some(read_messages(path)?),
        None => None,
    };
    let earlier = match &options.ledger_path {
        Some(path) => Ledger::load(path)?,
        None => Ledger::default(),
    };
    // Calibration needs the teacher's prior before the first label.
    let mut options = options.clone();
    let prior_started = Instant::now();
    let prior_usage = options.label.prepare(teacher.as_ref(), task).await?;
    let prior_seconds = prior_started.elapsed().as_secs_f64();
    let options = &options;
    let run = Run::new(task, teacher, options, out, existing, messages, earlier)?;
    if let Some(prior_usage) = prior_usage {
        let model = run.teacher.model_id().to_string();
        run.lock().ledger.record(
            &model,
            crate::label::PRIOR_REQUESTS,
            prior_usage,
            prior_seconds,
            options.price,
        );
    }
    let first = run.lock().progress();
    progress(first);

    // Workers: each takes a job, runs it and reports, until the plan is met or a stop.
    let workers = options.concurrency.min(run.teacher.concurrency()).max(1);
    let shared = &run;
    let worker = move |_| async move {
        while let Some(job) = shared.next_job().await {
            if let Some(update) = shared.do_job(job).await {
                progress(update);
            }
        }
    };
    futures::future::join_all((0..workers).map(worker)).await;

    // Wrap up: flush the ledger, then report or fail.
    let state = Arc::try_unwrap(run.state)
        .ok()
        .expect("workers are done")
        .into_inner()
        .expect("no panic");
    if let Some(path) = &options.ledger_path {
        state.total_ledger().save(path)?;
    }
    state.writer.finish()?;
    let stop = match state.stop {
        Some(Err(error)) => return Err(error),
        Some(Ok(stop)) => stop,
        None => Stop::Complete,
    };
    Ok(GenerateSummary {
        total: state.resumed + state.written,
        written: state.written,
        resumed: state.resumed,
        per_intent: state.labels,
        requested: state.requested,
        dropped: state.dropped,
        earlier_usd: state.earlier.total_usd(),
        ledger: state.ledger,
        seconds: started.elapsed().as_secs_f64(),
        stop,
    })
}

/// The samples already in `out`, after cutting off a torn last record.
fn open_existing(out: &Path, task: &Task) -> Result<Vec<Sample>, GenerateError> {
    let bytes = match fs_err::read(out) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(
            "{}: removing an interrupted record at the end; it will be redone",
            out.display()
        );
        fs_err::OpenOptions::new()
            .write(true)
            .open(out)?
            .set_len(keep as u64)?;
    }
    let intents = task.intent_names();
    let rules = SampleRules {
        intents: Some(&intents),
        max_chars: MAX_MESSAGE_CHARS,
    };
    let report = read_samples(out, &rules)?;
    if !report.errors.is_empty() {
        return Err(GenerateError::BadLines(report.errors));
    }
    Ok(report.records)
}

/// The messages of a label-mode input: JSONL with a `text` field (files ending in `.jsonl` or
/// whose first line is a JSON object), otherwise one message per non-empty line. Repeated
/// messages (same id) are kept once.
pub fn read_messages(path: &Path) -> Result<Vec<String>, GenerateError> {
    let text = fs_err::read_to_string(path)?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl")
        || text
            .lines()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_start().starts_with('{'));
    let mut seen = HashSet::new();
    let (mut messages, mut errors) = (Vec::new(), Vec::new());
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| LineError {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let message = if jsonl {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(value) => match value.get("text").and_then(|t| t.as_str()) {
                    Some(text) => text.trim().to_string(),
                    None => {
                        errors.push(error("no string field `text`".into()));
                        continue;
                    }
                },
                Err(e) => {
                    errors.push(error(format!("bad JSON ({e})")));
                    continue;
                }
            }
        } else {
            line.trim().to_string()
        };
        let len = char_len(&message);
        if message.is_empty() {
            errors.push(error("empty text".into()));
        } else if len > MAX_MESSAGE_CHARS {
            errors.push(error(format!(
                "text is {len} characters long, over the limit of {MAX_MESSAGE_CHARS}"
            )));
        } else if seen.insert(Sample::id_for(&message)) {
            messages.push(message);
        }
    }
    if !errors.is_empty() {
        return Err(GenerateError::BadLines(errors));
    }
    Ok(messages)
}

/// One unit of work.
enum Job {
    /// Ask for `claim` new messages of intent `intent` (an index into the task's intents).
    Synthesize {
        intent: usize,
        claim: usize,
        examples: Vec<Example>,
        variations: Vec<String>,
        seed: u64,
    },
    /// Label one given message.
    Label { text: String },
}

struct Run<'a> {
    task: &'a Task,
    teacher: Arc<dyn Teacher>,
    options: &'a GenerateOptions,
    names: Vec<String>,
    generate_hash: String,
    label_hash: String,
    ledger_path: Option<PathBuf>,
    state: Arc<Mutex<State>>,
    wake: Notify,
}

struct State {
    writer: JsonlWriter,
    seen: HashSet<String>,
    /// Synthesize: samples wanted, held and claimed (by jobs in flight) per intent.
    quota: Vec<usize>,
    have: Vec<usize>,
    claimed: Vec<usize>,
    fruitless: Vec<usize>,
    pools: Vec<Vec<Example>>,
    /// Label mode: the messages not yet in the file, and the next one to take.
    queue: Vec<String>,
    next: usize,
    target: usize,
    resumed: usize,
    written: usize,
    labels: BTreeMap<String, usize>,
    requested: BTreeMap<String, usize>,
    dropped: Dropped,
    jobs: usize,
    requests_made: u64,
    ledger: Ledger,
    earlier: Ledger,
    saved_at: Instant,
    stop: Option<Result<Stop, GenerateError>>,
}

impl State {
    fn total_ledger(&self) -> Ledger {
        let mut total = self.earlier.clone();
        total.merge(&self.ledger);
        total
    }

    fn spent(&self) -> f64 {
        self.earlier.total_usd() + self.ledger.total_usd()
    }

    fn progress(&self) -> Progress {
        Progress {
            done: self.resumed + self.written,
            total: self.target,
            usd: self.spent(),
        }
    }

    fn fail(&mut self, error: GenerateError) {
        if !matches!(self.stop, Some(Err(_))) {
            self.stop = Some(Err(error));
        }
    }
}

impl<'a> Run<'a> {
    fn new(
        task: &'a Task,
        teacher: Arc<dyn Teacher>,
        options: &'a GenerateOptions,
        out: &Path,
        existing: Vec<Sample>,
        messages: Option<Vec<String>>,
        earlier: Ledger,
    ) -> Result<Self, GenerateError> {
        let names = task.intent_names();
        let mut seen: HashSet<String> = existing.iter().map(|s| s.id.clone()).collect();
        let resumed = seen.len();
        let (mut labels, mut requested) = (BTreeMap::new(), BTreeMap::new());
        let mut have = vec![0; names.len()];
        let mut pools: Vec<Vec<Example>> = task
            .intents
            .iter()
            .map(|i| {
                i.examples
                    .iter()
                    .map(|t| Example {
                        id: Sample::id_for(t),
                        text: t.clone(),
                    })
                    .collect()
            })
            .collect();
        let mut counted = HashSet::new();
        for sample in &existing {
            if !counted.insert(&sample.id) {
                continue;
            }
            *labels.entry(sample.intent.clone()).or_insert(0) += 1;
            let asked = sample
                .provenance
                .requested_intent
                .as_deref()
                .unwrap_or(&sample.intent);
            if let Some(i) = names.iter().position(|n| n == asked) {
                have[i] += 1;
                *requested.entry(asked.to_string()).or_insert(0) += 1;
                if sample.intent == asked {
                    pools[i].push(Example {
                        id: sample.id.clone(),
                        text: sample.text.clone(),
                    });
                }
            }
        }
        let (quota, queue, target) = match messages {
            None => {
                // Seed examples are the user's own words: a copy of one is not a new sample.
                seen.extend(pools.iter().flatten().map(|e| e.id.clone()));
                let quota = quotas(options, names.len())?;
                let target = quota.iter().zip(&have).map(|(q, h)| q.max(h)).sum();
                (quota, Vec::new(), target)
            }
            Some(messages) => {
                let queue: Vec<String> = messages
                    .into_iter()
                    .filter(|m| !seen.contains(&Sample::id_for(m)))
                    .collect();
                let target = options.samples.max(resumed).min(resumed + queue.len());
                (vec![0; names.len()], queue, target)
            }
        };
        let state = State {
            writer: JsonlWriter::append(out)?,
            seen,
            claimed: vec![0; names.len()],
            fruitless: vec![0; names.len()],
            quota,
            have,
            pools,
            queue,
            next: 0,
            target,
            resumed,
            written: 0,
            labels,
            requested,
            dropped: Dropped::default(),
            jobs: 0,
            requests_made: 0,
            ledger: Ledger::default(),
            earlier,
            saved_at: Instant::now(),
            stop: None,
        };
        Ok(Run {
            task,
            teacher,
            options,
            names,
            generate_hash: prompts::generate_prompt_hash(),
            label_hash: options.label.prompt_id(),
            ledger_path: options.ledger_path.clone(),
            state: Arc::new(Mutex::new(state)),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no worker panicked while holding the state")
    }

    /// The next job, waiting while the plan depends on jobs in flight; `None` when done.
    async fn next_job(&self) -> Option<Job> {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            {
                let mut state = self.lock();
                if state.stop.is_some() || self.over_budget(&mut state) {
                    return None;
                }
                let found = if self.options.label_input.is_some() {
                    self.next_label(&mut state)
                } else {
                    self.next_synthesis(&mut state)
                };
                match found {
                    Some(job) => {
                        state.jobs += 1;
                        return Some(job);
                    }
                    None if state.jobs == 0 => {
                        if self.options.label_input.is_some()
                            && state.resumed + state.written < state.target
                        {
                            state.stop = Some(Ok(Stop::OutOfMessages));
                        }
                        return None;
                    }
                    None => {}
                }
            }
            wake.await;
        }
    }

    /// Stops launching once the money spent, plus what the jobs in flight will likely cost,
    /// reaches the budget.
    fn over_budget(&self, state: &mut State) -> bool {
        let Some(budget) = self.options.budget_usd else {
            return false;
        };
        let total = state.total_ledger();
        let per_request = total.total_usd() / total.total_requests().max(1) as f64;
        let per_job = per_request * self.requests_per_job() as f64;
        let spent = state.spent();
        if spent + per_job * (state.jobs + 1) as f64 <= budget && spent < budget {
            return false;
        }
        if state.stop.is_none() {
            tracing::warn!("budget of ${budget:.4} reached (${spent:.4} spent); stopping");
            state.stop = Some(Ok(Stop::Budget { spent_usd: spent }));
        }
        true
    }

    /// Requests one job usually makes (repairs aside).
    fn requests_per_job(&self) -> usize {
        let label = &self.options.label;
        let per_message = match label.method {
            crate::label::LabelMethod::Both => 2,
            _ => 1,
        } + if label.self_consistency >= 2 {
            label.self_consistency
        } else {
            0
        };
        match self.options.label_input {
            Some(_) => per_message,
            None => 1 + self.options.per_request * per_message,
        }
    }

    fn next_synthesis(&self, state: &mut State) -> Option<Job> {
        let deficit = |i: usize| state.quota[i].saturating_sub(state.have[i] + state.claimed[i]);
        let intent = (0..self.names.len())
            .filter(|&i| deficit(i) > 0)
            .max_by_key(|&i| deficit(i))?;
        let claim = deficit(intent).min(self.options.per_request);
        state.claimed[intent] += claim;
        state.requests_made += 1;
        // The seed mixes in what the file holds, so a resumed run does not repeat its prompts.
        let seed = mix(&[
            self.options.seed,
            intent as u64,
            state.have[intent] as u64,
            state.requests_made,
        ]);
        let mut rng = StdRng::seed_from_u64(seed);
        let examples = pick_diverse(&state.pools[intent], self.options.few_shot, &mut rng)
            .into_iter()
            .cloned()
            .collect();
        let variations = (0..claim).map(|_| prompts::variation(&mut rng)).collect();
        Some(Job::Synthesize {
            intent,
            claim,
            examples,
            variations,
            seed,
        })
    }

    fn next_label(&self, state: &mut State) -> Option<Job> {
        let busy: usize = state.claimed.iter().sum();
        if state.resumed + state.written + busy >= state.target {
            return None;
        }
        let text = state.queue.get(state.next)?.clone();
        state.next += 1;
        state.claimed[0] += 1;
        Some(Job::Label { text })
    }

    /// Runs a job; returns the progress to report if it wrote anything.
    async fn do_job(&self, job: Job) -> Option<Progress> {
        let wrote = match job {
            Job::Synthesize {
                intent,
                claim,
                examples,
                variations,
                seed,
            } => {
                self.synthesize(intent, claim, &examples, &variations, seed)
                    .await
            }
            Job::Label { text } => {
                let wrote = self.label_and_write(&text, None, &[], None).await;
                self.lock().claimed[0] -= 1;
                wrote
            }
        };
        let mut state = self.lock();
        state.jobs -= 1;
        self.save_ledger(&mut state, false);
        let update = (wrote > 0).then(|| state.progress());
        drop(state);
        self.wake.notify_waiters();
        update
    }

    async fn synthesize(
        &self,
        intent: usize,
        claim: usize,
        examples: &[Example],
        variations: &[String],
        seed: u64,
    ) -> usize {
        let name = &self.names[intent];
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let request = ChatRequest {
            messages: prompts::generate_messages(
                self.task,
                name,
                self.options.contrast.get(name).map(String::as_str),
                &texts,
                variations,
            ),
            temperature: self.options.temperature,
            top_p: self.options.top_p,
            max_tokens: 60 + 160 * claim as u32,
            json_schema: Some(prompts::messages_schema()),
            seed: Some(seed),
        };
        let generated = self.chat_messages(request).await;

        // Keep the new messages the intent still needs; the claim covers them.
        let kept: Vec<String> = {
            let mut state = self.lock();
            let mut kept = Vec::new();
            match generated {
                Err(error) => state.fail(error),
                Ok(None) => state.dropped.unusable_generations += 1,
                Ok(Some(messages)) => {
                    for message in messages {
                        if char_len(&message) > MAX_MESSAGE_CHARS {
                            state.dropped.too_long += 1;
                        } else if kept.len() == claim || state.stop.is_some() {
                            state.dropped.surplus += 1;
                        } else if state.seen.insert(Sample::id_for(&message)) {
                            kept.push(message);
                        } else {
                            state.dropped.duplicates += 1;
                        }
                    }
                }
            }
            state.claimed[intent] -= claim - kept.len();
            kept
        };

        let few_shot: Vec<String> = examples.iter().map(|e| e.id.clone()).collect();
        let mut wrote = 0;
        for message in kept {
            wrote += self
                .label_and_write(
                    &message,
                    Some(intent),
                    &few_shot,
                    Some(self.options.temperature),
                )
                .await;
            self.lock().claimed[intent] -= 1;
        }

        let mut state = self.lock();
        if wrote > 0 {
            state.fruitless[intent] = 0;
        } else {
            state.fruitless[intent] += 1;
            if state.fruitless[intent] >= self.options.max_fruitless {
                let requests = state.fruitless[intent];
                state.fail(GenerateError::Fruitless {
                    intent: name.clone(),
                    requests,
                });
            }
        }
        wrote
    }

    /// A generation answer's messages: `Ok(None)` when the answer stayed unusable after one
    /// repair request.
    async fn chat_messages(
        &self,
        mut request: ChatRequest,
    ) -> Result<Option<Vec<String>>, GenerateError> {
        for attempt in 0..2 {
            let started = Instant::now();
            let answer = self.teacher.chat(&request).await?;
            self.book(1, answer.usage, started);
            match prompts::parse_messages(&answer.text) {
                Ok(messages) => return Ok(Some(messages)),
                Err(problem) if attempt == 0 => {
                    tracing::debug!("generation answer unusable ({problem}); asking once more");
                    request.messages =
                        prompts::repair_messages(request.messages, &answer.text, &problem);
                }
                Err(problem) => {
                    tracing::warn!("generation answer unusable after a repair request: {problem}")
                }
            }
        }
        Ok(None)
    }

    /// Labels a message and appends the sample; returns how many samples were written (0 or 1).
    async fn label_and_write(
        &self,
        text: &str,
        requested: Option<usize>,
        few_shot: &[String],
        temperature: Option<f32>,
    ) -> usize {
        if self.lock().stop.as_ref().is_some_and(Result::is_err) {
            self.lock().seen.remove(&Sample::id_for(text));
            return 0;
        }
        let started = Instant::now();
        let result = label_text(self.teacher.as_ref(), self.task, text, &self.options.label).await;
        let mut state = self.lock();
        let label = match result {
            Ok(label) => label,
            Err(error) => {
                state.seen.remove(&Sample::id_for(text));
                match error {
                    LabelError::Teacher(error) => state.fail(error.into()),
                    LabelError::Invalid { problem, .. } => {
                        tracing::debug!(
                            "dropping a message whose label stayed unusable: {problem}"
                        );
                        state.dropped.unusable_labels += 1;
                    }
                }
                return 0;
            }
        };
        drop(state);
        self.book(u64::from(label.requests), label.usage, started);

        let requested_name = requested.map(|i| self.names[i].clone());
        let sample = Sample {
            id: Sample::id_for(text),
            text: text.to_string(),
            intent: label.intent.clone(),
            confidence: label.confidence,
            label_logprob: label.label_logprob,
            agreement: label.agreement,
            reason: label.reason,
            provenance: Provenance {
                teacher: Some(self.teacher.model_id().to_string()),
                prompt: Some(if requested.is_some() {
                    self.generate_hash.clone()
                } else {
                    self.label_hash.clone()
                }),
                temperature: temperature.map(f64::from),
                requested_intent: requested_name.clone(),
                few_shot: few_shot.to_vec(),
                source: Some(
                    if requested.is_some() {
                        "synthesize"
                    } else {
                        "label"
                    }
                    .to_string(),
                ),
                created: Some(now_rfc3339()),
            },
        };
        let mut state = self.lock();
        if let Err(error) = state.writer.write(&sample) {
            state.seen.remove(&sample.id);
            state.fail(error.into());
            return 0;
        }
        state.written += 1;
        *state.labels.entry(sample.intent.clone()).or_insert(0) += 1;
        if let (Some(i), Some(name)) = (requested, requested_name) {
            state.have[i] += 1;
            *state.requested.entry(name.clone()).or_insert(0) += 1;
            if sample.intent == name {
                state.pools[i].push(Example {
                    id: sample.id,
                    text: sample.text,
                });
            }
        }
        1
    }

    fn book(&self, requests: u64, usage: prompt2lora_core::Usage, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        let model = self.teacher.model_id();
        self.lock()
            .ledger
            .record(model, requests, usage, seconds, self.options.price);
    }

    /// Writes the ledger at most once a second (and always when `force`).
    fn save_ledger(&self, state: &mut State, force: bool) {
        let Some(path) = &self.ledger_path else {
            return;
        };
        if !force && state.saved_at.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        state.saved_at = Instant::now();
        if let Err(error) = state.total_ledger().save(path) {
            tracing::warn!("cannot update the ledger: {error}");
        }
    }
}

/// How fast the teacher is assumed to be, for [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Speed {
    pub prompt_tokens_per_second: f64,
    pub completion_tokens_per_second: f64,
    /// Fixed cost of one request: network round trip, queueing.
    pub request_seconds: f64,
    /// Requests served at once.
    pub parallel: usize,
    pub requests_per_minute: u32,
    pub tokens_per_minute: u32,
}

impl Speed {
    /// A hosted or served model: fast prompt processing, streaming-speed completion.
    pub fn endpoint(concurrency: usize, requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        Speed {
            prompt_tokens_per_second: 5000.0,
            completion_tokens_per_second: 60.0,
            request_seconds: 0.4,
            parallel: concurrency.max(1),
            requests_per_minute,
            tokens_per_minute,
        }
    }

    /// A 1.5B model quantized to 4 bits on one CPU core, as measured for the in-process teacher.
    pub fn in_process() -> Self {
        Speed {
            prompt_tokens_per_second: 40.0,
            completion_tokens_per_second: 5.0,
            request_seconds: 0.0,
            parallel: 1,
            requests_per_minute: 0,
            tokens_per_minute: 0,
        }
    }
}

/// What a run is expected to cost before it starts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// Samples the file already holds, and samples still to make.
    pub existing: usize,
    pub remaining: usize,
    pub requests: u64,
    pub usage: prompt2lora_core::Usage,
    /// `None` when no price is known.
    pub usd: Option<f64>,
    pub seconds: f64,
    pub speed: Speed,
}

/// Share of generated messages assumed lost to duplicates and unusable answers.
const GENERATION_LOSS: f64 = 0.1;

/// Estimates requests, tokens, money and time of [`generate`] without calling the teacher.
/// `scores` says whether the teacher scores answers (decides what `auto` labelling does).
pub fn estimate(
    task: &Task,
    options: &GenerateOptions,
    out: &Path,
    scores: bool,
    speed: Speed,
) -> Result<Estimate, GenerateError> {
    use crate::label::LabelMethod;
    use crate::openai::estimate_tokens;

    let existing = match out.exists() {
        true => {
            read_samples(
                out,
                &SampleRules {
                    intents: None,
                    max_chars: MAX_MESSAGE_CHARS,
                },
            )?
            .records
        }
        false => Vec::new(),
    };
    let names = task.intent_names();
    let seeds: Vec<&String> = task.intents.iter().flat_map(|i| &i.examples).collect();
    let typical_message: usize = match seeds.len() {
        0 => 20,
        n => seeds.iter().map(|s| estimate_tokens(s)).sum::<usize>() / n,
    };
    let typical_message = typical_message as u64;

    // Generation requests, per intent still short of its quota.
    let mut requests = 0u64;
    let mut usage = prompt2lora_core::Usage::default();
    let mut serial_seconds = 0.0;
    let mut book = |n: u64, prompt: u64, completion: u64| {
        requests += n;
        usage.prompt_tokens += n * prompt;
        usage.completion_tokens += n * completion;
        serial_seconds += n as f64
            * (speed.request_seconds
                + prompt as f64 / speed.prompt_tokens_per_second
                + completion as f64 / speed.completion_tokens_per_second);
    };
    let remaining_texts: Vec<String> = match &options.label_input {
        Some(path) => {
            let done: HashSet<String> = existing.iter().map(|s| s.id.clone()).collect();
            let queue = read_messages(path)?
                .into_iter()
                .filter(|m| !done.contains(&Sample::id_for(m)));
            let room = options.samples.saturating_sub(existing.len());
            queue.take(room).collect()
        }
        None => {
            let quota = quotas(options, names.len())?;
            let mut remaining = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let have = existing
                    .iter()
                    .filter(|s| {
                        s.provenance
                            .requested_intent
                            .as_deref()
                            .unwrap_or(&s.intent)
                            == name
                    })
                    .count();
                let need = quota[i].saturating_sub(have);
                if need == 0 {
                    continue;
                }
                let per = options.per_request.max(1);
                let n = ((need as f64 * (1.0 + GENERATION_LOSS)) / per as f64).ceil() as u64;
                let examples: Vec<&str> = task.intents[i]
                    .examples
                    .iter()
                    .take(options.few_shot)
                    .map(String::as_str)
                    .collect();
                let variations = vec!["a typical customer, neutral tone, one sentence, sent by live chat, mentioning a product".to_string(); per];
                let contrast = options.contrast.get(name).map(String::as_str);
                let prompt =
                    prompts::generate_messages(task, name, contrast, &examples, &variations);
                let prompt_tokens: usize =
                    prompt.iter().map(|m| estimate_tokens(&m.content) + 4).sum();
                book(
                    n,
                    prompt_tokens as u64,
                    per as u64 * (typical_message + 4) + 8,
                );
                let sample_text = task.intents[i]
                    .examples
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "x".repeat(4 * typical_message as usize));
                remaining.extend(std::iter::repeat_n(sample_text, need));
            }
            remaining
        }
    };

    // Labelling requests, by the method the run will use.
    let method = match options.label.method {
        LabelMethod::Auto if scores => LabelMethod::Score,
        LabelMethod::Auto => LabelMethod::Json,
        other => other,
    };
    let choices = names
        .iter()
        .map(|n| estimate_tokens(n) as u64 + 1)
        .sum::<u64>();
    for text in &remaining_texts {
        let tokens = |messages: Vec<prompt2lora_core::ChatMessage>| -> u64 {
            messages
                .iter()
                .map(|m| estimate_tokens(&m.content) as u64 + 4)
                .sum()
        };
        let name_prompt = tokens(prompts::label_name_messages(task, text));
        let json_prompt = tokens(prompts::label_json_messages(task, text));
        if matches!(method, LabelMethod::Score | LabelMethod::Both) {
            book(1, name_prompt + choices, 0);
        }
        if matches!(method, LabelMethod::Json | LabelMethod::Both) {
            book(1, json_prompt, 45);
        }
        if options.label.self_consistency >= 2 {
            let (prompt, completion) = if method == LabelMethod::Score {
                (name_prompt, 6)
            } else {
                (json_prompt, 45)
            };
            book(options.label.self_consistency as u64, prompt, completion);
        }
    }

    // Time: the slowest of the serial work spread over the parallel slots and the rate limits.
    let mut seconds = serial_seconds / speed.parallel as f64;
    if speed.requests_per_minute > 0 {
        seconds = seconds.max(requests as f64 * 60.0 / f64::from(speed.requests_per_minute));
    }
    if speed.tokens_per_minute > 0 {
        let tokens = (usage.prompt_tokens + usage.completion_tokens) as f64;
        seconds = seconds.max(tokens * 60.0 / f64::from(speed.tokens_per_minute));
    }
    Ok(Estimate {
        existing: existing.len(),
        remaining: remaining_texts.len(),
        requests,
        usage,
        usd: options.price.map(|p| p.cost(usage)),
        seconds,
        speed,
    })
}

/// `n` split over `k` parts as evenly as possible, the first parts taking the remainder.
/// Synthesize mode: the samples wanted per intent.
fn quotas(options: &GenerateOptions, intents: usize) -> Result<Vec<usize>, GenerateError> {
    match &options.quotas {
        None => Ok(spread(options.samples, intents)),
        Some(quotas) if quotas.len() == intents => Ok(quotas.clone()),
        Some(quotas) => Err(GenerateError::Settings(format!(
            "{} per-intent quotas for {intents} intents",
            quotas.len()
        ))),
    }
}

fn spread(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

fn mix(parts: &[u64]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.to_le_bytes());
    }
    u64::from_le_bytes(hasher.finalize()[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_complete() {
        assert_eq!(spread(10, 3), vec![4, 3, 3]);
        assert_eq!(spread(2, 3), vec![1, 1, 0]);
        assert_eq!(spread(9, 3).iter().sum::<usize>(), 9);
    }

    #[test]
    fn label_input_reads_lines_and_jsonl_with_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("m.txt");
        fs_err::write(
            &plain,
            "where is my parcel\n\n  Where is my parcel? \nrefund please\n",
        )
        .unwrap();
        assert_eq!(
            read_messages(&plain).unwrap(),
            vec!["where is my parcel", "refund please"]
        );
        let jsonl = dir.path().join("m.jsonl");
        fs_err::write(&jsonl, "{\"text\": \"a\"}\n{\"txt\": \"b\"}\nnot json\n").unwrap();
        let GenerateError::BadLines(errors) = read_messages(&jsonl).unwrap_err() else {
            panic!()
        };
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            lines[0].ends_with("m.jsonl:2: no string field `text`"),
            "{lines:?}"
        );
        assert!(lines[1].contains("m.jsonl:3: bad JSON"), "{lines:?}");
    }
}
