//! Stage 1: samples that cannot be training data at all: a missing id, confidence signals out
//! of range, empty text (or text that is only punctuation), an intent the task does not have,
//! or a text outside the length limits.

use prompt2lora_core::Task;
use prompt2lora_core::task::FilterSettings;
use prompt2lora_core::text::{char_len, normalize};

use crate::{Candidate, StageOutput};

pub(crate) fn run(
    candidates: Vec<Candidate>,
    task: &Task,
    settings: &FilterSettings,
) -> StageOutput {
    let intents = task.intent_names();
    let mut output = StageOutput::new(Vec::with_capacity(candidates.len()), Vec::new());
    for candidate in candidates {
        match problem(&candidate, &intents, settings) {
            None => output.kept.push(candidate),
            Some(reason) => output
                .rejects
                .push(candidate.reject("validity", reason, None)),
        }
    }
    output
}

/// Why a sample is not valid, as `kind: details`; `None` when it is.
fn problem(candidate: &Candidate, intents: &[String], settings: &FilterSettings) -> Option<String> {
    let sample = &candidate.sample;
    if sample.id.trim().is_empty() {
        return Some("schema: empty id".into());
    }
    for (name, value) in [
        ("confidence", sample.confidence),
        ("label_logprob", sample.label_logprob),
        ("agreement", sample.agreement),
    ] {
        if let Some(v) = value.filter(|v| !(0.0..=1.0).contains(v)) {
            return Some(format!("schema: {name} = {v} is not between 0 and 1"));
        }
    }
    let text = sample.text.trim();
    if text.is_empty() {
        return Some("empty text: the text is blank".into());
    }
    if normalize(text).is_empty() {
        return Some("empty text: only punctuation, symbols or emoji".into());
    }
    if !intents.contains(&sample.intent) {
        return Some(format!(
            "unknown intent: `{}` is not an intent of the task",
            sample.intent
        ));
    }
    let len = char_len(text);
    if len < settings.min_chars {
        return Some(format!(
            "too short: {len} characters, the minimum is {}",
            settings.min_chars
        ));
    }
    if len > settings.max_chars {
        return Some(format!(
            "too long: {len} characters, the maximum is {}",
            settings.max_chars
        ));
    }
    None
}
