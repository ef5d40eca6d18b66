//! `prompt2lora filter` end to end: files in, clean data, rejects, report and plots out.

use std::path::Path;
use std::process::{Command, Output};

const TASK: &str = r#"
name = "shop"
language = "zh"
catch_all = "other"

[[intents]]
name = "where_is_order"
description = "The customer asks where a parcel is."

[[intents]]
name = "return"
description = "The customer wants to send an item back."

[[intents]]
name = "other"
description = "Anything else."

[filter]
min_per_intent = 1
"#;

/// Ten lines: one unreadable, one blank text, one unknown intent, one exact duplicate, one
/// near duplicate (one character apart), one drifted; the rest are distinct.
const SAMPLES: &str = r#"{"text": "我的快递到哪里了，能帮我查一下吗", "intent": "where_is_order", "label_logprob": 0.9}
{"text": "我的快递到哪里了，能帮我查一下嘛", "intent": "where_is_order", "label_logprob": 0.6}
{"text": "Where is my parcel?", "intent": "where_is_order", "label_logprob": 0.8}
{"text": "where is my PARCEL", "intent": "where_is_order", "label_logprob": 0.7}
{"text": "我要退掉昨天买的鞋子", "intent": "return", "label_logprob": 0.95}
{"text": "   ", "intent": "return"}
{"text": "这个怎么开发票", "intent": "invoice"}
{"text": "我想查一下物流", "intent": "where_is_order", "label_logprob": 0.9, "provenance": {"requested_intent": "return"}}
{"text": "你好", "intent": "other"}
{"text": "broken
"#;

fn prompt2lora(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run prompt2lora")
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    fs_err::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("task.toml"), TASK).unwrap();
    fs_err::write(dir.path().join("samples.jsonl"), SAMPLES).unwrap();
    dir
}

#[test]
fn filter_writes_clean_data_rejects_report_and_plots() {
    let dir = setup();
    let out = prompt2lora(
        &[
            "filter",
            "samples.jsonl",
            "--task",
            "task.toml",
            "--out",
            "out/clean.jsonl",
            "--no-semantic",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("samples.jsonl:10:"),
        "the unreadable line is named: {stderr}"
    );

    let kept = lines(&dir.path().join("out/clean.jsonl"));
    let rejects = lines(&dir.path().join("out/rejects.jsonl"));
    assert_eq!(kept.len() + rejects.len(), 10, "kept + rejected = input");
    let stage_of = |text: &str| {
        rejects
            .iter()
            .find(|r| r["text"].as_str().unwrap().contains(text))
            .map(|r| r["stage"].as_str().unwrap().to_string())
    };
    assert_eq!(stage_of("broken").as_deref(), Some("read"));
    assert_eq!(stage_of("   ").as_deref(), Some("validity"));
    assert_eq!(stage_of("开发票").as_deref(), Some("validity"));
    assert_eq!(
        stage_of("where is my PARCEL").as_deref(),
        Some("exact_duplicate")
    );
    assert_eq!(stage_of("查一下嘛").as_deref(), Some("near_duplicate"));
    assert_eq!(stage_of("物流").as_deref(), Some("drift"));
    let near = rejects
        .iter()
        .find(|r| r["stage"] == "near_duplicate")
        .unwrap();
    assert!(near["duplicate_of"].is_string());

    let report: serde_json::Value = serde_json::from_str(
        &fs_err::read_to_string(dir.path().join("out/filter_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["input"], 10);
    assert_eq!(report["kept"].as_u64().unwrap() as usize, kept.len());
    let stages: Vec<&str> = report["funnel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "read",
            "validity",
            "drift",
            "exact_duplicate",
            "near_duplicate",
            "semantic_duplicate",
            "confidence"
        ]
    );
    assert!(dir.path().join("out/filter_funnel.svg").is_file());
    assert!(dir.path().join("out/confidence_histogram.svg").is_file());
    assert!(stdout.contains("near_duplicate"), "{stdout}");
    assert!(
        stdout.contains("where_is_order"),
        "histogram lines: {stdout}"
    );
}

#[test]
fn flags_override_the_task_file() {
    let dir = setup();
    let out = prompt2lora(
        &[
            "filter",
            "samples.jsonl",
            "--task",
            "task.toml",
            "--out",
            "clean.jsonl",
            "--no-semantic",
            "--drift",
            "relabel",
            "--min-confidence",
            "0.85",
            "--rejects",
            "r/rej.jsonl",
            "--report",
            "r/rep.json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rejects = lines(&dir.path().join("r/rej.jsonl"));
    assert!(rejects.iter().all(|r| r["stage"] != "drift"));
    let below: Vec<&str> = rejects
        .iter()
        .filter(|r| r["stage"] == "confidence")
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(below, ["Where is my parcel?"]);
    assert!(dir.path().join("r/rep.json").is_file());
    assert!(dir.path().join("r/filter_funnel.svg").is_file());
}

#[test]
fn bad_settings_and_missing_input_exit_1() {
    let dir = setup();
    let out = prompt2lora(
        &[
            "filter",
            "samples.jsonl",
            "--task",
            "task.toml",
            "--out",
            "c.jsonl",
            "--keep-fraction",
            "1.5",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keep_fraction"));

    let out = prompt2lora(
        &[
            "filter",
            "nope.jsonl",
            "--task",
            "task.toml",
            "--out",
            "c.jsonl",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.jsonl"));
}
