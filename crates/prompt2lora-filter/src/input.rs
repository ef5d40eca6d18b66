//! The filter's input: the samples of a JSONL file and, as rejects of the stage `read`, every
//! line that is not a sample, so that kept + rejected always equals the lines of the file.

use std::path::Path;

use prompt2lora_core::jsonl::{SampleRules, read_samples};
use prompt2lora_core::{LineError, Reject, Sample};

/// Samples to filter, and the rejects of reading them.
#[derive(Debug, Default)]
pub struct FilterInput {
    pub samples: Vec<Sample>,
    pub rejects: Vec<Reject>,
}

impl From<Vec<Sample>> for FilterInput {
    fn from(samples: Vec<Sample>) -> Self {
        FilterInput {
            samples,
            rejects: Vec::new(),
        }
    }
}

/// Reads a samples file. Only the record format is checked here; the task's rules (intents,
/// lengths, blank text) are the validity stage's job, so that its rejects say so. A line that
/// is not a sample record becomes a reject of the stage `read` that keeps as much of the line
/// as can be recovered: its `text`, `intent` and `id` when it is a JSON object, otherwise the
/// raw line as text.
pub fn read_input(path: &Path) -> std::io::Result<FilterInput> {
    let rules = SampleRules {
        intents: None,
        max_chars: usize::MAX,
    };
    let report = read_samples(path, &rules)?;
    let mut input = FilterInput {
        samples: report.records,
        rejects: Vec::new(),
    };
    if report.errors.is_empty() {
        return Ok(input);
    }
    let bytes = fs_err::read(path)?;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for error in report.errors {
        let raw = lines.get(error.line - 1).copied().unwrap_or_default();
        let raw = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
        // Only a blank text is a reader rule the validity stage should report instead.
        let blank = error.message.starts_with("empty text");
        match recover(&raw, blank) {
            // The record is well-formed and only broke a rule of the reader (blank text).
            Recovered::Sample(sample) => input.samples.push(sample),
            Recovered::Partial(sample) => input.rejects.push(read_reject(sample, &error)),
        }
    }
    Ok(input)
}

enum Recovered {
    Sample(Sample),
    Partial(Sample),
}

fn recover(raw: &str, may_be_sample: bool) -> Recovered {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(raw) else {
        return Recovered::Partial(Sample::new(raw, ""));
    };
    if !object.contains_key("intent")
        && let Some(label) = object.remove("label")
    {
        object.insert("intent".into(), label);
    }
    let text = object
        .get("text")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    if !object.contains_key("id") {
        object.insert(
            "id".into(),
            Sample::id_for(text.as_deref().unwrap_or_default()).into(),
        );
    }
    let value = serde_json::Value::Object(object);
    if may_be_sample && let Ok(sample) = serde_json::from_value::<Sample>(value.clone()) {
        return Recovered::Sample(sample);
    }
    let field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let mut sample = Sample::new(
        text.unwrap_or_else(|| raw.to_string()),
        field("intent").unwrap_or_default(),
    );
    if let Some(id) = field("id") {
        sample.id = id;
    }
    Recovered::Partial(sample)
}

fn read_reject(sample: Sample, error: &LineError) -> Reject {
    Reject {
        sample,
        stage: "read".into(),
        reason: format!("unreadable: {error}"),
        duplicate_of: None,
    }
}

/// The rejects of reading, turned into lines of `path:line: message` for the terminal.
pub fn describe_read_rejects(rejects: &[Reject]) -> impl Iterator<Item = &str> {
    rejects
        .iter()
        .filter(|r| r.stage == "read")
        .map(|r| r.reason.strip_prefix("unreadable: ").unwrap_or(&r.reason))
}
