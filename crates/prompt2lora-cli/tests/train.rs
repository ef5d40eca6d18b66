//! `prompt2lora train` end to end on a tiny random model: adapter written, bad lines reported,
//! bad flags refused.

use std::path::Path;
use std::process::Command;

use prompt2lora_encoder::fixtures::{TOY_TASK, TinySize, toy_samples, write_tiny_model};

fn setup(dir: &Path) {
    write_tiny_model(&dir.join("model"), TinySize::default(), 1).unwrap();
    let task = format!(
        r#"{TOY_TASK}
[train]
student = "{}"
batch_size = 16
learning_rate = 0.02
max_length = 16
save_steps = 0
"#,
        dir.join("model").display()
    );
    fs_err::write(dir.join("task.toml"), task).unwrap();
    let mut lines: Vec<String> = toy_samples(30, 0.0, 3)
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    lines.insert(3, r#"{"text": "sing to me", "intent": "dancing"}"#.into());
    fs_err::write(dir.join("clean.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn prompt2lora(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_writes_an_adapter_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let out = prompt2lora(
        dir.path(),
        &[
            "train",
            "clean.jsonl",
            "--task",
            "task.toml",
            "--out",
            "run/adapter",
            "--epochs",
            "2",
            "--rank",
            "4",
            "--merge",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("clean.jsonl:4: unknown intent `dancing`"),
        "{stderr}"
    );
    assert!(stderr.contains("rank 4 (fixed)"), "{stderr}");
    assert!(stderr.contains("validation macro-F1"), "{stderr}");
    let adapter = dir.path().join("run/adapter");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "labels.json",
        "task.toml",
        "train_log.jsonl",
        "loss_curve.svg",
        "train_summary.json",
        "merged/model.safetensors",
    ] {
        assert!(adapter.join(file).is_file(), "{file} missing");
    }
}

#[test]
fn train_refuses_a_bad_rank() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let out = prompt2lora(
        dir.path(),
        &[
            "train",
            "clean.jsonl",
            "--task",
            "task.toml",
            "--out",
            "a",
            "--rank",
            "many",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--rank many"), "{stderr}");
}

#[test]
fn train_fails_cleanly_on_missing_samples() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let out = prompt2lora(
        dir.path(),
        &["train", "nope.jsonl", "--task", "task.toml", "--out", "a"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.jsonl"), "{stderr}");
}
