//! The predict stage: classifies messages read from a file or stdin (plain lines or JSONL) and
//! writes one JSONL record per message, in input order. A reader thread parses ahead while the
//! classifier works; each classifier call takes what has arrived, up to a window of several
//! batches, so a large file runs in full windows (which the classifier sorts by length before
//! cutting them into batches, to pad little) and a message typed on a terminal is answered at
//! once.

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prompt2lora_core::{Classifier, Prediction};
use serde::{Deserialize, Serialize};

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// JSONL if the first non-blank line is a JSON object with a `text` string, else lines.
    #[default]
    Auto,
    /// Every non-blank line is one message.
    Lines,
    /// Every non-blank line is a JSON object with a `text` string and optionally an `id`.
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Most messages classified in one call. The classifier sorts them by length and cuts them
    /// into forward passes of its own batch size, so a window of several batches pads less
    /// than one batch taken in input order. Only messages that have already arrived are taken
    /// (see `max_wait`), so a larger window adds no latency. Default 256.
    pub window: usize,
    /// Intents reported per message: the best and `top_k - 1` alternatives. Default 3.
    pub top_k: usize,
    pub format: InputFormat,
    /// How long a partly filled window waits for more input before it runs. Default 0: a
    /// window takes what has arrived, which fills it from files and adds no latency on a
    /// terminal.
    pub max_wait: Duration,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            window: 256,
            top_k: 3,
            format: InputFormat::Auto,
            max_wait: Duration::ZERO,
        }
    }
}

/// An intent with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub intent: String,
    pub probability: f32,
}

/// A prediction as written to JSONL and returned over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    pub intent: String,
    pub probability: f32,
    /// The next most probable intents, best first.
    pub alternatives: Vec<Ranked>,
}

impl From<Prediction> for PredictionRecord {
    fn from(p: Prediction) -> Self {
        PredictionRecord {
            intent: p.intent,
            probability: p.probability,
            alternatives: p
                .alternatives
                .into_iter()
                .map(|(intent, probability)| Ranked {
                    intent,
                    probability,
                })
                .collect(),
        }
    }
}

/// One output line: where the message was, its `id` if the input had one, and the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// 1-based line number in the input.
    pub line: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    pub text: String,
    #[serde(flatten)]
    pub prediction: PredictionRecord,
}

/// A line of input that is not a message: `name:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// What a predict run did.
#[derive(Debug, Clone, Default)]
pub struct PredictSummary {
    pub messages: usize,
    /// Classifier calls (windows).
    pub calls: usize,
    /// Time spent in the classifier.
    pub classify_time: Duration,
    pub bad_lines: Vec<BadLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("cannot read the input")]
    Read(#[source] std::io::Error),
    #[error("cannot write the output")]
    Write(#[source] std::io::Error),
    #[error("the classifier failed on the messages starting at input line {line}")]
    Classifier {
        line: usize,
        #[source]
        source: prompt2lora_core::ModelError,
    },
}

struct Message {
    line: usize,
    id: Option<serde_json::Value>,
    text: String,
}

enum Item {
    Message(Message),
    Bad(BadLine),
    Failed(std::io::Error),
}

/// Classifies every message of `input` and writes one [`OutputRecord`] per message to
/// `output`, flushing after each classifier call. Bad lines are skipped, logged and returned in the
/// summary; `source` names the input in those logs.
///
/// The input is read on its own thread, which is left to end by itself if the classifier or
/// the output fails first (it stops at its next line, or at the end of an idle stdin).
pub fn predict_stream(
    classifier: &dyn Classifier,
    input: impl BufRead + Send + 'static,
    output: impl Write,
    source: &str,
    options: &PredictOptions,
) -> Result<PredictSummary, PredictError> {
    let (sender, receiver) = mpsc::sync_channel(options.window.max(1) * 2);
    let format = options.format;
    std::thread::Builder::new()
        .name("predict-reader".into())
        .spawn(move || read_messages(input, format, &sender))
        .map_err(PredictError::Read)?;
    run_windows(classifier, receiver, output, source, options)
}

fn run_windows(
    classifier: &dyn Classifier,
    receiver: mpsc::Receiver<Item>,
    mut output: impl Write,
    source: &str,
    options: &PredictOptions,
) -> Result<PredictSummary, PredictError> {
    let mut summary = PredictSummary::default();
    let mut batch = Vec::with_capacity(options.window.max(1));
    let mut buffer = Vec::new();
    loop {
        // Collect a window: block for its first message, then take what arrives in time.
        let mut ended = false;
        let mut deadline = None;
        while batch.len() < options.window.max(1) {
            let item = match deadline {
                None => receiver
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(deadline) => receiver.recv_timeout(deadline - Instant::now().min(deadline)),
            };
            match item {
                Ok(Item::Message(message)) => {
                    deadline.get_or_insert_with(|| Instant::now() + options.max_wait);
                    batch.push(message);
                }
                Ok(Item::Bad(bad)) => {
                    tracing::warn!("{source}:{}: {}", bad.line, bad.message);
                    summary.bad_lines.push(bad);
                }
                Ok(Item::Failed(e)) => return Err(PredictError::Read(e)),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            write_window(
                classifier,
                &mut batch,
                &mut buffer,
                &mut output,
                options,
                &mut summary,
            )?;
        }
        if ended {
            return Ok(summary);
        }
    }
}

fn write_window(
    classifier: &dyn Classifier,
    batch: &mut Vec<Message>,
    buffer: &mut Vec<u8>,
    output: &mut impl Write,
    options: &PredictOptions,
    summary: &mut PredictSummary,
) -> Result<(), PredictError> {
    let texts: Vec<&str> = batch.iter().map(|m| m.text.as_str()).collect();
    let started = Instant::now();
    let predictions = classifier
        .predict(&texts, options.top_k)
        .map_err(|source| PredictError::Classifier {
            line: batch[0].line,
            source,
        })?;
    summary.classify_time += started.elapsed();
    buffer.clear();
    for (message, prediction) in batch.drain(..).zip(predictions) {
        let record = OutputRecord {
            line: message.line,
            id: message.id,
            text: message.text,
            prediction: prediction.into(),
        };
        serde_json::to_writer(&mut *buffer, &record).expect("records serialise");
        buffer.push(b'\n');
        summary.messages += 1;
    }
    summary.calls += 1;
    output
        .write_all(buffer)
        .and_then(|()| output.flush())
        .map_err(PredictError::Write)
}

/// The reader thread: parses lines into messages until the input ends or the receiver hangs up.
fn read_messages(input: impl BufRead, format: InputFormat, sender: &mpsc::SyncSender<Item>) {
    let mut format = format;
    for (index, line) in input.lines().enumerate() {
        let line_number = index + 1;
        let item = match line {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Item::Bad(BadLine {
                line: line_number,
                message: "invalid UTF-8".into(),
            }),
            Err(e) => Item::Failed(e),
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => {
                if format == InputFormat::Auto {
                    format = if parse_json(&line).is_ok() {
                        InputFormat::Jsonl
                    } else {
                        InputFormat::Lines
                    };
                }
                parse_line(line, line_number, format)
            }
        };
        let failed = matches!(item, Item::Failed(_));
        if sender.send(item).is_err() || failed {
            return;
        }
    }
}

fn parse_line(line: String, number: usize, format: InputFormat) -> Item {
    if format != InputFormat::Jsonl {
        let text = line.strip_suffix('\r').unwrap_or(&line).to_string();
        return Item::Message(Message {
            line: number,
            id: None,
            text,
        });
    }
    match parse_json(&line) {
        Ok((id, text)) => Item::Message(Message {
            line: number,
            id,
            text,
        }),
        Err(message) => Item::Bad(BadLine {
            line: number,
            message,
        }),
    }
}

fn parse_json(line: &str) -> Result<(Option<serde_json::Value>, String), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad JSON ({e})"))?;
    let serde_json::Value::Object(mut object) = value else {
        return Err("not a JSON object".into());
    };
    let text = match object.remove("text") {
        Some(serde_json::Value::String(text)) if !text.trim().is_empty() => text,
        Some(serde_json::Value::String(_)) => return Err("empty text".into()),
        Some(_) => return Err("`text` is not a string".into()),
        None => return Err("missing field `text`".into()),
    };
    Ok((object.remove("id"), text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt2lora_core::ModelResult;
    use std::sync::Mutex;

    /// Says `long` for texts over ten characters; records each batch size.
    struct Lengths {
        labels: Vec<String>,
        batches: Mutex<Vec<usize>>,
    }

    impl Lengths {
        fn new() -> Self {
            Lengths {
                labels: vec!["short".into(), "long".into()],
                batches: Mutex::new(Vec::new()),
            }
        }
    }

    impl Classifier for Lengths {
        fn labels(&self) -> &[String] {
            &self.labels
        }
        fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
            self.batches.lock().unwrap().push(texts.len());
            Ok(texts
                .iter()
                .map(|t| {
                    if t.chars().count() > 10 {
                        vec![0.2, 0.8]
                    } else {
                        vec![0.9, 0.1]
                    }
                })
                .collect())
        }
    }

    fn run(
        input: &str,
        options: &PredictOptions,
    ) -> (Vec<OutputRecord>, PredictSummary, Vec<usize>) {
        let classifier = Lengths::new();
        let mut out = Vec::new();
        let input = std::io::Cursor::new(input.to_string());
        let summary = predict_stream(&classifier, input, &mut out, "input", options).unwrap();
        let records = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (records, summary, classifier.batches.into_inner().unwrap())
    }

    #[test]
    fn plain_lines_in_full_windows_and_order() {
        let input: String = (0..70)
            .map(|i| format!("message number {i}\nhi\n"))
            .collect();
        let options = PredictOptions {
            window: 32,
            max_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let (records, summary, batches) = run(&input, &options);
        assert_eq!(summary.messages, 140);
        assert_eq!(summary.calls, 5);
        assert_eq!(batches, vec![32, 32, 32, 32, 12]);
        assert_eq!(records[0].text, "message number 0");
        assert_eq!(records[0].prediction.intent, "long");
        assert_eq!(
            records[0].prediction.alternatives,
            vec![Ranked {
                intent: "short".into(),
                probability: 0.2
            }]
        );
        assert_eq!(records[1].line, 2);
        assert_eq!(records[1].prediction.intent, "short");
        assert_eq!(records[139].line, 140);
    }

    #[test]
    fn default_window_takes_several_batches_in_one_call() {
        let input: String = (0..300).map(|i| format!("message {i}\n")).collect();
        let options = PredictOptions {
            max_wait: Duration::from_secs(5),
            ..Default::default()
        };
        let (records, summary, calls) = run(&input, &options);
        assert_eq!(calls, vec![256, 44]);
        assert_eq!(summary.calls, 2);
        let lines: Vec<usize> = records.iter().map(|r| r.line).collect();
        assert_eq!(lines, (1..=300).collect::<Vec<_>>());
    }

    #[test]
    fn jsonl_keeps_ids_and_reports_bad_lines() {
        let input = "{\"id\": 7, \"text\": \"where is my parcel\"}\n\n{\"text\": \"\"}\n{oops\n\
                     {\"text\": 3}\n{\"id\": \"b\", \"text\": \"ok\"}\n";
        let (records, summary, _) = run(input, &PredictOptions::default());
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].id, Some(serde_json::json!(7)));
        assert_eq!(records[1].line, 6);
        let bad: Vec<(usize, &str)> = summary
            .bad_lines
            .iter()
            .map(|b| (b.line, b.message.as_str()))
            .collect();
        assert_eq!(bad[0], (3, "empty text"));
        assert_eq!(bad[1].0, 4);
        assert!(bad[1].1.starts_with("bad JSON"));
        assert_eq!(bad[2], (5, "`text` is not a string"));
    }

    #[test]
    fn auto_format_reads_text_that_merely_starts_with_a_brace_as_lines() {
        let (records, summary, _) = run("{not json} hello\nsecond\n", &PredictOptions::default());
        assert_eq!(records.len(), 2);
        assert!(summary.bad_lines.is_empty());
        assert_eq!(records[0].text, "{not json} hello");
    }

    #[test]
    fn output_shape_is_flat() {
        let (records, _, _) = run(
            "hello\n",
            &PredictOptions {
                top_k: 1,
                ..Default::default()
            },
        );
        let json = serde_json::to_value(&records[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"line": 1, "text": "hello", "intent": "short",
                               "probability": 0.9f32, "alternatives": []})
        );
    }
}
