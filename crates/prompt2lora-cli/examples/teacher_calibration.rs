//! Measures contextual calibration of the in-process teacher: scores every intent name for
//! each message of a labelled file, once, and writes the raw log-probabilities with the
//! content-free prior, so that labels with and without calibration can be compared on the same
//! scores (`bench/calibration.py` prints the comparison).
//!
//! usage: teacher_calibration TASK.toml LABELLED.jsonl OUT.jsonl
//!
//! The first line of OUT holds the prior; each further line a message, its human label and the
//! teacher's log-probability of each intent. A rerun skips the messages already in OUT.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use prompt2lora_core::{Task, Teacher};
use prompt2lora_teacher::{label, prompts};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, labelled, out] = args.as_slice() else {
        anyhow::bail!("usage: teacher_calibration TASK.toml LABELLED.jsonl OUT.jsonl");
    };
    let task = Task::load(&PathBuf::from(task))?;
    let files = prompt2lora_hub::resolve(&task.teacher.model)?;
    let gguf = files.gguf.context("the teacher has no GGUF file")?;
    let teacher = prompt2lora_local::LocalTeacher::load(
        &gguf,
        prompt2lora_local::LocalOptions {
            threads: task.teacher.threads,
            seed: 0,
            model_id: files.id,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;

    let earlier: Vec<serde_json::Value> = match fs_err::File::open(out) {
        Ok(file) => std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect(),
        Err(_) => Vec::new(),
    };
    let done: HashSet<String> = earlier
        .iter()
        .filter_map(|v| v.get("text")?.as_str().map(str::to_string))
        .collect();
    let mut writer = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    if !earlier.iter().any(|v| v.get("prior").is_some()) {
        let started = std::time::Instant::now();
        let (prior, _) = runtime.block_on(label::content_free_prior(&teacher, &task))?;
        let line = serde_json::json!({ "intents": task.intent_names(), "prior": prior });
        writeln!(writer, "{line}")?;
        eprintln!("prior in {:.1} s", started.elapsed().as_secs_f64());
    }
    let names = task.intent_names();
    let rows = std::io::BufReader::new(fs_err::File::open(labelled)?).lines();
    for (i, row) in rows.enumerate() {
        let row: serde_json::Value = serde_json::from_str(&row?)?;
        let text = row["text"].as_str().context("a row without text")?;
        if done.contains(text) {
            continue;
        }
        let messages = prompts::label_name_messages(&task, text);
        let scores = runtime.block_on(teacher.score_choices(&messages, &names))?;
        let line = serde_json::json!({
            "text": text,
            "label": row["label"],
            "logprobs": scores.logprobs,
        });
        writeln!(writer, "{line}")?;
        writer.flush()?;
        if (i + 1) % 10 == 0 {
            eprintln!("{} messages", i + 1);
        }
    }
    Ok(())
}
