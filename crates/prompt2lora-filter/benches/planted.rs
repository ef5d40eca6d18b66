//! Benchmark of the filter's duplicate stages on a set with planted duplicates (made by
//! `bench/filter_planted.py`): recall and precision per kind of duplicate, a threshold sweep,
//! wall time and peak memory of the filter after embedding, and the embedder's throughput.
//!
//! ```text
//! cargo bench -p prompt2lora-filter --bench planted -- DIR [--embedder NAME] [--sweep] [--limit N]
//! ```
//!
//! Embeddings are computed once with the real embedder and cached in
//! `DIR/embeddings-<embedder>.bin`, so that sweeps and timing runs measure the filter alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prompt2lora_core::{Embedder, ModelResult, Reject, Task};
use prompt2lora_filter::{FilterOptions, FilterOutcome, filter, read_input};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: planted DIR [--embedder NAME] [--sweep] [--limit N] [--no-semantic]");
        std::process::exit(2);
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let sweep = args.iter().any(|a| a == "--sweep");
    let semantic = !args.iter().any(|a| a == "--no-semantic");
    let limit: Option<usize> = flag("--limit").map(|n| n.parse().expect("--limit N"));

    let task = Task::load(&dir.join("task.toml")).expect("task.toml");
    let embedder_name = flag("--embedder")
        .cloned()
        .unwrap_or_else(|| task.embedder());
    let mut input = read_input(&dir.join("samples.jsonl")).expect("samples.jsonl");
    if let Some(limit) = limit {
        input.samples.truncate(limit);
    }
    let truth = Truth::load(&dir.join("truth.jsonl"));
    println!(
        "# {} samples, {} planted copies, embedder {embedder_name}",
        input.samples.len(),
        truth.kind.len()
    );

    let texts: Vec<&str> = input.samples.iter().map(|s| s.text.as_str()).collect();
    let cached = semantic.then(|| CachedEmbedder::load_or_compute(&dir, &embedder_name, &texts));
    let embedder = cached.as_ref().map(|c| c as &dyn Embedder);
    // Restart the peak-memory count, so that it covers the filter (Linux: clear_refs 5).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_rss_kib();

    let mut options = FilterOptions::from_task(&task);
    options.semantic = semantic;
    let started = Instant::now();
    let outcome = filter(input.samples.clone(), &task, embedder, &options).expect("filter");
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "filter after embedding: {seconds:.2} s wall, peak RSS {} MiB (resident before filtering {} MiB), threads {}",
        peak_rss_kib() / 1024,
        rss_before / 1024,
        rayon::current_num_threads()
    );
    for stage in &outcome.report.funnel {
        println!(
            "  {:<20} removed {:>6} in {:>7.2} s",
            stage.stage, stage.removed, stage.seconds
        );
    }
    println!("\n| near | semantic | kind | planted | caught | recall |\n|---|---|---|---|---|---|");
    let score = truth.score(&outcome);
    score.print_rows(&options);
    println!("\nprecision at defaults: {}", score.precision_line());

    if sweep {
        println!(
            "\n| near | semantic | recall exact | recall one-char | recall paraphrase | recall all | precision | false positives |\n|---|---|---|---|---|---|---|---|"
        );
        let semantic_thresholds: &[f64] = if semantic {
            &[0.85, 0.88, 0.9, 0.92, 0.95]
        } else {
            &[1.0]
        };
        for near in [0.7, 0.8, 0.85, 0.9, 0.95] {
            for &sem in semantic_thresholds {
                let mut options = FilterOptions::from_task(&task);
                options.settings.near_duplicate_threshold = near;
                options.settings.semantic_threshold = sem;
                options.semantic = semantic;
                let outcome =
                    filter(input.samples.clone(), &task, embedder, &options).expect("filter");
                let s = truth.score(&outcome);
                println!(
                    "| {near} | {sem} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                    s.recall("exact"),
                    s.recall("one_char"),
                    s.recall("paraphrase"),
                    s.recall_all(),
                    s.precision(),
                    s.false_positives.len()
                );
            }
        }
    }
}

/// Which sample is a planted copy of which original.
struct Truth {
    /// copy id -> (original id, kind)
    kind: HashMap<String, (String, String)>,
}

struct Score {
    planted: HashMap<String, usize>,
    caught: HashMap<String, usize>,
    credited: std::collections::HashSet<String>,
    true_positives: usize,
    false_positives: Vec<(String, String, String)>,
    by_stage: HashMap<String, usize>,
}

impl Truth {
    fn load(path: &Path) -> Truth {
        let text = std::fs::read_to_string(path).expect("truth.jsonl");
        let kind = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("truth line");
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                (s("id"), (s("original"), s("kind")))
            })
            .collect();
        Truth { kind }
    }

    fn group<'a>(&'a self, id: &'a str) -> &'a str {
        self.kind
            .get(id)
            .map_or(id, |(original, _)| original.as_str())
    }

    /// A duplicate reject is right when it and the sample it duplicates are one original and
    /// its copies; it is credited to the kind of the copy in the pair.
    fn score(&self, outcome: &FilterOutcome) -> Score {
        let mut planted: HashMap<String, usize> = HashMap::new();
        for (_, kind) in self.kind.values() {
            *planted.entry(kind.clone()).or_default() += 1;
        }
        let present: std::collections::HashSet<&str> = outcome
            .kept
            .iter()
            .map(|s| s.id.as_str())
            .chain(outcome.rejects.iter().map(|r| r.sample.id.as_str()))
            .collect();
        planted.clear();
        for (id, (original, kind)) in &self.kind {
            if present.contains(id.as_str()) && present.contains(original.as_str()) {
                *planted.entry(kind.clone()).or_default() += 1;
            }
        }
        let mut score = Score {
            planted,
            caught: HashMap::new(),
            credited: Default::default(),
            true_positives: 0,
            false_positives: Vec::new(),
            by_stage: HashMap::new(),
        };
        for reject in outcome.rejects.iter().filter(|r| is_duplicate_stage(r)) {
            let id = reject.sample.id.as_str();
            let other = reject.duplicate_of.as_deref().unwrap_or_default();
            if self.group(id) == self.group(other) {
                score.true_positives += 1;
                let copy = if self.kind.contains_key(id) {
                    id
                } else {
                    other
                };
                // Each copy is credited once, whichever member of its group was removed.
                if let Some((_, kind)) = self.kind.get(copy)
                    && score.credited.insert(copy.to_string())
                {
                    *score.caught.entry(kind.clone()).or_default() += 1;
                }
                *score.by_stage.entry(reject.stage.clone()).or_default() += 1;
            } else {
                let kept_text = outcome
                    .kept
                    .iter()
                    .chain(outcome.rejects.iter().map(|r| &r.sample))
                    .find(|s| s.id == other)
                    .map(|s| s.text.clone())
                    .unwrap_or_default();
                score.false_positives.push((
                    reject.stage.clone(),
                    reject.sample.text.clone(),
                    kept_text,
                ));
            }
        }
        score
    }
}

fn is_duplicate_stage(r: &Reject) -> bool {
    matches!(
        r.stage.as_str(),
        "exact_duplicate" | "near_duplicate" | "semantic_duplicate"
    )
}

impl Score {
    fn recall(&self, kind: &str) -> f64 {
        let planted = self.planted.get(kind).copied().unwrap_or(0);
        self.caught.get(kind).copied().unwrap_or(0) as f64 / planted.max(1) as f64
    }

    fn recall_all(&self) -> f64 {
        let planted: usize = self.planted.values().sum();
        self.caught.values().sum::<usize>() as f64 / planted.max(1) as f64
    }

    fn precision(&self) -> f64 {
        let removed = self.true_positives + self.false_positives.len();
        self.true_positives as f64 / removed.max(1) as f64
    }

    fn precision_line(&self) -> String {
        let mut examples = String::new();
        for (stage, text, kept) in self.false_positives.iter().take(12) {
            examples.push_str(&format!("\n  {stage}: {text:?} ~ {kept:?}"));
        }
        format!(
            "{:.3} ({} right, {} false; right by stage {:?}){examples}",
            self.precision(),
            self.true_positives,
            self.false_positives.len(),
            self.by_stage
        )
    }

    fn print_rows(&self, options: &FilterOptions) {
        let s = &options.settings;
        for kind in ["exact", "one_char", "paraphrase"] {
            println!(
                "| {} | {} | {kind} | {} | {} | {:.3} |",
                s.near_duplicate_threshold,
                s.semantic_threshold,
                self.planted.get(kind).copied().unwrap_or(0),
                self.caught.get(kind).copied().unwrap_or(0),
                self.recall(kind)
            );
        }
        println!(
            "| {} | {} | all | {} | {} | {:.3} |",
            s.near_duplicate_threshold,
            s.semantic_threshold,
            self.planted.values().sum::<usize>(),
            self.caught.values().sum::<usize>(),
            self.recall_all()
        );
    }
}

/// Replays embeddings computed once by the real embedder.
struct CachedEmbedder {
    rows: HashMap<String, Vec<f32>>,
}

impl CachedEmbedder {
    fn load_or_compute(dir: &Path, name: &str, texts: &[&str]) -> CachedEmbedder {
        let file = dir.join(format!("embeddings-{}.bin", name.replace(['/', ':'], "_")));
        let mut rows = read_cache(&file).unwrap_or_default();
        let missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !rows.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            let embedder =
                prompt2lora_encoder::SentenceEmbedder::load(name, 128).expect("embedder");
            // Throughput on a fixed slice, before the bulk of the work.
            let probe: Vec<&str> = missing.iter().copied().take(2048).collect();
            let started = Instant::now();
            let vectors = embedder.embed(&probe).expect("embed");
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "embedding throughput: {} sentences in {seconds:.1} s = {:.1} sentences/s ({} threads)",
                probe.len(),
                probe.len() as f64 / seconds,
                rayon::current_num_threads()
            );
            rows.extend(probe.iter().map(|t| t.to_string()).zip(vectors));
            let rest: Vec<&str> = missing.iter().copied().skip(probe.len()).collect();
            for chunk in rest.chunks(4096) {
                let vectors = embedder.embed(chunk).expect("embed");
                rows.extend(chunk.iter().map(|t| t.to_string()).zip(vectors));
                eprintln!("embedded {} of {}", rows.len(), texts.len());
                write_cache(&file, &rows);
            }
            write_cache(&file, &rows);
        }
        CachedEmbedder { rows }
    }
}

impl Embedder for CachedEmbedder {
    fn embed(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        texts
            .iter()
            .map(|t| {
                self.rows
                    .get(*t)
                    .cloned()
                    .ok_or_else(|| format!("not in the cache: {t:?}").into())
            })
            .collect()
    }
}

/// Cache format, per text: u32 byte length, the UTF-8 bytes, u32 dimension, the f32 values;
/// all little-endian.
fn read_cache(path: &Path) -> Option<HashMap<String, Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    let mut rows = HashMap::new();
    let mut at = 0;
    let u32_at = |at: &mut usize| {
        let v = u32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap()) as usize;
        *at += 4;
        v
    };
    while at < bytes.len() {
        let len = u32_at(&mut at);
        let text = String::from_utf8(bytes[at..at + len].to_vec()).ok()?;
        at += len;
        let dim = u32_at(&mut at);
        let values = bytes[at..at + 4 * dim]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        at += 4 * dim;
        rows.insert(text, values);
    }
    Some(rows)
}

fn write_cache(path: &Path, rows: &HashMap<String, Vec<f32>>) {
    let mut out = Vec::new();
    for (text, values) in rows {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&(values.len() as u32).to_le_bytes());
        values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    std::fs::write(path, out).expect("write cache");
}

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
