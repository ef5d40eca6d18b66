//! `prompt2lora serve` end to end: the real binary on a loopback port with an adapter trained in
//! the test from a tiny random model; answers, auth from the environment and SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use prompt2lora_core::Task;
use prompt2lora_encoder::fixtures::{TOY_TASK, TinySize, toy_samples, write_tiny_model};
use prompt2lora_encoder::train::{Silent, TrainOptions, train};

const BIN: &str = env!("CARGO_BIN_EXE_prompt2lora");

/// A trained toy adapter (weather, music, booking), shared by the tests of this file.
fn adapter() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        write_tiny_model(&model, TinySize::default(), 7).unwrap();
        let source = format!(
            r#"
{TOY_TASK}[train]
student = "{}"
rank = "4"
epochs = 4
batch_size = 16
learning_rate = 0.005
max_length = 16
validation_fraction = 0.2
patience = 0
save_steps = 0
"#,
            model.display()
        );
        let task = Task::parse(&source, Path::new("task.toml")).unwrap();
        let out = dir.path().join("run").join("adapter");
        let options = TrainOptions {
            out_dir: out.clone(),
            checkpoint_dir: None,
            resume: false,
            merge: false,
            stop: None,
            validation: None,
            observer: &mut Silent,
        };
        train(&task, &toy_samples(40, 0.0, 1), options).unwrap();
        (dir, out)
    })
    .1
}

/// Starts the server on a free port; returns it and its address, read from its log.
fn start(extra: &[&str], token: Option<&str>) -> (Child, String) {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(format!("toy={}", adapter().display()))
        .args(extra);
    command
        .env_remove("PROMPT2LORA_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("PROMPT2LORA_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break None;
        }
        if let Some(rest) = line.split("on http://").nth(1) {
            break Some(rest.split_whitespace().next().unwrap().to_string());
        }
    };
    let Some(addr) = addr else {
        let status = child.wait().unwrap();
        panic!("the server exited before listening: {status}");
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}

/// One HTTP/1.1 request; returns the status code and the body.
fn http(addr: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn terminate(mut child: Child) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap().code().expect("exited, not killed")
}

#[test]
fn classifies_over_http_and_stops_on_sigterm() {
    let (child, addr) = start(&[], None);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/classify",
        r#"{"texts": ["play a jazz song", "rain today"]}"#,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["model"], "toy");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 2);
    let (status, body) = http(&addr, "POST", "/v1/classify", "{oops", None);
    assert_eq!(status, 400);
    assert!(body.contains("bad_json"), "{body}");
    let (status, body) = http(&addr, "GET", "/metrics", "", None);
    assert_eq!(status, 200);
    assert!(body.contains("prompt2lora_http_requests_total"), "{body}");
    assert_eq!(terminate(child), 0);
}

#[test]
fn token_from_the_environment_is_required() {
    let (child, addr) = start(&[], Some("t0ken"));
    let body = r#"{"text": "book a table"}"#;
    assert_eq!(http(&addr, "POST", "/v1/classify", body, None).0, 401);
    assert_eq!(
        http(&addr, "POST", "/v1/classify", body, Some("nope")).0,
        401
    );
    assert_eq!(
        http(&addr, "POST", "/v1/classify", body, Some("t0ken")).0,
        200
    );
    assert_eq!(http(&addr, "GET", "/healthz", "", None).0, 200);
    assert_eq!(terminate(child), 0);
}

#[test]
fn a_named_token_variable_must_be_set() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token-env",
            "PROMPT2LORA_TEST_UNSET_TOKEN",
        ])
        .arg(adapter())
        .env_remove("PROMPT2LORA_TEST_UNSET_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("PROMPT2LORA_TEST_UNSET_TOKEN"), "{stderr}");
}
