//! The JSONL store every stage reads and writes: a forgiving reader that keeps the good
//! records and names every bad line, and an append-only writer that survives `kill -9`.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sample::Sample;
use crate::text::char_len;

/// Longest message accepted by default, in characters.
pub const DEFAULT_MAX_CHARS: usize = 512;

/// One bad line: `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// The good records of a file and an error for every line that was not one.
#[derive(Debug)]
pub struct ReadReport<T> {
    pub records: Vec<T>,
    pub errors: Vec<LineError>,
}

/// What makes a sample acceptable to [`read_samples`].
#[derive(Debug, Clone)]
pub struct SampleRules<'a> {
    /// Known intents; `None` accepts any intent.
    pub intents: Option<&'a [String]>,
    pub max_chars: usize,
}

impl Default for SampleRules<'_> {
    fn default() -> Self {
        SampleRules {
            intents: None,
            max_chars: DEFAULT_MAX_CHARS,
        }
    }
}

/// Reads any JSONL file of `T`, line by line. Blank lines are skipped. A missing file is an
/// I/O error; everything else wrong is a [`LineError`] and the reading goes on.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> std::io::Result<ReadReport<T>> {
    read_lines(path, |line| {
        serde_json::from_str(line).map_err(describe_json_error)
    })
}

/// Reads sample records. A record may say `label` instead of `intent` (the usual name in
/// labelled data sets) and may leave out `id`, which is then computed from the text.
pub fn read_samples(path: &Path, rules: &SampleRules<'_>) -> std::io::Result<ReadReport<Sample>> {
    read_lines(path, |line| parse_sample(line, rules))
}

fn parse_sample(line: &str, rules: &SampleRules<'_>) -> Result<Sample, String> {
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(describe_json_error)?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    if !object.contains_key("intent")
        && let Some(label) = object.remove("label")
    {
        object.insert("intent".into(), label);
    }
    if !object.contains_key("id") {
        let text = object
            .get("text")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        object.insert("id".into(), Sample::id_for(text).into());
    }
    let sample: Sample = serde_json::from_value(value).map_err(describe_json_error)?;
    if sample.text.trim().is_empty() {
        return Err("empty text".into());
    }
    let len = char_len(&sample.text);
    if len > rules.max_chars {
        return Err(format!(
            "text is {len} characters long, over the limit of {}",
            rules.max_chars
        ));
    }
    if let Some(intents) = rules.intents
        && !intents.contains(&sample.intent)
    {
        return Err(format!("unknown intent `{}`", sample.intent));
    }
    Ok(sample)
}

fn describe_json_error(e: serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        serde_json::error::Category::Eof => format!("truncated JSON ({e})"),
        _ => format!("bad JSON ({e})"),
    }
}

fn read_lines<T>(
    path: &Path,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> std::io::Result<ReadReport<T>> {
    let bytes = fs_err::read(path)?;
    let mut report = ReadReport {
        records: Vec::new(),
        errors: Vec::new(),
    };
    let ends_cleanly = bytes.last().is_none_or(|&b| b == b'\n');
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (index, raw) in lines.into_iter().enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = index + 1;
        let result = match std::str::from_utf8(raw) {
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
            Ok(text) => parse(text),
        };
        match result {
            Ok(record) => report.records.push(record),
            Err(mut message) => {
                if index == last && !ends_cleanly {
                    message.push_str("; the last line has no newline: an interrupted write?");
                }
                report.errors.push(LineError {
                    path: path.to_path_buf(),
                    line,
                    message,
                });
            }
        }
    }
    Ok(report)
}

/// An append-only JSONL writer: each record is written with one `write` call, then flushed and
/// synced, so a killed process loses at most the record being written. If the file ends in a
/// torn line, a newline is added first so that the torn line stays alone and the reader reports
/// it instead of merging it with the next record.
pub struct JsonlWriter {
    file: fs_err::File,
    sync: bool,
    buffer: Vec<u8>,
}

impl JsonlWriter {
    /// Opens `path` for appending, creating it (and its parent folders) if needed.
    pub fn append(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs_err::create_dir_all(parent)?;
        }
        let torn = match fs_err::read(path) {
            Ok(bytes) => bytes.last().is_some_and(|&b| b != b'\n'),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let mut file = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        if torn {
            file.write_all(b"\n")?;
        }
        Ok(JsonlWriter {
            file,
            sync: true,
            buffer: Vec::with_capacity(512),
        })
    }

    /// Skips the `fsync` after each record (bulk outputs that are rewritten on failure anyway);
    /// [`JsonlWriter::finish`] still syncs once.
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        self.buffer.clear();
        serde_json::to_writer(&mut self.buffer, record).map_err(std::io::Error::other)?;
        self.buffer.push(b'\n');
        self.file.write_all(&self.buffer)?;
        if self.sync {
            self.file.flush()?;
            self.file.file().sync_data()?;
        }
        Ok(())
    }

    /// Flushes and syncs what was written.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.file().sync_all()
    }
}

/// Writes a whole JSONL file atomically: into a temporary file beside it, then renamed over it.
pub fn write_jsonl_atomic<T: Serialize>(
    path: &Path,
    records: impl IntoIterator<Item = T>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let _ = fs_err::remove_file(&tmp);
    let mut writer = JsonlWriter::append(&tmp)?.without_sync();
    for record in records {
        writer.write(&record)?;
    }
    writer.finish()?;
    fs_err::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_line_and_keeps_the_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let good = serde_json::to_string(&Sample::new("where is my parcel", "shipping")).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(format!("{good}\n").as_bytes());
        bytes.extend_from_slice(b"{not json\n");
        bytes.extend_from_slice(b"{\"id\":\"x\",\"intent\":\"shipping\"}\n");
        bytes.extend_from_slice(b"{\"text\":\"hi\",\"intent\":\"nope\"}\n");
        bytes.extend_from_slice(b"\n");
        bytes.extend_from_slice(b"{\"text\":\"   \",\"intent\":\"shipping\"}\n");
        bytes.extend_from_slice(b"{\"text\":\"\xff\xfe\",\"intent\":\"shipping\"}\n");
        bytes.extend_from_slice(
            format!(
                "{{\"text\":\"{}\",\"label\":\"shipping\"}}\n",
                "a".repeat(600)
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(b"{\"text\":\"ok\",\"label\":\"shipping\"}\n");
        bytes.extend_from_slice(b"{\"text\":\"torn");
        fs_err::write(&path, bytes).unwrap();

        let intents = vec!["shipping".to_string()];
        let rules = SampleRules {
            intents: Some(&intents),
            max_chars: DEFAULT_MAX_CHARS,
        };
        let report = read_samples(&path, &rules).unwrap();
        assert_eq!(report.records.len(), 2);
        assert_eq!(report.records[1].id, Sample::id_for("ok"));
        let lines: Vec<usize> = report.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 6, 7, 8, 10]);
        let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert!(
            messages[0].ends_with("s.jsonl:2: bad JSON (key must be a string at line 1 column 2)"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("missing field `text`"),
            "{}",
            messages[1]
        );
        assert!(messages[2].contains("unknown intent `nope`"));
        assert!(messages[3].contains("empty text"));
        assert!(messages[4].contains("invalid UTF-8"));
        assert!(messages[5].contains("over the limit"));
        assert!(messages[6].contains("interrupted write"), "{}", messages[6]);
    }

    #[test]
    fn writer_isolates_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        fs_err::write(&path, "{\"text\":\"to").unwrap();
        let mut writer = JsonlWriter::append(&path).unwrap();
        writer.write(&Sample::new("hello", "other")).unwrap();
        writer.finish().unwrap();
        let report = read_samples(&path, &SampleRules::default()).unwrap();
        assert_eq!(report.records.len(), 1);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(report.errors[0].line, 1);
    }
}
