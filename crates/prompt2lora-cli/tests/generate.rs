//! `prompt2lora generate` through the real binary, against a local OpenAI-compatible server
//! that the test starts: a run, a resumed run, the dry run, the API key's secrecy and the
//! exit codes of bad input.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const SECRET: &str = "sk-test-0123456789-secret";

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

[[intents]]
name = "other"
description = "Anything else."

[teacher]
model = "gpt-4o-mini"
per_request = 3
concurrency = 4
timeout_secs = 5
"#;

#[derive(Default)]
struct Mock {
    requests: AtomicUsize,
    counter: AtomicUsize,
    authorization: Mutex<Vec<String>>,
    refuse: bool,
    delay_ms: u64,
}

struct Server {
    addr: SocketAddr,
    mock: Arc<Mock>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(refuse: bool) -> Server {
        Server::with(Mock {
            refuse,
            ..Mock::default()
        })
    }

    fn with(mock: Mock) -> Server {
        let mock = Arc::new(mock);
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(handle))
            .with_state(mock.clone());
        let (addr, runtime) = common::serve(app);
        Server {
            addr,
            mock,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    mock.requests.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(mock.delay_ms)).await;
    if let Some(value) = headers.get("authorization") {
        mock.authorization
            .lock()
            .unwrap()
            .push(value.to_str().unwrap().to_string());
    }
    if mock.refuse {
        let error =
            json!({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}});
        return (StatusCode::UNAUTHORIZED, Json(error)).into_response();
    }
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let content = if system.starts_with("You write") {
        let intent = between(user, "for the intent `", "`");
        let n: usize = between(user, "exactly ", " strings").parse().unwrap();
        let messages: Vec<String> = (0..n)
            .map(|_| {
                format!(
                    "{intent} message {}",
                    mock.counter.fetch_add(1, Ordering::SeqCst)
                )
            })
            .collect();
        json!({ "messages": messages }).to_string()
    } else {
        let text = between(user, "<<<\n", "\n>>>");
        let intent = text.split(' ').next().unwrap();
        json!({"intent": intent, "confidence": 0.8, "reason": "r"}).to_string()
    };
    Json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 200, "completion_tokens": 50},
    }))
    .into_response()
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap() + start.len();
    &text[from..from + text[from..].find(end).unwrap()]
}

fn prompt2lora(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .args(args)
        .current_dir(dir)
        .env("OPENAI_API_KEY", SECRET)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("task.toml"), TASK).unwrap();
    dir
}

#[test]
fn generates_resumes_and_keeps_the_key_secret() {
    let server = Server::start(false);
    let dir = setup();
    let url = server.url();
    let args = [
        "generate",
        "task.toml",
        "--out",
        "out/samples.jsonl",
        "-n",
        "7",
        "--base-url",
        &url,
        "-v",
    ];
    let out = prompt2lora(&args, dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("out/samples.jsonl: 7 samples (7 new, 0 from before)"),
        "{stdout}"
    );
    assert!(stdout.contains("teacher gpt-4o-mini:"), "{stdout}");

    let samples = fs_err::read_to_string(dir.path().join("out/samples.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 7);
    let ledger = fs_err::read_to_string(dir.path().join("out/ledger.json")).unwrap();
    let ledger: Value = serde_json::from_str(&ledger).unwrap();
    let cost = &ledger["models"]["gpt-4o-mini"];
    let requests = server.mock.requests.load(Ordering::SeqCst) as u64;
    assert_eq!(cost["requests"], requests);
    // A loopback server costs nothing, whatever the model is called.
    assert_eq!(cost["usd"], 0.0);

    // The key went to the server and nowhere else.
    assert!(
        server
            .mock
            .authorization
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == &format!("Bearer {SECRET}"))
    );
    for file in ["out/samples.jsonl", "out/ledger.json"] {
        assert!(
            !fs_err::read_to_string(dir.path().join(file))
                .unwrap()
                .contains(SECRET),
            "{file}"
        );
    }
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // More samples: the rerun keeps the seven and adds two.
    let args = [
        "generate",
        "task.toml",
        "--out",
        "out/samples.jsonl",
        "-n",
        "9",
        "--base-url",
        &url,
    ];
    let out = prompt2lora(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("9 samples (2 new, 7 from before)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn dry_run_estimates_without_a_request() {
    let server = Server::start(false);
    let dir = setup();
    let url = server.url();
    let args = [
        "generate",
        "task.toml",
        "--out",
        "s.jsonl",
        "-n",
        "300",
        "--dry-run",
        "--base-url",
        "https://api.openai.com/v1",
    ];
    let out = prompt2lora(&args, dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("0 in the file, 300 to make"), "{stdout}");
    // gpt-4o-mini has a list price, so money is estimated.
    assert!(stdout.contains("money      $"), "{stdout}");
    assert!(!dir.path().join("s.jsonl").exists());

    let args = [
        "generate",
        "task.toml",
        "--out",
        "s.jsonl",
        "--dry-run",
        "--base-url",
        &url,
    ];
    assert!(prompt2lora(&args, dir.path()).status.success());
    assert_eq!(server.mock.requests.load(Ordering::SeqCst), 0);
}

#[test]
fn a_refused_key_is_bad_input_with_a_hint() {
    let server = Server::start(true);
    let dir = setup();
    let url = server.url();
    let out = prompt2lora(
        &[
            "generate",
            "task.toml",
            "--out",
            "s.jsonl",
            "-n",
            "3",
            "--base-url",
            &url,
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}

#[test]
fn bad_label_input_names_file_and_line() {
    let dir = setup();
    fs_err::write(
        dir.path().join("m.jsonl"),
        "{\"text\": \"hi\"}\n{\"body\": \"x\"}\n",
    )
    .unwrap();
    let args = [
        "generate",
        "task.toml",
        "--out",
        "s.jsonl",
        "--label",
        "m.jsonl",
        "--base-url",
        "http://127.0.0.1:9",
    ];
    let out = prompt2lora(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("m.jsonl:2: no string field `text`"),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_output_is_refused_not_overwritten() {
    let dir = setup();
    fs_err::write(
        dir.path().join("s.jsonl"),
        "{\"text\": \"hi\", \"intent\": \"nope\"}\n",
    )
    .unwrap();
    let args = [
        "generate",
        "task.toml",
        "--out",
        "s.jsonl",
        "--base-url",
        "http://127.0.0.1:9",
    ];
    let out = prompt2lora(&args, dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s.jsonl:1: unknown intent `nope`"),
        "{stderr}"
    );
}

#[test]
fn a_kill_9_mid_run_then_a_rerun_gives_exactly_the_samples() {
    let server = Server::with(Mock {
        delay_ms: 15,
        ..Mock::default()
    });
    let dir = setup();
    let url = server.url();
    let args = [
        "generate",
        "task.toml",
        "--out",
        "s.jsonl",
        "-n",
        "30",
        "--base-url",
        &url,
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .args(args)
        .current_dir(dir.path())
        .env_remove("OPENAI_BASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = dir.path().join("s.jsonl");
    let started = std::time::Instant::now();
    while fs_err::read_to_string(&path).map_or(0, |t| t.lines().count()) < 6 {
        assert!(started.elapsed().as_secs() < 60, "no samples written");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = fs_err::read_to_string(&path).unwrap().lines().count();
    assert!(before < 30, "the run finished before it could be killed");

    let out = prompt2lora(&args, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let samples = fs_err::read_to_string(&path).unwrap();
    let ids: std::collections::HashSet<String> = samples
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("every line is a record")["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(samples.lines().count(), 30);
    assert_eq!(ids.len(), 30);
}
