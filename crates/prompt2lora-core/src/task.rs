//! The task file: the user's whole description of a job, in TOML. Every stage reads its
//! settings from here; command-line flags override them.
//!
//! Every key outside `name`, `language` and `[[intents]]` has a default, documented on its
//! field below and in `docs/task-file.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A parsed and validated task file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    /// BCP 47 language code of the messages: `zh`, `en`, ... `mixed` for several.
    pub language: String,
    /// The intent that takes everything else (`其他`, `other`); must be one of `intents`.
    #[serde(default)]
    pub catch_all: Option<Spanned<String>>,
    pub intents: Vec<Intent>,
    #[serde(default)]
    pub teacher: TeacherSettings,
    #[serde(default)]
    pub filter: FilterSettings,
    #[serde(default)]
    pub train: TrainSettings,
    #[serde(default)]
    pub eval: EvalSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    pub name: Spanned<String>,
    /// One sentence saying what messages of this intent are about; the teacher sees it.
    pub description: String,
    /// Seed messages; the teacher sees them as few-shot examples.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// `[teacher]`: the LLM that writes and labels samples.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSettings {
    /// Model: an embedded short name (`qwen2.5-1.5b`), a `.gguf` file, or, with `base_url`, the
    /// model id the endpoint serves. Default `qwen2.5-1.5b`.
    pub model: String,
    /// OpenAI-compatible endpoint (`https://api.openai.com/v1`, a vLLM or Ollama server). Empty:
    /// `OPENAI_BASE_URL` if set, otherwise the in-process teacher. Default empty.
    pub base_url: Option<String>,
    /// Environment variable that holds the API key. Default `OPENAI_API_KEY`.
    pub api_key_env: String,
    /// Samples to generate in total, spread evenly over the intents. Default 500.
    pub samples: usize,
    /// Messages asked for in one generation request. Default 5.
    pub per_request: usize,
    /// Sampling temperature for generation. Default 0.9.
    pub temperature: f32,
    /// Nucleus sampling for generation. Default 0.95.
    pub top_p: f32,
    /// Labelling samples drawn per message for the `agreement` signal; 1 disables it. Default 1.
    pub self_consistency: usize,
    /// Requests in flight at once (HTTP teacher). Default 16.
    pub concurrency: usize,
    /// Requests per minute, 0 for no limit. Default 0.
    pub requests_per_minute: u32,
    /// Prompt plus completion tokens per minute, 0 for no limit. Default 0.
    pub tokens_per_minute: u32,
    /// Seconds before a request is abandoned and retried. Default 120.
    pub timeout_secs: u64,
    /// Retries of one request before the run stops. Default 6.
    pub max_retries: u32,
    /// USD per million prompt tokens; unset uses the built-in price list. Default unset.
    pub price_prompt: Option<f64>,
    /// USD per million completion tokens; unset uses the built-in price list. Default unset.
    pub price_completion: Option<f64>,
    /// Stop generating when this many USD have been spent. Default unset.
    pub budget_usd: Option<f64>,
    /// CPU threads of the in-process teacher, 0 for all cores. Default 0.
    pub threads: usize,
    /// How a message is labelled: `score` (the log-probability of each intent name, fast and
    /// calibrated; needs a teacher that scores answers, like the in-process one), `json` (an
    /// `{intent, confidence, reason}` answer, with the intent's token probability where the
    /// endpoint reports log-probabilities), `both`, or `auto`: `score` where the teacher can,
    /// otherwise `json`. Default `auto`.
    pub label_method: String,
    /// Divide scored labels by the teacher's prior over the intents, measured once on
    /// content-free messages ("N/A", empty, "[MASK]"): contextual calibration, which removes
    /// the teacher's bias toward intents it favours whatever the message (a catch-all, short
    /// names). Applies where labels are scored (`label_method` `score`, `both`, or `auto` on a
    /// teacher that scores answers). Default true.
    pub calibrate: bool,
    /// Few-shot examples shown in each generation request, picked for diversity from the seed
    /// examples and the samples accepted so far. Default 4.
    pub few_shot: usize,
}

impl Default for TeacherSettings {
    fn default() -> Self {
        TeacherSettings {
            model: "qwen2.5-1.5b".into(),
            base_url: None,
            api_key_env: "OPENAI_API_KEY".into(),
            samples: 500,
            per_request: 5,
            temperature: 0.9,
            top_p: 0.95,
            self_consistency: 1,
            concurrency: 16,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            timeout_secs: 120,
            max_retries: 6,
            price_prompt: None,
            price_completion: None,
            budget_usd: None,
            threads: 0,
            label_method: "auto".into(),
            calibrate: true,
            few_shot: 4,
        }
    }
}

/// What the filter does with a sample whose teacher label differs from the requested intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftAction {
    /// Reject it (default).
    Drop,
    /// Keep it under the teacher's label.
    Relabel,
}

/// `[filter]`: from raw teacher output to training data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Shortest text kept, in characters. Default 2.
    pub min_chars: usize,
    /// Longest text kept, in characters. Default 256.
    pub max_chars: usize,
    /// `drop` or `relabel` drifted samples. Default `drop`.
    pub drift: DriftAction,
    /// Character n-gram size for MinHash. Default 3.
    pub ngram: usize,
    /// Similarity from which two texts are near duplicates: the Jaccard similarity of their
    /// character n-gram sets, or for texts of up to 40 characters also their edit similarity.
    /// Default 0.8 (chosen on the planted-duplicate benchmark, `bench/results/filter.md`).
    pub near_duplicate_threshold: f64,
    /// Cosine similarity of embeddings above which two texts are semantic duplicates.
    /// Default 0.95.
    pub semantic_threshold: f64,
    /// Embedding model; empty picks the student's default for the language. Default empty.
    pub embedder: Option<String>,
    /// Share of each intent kept by the confidence cut, most confident first. Default 0.8.
    pub keep_fraction: f64,
    /// Absolute combined-confidence threshold; replaces `keep_fraction` when set. Default unset.
    pub min_confidence: Option<f64>,
    /// Warn when an intent has fewer samples than this after filtering. Default 20.
    pub min_per_intent: usize,
}

impl Default for FilterSettings {
    fn default() -> Self {
        FilterSettings {
            min_chars: 2,
            max_chars: 256,
            drift: DriftAction::Drop,
            ngram: 3,
            near_duplicate_threshold: 0.8,
            semantic_threshold: 0.95,
            embedder: None,
            keep_fraction: 0.8,
            min_confidence: None,
            min_per_intent: 20,
        }
    }
}

/// `[train]`: the LoRA student.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    /// Base encoder; empty picks `minilm-l6` for English and `e5-small` otherwise.
    pub student: Option<String>,
    /// LoRA rank: a number, `auto` (from the data's confidence) or `sweep`. Default `auto`.
    pub rank: String,
    /// LoRA scaling numerator; the update is scaled by alpha/r. Unset: 2 x rank.
    pub alpha: Option<f64>,
    /// Dropout on the LoRA input. Default 0.1.
    pub lora_dropout: f64,
    /// Hidden and attention dropout of the encoder during training. Default 0.1.
    pub dropout: f64,
    /// Modules that get adapters: names like `query`, `key`, `value`, `dense`, or
    /// `all-linear`. Default `["query", "value"]`.
    pub targets: Vec<String>,
    /// Default 8.
    pub epochs: usize,
    /// Default 32.
    pub batch_size: usize,
    /// Peak learning rate of AdamW. Default 1e-3.
    pub learning_rate: f64,
    /// AdamW weight decay. Default 0.01.
    pub weight_decay: f64,
    /// Share of steps spent warming up the learning rate. Default 0.1.
    pub warmup: f64,
    /// Gradient norm clip. Default 1.0.
    pub max_grad_norm: f64,
    /// Tokens per message after truncation. Default 64.
    pub max_length: usize,
    /// Share of the data held out (stratified) to pick the best epoch. Default 0.1.
    pub validation_fraction: f64,
    /// Epochs without a better validation macro-F1 before stopping. Default 3.
    pub patience: usize,
    /// Fewest updates a run makes: a small data set gets more epochs than `epochs`, and early
    /// stopping waits until then. Default 100.
    pub min_steps: usize,
    /// Default 42.
    pub seed: u64,
    /// Steps between checkpoints. Default 50.
    pub save_steps: usize,
    /// Checkpoints kept. Default 3.
    pub keep_checkpoints: usize,
    /// Weigh the loss by inverse class frequency, so that a teacher's favourite intent does not
    /// drown the others. Default true.
    pub class_weights: bool,
    /// Weigh each sample's loss by its combined confidence. Default false.
    pub confidence_weighted: bool,
    /// CPU threads, 0 for all cores. Default 0.
    pub threads: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            student: None,
            rank: "auto".into(),
            alpha: None,
            lora_dropout: 0.1,
            dropout: 0.1,
            targets: vec!["query".into(), "value".into()],
            epochs: 8,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            warmup: 0.1,
            max_grad_norm: 1.0,
            max_length: 64,
            validation_fraction: 0.1,
            patience: 3,
            min_steps: 100,
            seed: 42,
            save_steps: 50,
            keep_checkpoints: 3,
            class_weights: true,
            confidence_weighted: false,
            threads: 0,
        }
    }
}

/// `[eval]`: reading labelled test sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    /// Test-set label -> task intent, for test sets whose label names differ.
    pub label_map: BTreeMap<String, String>,
}

/// A task file that cannot be used, with the place to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TaskError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl Task {
    /// Reads and validates a task file.
    pub fn load(path: &Path) -> Result<Task, TaskError> {
        let source = fs_err::read_to_string(path).map_err(|e| TaskError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        Task::parse(&source, path)
    }

    /// Parses and validates task-file text; `path` is only used in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Task, TaskError> {
        let error = |span: Option<std::ops::Range<usize>>, message: String| TaskError {
            path: path.to_path_buf(),
            line: span.as_ref().map(|s| line_of(source, s.start)),
            message,
        };
        let task: Task = toml::from_str(source).map_err(|e| {
            let key = e.span().and_then(|s| key_at(source, s.start));
            let message = e.message().trim().to_string();
            let message = match key {
                Some(key) if !message.contains(&key) => format!("key `{key}`: {message}"),
                _ => message,
            };
            error(e.span(), message)
        })?;
        task.validate()
            .map_err(|(span, message)| error(span, message))?;
        Ok(task)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        if self.name.trim().is_empty() {
            return Err((None, "key `name`: must not be empty".into()));
        }
        if self.intents.len() < 2 {
            return Err((
                None,
                "key `intents`: a classifier needs at least two intents".into(),
            ));
        }
        for (i, intent) in self.intents.iter().enumerate() {
            let name = intent.name.get_ref();
            if name.trim().is_empty() {
                return Err((
                    Some(intent.name.span()),
                    "key `name`: intent name is empty".into(),
                ));
            }
            if intent.description.trim().is_empty() {
                let message = format!("key `description`: intent `{name}` has no description");
                return Err((Some(intent.name.span()), message));
            }
            if self.intents[..i]
                .iter()
                .any(|other| other.name.get_ref() == name)
            {
                let message = format!("key `name`: intent `{name}` is listed twice");
                return Err((Some(intent.name.span()), message));
            }
        }
        if let Some(catch_all) = &self.catch_all
            && !self
                .intents
                .iter()
                .any(|i| i.name.get_ref() == catch_all.get_ref())
        {
            let message = format!(
                "key `catch_all`: `{}` is not one of the intents",
                catch_all.get_ref()
            );
            return Err((Some(catch_all.span()), message));
        }
        let f = &self.filter;
        for (key, value) in [
            ("filter.keep_fraction", f.keep_fraction),
            (
                "filter.near_duplicate_threshold",
                f.near_duplicate_threshold,
            ),
            ("filter.semantic_threshold", f.semantic_threshold),
            ("train.validation_fraction", self.train.validation_fraction),
            ("train.lora_dropout", self.train.lora_dropout),
            ("train.dropout", self.train.dropout),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err((None, format!("key `{key}`: {value} is not between 0 and 1")));
            }
        }
        let rank = self.train.rank.as_str();
        if !matches!(rank, "auto" | "sweep") && rank.parse::<usize>().map_or(true, |r| r == 0) {
            return Err((
                None,
                format!("key `train.rank`: `{rank}` is not a positive number, `auto` or `sweep`"),
            ));
        }
        for (from, to) in &self.eval.label_map {
            if !self.intents.iter().any(|i| i.name.get_ref() == to) {
                return Err((
                    None,
                    format!(
                        "key `eval.label_map`: `{from}` maps to `{to}`, which is not an intent"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Intent names in the order of the file.
    pub fn intent_names(&self) -> Vec<String> {
        self.intents
            .iter()
            .map(|i| i.name.get_ref().clone())
            .collect()
    }

    pub fn intent(&self, name: &str) -> Option<&Intent> {
        self.intents.iter().find(|i| i.name.get_ref() == name)
    }

    pub fn catch_all(&self) -> Option<&str> {
        self.catch_all.as_ref().map(|c| c.get_ref().as_str())
    }

    /// The student (and embedder) used when the task does not name one.
    pub fn default_encoder(&self) -> &'static str {
        if self.language.eq_ignore_ascii_case("en") {
            "minilm-l6"
        } else {
            "e5-small"
        }
    }

    pub fn student(&self) -> String {
        self.train
            .student
            .clone()
            .unwrap_or_else(|| self.default_encoder().into())
    }

    pub fn embedder(&self) -> String {
        self.filter
            .embedder
            .clone()
            .unwrap_or_else(|| self.default_encoder().into())
    }

    /// Maps a test-set label to a task intent through `[eval] label_map`.
    pub fn map_label<'a>(&'a self, label: &'a str) -> &'a str {
        self.eval.label_map.get(label).map_or(label, String::as_str)
    }
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key whose value starts at `offset`: the text left of `=` on that line, prefixed
/// by the nearest `[section]` header above it.
fn key_at(source: &str, offset: usize) -> Option<String> {
    let offset = offset.min(source.len());
    let start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    let (key, _) = source[start..end].split_once('=')?;
    let key = key.trim().trim_matches('"');
    let section = source[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(section) if !section.is_empty() => format!("{section}.{key}"),
        _ => key.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "shop"
language = "en"
catch_all = "other"

[[intents]]
name = "return"
description = "The customer wants to send an item back for a refund."
examples = ["I want to return these shoes"]

[[intents]]
name = "other"
description = "Anything else."

[train]
epochs = 3
"#;

    fn parse(source: &str) -> Result<Task, TaskError> {
        Task::parse(source, Path::new("task.toml"))
    }

    #[test]
    fn good_file_parses_with_defaults() {
        let task = parse(GOOD).unwrap();
        assert_eq!(task.intent_names(), vec!["return", "other"]);
        assert_eq!(task.train.epochs, 3);
        assert_eq!(task.train.batch_size, 32);
        assert_eq!(task.filter.keep_fraction, 0.8);
        assert_eq!(task.student(), "minilm-l6");
        assert_eq!(task.catch_all(), Some("other"));
    }

    #[test]
    fn type_error_names_file_line_and_key() {
        let bad = GOOD.replace("epochs = 3", "epochs = \"three\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("task.toml:16: key `train.epochs`:"), "{e}");
    }

    #[test]
    fn unknown_key_names_line() {
        let bad = GOOD.replace("epochs = 3", "epoch = 3");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("task.toml:16:"), "{e}");
        assert!(e.contains("unknown field `epoch`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let bad = GOOD.replace("catch_all = \"other\"", "catch_all = \"misc\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "task.toml:4: key `catch_all`: `misc` is not one of the intents"
        );

        let bad = GOOD.replace("name = \"other\"", "name = \"return\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert_eq!(
            e,
            "task.toml:12: key `name`: intent `return` is listed twice"
        );

        let bad = GOOD.replace("description = \"Anything else.\"", "description = \" \"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.starts_with("task.toml:12: key `description`"), "{e}");
    }

    #[test]
    fn missing_required_key_is_reported() {
        let bad = GOOD.replace("language = \"en\"\n", "");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("missing field `language`"), "{e}");
    }

    #[test]
    fn bad_rank_is_rejected() {
        let bad = GOOD.replace("epochs = 3", "rank = \"big\"");
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("train.rank"), "{e}");
    }
}
