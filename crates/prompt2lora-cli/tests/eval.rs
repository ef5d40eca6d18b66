//! `prompt2lora eval` end to end on an adapter trained in the test from a tiny random model:
//! tables and files, label mapping, and the error for test labels the adapter does not know.

use std::path::{Path, PathBuf};
use std::process::Command;
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

fn write_test_set(path: &Path, rename: &[(&str, &str)]) {
    let mut lines = String::new();
    for sample in toy_samples(6, 0.0, 99) {
        let label = rename
            .iter()
            .find(|(from, _)| *from == sample.intent)
            .map_or(sample.intent.as_str(), |(_, to)| to);
        lines.push_str(&serde_json::json!({ "text": sample.text, "label": label }).to_string());
        lines.push('\n');
    }
    fs_err::write(path, lines).unwrap();
}

fn eval(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN).arg("eval").args(args).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        output.status.code().unwrap(),
        text(output.stdout),
        text(output.stderr),
    )
}

#[test]
fn writes_metrics_and_prints_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    write_test_set(&data, &[]);
    let out = dir.path().join("out");
    let (code, stdout, stderr) = eval(&[
        adapter().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("student: accuracy"), "{stdout}");
    assert!(stdout.contains("gold \\ predicted"), "{stdout}");
    for intent in ["weather", "music", "booking"] {
        assert!(stdout.contains(intent), "{stdout}");
    }

    let metrics: serde_json::Value =
        serde_json::from_slice(&fs_err::read(out.join("metrics.json")).unwrap()).unwrap();
    let student = &metrics["student"];
    assert_eq!(student["support"], 18);
    assert_eq!(
        student["labels"],
        serde_json::json!(["weather", "music", "booking"])
    );
    let accuracy = student["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    let matrix: u64 = student["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(matrix, 18);
    assert!(student["calibration"]["ece"].is_number());
    assert!(metrics["teacher"].is_null());
    assert!(
        fs_err::read_to_string(out.join("confusion.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    let predictions = fs_err::read_to_string(out.join("predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 18);
}

#[test]
fn unknown_test_labels_are_named_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    write_test_set(
        &data,
        &[("weather", "forecast_question"), ("music", "play_music")],
    );
    let (code, _, stderr) = eval(&[
        adapter().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("2 labels of the test set are not intents of the adapter"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`forecast_question` (6 messages), `play_music` (6 messages)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint:") && stderr.contains("label_map"),
        "{stderr}"
    );
    assert!(!dir.path().join("metrics.json").exists());
}

#[test]
fn label_map_of_the_task_file_maps_test_labels() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    write_test_set(&data, &[("weather", "forecast_question")]);
    let task = format!("{TOY_TASK}[eval]\nlabel_map = {{ forecast_question = \"weather\" }}\n");
    let task_path = dir.path().join("task.toml");
    fs_err::write(&task_path, task).unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) = eval(&[
        adapter().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        task_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let first = fs_err::read_to_string(out.join("predictions.jsonl")).unwrap();
    assert!(
        first.contains("\"label\":\"forecast_question\",\"gold\":\"weather\""),
        "{first}"
    );
}

#[test]
fn a_bad_test_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    fs_err::write(
        &data,
        "{\"text\": \"rain today\", \"label\": \"weather\"}\n{\"text\": \"x\"}\n",
    )
    .unwrap();
    let (code, _, stderr) = eval(&[
        adapter().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("test.jsonl:2: missing field `intent`"),
        "{stderr}"
    );
}

/// An OpenAI-compatible teacher on loopback that labels the toy messages by their keywords and
/// counts its requests.
fn mock_teacher() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/chat/completions",
                axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let prompt = body["messages"].as_array().unwrap().last().unwrap()["content"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        let message = prompt.split("<<<").nth(1).and_then(|m| m.split(">>>").next()).unwrap_or("");
                        let intent = toy_intent(message);
                        let content = serde_json::json!({ "intent": intent, "confidence": 0.9, "reason": "keywords" });
                        axum::Json(serde_json::json!({
                            "id": "chatcmpl-1", "object": "chat.completion", "model": "mock",
                            "choices": [{ "index": 0, "finish_reason": "stop",
                                          "message": { "role": "assistant", "content": content.to_string() } }],
                            "usage": { "prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110 }
                        }))
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            sender.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = receiver.recv().unwrap();
    (format!("http://{addr}/v1"), requests)
}

fn toy_intent(message: &str) -> &'static str {
    prompt2lora_encoder::fixtures::TOY_INTENTS
        .iter()
        .find(|(_, words)| message.split_whitespace().any(|w| words.contains(&w)))
        .map_or("booking", |(intent, _)| intent)
}

#[test]
fn teacher_is_scored_side_by_side_and_its_labels_are_cached() {
    use std::sync::atomic::Ordering;
    let (url, requests) = mock_teacher();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("test.jsonl");
    write_test_set(&data, &[]);
    let out = dir.path().join("out");
    let task = adapter().join("task.toml");
    let args = [
        adapter().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        task.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--teacher",
        "--teacher-model",
        "mock",
        "--base-url",
        url.as_str(),
    ];
    let (code, stdout, stderr) = eval(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("teacher (mock): accuracy 1.000"),
        "{stdout}"
    );
    assert!(stdout.contains("student - teacher: accuracy"), "{stdout}");
    assert!(stdout.contains("teacher F1"), "{stdout}");
    let asked = requests.load(Ordering::SeqCst);
    assert!(asked >= 18, "{asked}");

    let metrics: serde_json::Value =
        serde_json::from_slice(&fs_err::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["teacher"]["model"], "mock");
    assert_eq!(metrics["teacher"]["metrics"]["accuracy"], 1.0);
    assert!(metrics["agreement"].is_number());
    let cached = fs_err::read_to_string(out.join("teacher_labels.jsonl")).unwrap();
    assert_eq!(cached.lines().count(), 18);
    assert!(out.join("confusion_teacher.svg").is_file());
    let ledger = fs_err::read_to_string(out.join("ledger.json")).unwrap();
    assert!(ledger.contains("mock"), "{ledger}");

    // A second run finds every label in the cache and asks the teacher nothing.
    let (code, _, stderr) = eval(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(requests.load(Ordering::SeqCst), asked);
}
