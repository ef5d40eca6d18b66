//! The eval stage: reads a labelled test set against an adapter's label set, scores the
//! student (and, through a resumable cache of zero-shot labels, the teacher) and writes
//! `metrics.json`, the confusion heat map and per-message predictions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use prompt2lora_core::jsonl::{SampleRules, read_jsonl, read_samples};
use prompt2lora_core::{Classifier, JsonlWriter, LineError, Sample, Task};
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, MetricsError};
use crate::plot;

/// Longest test message read, in characters; longer ones are an error in the test file. The
/// classifier truncates to its own token limit, so this only guards against broken files.
pub const MAX_TEST_CHARS: usize = 20_000;

/// Bad lines listed in an error before the rest are counted.
const LISTED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} bad line{} in the test set:\n{}", errors.len(), plural(errors.len()), list_lines(errors))]
    BadLines { errors: Vec<LineError> },
    #[error("{} has no messages", path.display())]
    EmptyTestSet { path: PathBuf },
    #[error(
        "{}: {} label{} of the test set {} not intents of the adapter: {}; the adapter's intents are {}",
        path.display(), unknown.len(), plural(unknown.len()),
        if unknown.len() == 1 { "is" } else { "are" },
        list_unknown(unknown), known.join(", ")
    )]
    UnknownLabels {
        path: PathBuf,
        unknown: BTreeMap<String, usize>,
        known: Vec<String>,
    },
    #[error("the teacher labelled a message `{intent}`, which is not an intent of the adapter")]
    TeacherIntent { intent: String },
    #[error("the classifier failed")]
    Classifier(#[source] prompt2lora_core::ModelError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list_lines(errors: &[LineError]) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(LISTED)
        .map(|e| format!("  {e}"))
        .collect();
    if errors.len() > LISTED {
        lines.push(format!("  ... and {} more", errors.len() - LISTED));
    }
    lines.join("\n")
}

fn list_unknown(unknown: &BTreeMap<String, usize>) -> String {
    let items: Vec<String> = unknown
        .iter()
        .map(|(label, n)| format!("`{label}` ({n} message{})", plural(*n)))
        .collect();
    items.join(", ")
}

/// A labelled test set, with gold labels as indices into the adapter's label set.
#[derive(Debug, Clone)]
pub struct TestSet {
    pub path: PathBuf,
    pub texts: Vec<String>,
    /// The label as written in the file, before `[eval] label_map`.
    pub raw_labels: Vec<String>,
    pub gold: Vec<usize>,
}

impl TestSet {
    /// Reads JSONL records with `text` and `label` (or `intent`). Labels are mapped through the
    /// task's `[eval] label_map` and must then be among `labels`; every unknown label is named
    /// in the error. Any bad line is an error: a test set with holes gives wrong numbers.
    pub fn load(path: &Path, task: Option<&Task>, labels: &[String]) -> Result<TestSet, EvalError> {
        let rules = SampleRules {
            intents: None,
            max_chars: MAX_TEST_CHARS,
        };
        let report = read_samples(path, &rules).map_err(|source| EvalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !report.errors.is_empty() {
            return Err(EvalError::BadLines {
                errors: report.errors,
            });
        }
        if report.records.is_empty() {
            return Err(EvalError::EmptyTestSet {
                path: path.to_path_buf(),
            });
        }
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let mut unknown = BTreeMap::new();
        let mut test = TestSet {
            path: path.to_path_buf(),
            texts: Vec::with_capacity(report.records.len()),
            raw_labels: Vec::with_capacity(report.records.len()),
            gold: Vec::with_capacity(report.records.len()),
        };
        for sample in report.records {
            let mapped = task.map_or(sample.intent.as_str(), |t| t.map_label(&sample.intent));
            match index.get(mapped) {
                Some(&i) => test.gold.push(i),
                None => *unknown.entry(sample.intent.clone()).or_insert(0) += 1,
            }
            test.texts.push(sample.text);
            test.raw_labels.push(sample.intent);
        }
        if !unknown.is_empty() {
            let known = labels.to_vec();
            return Err(EvalError::UnknownLabels {
                path: path.to_path_buf(),
                unknown,
                known,
            });
        }
        Ok(test)
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// What one classifier said about each test message.
#[derive(Debug, Clone, Default)]
pub struct Answers {
    /// Predicted intent, as an index into the label set.
    pub predicted: Vec<usize>,
    /// Probability of the predicted intent; `None` where the classifier gives none.
    pub probs: Option<Vec<f32>>,
}

/// Runs the student over `texts` in batches; `progress` is called with each batch's size.
pub fn classify_all(
    classifier: &dyn Classifier,
    texts: &[String],
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Answers, EvalError> {
    let mut answers = Answers {
        predicted: Vec::with_capacity(texts.len()),
        probs: Some(Vec::new()),
    };
    let probs = answers.probs.as_mut().expect("just set");
    for chunk in texts.chunks(batch_size.max(1)) {
        let batch: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let rows = classifier
            .probabilities(&batch)
            .map_err(EvalError::Classifier)?;
        for row in rows {
            let (best, p) = row
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, 0.0));
            answers.predicted.push(best);
            probs.push(p.clamp(0.0, 1.0));
        }
        progress(chunk.len());
    }
    Ok(answers)
}

/// Student against teacher on one test set: the content of `metrics.json`.
///
/// ```json
/// { "test_set": { "path": "test.jsonl", "messages": 200 },
///   "student": { <Metrics> },
///   "teacher": { "model": "qwen2.5-1.5b", "metrics": { <Metrics> } },
///   "student_minus_teacher": { "accuracy": 0.03, "macro_f1": 0.02 },
///   "agreement": 0.91 }
/// ```
/// `teacher`, `student_minus_teacher` and `agreement` (share of messages where both chose the
/// same intent) are `null` when the teacher was not scored. See [`Metrics`] for its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub test_set: TestSetInfo,
    pub student: Metrics,
    pub teacher: Option<TeacherMetrics>,
    pub student_minus_teacher: Option<Delta>,
    pub agreement: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSetInfo {
    pub path: String,
    pub messages: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherMetrics {
    pub model: String,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub accuracy: f64,
    pub macro_f1: f64,
}

impl Comparison {
    /// Scores the student's answers, and the teacher's where given, on `test`.
    pub fn compute(
        test: &TestSet,
        labels: &[String],
        catch_all: Option<&str>,
        student: &Answers,
        teacher: Option<(&str, &Answers)>,
    ) -> Result<Comparison, EvalError> {
        // A catch-all that the adapter does not know cannot be routed to.
        let catch_all = catch_all.filter(|c| labels.iter().any(|l| l == c));
        let score = |answers: &Answers| {
            Metrics::compute_with_catch_all(
                &test.gold,
                &answers.predicted,
                answers.probs.as_deref(),
                labels,
                catch_all,
            )
        };
        let student_metrics = score(student)?;
        let teacher_metrics = teacher
            .map(|(model, answers)| {
                score(answers).map(|metrics| TeacherMetrics {
                    model: model.to_string(),
                    metrics,
                })
            })
            .transpose()?;
        let student_minus_teacher = teacher_metrics.as_ref().map(|t| Delta {
            accuracy: student_metrics.accuracy - t.metrics.accuracy,
            macro_f1: student_metrics.macro_f1 - t.metrics.macro_f1,
        });
        let agreement = teacher.map(|(_, answers)| {
            let same = student
                .predicted
                .iter()
                .zip(&answers.predicted)
                .filter(|(a, b)| a == b)
                .count();
            same as f64 / test.len() as f64
        });
        Ok(Comparison {
            test_set: TestSetInfo {
                path: test.path.display().to_string(),
                messages: test.len(),
            },
            student: student_metrics,
            teacher: teacher_metrics,
            student_minus_teacher,
            agreement,
        })
    }
}

/// One line of `predictions.jsonl`: a test message with its gold label and both answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredMessage {
    pub text: String,
    /// The label as written in the test set.
    pub label: String,
    /// The label after `[eval] label_map`.
    pub gold: String,
    pub student: String,
    pub student_probability: Option<f32>,
    pub teacher: Option<String>,
    pub teacher_probability: Option<f32>,
}

/// Per-message rows for error analysis, in test-set order.
pub fn scored_messages(
    test: &TestSet,
    labels: &[String],
    student: &Answers,
    teacher: Option<&Answers>,
) -> Vec<ScoredMessage> {
    (0..test.len())
        .map(|i| ScoredMessage {
            text: test.texts[i].clone(),
            label: test.raw_labels[i].clone(),
            gold: labels[test.gold[i]].clone(),
            student: labels[student.predicted[i]].clone(),
            student_probability: student.probs.as_ref().map(|p| p[i]),
            teacher: teacher.map(|t| labels[t.predicted[i]].clone()),
            teacher_probability: teacher.and_then(|t| t.probs.as_ref().map(|p| p[i])),
        })
        .collect()
}

/// File names of the eval outputs inside the output folder.
pub mod files {
    pub const METRICS: &str = "metrics.json";
    pub const CONFUSION: &str = "confusion.svg";
    pub const TEACHER_CONFUSION: &str = "confusion_teacher.svg";
    pub const RELIABILITY: &str = "reliability.svg";
    pub const PREDICTIONS: &str = "predictions.jsonl";
    pub const TEACHER_LABELS: &str = "teacher_labels.jsonl";
}

/// Writes `metrics.json`, the heat maps, the reliability diagram and `predictions.jsonl` into
/// `dir`; returns the paths written.
pub fn write_outputs(
    dir: &Path,
    comparison: &Comparison,
    messages: &[ScoredMessage],
) -> Result<Vec<PathBuf>, EvalError> {
    let write = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        fs_err::create_dir_all(dir)
            .and_then(|()| fs_err::write(&path, contents))
            .map(|()| path.clone())
            .map_err(|source| EvalError::Write { path, source })
    };
    let mut json = serde_json::to_vec_pretty(comparison).expect("metrics serialise");
    json.push(b'\n');
    let mut written = vec![write(files::METRICS, &json)?];
    written.push(write(
        files::CONFUSION,
        plot::confusion_svg(&comparison.student).as_bytes(),
    )?);
    if let Some(teacher) = &comparison.teacher {
        let svg = plot::confusion_svg(&teacher.metrics);
        written.push(write(files::TEACHER_CONFUSION, svg.as_bytes())?);
    }
    if let Some(svg) = plot::reliability_svg(&comparison.student) {
        written.push(write(files::RELIABILITY, svg.as_bytes())?);
    }
    let path = dir.join(files::PREDICTIONS);
    prompt2lora_core::jsonl::write_jsonl_atomic(&path, messages).map_err(|source| {
        EvalError::Write {
            path: path.clone(),
            source,
        }
    })?;
    written.push(path);
    Ok(written)
}

/// Zero-shot labels of the teacher, kept in a JSONL file of [`Sample`] records (with
/// `provenance.teacher` set) so that an interrupted or repeated eval labels each message once.
/// Records of another teacher model are ignored, so changing the teacher relabels.
pub struct TeacherCache {
    path: PathBuf,
    model: String,
    prompt: String,
    labels: HashMap<String, Sample>,
    writer: Option<JsonlWriter>,
}

impl TeacherCache {
    /// Reads what `path` already holds for `model` with the labelling prompt `prompt` (its
    /// provenance id). A torn last line (a killed run) is skipped with a warning and
    /// relabelled.
    pub fn open(path: &Path, model: &str, prompt: &str) -> Result<TeacherCache, EvalError> {
        let read = |source| EvalError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut labels = HashMap::new();
        let mut other_models = 0;
        match read_jsonl::<Sample>(path) {
            Ok(report) => {
                for error in &report.errors {
                    tracing::warn!("skipping cached teacher label: {error}");
                }
                for sample in report.records {
                    let provenance = &sample.provenance;
                    if provenance.teacher.as_deref() == Some(model)
                        && provenance.prompt.as_deref() == Some(prompt)
                    {
                        labels.insert(sample.id.clone(), sample);
                    } else {
                        other_models += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(read(e)),
        }
        if other_models > 0 {
            tracing::info!(
                "{other_models} cached teacher labels in {} are from another model or prompt; \
                 ignoring them",
                path.display()
            );
        }
        Ok(TeacherCache {
            path: path.to_path_buf(),
            model: model.to_string(),
            prompt: prompt.to_string(),
            labels,
            writer: None,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The cached label of `text`, if any.
    pub fn get(&self, text: &str) -> Option<&Sample> {
        self.labels.get(&Sample::id_for(text))
    }

    /// The texts that still need a teacher label, each once, in order.
    pub fn missing<'a>(&self, texts: &'a [String]) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        texts
            .iter()
            .filter(|t| {
                let id = Sample::id_for(t);
                !self.labels.contains_key(&id) && seen.insert(id)
            })
            .map(String::as_str)
            .collect()
    }

    /// Records a label, appending it to the file at once.
    pub fn insert(&mut self, mut sample: Sample) -> Result<(), EvalError> {
        sample.provenance.teacher = Some(self.model.clone());
        sample.provenance.prompt = Some(self.prompt.clone());
        let write = |source| EvalError::Write {
            path: self.path.clone(),
            source,
        };
        if self.writer.is_none() {
            self.writer = Some(JsonlWriter::append(&self.path).map_err(write)?);
        }
        self.writer
            .as_mut()
            .expect("just opened")
            .write(&sample)
            .map_err(write)?;
        self.labels.insert(sample.id.clone(), sample);
        Ok(())
    }

    /// The teacher's answers for every test message; all must be cached. The probability is
    /// the label's log-probability-based score where the teacher gave one, else its stated
    /// confidence, else none (then the teacher has no calibration in the report).
    pub fn answers(&self, test: &TestSet, labels: &[String]) -> Result<Answers, EvalError> {
        let index: HashMap<&str, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect();
        let mut predicted = Vec::with_capacity(test.len());
        let mut probs = Vec::with_capacity(test.len());
        for text in &test.texts {
            let sample = self
                .get(text)
                .expect("every message labelled before scoring");
            let intent =
                index
                    .get(sample.intent.as_str())
                    .ok_or_else(|| EvalError::TeacherIntent {
                        intent: sample.intent.clone(),
                    })?;
            predicted.push(*intent);
            probs.push(
                sample
                    .label_logprob
                    .or(sample.confidence)
                    .map(|p| p.clamp(0.0, 1.0) as f32),
            );
        }
        let probs = probs.into_iter().collect::<Option<Vec<f32>>>();
        Ok(Answers { predicted, probs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt2lora_core::ModelResult;

    fn labels() -> Vec<String> {
        vec!["refund".into(), "shipping".into(), "other".into()]
    }

    const TASK: &str = r#"
name = "shop"
language = "en"
catch_all = "other"
[[intents]]
name = "refund"
description = "Money back."
[[intents]]
name = "shipping"
description = "Where is my parcel."
[[intents]]
name = "other"
description = "Anything else."
[eval]
label_map = { refund_request = "refund" }
"#;

    fn task() -> Task {
        Task::parse(TASK, Path::new("task.toml")).unwrap()
    }

    fn write(dir: &Path, lines: &[&str]) -> PathBuf {
        let path = dir.join("test.jsonl");
        fs_err::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn unknown_labels_are_named_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &[
                r#"{"text": "where is it", "label": "shipping"}"#,
                r#"{"text": "money back", "label": "refund_request"}"#,
                r#"{"text": "hello", "label": "chitchat"}"#,
                r#"{"text": "hi there", "label": "chitchat"}"#,
                r#"{"text": "cancel it", "intent": "cancel"}"#,
            ],
        );
        // Without the task, `refund_request` is unknown too.
        let e = TestSet::load(&path, None, &labels())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 labels of the test set are not intents of the adapter"),
            "{e}"
        );
        assert!(
            e.contains(
                "`cancel` (1 message), `chitchat` (2 messages), `refund_request` (1 message)"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("the adapter's intents are refund, shipping, other"),
            "{e}"
        );

        let e = TestSet::load(&path, Some(&task()), &labels())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 labels"), "{e}");
        assert!(!e.contains("refund_request"), "{e}");
    }

    #[test]
    fn label_map_applies_and_raw_labels_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &[
                r#"{"text": "money back", "label": "refund_request"}"#,
                r#"{"text": "parcel?", "intent": "shipping"}"#,
            ],
        );
        let test = TestSet::load(&path, Some(&task()), &labels()).unwrap();
        assert_eq!(test.gold, vec![0, 1]);
        assert_eq!(test.raw_labels, vec!["refund_request", "shipping"]);
    }

    #[test]
    fn bad_lines_are_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &[r#"{"text": "ok", "label": "refund"}"#, "{oops"],
        );
        let e = TestSet::load(&path, None, &labels())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("1 bad line in the test set:"), "{e}");
        assert!(e.contains("test.jsonl:2: bad JSON"), "{e}");
        let empty = write(dir.path(), &[""]);
        assert!(matches!(
            TestSet::load(&empty, None, &labels()),
            Err(EvalError::EmptyTestSet { .. })
        ));
    }

    struct Fixed(Vec<String>);
    impl Classifier for Fixed {
        fn labels(&self) -> &[String] {
            &self.0
        }
        fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| match t {
                    t if t.contains("parcel") => vec![0.1, 0.8, 0.1],
                    t if t.contains("weather") => vec![0.45, 0.2, 0.35],
                    _ => vec![0.5, 0.2, 0.3],
                })
                .collect())
        }
    }

    #[test]
    fn student_and_teacher_side_by_side_with_a_resumable_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            &[
                r#"{"text": "money back please", "label": "refund"}"#,
                r#"{"text": "my parcel is late", "label": "shipping"}"#,
                r#"{"text": "nice weather", "label": "other"}"#,
            ],
        );
        let test = TestSet::load(&path, None, &labels()).unwrap();
        let student = classify_all(&Fixed(labels()), &test.texts, 2, |_| {}).unwrap();
        assert_eq!(student.predicted, vec![0, 1, 0]);

        let cache_path = dir.path().join(files::TEACHER_LABELS);
        let mut cache = TeacherCache::open(&cache_path, "teacher-a", "p1").unwrap();
        assert_eq!(cache.missing(&test.texts).len(), 3);
        for (text, intent, p) in [
            ("money back please", "refund", 0.9),
            ("my parcel is late", "refund", 0.6),
        ] {
            let mut s = Sample::new(text, intent);
            s.label_logprob = Some(p);
            cache.insert(s).unwrap();
        }
        drop(cache);
        // A new run finds the two labels and asks only for the third; another teacher or
        // another labelling prompt finds none.
        let mut cache = TeacherCache::open(&cache_path, "teacher-a", "p1").unwrap();
        assert_eq!(cache.missing(&test.texts), vec!["nice weather"]);
        for (model, prompt) in [("teacher-b", "p1"), ("teacher-a", "p2")] {
            let other = TeacherCache::open(&cache_path, model, prompt).unwrap();
            assert_eq!(other.len(), 0);
        }
        let mut s = Sample::new("nice weather", "other");
        s.label_logprob = Some(0.7);
        cache.insert(s).unwrap();
        let teacher = cache.answers(&test, &labels()).unwrap();
        assert_eq!(teacher.predicted, vec![0, 0, 2]);

        let comparison = Comparison::compute(
            &test,
            &labels(),
            Some("other"),
            &student,
            Some(("teacher-a", &teacher)),
        )
        .unwrap();
        assert!((comparison.student.accuracy - 2.0 / 3.0).abs() < 1e-9);
        let t = comparison.teacher.as_ref().unwrap();
        assert!((t.metrics.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(comparison.student_minus_teacher.unwrap().accuracy, 0.0);
        assert!((comparison.agreement.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        // The student sends `nice weather` to refund with probability 0.45: routing below
        // 0.475 fixes it.
        let routing = comparison.student.catch_all.as_ref().unwrap();
        assert!((routing.threshold - 0.475).abs() < 1e-6, "{routing:?}");
        assert_eq!(routing.accuracy, 1.0);

        let messages = scored_messages(&test, &labels(), &student, Some(&teacher));
        let out = dir.path().join("out");
        let written = write_outputs(&out, &comparison, &messages).unwrap();
        assert_eq!(written.len(), 5);
        let back: Comparison =
            serde_json::from_slice(&fs_err::read(out.join(files::METRICS)).unwrap()).unwrap();
        assert_eq!(back, comparison);
    }
}
