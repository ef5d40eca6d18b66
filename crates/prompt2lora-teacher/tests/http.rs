//! The HTTP teacher and the generate stage against a local OpenAI-compatible server that each
//! test starts and misbehaves on purpose: rate limits, server errors, hung requests, malformed
//! answers, intents outside the task, and a server that dies mid-run.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prompt2lora_core::Task;
use prompt2lora_core::jsonl::{SampleRules, read_samples};
use prompt2lora_teacher::ledger::ModelCost;
use prompt2lora_teacher::{
    GenerateError, GenerateOptions, LabelOptions, OpenAiConfig, OpenAiTeacher, Price, Stop,
    generate, label_text,
};
use serde_json::{Value, json};

/// What the server does wrong, by request number (1-based, in arrival order).
#[derive(Default, Clone)]
struct Behaviour {
    /// 429 with `Retry-After: 1` on these requests.
    rate_limited: Vec<usize>,
    /// 500 on every n-th request.
    error_every: usize,
    /// No answer (longer than the client's timeout) on these requests.
    hang: Vec<usize>,
    /// A body that is not JSON on these requests.
    garbage: Vec<usize>,
    /// Every n-th generation answer is cut-off JSON.
    broken_generation_every: usize,
    /// Label answers come in a code fence.
    fenced: bool,
    /// Every n-th label answer names an intent outside the task.
    foreign_intent_every: usize,
    /// Refuse OpenAI's `json_schema` response format with a 500 (llama.cpp's server does).
    refuse_json_schema: bool,
    /// Refuse `logprobs` with a 400.
    refuse_logprobs: bool,
    /// Every n-th generation answer repeats the previous one.
    repeat_every: usize,
    /// Die (drop every connection and stop listening) on this request.
    die_on: Option<usize>,
}

struct Mock {
    behaviour: Behaviour,
    requests: AtomicUsize,
    generated: AtomicUsize,
    generations: AtomicUsize,
    labels: AtomicUsize,
    last_generation: Mutex<Vec<String>>,
    rate_limited_at: Mutex<Vec<Instant>>,
    after_rate_limit: Mutex<Vec<Instant>>,
    formats: Mutex<HashSet<String>>,
    saw_logprobs: AtomicBool,
    die: tokio::sync::Notify,
}

struct Server {
    addr: SocketAddr,
    mock: Arc<Mock>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        let mock = Arc::new(Mock {
            behaviour,
            requests: AtomicUsize::new(0),
            generated: AtomicUsize::new(0),
            generations: AtomicUsize::new(0),
            labels: AtomicUsize::new(0),
            last_generation: Mutex::new(Vec::new()),
            rate_limited_at: Mutex::new(Vec::new()),
            after_rate_limit: Mutex::new(Vec::new()),
            formats: Mutex::new(HashSet::new()),
            saw_logprobs: AtomicBool::new(false),
            die: tokio::sync::Notify::new(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = mock.clone();
        // Its own runtime, so that dying drops every connection task at once.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/v1/chat/completions", axum::routing::post(handle))
                    .with_state(state.clone());
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = state.die.notified() => {}
                }
            });
            runtime.shutdown_background();
        });
        Server {
            addr,
            mock,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.mock.die.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(State(mock): State<Arc<Mock>>, Json(body): Json<Value>) -> Response {
    let n = mock.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let b = &mock.behaviour;
    if b.die_on == Some(n) {
        mock.die.notify_one();
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if !mock.rate_limited_at.lock().unwrap().is_empty() {
        mock.after_rate_limit.lock().unwrap().push(Instant::now());
    }
    if b.rate_limited.contains(&n) {
        mock.rate_limited_at.lock().unwrap().push(Instant::now());
        let error = json!({"error": {"message": "Rate limit reached", "type": "requests"}});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(error),
        )
            .into_response();
    }
    if b.error_every > 0 && n.is_multiple_of(b.error_every) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream overloaded").into_response();
    }
    if b.hang.contains(&n) {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if b.garbage.contains(&n) {
        return (StatusCode::OK, "{\"choices\": [{\"message\": ").into_response();
    }
    let format = body["response_format"]["type"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    if b.refuse_json_schema && format == "json_schema" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unrecognized response_format type json_schema",
        )
            .into_response();
    }
    let logprobs = body["logprobs"].as_bool() == Some(true);
    if b.refuse_logprobs && logprobs {
        return (StatusCode::BAD_REQUEST, "logprobs is not supported").into_response();
    }
    mock.formats.lock().unwrap().insert(format);
    mock.saw_logprobs.fetch_or(logprobs, Ordering::SeqCst);

    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let user = body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let repair = body["messages"].as_array().map_or(0, Vec::len) > 2;
    if system.starts_with("You write") {
        generation(&mock, &user, repair)
    } else {
        label(&mock, &user, repair, logprobs)
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap() + start.len();
    let to = text[from..].find(end).unwrap() + from;
    &text[from..to]
}

fn generation(mock: &Mock, user: &str, repair: bool) -> Response {
    let b = &mock.behaviour;
    let intent = between(user, "for the intent `", "`").to_string();
    let count: usize = between(user, "exactly ", " strings").parse().unwrap();
    let k = mock.generations.fetch_add(1, Ordering::SeqCst) + 1;
    if !repair && b.broken_generation_every > 0 && k.is_multiple_of(b.broken_generation_every) {
        return answer("{\"messages\": [\"half a mess", 40, None);
    }
    let mut last = mock.last_generation.lock().unwrap();
    let messages: Vec<String> =
        if b.repeat_every > 0 && k.is_multiple_of(b.repeat_every) && !last.is_empty() {
            last.clone()
        } else {
            (0..count)
                .map(|_| {
                    format!(
                        "{intent} message number {}",
                        mock.generated.fetch_add(1, Ordering::SeqCst)
                    )
                })
                .collect()
        };
    *last = messages.clone();
    answer(
        &json!({ "messages": messages }).to_string(),
        30 * count as u64,
        None,
    )
}

fn label(mock: &Mock, user: &str, repair: bool, logprobs: bool) -> Response {
    let b = &mock.behaviour;
    let text = between(user, "<<<\n", "\n>>>");
    mock.labels.fetch_add(1, Ordering::SeqCst);
    // Messages are numbered: every n-th gets a foreign intent, and every second of those keeps
    // it after the repair request (such messages are dropped).
    let number: usize = text.rsplit(' ').next().unwrap().parse().unwrap_or(1);
    let every = b.foreign_intent_every;
    let foreign =
        every > 0 && number.is_multiple_of(every) && (!repair || number.is_multiple_of(2 * every));
    let intent = if foreign {
        "complaint"
    } else {
        text.split(' ').next().unwrap()
    };
    let content =
        format!("{{\"intent\": \"{intent}\", \"confidence\": 0.9, \"reason\": \"says {intent}\"}}");
    let tokens = logprobs.then(|| {
        let top = |first: &str| {
            json!([
                {"token": first, "logprob": (0.8f64).ln()},
                {"token": "other", "logprob": (0.15f64).ln()},
                {"token": "zzz", "logprob": (0.01f64).ln()},
            ])
        };
        json!([
            {"token": "{\"intent\": \"", "logprob": 0.0, "top_logprobs": []},
            {"token": intent, "logprob": (0.8f64).ln(), "top_logprobs": top(intent)},
            {"token": &content[12 + intent.len()..], "logprob": 0.0, "top_logprobs": []},
        ])
    });
    let content = if b.fenced {
        format!("```json\n{content}\n```")
    } else {
        content
    };
    answer(&content, 20, tokens)
}

fn answer(content: &str, completion_tokens: u64, tokens: Option<Value>) -> Response {
    let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"});
    if let Some(tokens) = tokens {
        choice["logprobs"] = json!({ "content": tokens });
    }
    Json(json!({
        "id": "x", "object": "chat.completion", "model": "mock",
        "choices": [choice],
        "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens},
    }))
    .into_response()
}

const TASK: &str = r#"
name = "shop"
language = "en"
catch_all = "other"

[[intents]]
name = "refund"
description = "The customer wants money back."
examples = ["I want my money back"]

[[intents]]
name = "shipping"
description = "Where a parcel is or when it arrives."
examples = ["where is my parcel"]

[[intents]]
name = "other"
description = "Anything else."
"#;

fn task() -> Task {
    Task::parse(TASK, Path::new("task.toml")).unwrap()
}

fn teacher(server: &Server) -> Arc<OpenAiTeacher> {
    let mut config = OpenAiConfig::new(server.url(), "mock-model");
    config.concurrency = 8;
    config.timeout = Duration::from_secs(1);
    config.max_retries = 4;
    config.backoff_base = Duration::from_millis(10);
    config.backoff_max = Duration::from_secs(2);
    Arc::new(OpenAiTeacher::new(config).unwrap())
}

fn options(samples: usize) -> GenerateOptions {
    let mut options = GenerateOptions::from_task(&task()).unwrap();
    options.samples = samples;
    options.per_request = 4;
    options.concurrency = 8;
    options.seed = 7;
    options
}

async fn run(
    server: &Server,
    out: &Path,
    options: &GenerateOptions,
) -> Result<prompt2lora_teacher::GenerateSummary, GenerateError> {
    generate(&task(), teacher(server), options, out, &|_| {}).await
}

/// The file holds exactly `n` valid samples, no id twice, spread evenly over requested intents.
fn assert_exactly(out: &Path, n: usize) -> Vec<prompt2lora_core::Sample> {
    let intents = task().intent_names();
    let report = read_samples(
        out,
        &SampleRules {
            intents: Some(&intents),
            max_chars: 512,
        },
    )
    .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let samples = report.records;
    assert_eq!(samples.len(), n);
    let ids: HashSet<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), n, "duplicate ids");
    let texts: HashSet<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts.len(), n, "duplicate texts");
    for (i, name) in intents.iter().enumerate() {
        let want = n / intents.len() + usize::from(i < n % intents.len());
        let got = samples
            .iter()
            .filter(|s| s.provenance.requested_intent.as_deref() == Some(name))
            .count();
        assert_eq!(got, want, "requested intent {name}");
    }
    samples
}

#[tokio::test]
async fn success_writes_labelled_samples_with_provenance_and_cost() {
    let server = Server::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let ledger = dir.path().join("ledger.json");
    let mut options = options(30);
    options.price = Some(Price {
        prompt: 1.0,
        completion: 2.0,
    });
    options.ledger_path = Some(ledger.clone());
    let summary = run(&server, &out, &options).await.unwrap();
    assert_eq!(summary.stop, Stop::Complete);
    assert_eq!(
        (summary.total, summary.written, summary.resumed),
        (30, 30, 0)
    );

    let samples = assert_exactly(&out, 30);
    for s in &samples {
        assert_eq!(
            Some(s.intent.as_str()),
            s.provenance.requested_intent.as_deref()
        );
        assert_eq!(s.confidence, Some(0.9));
        // The mock lists the chosen intent at 0.8, `other` at 0.15 and junk at 0.01 (the floor
        // for intents it does not list).
        let p = s.label_logprob.unwrap();
        let want = if s.intent == "other" {
            0.8 / 0.82
        } else {
            0.8 / 0.96
        };
        assert!(
            (p - want).abs() < 1e-6,
            "label_logprob {p} for {}",
            s.intent
        );
        assert_eq!(s.provenance.teacher.as_deref(), Some("mock-model"));
        assert_eq!(s.provenance.source.as_deref(), Some("synthesize"));
        assert_eq!(s.provenance.temperature, Some(0.9f32 as f64));
        assert!(s.reason.as_deref().unwrap().starts_with("says"));
        // `other` has no seed examples, so its first requests have no few-shot examples.
        if s.intent != "other" {
            assert!(!s.provenance.few_shot.is_empty());
        }
    }
    assert!(server.mock.saw_logprobs.load(Ordering::SeqCst));
    assert_eq!(
        *server.mock.formats.lock().unwrap(),
        HashSet::from(["json_schema".to_string()])
    );

    // Every request answered is in the ledger, with its money.
    let requests = server.mock.requests.load(Ordering::SeqCst) as u64;
    let saved = prompt2lora_teacher::Ledger::load(&ledger).unwrap();
    // JSON keeps the float sums to their last digit or so; compare them with a tolerance.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    assert_eq!(saved.models.len(), summary.ledger.models.len());
    for (model, cost) in &summary.ledger.models {
        let read = &saved.models[model];
        let counts = |c: &ModelCost| (c.requests, c.prompt_tokens, c.completion_tokens, c.price);
        assert_eq!(counts(read), counts(cost));
        let money_and_time = close(read.usd, cost.usd) && close(read.seconds, cost.seconds);
        assert!(money_and_time, "{read:?}");
    }
    let cost = &saved.models["mock-model"];
    assert_eq!(cost.requests, requests);
    let expected = (cost.prompt_tokens as f64 + 2.0 * cost.completion_tokens as f64) / 1e6;
    assert!((cost.usd - expected).abs() < 1e-12);
    assert_eq!(cost.prompt_tokens, 100 * requests);

    // Rerunning the finished command changes nothing and asks nothing.
    let again = run(&server, &out, &options).await.unwrap();
    assert_eq!((again.written, again.resumed), (0, 30));
    assert_eq!(server.mock.requests.load(Ordering::SeqCst) as u64, requests);
    assert_exactly(&out, 30);
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_servers_delay() {
    let server = Server::start(Behaviour {
        rate_limited: vec![2, 3],
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    run(&server, &out, &options(12)).await.unwrap();
    assert_exactly(&out, 12);
    // No request came in the second after the first 429 (every slot waited).
    let first = server.mock.rate_limited_at.lock().unwrap()[0];
    let after = server.mock.after_rate_limit.lock().unwrap();
    let retried = after
        .iter()
        .filter(|t| t.duration_since(first) >= Duration::from_millis(950))
        .count();
    assert!(
        retried >= 2,
        "the rate-limited requests were not retried after Retry-After"
    );
}

#[tokio::test]
async fn server_errors_and_garbage_bodies_are_retried() {
    let behaviour = Behaviour {
        error_every: 4,
        garbage: vec![3, 9, 10],
        ..Behaviour::default()
    };
    let server = Server::start(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    run(&server, &out, &options(20)).await.unwrap();
    assert_exactly(&out, 20);
}

#[tokio::test]
async fn a_hung_request_times_out_and_is_retried() {
    let server = Server::start(Behaviour {
        hang: vec![2, 5],
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    run(&server, &out, &options(9)).await.unwrap();
    assert_exactly(&out, 9);
}

#[tokio::test]
async fn malformed_answers_are_repaired_or_dropped() {
    let behaviour = Behaviour {
        broken_generation_every: 3,
        fenced: true,
        repeat_every: 4,
        ..Behaviour::default()
    };
    let server = Server::start(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let summary = run(&server, &out, &options(24)).await.unwrap();
    assert_exactly(&out, 24);
    assert!(summary.dropped.duplicates > 0, "{:?}", summary.dropped);
}

#[tokio::test]
async fn intents_outside_the_task_are_repaired_or_dropped() {
    let server = Server::start(Behaviour {
        foreign_intent_every: 3,
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let summary = run(&server, &out, &options(21)).await.unwrap();
    assert_exactly(&out, 21);
    assert!(summary.dropped.unusable_labels > 0, "{:?}", summary.dropped);
}

#[tokio::test]
async fn refused_structured_output_and_logprobs_fall_back() {
    let behaviour = Behaviour {
        refuse_json_schema: true,
        refuse_logprobs: true,
        ..Behaviour::default()
    };
    let server = Server::start(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    run(&server, &out, &options(9)).await.unwrap();
    let samples = assert_exactly(&out, 9);
    assert!(
        samples
            .iter()
            .all(|s| s.label_logprob.is_none() && s.confidence == Some(0.9))
    );
    assert!(server.mock.formats.lock().unwrap().contains("json_object"));
}

#[tokio::test]
async fn a_server_dying_mid_run_then_a_rerun_completes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let options = options(30);
    {
        let server = Server::start(Behaviour {
            die_on: Some(25),
            ..Behaviour::default()
        });
        let error = run(&server, &out, &options).await.unwrap_err();
        assert!(matches!(error, GenerateError::Teacher(_)), "{error}");
    }
    let partial = read_samples(&out, &SampleRules::default())
        .unwrap()
        .records
        .len();
    assert!(
        partial > 0 && partial < 30,
        "{partial} samples after the crash"
    );

    // A kill -9 during a write leaves a torn record: the rerun cuts it off and redoes it.
    let mut bytes = fs_err::read(&out).unwrap();
    bytes.extend_from_slice(b"{\"id\":\"abc\",\"text\":\"refund mess");
    fs_err::write(&out, bytes).unwrap();

    let server = Server::start(Behaviour::default());
    let summary = run(&server, &out, &options).await.unwrap();
    assert_eq!(summary.resumed, partial);
    assert_eq!(summary.written, 30 - partial);
    assert_exactly(&out, 30);
}

#[tokio::test]
async fn the_budget_stops_cleanly_and_a_larger_one_continues() {
    let server = Server::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let mut options = options(30);
    options.ledger_path = Some(dir.path().join("ledger.json"));
    options.concurrency = 1;
    // At $10,000 per million tokens a generation request (100 + 120 tokens) costs $2.2 and a
    // label (100 + 20) $1.2: one job of four samples costs $7, so a second would pass $10.
    options.price = Some(Price {
        prompt: 10_000.0,
        completion: 10_000.0,
    });
    options.budget_usd = Some(10.0);
    let summary = run(&server, &out, &options).await.unwrap();
    let Stop::Budget { spent_usd } = summary.stop else {
        panic!("{:?}", summary.stop)
    };
    assert!((spent_usd - 7.0).abs() < 1e-9, "{spent_usd}");
    assert_eq!(summary.total, 4);

    // The ledger remembers: the same budget does not buy a second job.
    let summary = run(&server, &out, &options).await.unwrap();
    assert!(matches!(summary.stop, Stop::Budget { .. }) && summary.written == 0);

    options.budget_usd = None;
    options.concurrency = 8;
    let summary = run(&server, &out, &options).await.unwrap();
    assert_eq!(summary.resumed, 4);
    assert!((summary.earlier_usd - 7.0).abs() < 1e-9);
    assert_exactly(&out, 30);
}

#[tokio::test]
async fn label_mode_labels_each_message_once() {
    let server = Server::start(Behaviour {
        error_every: 5,
        ..Behaviour::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.txt");
    let lines: Vec<String> = (0..12).map(|i| format!("shipping question {i}")).collect();
    fs_err::write(
        &input,
        format!("{}\nshipping question 3\n", lines.join("\n")),
    )
    .unwrap();
    let out = dir.path().join("labelled.jsonl");
    let mut options = options(usize::MAX);
    options.label_input = Some(input);
    let summary = run(&server, &out, &options).await.unwrap();
    assert_eq!(summary.total, 12);
    let samples = read_samples(&out, &SampleRules::default()).unwrap().records;
    assert_eq!(samples.len(), 12);
    assert!(
        samples
            .iter()
            .all(|s| s.intent == "shipping" && s.provenance.source.as_deref() == Some("label"))
    );
    assert_eq!(
        samples.iter().map(|s| &s.id).collect::<HashSet<_>>().len(),
        12
    );
}

#[tokio::test]
async fn label_text_reports_its_signals_and_votes() {
    let server = Server::start(Behaviour::default());
    let teacher = teacher(&server);
    let options = LabelOptions {
        self_consistency: 3,
        ..LabelOptions::default()
    };
    let label = label_text(
        teacher.as_ref(),
        &task(),
        "refund for my order please",
        &options,
    )
    .await
    .unwrap();
    assert_eq!(label.intent, "refund");
    assert_eq!(label.agreement, Some(1.0));
    assert_eq!(label.requests, 4);
    assert_eq!(label.usage.prompt_tokens, 400);
    assert!(label.label_logprob.is_some());
}
