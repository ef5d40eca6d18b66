//! Training end to end on a tiny random model: learning, resume, adapter layout and loading.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use prompt2lora_core::{Classifier, Task};

use super::log::StepRecord;
use super::{Observer, Silent, TrainOptions, TrainSummary, train};
use crate::AdapterClassifier;
use crate::fixtures::{TOY_TASK, TinySize, toy_samples, write_tiny_model};

fn task(model: &Path, extra: &str) -> Task {
    let mut train: Vec<(String, String)> = [
        ("student", format!("\"{}\"", model.display())),
        ("rank", "\"4\"".into()),
        ("epochs", "6".into()),
        ("batch_size", "16".into()),
        ("learning_rate", "0.02".into()),
        ("max_length", "16".into()),
        ("validation_fraction", "0.2".into()),
        ("patience", "0".into()),
        ("min_steps", "0".into()),
        ("save_steps", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once('=').unwrap();
        let key = key.trim().to_string();
        train.retain(|(k, _)| *k != key);
        train.push((key, value.trim().to_string()));
    }
    let train: String = train.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let source = format!(
        r#"
{TOY_TASK}
[train]
{train}
"#
    );
    Task::parse(&source, Path::new("task.toml")).unwrap()
}

fn run(
    task: &Task,
    out: &Path,
    resume: bool,
    stop: Option<&AtomicBool>,
    observer: &mut dyn Observer,
) -> crate::Result<TrainSummary> {
    let samples = toy_samples(60, 0.0, 1);
    let options = TrainOptions {
        out_dir: out.to_path_buf(),
        checkpoint_dir: None,
        resume,
        merge: false,
        stop,
        validation: None,
        observer,
    };
    train(task, &samples, options)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn small_data_sets_train_for_the_minimum_of_updates() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    // 144 training examples in batches of 16 make 9 updates an epoch: one epoch becomes six
    // (54 updates), and a patience of one epoch must not stop the run before then.
    let task = task(
        &dir.path().join("model"),
        "epochs = 1\nmin_steps = 50\npatience = 1",
    );
    let summary = run(&task, &dir.path().join("adapter"), false, None, &mut Silent).unwrap();
    assert_eq!(summary.train_examples, 144);
    assert_eq!(summary.epochs_run, 6, "{summary:?}");
    assert_eq!(summary.steps, 54);
}

#[test]
fn loss_falls_and_validation_f1_rises() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    let task = task(
        &dir.path().join("model"),
        "epochs = 10\nlearning_rate = 0.05",
    );
    let summary = run(&task, &dir.path().join("adapter"), false, None, &mut Silent).unwrap();

    let log = fs_err::read_to_string(&summary.log_path).unwrap();
    let epochs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 10);
    let first = epochs[0]["train_loss"].as_f64().unwrap();
    let last = epochs[9]["train_loss"].as_f64().unwrap();
    assert!(last < first * 0.5, "train loss {first} -> {last}");
    let f1 = |e: &serde_json::Value| e["validation_macro_f1"].as_f64().unwrap();
    assert!(
        f1(&epochs[9]) > f1(&epochs[0]) + 0.3,
        "validation macro-F1 must rise"
    );
    assert!(summary.validation_macro_f1.unwrap() >= 0.75, "{summary:?}");
    assert!(
        fs_err::read_to_string(&summary.plot_path)
            .unwrap()
            .contains("<svg")
    );

    // The adapters themselves trained: every B left zero.
    let saved = tensors(&summary.adapter_dir.join("adapter_model.safetensors"));
    for (name, t) in &saved {
        if name.contains("lora_B") {
            let norm = t
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name} is still zero");
        }
    }
}

#[test]
fn adapter_has_peft_layout_and_reloads_to_the_same_predictions() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    let task = task(&dir.path().join("model"), "");
    let out = dir.path().join("adapter");
    let samples = toy_samples(60, 0.0, 1);
    let options = TrainOptions {
        out_dir: out.clone(),
        checkpoint_dir: None,
        resume: false,
        merge: true,
        stop: None,
        validation: None,
        observer: &mut Silent,
    };
    let summary = train(&task, &samples, options).unwrap();

    let config: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["query", "value"])
    );
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    assert!(config["lora_dropout"].is_number());
    assert!(config["base_model_name_or_path"].is_string());

    let saved = tensors(&out.join("adapter_model.safetensors"));
    let mut keys: Vec<&String> = saved.keys().collect();
    keys.sort();
    assert!(
        saved.contains_key(
            "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"
        ),
        "{keys:?}"
    );
    assert!(
        saved.contains_key(
            "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"
        )
    );
    assert!(
        saved.contains_key("base_model.model.classifier.weight"),
        "the head must be saved"
    );
    assert!(saved.contains_key("base_model.model.classifier.bias"));
    assert_eq!(saved.len(), 2 * 2 * 2 + 2);
    assert_eq!(
        saved["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
            .replace("model.encoder", "model.bert.encoder")
            .as_str()]
        .dims(),
        &[4, 32]
    );
    assert!(out.join("labels.json").is_file() && out.join("task.toml").is_file());

    let classifier = AdapterClassifier::load(&out).unwrap();
    assert_eq!(classifier.labels(), ["weather", "music", "booking"]);
    let texts = [
        "play the jazz album",
        "is it cold and snow tonight",
        "reserve seats for dinner",
    ];
    let predictions = classifier.predict(&texts, 2).unwrap();
    let intents: Vec<&str> = predictions.iter().map(|p| p.intent.as_str()).collect();
    assert_eq!(intents, ["music", "weather", "booking"]);

    let merged = AdapterClassifier::load(summary.merged_dir.as_ref().unwrap()).unwrap();
    let a = classifier.probabilities(&texts).unwrap();
    let b = merged.probabilities(&texts).unwrap();
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

/// Sets the stop flag once training reaches a step, as Ctrl-C would.
struct StopAt<'a> {
    step: usize,
    flag: &'a AtomicBool,
}

impl Observer for StopAt<'_> {
    fn step(&mut self, record: &StepRecord) {
        if record.step == self.step {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

#[test]
fn resume_after_interruption_gives_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    let task = task(
        &dir.path().join("model"),
        "save_steps = 5\nkeep_checkpoints = 2\nlora_dropout = 0.2\npatience = 2",
    );

    let whole = dir.path().join("whole").join("adapter");
    run(&task, &whole, false, None, &mut Silent).unwrap();

    let parts = dir.path().join("parts").join("adapter");
    let flag = AtomicBool::new(false);
    let stopped = run(
        &task,
        &parts,
        false,
        Some(&flag),
        &mut StopAt {
            step: 13,
            flag: &flag,
        },
    );
    match stopped {
        Err(crate::Error::Interrupted(path)) => assert!(path.ends_with("step-0000013"), "{path:?}"),
        other => panic!("expected an interruption, got {other:?}"),
    }
    let checkpoints =
        super::checkpoint::list(&dir.path().join("parts").join("checkpoints")).unwrap();
    assert_eq!(
        checkpoints.len(),
        2,
        "only the newest checkpoints are kept: {checkpoints:?}"
    );
    let flag = AtomicBool::new(false);
    let summary = run(&task, &parts, true, Some(&flag), &mut Silent).unwrap();
    assert!(summary.resumed_from.is_some());

    let a = tensors(&whole.join("adapter_model.safetensors"));
    let b = tensors(&parts.join("adapter_model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, x) in &a {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(x, y, "{name} differs");
    }
    let log_a = fs_err::read_to_string(whole.join("train_log.jsonl")).unwrap();
    let log_b = fs_err::read_to_string(parts.join("train_log.jsonl")).unwrap();
    assert_eq!(log_a.lines().count(), log_b.lines().count());
}

#[test]
fn resume_refuses_a_checkpoint_of_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    let out = dir.path().join("adapter");
    let task_a = task(&dir.path().join("model"), "save_steps = 5\nepochs = 1");
    run(&task_a, &out, false, None, &mut Silent).unwrap();
    let task_b = task(
        &dir.path().join("model"),
        "save_steps = 5\nepochs = 1\nseed = 9",
    );
    let e = run(&task_b, &out, true, None, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other settings or data"), "{e}");
}

#[test]
fn auto_rank_reads_the_data_confidence() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), TinySize::default(), 1).unwrap();
    let task = task(&dir.path().join("model"), "").clone();
    let mut task = task;
    task.train.rank = "auto".into();
    task.train.epochs = 1;
    let noisy = toy_samples(20, 0.6, 2);
    let options = TrainOptions {
        out_dir: dir.path().join("a"),
        checkpoint_dir: None,
        resume: false,
        merge: false,
        stop: None,
        validation: None,
        observer: &mut Silent,
    };
    let summary = train(&task, &noisy, options).unwrap();
    assert_eq!(summary.rank.method, "auto");
    assert!(summary.rank.rank >= 16, "{:?}", summary.rank);
    assert!(summary.rank.reason.contains("mean combined confidence"));
}
