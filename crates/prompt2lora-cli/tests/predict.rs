//! `prompt2lora predict` end to end on an adapter trained in the test from a tiny random
//! model: lines and JSONL, from stdin and files, and bad lines named by file and line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

fn predict(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("predict")
        .arg(adapter())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        output.status.code().unwrap(),
        text(output.stdout),
        text(output.stderr),
    )
}

fn records(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn lines_from_stdin_become_jsonl_in_order() {
    let input: String = toy_samples(20, 0.0, 5)
        .iter()
        .map(|s| format!("{}\n", s.text))
        .collect();
    let (code, stdout, stderr) = predict(&["--top-k", "2", "--batch-size", "8"], &input);
    assert_eq!(code, 0, "{stderr}");
    let records = records(&stdout);
    assert_eq!(records.len(), 60);
    let intents = ["weather", "music", "booking"];
    for (i, (record, text)) in records.iter().zip(input.lines()).enumerate() {
        assert_eq!(record["line"], i + 1);
        assert_eq!(record["text"], text);
        assert!(
            intents.contains(&record["intent"].as_str().unwrap()),
            "{record}"
        );
        let p = record["probability"].as_f64().unwrap();
        let alternatives = record["alternatives"].as_array().unwrap();
        assert_eq!(alternatives.len(), 1);
        let q = alternatives[0]["probability"].as_f64().unwrap();
        assert!(p >= q && p <= 1.0 && q >= 0.0, "{record}");
    }
}

#[test]
fn jsonl_file_keeps_ids_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.jsonl");
    fs_err::write(&input, "{\"id\": \"a1\", \"text\": \"play a jazz song\"}\n{\"id\": 2}\n{\"id\": 3, \"text\": \"book a table tonight\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let (code, _, stderr) = predict(&[input.to_str().unwrap(), "-o", out.to_str().unwrap()], "");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("messages.jsonl:2: missing field `text`"),
        "{stderr}"
    );
    let records = records(&fs_err::read_to_string(&out).unwrap());
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0]["id"].clone(), records[1]["id"].clone()),
        (serde_json::json!("a1"), serde_json::json!(3))
    );
    assert_eq!(records[1]["line"], 3);
}
