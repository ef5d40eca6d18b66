//! `prompt2lora run` through the real binary: the whole pipeline and the closed loop, with a
//! local OpenAI-compatible teacher that the test starts and a tiny random student, so it runs
//! in seconds. The teacher writes messages of a requested intent that often carry the words of
//! another intent, so the student stays imperfect and later rounds have weak intents to target.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

mod common;

use axum::Json;
use axum::extract::State;
use prompt2lora_encoder::fixtures::{TOY_INTENTS, TOY_TASK, TinySize, write_tiny_model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Default)]
struct Teacher {
    /// The intent each message was written for: the labels the mock gives.
    written_for: Mutex<HashMap<String, String>>,
    /// Generation prompts that asked for contrast with another intent.
    contrast_prompts: Mutex<Vec<String>>,
    rng: Mutex<Option<StdRng>>,
}

async fn handle(State(teacher): State<Arc<Teacher>>, Json(body): Json<Value>) -> Json<Value> {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let content = if system.starts_with("You write") {
        let intent = between(user, "for the intent `", "`").to_string();
        let n: usize = between(user, "exactly ", " strings").parse().unwrap();
        if user.contains("mistakes messages of") {
            teacher
                .contrast_prompts
                .lock()
                .unwrap()
                .push(intent.clone());
        }
        let messages: Vec<String> = (0..n).map(|_| teacher.write(&intent)).collect();
        json!({ "messages": messages }).to_string()
    } else {
        let text = between(user, "<<<\n", "\n>>>");
        let written = teacher.written_for.lock().unwrap();
        // Every message the mock is asked about is one it wrote.
        let intent = written
            .get(text)
            .cloned()
            .unwrap_or_else(|| "weather".into());
        json!({"intent": intent, "confidence": 0.9, "reason": "r"}).to_string()
    };
    Json(json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
    }))
}

impl Teacher {
    /// A message for `intent`: its own words, but a third of the time another intent's.
    fn write(&self, intent: &str) -> String {
        let mut rng = self.rng.lock().unwrap();
        let rng = rng.get_or_insert_with(|| StdRng::seed_from_u64(7));
        let own = TOY_INTENTS
            .iter()
            .position(|(name, _)| *name == intent)
            .unwrap();
        let source = if rng.random_bool(0.35) {
            (own + 1) % TOY_INTENTS.len()
        } else {
            own
        };
        let words = TOY_INTENTS[source].1;
        let text: Vec<&str> = (0..rng.random_range(2..=5))
            .map(|_| words[rng.random_range(0..words.len())])
            .collect();
        let text = text.join(" ");
        self.written_for
            .lock()
            .unwrap()
            .insert(text.clone(), intent.to_string());
        text
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap() + start.len();
    &text[from..from + text[from..].find(end).unwrap()]
}

struct Server {
    addr: SocketAddr,
    teacher: Arc<Teacher>,
    _runtime: tokio::runtime::Runtime,
}

fn start() -> Server {
    let teacher = Arc::new(Teacher::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(handle))
        .with_state(teacher.clone());
    let (addr, runtime) = common::serve(app);
    Server {
        addr,
        teacher,
        _runtime: runtime,
    }
}

fn setup(dir: &Path, server: &Server) {
    write_tiny_model(&dir.join("model"), TinySize::default(), 1).unwrap();
    let model = dir.join("model").display().to_string();
    let task = format!(
        r#"{TOY_TASK}
[teacher]
model = "mock-teacher"
base_url = "http://{addr}/v1"
per_request = 5
concurrency = 2
label_method = "json"
price_prompt = 1.0
price_completion = 2.0

[filter]
embedder = "{model}"
semantic_threshold = 1.0
keep_fraction = 1.0
min_per_intent = 1

[train]
student = "{model}"
epochs = 3
batch_size = 16
learning_rate = 0.02
max_length = 16
save_steps = 0
rank = "4"
validation_fraction = 0.2
"#,
        addr = server.addr
    );
    fs_err::write(dir.join("task.toml"), task).unwrap();
}

fn prompt2lora(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .current_dir(dir)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .args(args)
        .output()
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap()
}

fn ids(path: &Path) -> Vec<String> {
    fs_err::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn closed_loop_targets_weak_intents_and_keeps_only_better_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let server = start();
    setup(dir.path(), &server);
    let args = [
        "run",
        "task.toml",
        "--out",
        "out",
        "-n",
        "90",
        "--rounds",
        "3",
        "--round-samples",
        "20",
    ];
    let out = prompt2lora(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = dir.path().join("out");

    // Round records: round 1 kept; later rounds targeted weak intents, each against the
    // intent it was confused with, and a round is kept only if it beat every kept one.
    let rounds = read_json(&run.join("rounds.json"));
    let rounds = rounds.as_array().unwrap();
    assert!(rounds.len() >= 2, "{stderr}");
    assert_eq!(rounds[0]["kept"], true);
    assert!(rounds[0]["targets"].as_array().unwrap().is_empty());
    let mut best = rounds[0]["validation_macro_f1"].as_f64().unwrap();
    for round in &rounds[1..] {
        let targets = round["targets"].as_array().unwrap();
        assert!(!targets.is_empty() && targets.len() <= 2);
        let f1 = round["validation_macro_f1"].as_f64().unwrap();
        assert_eq!(round["kept"].as_bool().unwrap(), f1 > best, "{round}");
        best = best.max(f1);
        // The round's own samples were written for its targets only, 20 in all.
        let number = round["round"].as_u64().unwrap();
        let samples =
            fs_err::read_to_string(run.join(format!("rounds/{number}/samples.jsonl"))).unwrap();
        let wanted: Vec<&str> = targets
            .iter()
            .map(|t| t["intent"].as_str().unwrap())
            .collect();
        assert_eq!(samples.lines().count(), 20);
        for line in samples.lines() {
            let sample: Value = serde_json::from_str(line).unwrap();
            let requested = sample["provenance"]["requested_intent"].as_str().unwrap();
            assert!(wanted.contains(&requested), "{requested} not in {wanted:?}");
        }
    }
    assert!(!server.teacher.contrast_prompts.lock().unwrap().is_empty());

    // The validation and test sets never reach a training set.
    let validation = ids(&run.join("validation.jsonl"));
    let test = ids(&run.join("test_synthetic.jsonl"));
    assert!(!validation.is_empty() && !test.is_empty());
    for round in rounds {
        let number = round["round"].as_u64().unwrap();
        let train = match number {
            1 => run.join("train.jsonl"),
            k => run.join(format!("rounds/{k}/train.jsonl")),
        };
        for id in ids(&train) {
            assert!(!validation.contains(&id) && !test.contains(&id));
        }
    }

    // The report shows the rounds; the final student is the best kept round's.
    let report = fs_err::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("Rounds") && report.contains("Validation macro-F1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kept_last = rounds.iter().rev().find(|r| r["kept"] == true).unwrap();
    let adapter = kept_last["adapter"].as_str().unwrap();
    assert!(stdout.contains(&format!("adapter: {adapter}")), "{stdout}");

    // A rerun finds every stage up to date and changes nothing.
    let before = fs_err::read_to_string(run.join("rounds.json")).unwrap();
    let again = prompt2lora(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("train.r2: up to date, skipped"), "{stderr}");
    assert!(!stderr.contains("train: starting"), "{stderr}");
    assert_eq!(
        fs_err::read_to_string(run.join("rounds.json")).unwrap(),
        before
    );
}

#[test]
fn rounds_need_a_validation_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = start();
    setup(dir.path(), &server);
    let task = fs_err::read_to_string(dir.path().join("task.toml")).unwrap();
    let task = task.replace("validation_fraction = 0.2", "validation_fraction = 0.0");
    fs_err::write(dir.path().join("task.toml"), task).unwrap();
    let out = prompt2lora(dir.path(), &["run", "task.toml", "--rounds", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("train.validation_fraction is 0"),
        "{stderr}"
    );
}

#[test]
fn label_mode_labels_the_given_messages_and_runs_to_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let server = start();
    setup(dir.path(), &server);
    // Real-looking unlabelled messages: the mock knows which intent each was written for.
    let mut messages: Vec<String> = (0..60)
        .map(|i| server.teacher.write(TOY_INTENTS[i % 3].0))
        .collect();
    messages.sort();
    messages.dedup();
    fs_err::write(dir.path().join("inbox.txt"), messages.join("\n") + "\n").unwrap();

    let args = ["run", "task.toml", "--out", "out", "--label", "inbox.txt"];
    let out = prompt2lora(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let run = dir.path().join("out");

    // Every message labelled once, as a labelled (not generated) sample.
    let samples = fs_err::read_to_string(run.join("samples.jsonl")).unwrap();
    let mut texts: Vec<String> = samples
        .lines()
        .map(|line| {
            let sample: Value = serde_json::from_str(line).unwrap();
            assert_eq!(sample["provenance"]["source"], "label", "{line}");
            assert!(sample["provenance"]["requested_intent"].is_null(), "{line}");
            sample["text"].as_str().unwrap().to_string()
        })
        .collect();
    texts.sort();
    assert_eq!(texts, messages);
    assert!(run.join("report.html").is_file());

    // A rerun labels nothing twice; a missing inbox is named.
    let again = prompt2lora(dir.path(), &args);
    assert!(again.status.success());
    assert_eq!(
        fs_err::read_to_string(run.join("samples.jsonl")).unwrap(),
        samples
    );
    let missing = prompt2lora(dir.path(), &["run", "task.toml", "--label", "nope.txt"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--label nope.txt: no such file"));
}
