//! Benchmark of the train stage: trains on a labelled JSONL file, scores a test file, prints
//! examples/s, peak memory and test macro-F1 as one JSON line (see BENCHMARKS.md).
//!
//! `cargo run --release -p prompt2lora-encoder --example train_bench -- MODEL TRAIN TEST
//!  PER_INTENT RANK EPOCHS BATCH MAX_LEN THREADS OUT`

use std::path::Path;

use prompt2lora_core::jsonl::{SampleRules, read_samples};
use prompt2lora_core::{Classifier, Task};
use prompt2lora_encoder::AdapterClassifier;
use prompt2lora_encoder::train::{Silent, TrainOptions, data, train};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    prompt2lora_core::cpu::quiet_candle_workers();
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [
        model,
        train_path,
        test_path,
        per_intent,
        rank,
        epochs,
        batch,
        max_len,
        threads,
        out,
    ] = &a[..]
    else {
        return Err(
            "usage: MODEL TRAIN TEST PER_INTENT RANK EPOCHS BATCH MAX_LEN THREADS OUT".into(),
        );
    };
    let per_intent: usize = per_intent.parse()?;
    let all = read_samples(Path::new(train_path), &SampleRules::default())?.records;
    let mut labels: Vec<String> = all.iter().map(|s| s.intent.clone()).collect();
    labels.sort();
    labels.dedup();
    // The first PER_INTENT samples of each intent, in file order.
    let samples: Vec<_> = labels
        .iter()
        .flat_map(|l| all.iter().filter(move |s| s.intent == *l).take(per_intent))
        .cloned()
        .collect();
    let intents: String = labels
        .iter()
        .map(|l| format!("[[intents]]\nname = \"{l}\"\ndescription = \"{l}\"\n"))
        .collect();
    let source = format!(
        "name = \"bench\"\nlanguage = \"en\"\n{intents}\n[train]\nstudent = \"{model}\"\nrank = \"{rank}\"\nepochs = {epochs}\nbatch_size = {batch}\nmax_length = {max_len}\nthreads = {threads}\nlearning_rate = 0.001\nvalidation_fraction = 0.1\npatience = 0\nmin_steps = 0\nclass_weights = false\nsave_steps = 0\n"
    );
    let task = Task::parse(&source, Path::new("bench.toml"))?;
    let options = TrainOptions {
        out_dir: out.into(),
        checkpoint_dir: None,
        resume: false,
        merge: false,
        stop: None,
        validation: None,
        observer: &mut Silent,
    };
    let summary = train(&task, &samples, options)?;

    let test = read_samples(Path::new(test_path), &SampleRules::default())?.records;
    let classifier = AdapterClassifier::load(Path::new(out))?;
    let texts: Vec<&str> = test.iter().map(|s| s.text.as_str()).collect();
    let started = std::time::Instant::now();
    let predictions = classifier.predict(&texts, 1)?;
    let inference = texts.len() as f64 / started.elapsed().as_secs_f64();
    let index = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let gold: Vec<usize> = test.iter().map(|s| index(&s.intent)).collect();
    let predicted: Vec<usize> = predictions.iter().map(|p| index(&p.intent)).collect();
    let f1 = data::macro_f1(&gold, &predicted, labels.len());
    let result = serde_json::json!({
        "system": "prompt2lora",
        "train_examples": summary.train_examples,
        "epochs": summary.epochs_run,
        "rank": summary.rank.rank,
        "train_examples_per_second": summary.examples_per_second,
        "inference_sentences_per_second": inference,
        "peak_rss_mib": summary.peak_rss_bytes.map(|b| b as f64 / 1048576.0),
        "validation_macro_f1": summary.validation_macro_f1,
        "test_macro_f1": f1,
    });
    println!("{result}");
    Ok(())
}
