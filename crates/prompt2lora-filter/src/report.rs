//! The filter's account of itself: the funnel (what each stage removed and why), samples per
//! intent, and the confidence histograms. Written as `filter_report.json`; the run report and
//! [`crate::plot`] render it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prompt2lora_core::task::FilterSettings;
use prompt2lora_core::text::char_len;
use prompt2lora_core::{Reject, Sample};
use serde::{Deserialize, Serialize};

use crate::FilterOptions;
use crate::confidence::{BUCKETS, ConfidenceSummary};

/// `filter_report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilterReport {
    /// Records in the input, including lines that could not be read.
    pub input: usize,
    pub kept: usize,
    pub rejected: usize,
    /// Characters of text in the input records that could be read, and in the kept ones: the
    /// training-token saving, measured in characters.
    pub input_chars: usize,
    pub kept_chars: usize,
    /// One entry per stage, in order, starting with `read`.
    pub funnel: Vec<StageReport>,
    /// Samples per intent before and after, in the task's order.
    pub intents: Vec<IntentReport>,
    /// Histograms and cuts of the confidence stage.
    pub confidence: Option<ConfidenceSummary>,
    /// The settings the run used, after command-line overrides.
    pub settings: FilterSettings,
    pub semantic: bool,
    pub embedder: Option<String>,
    /// Things the user should look at (thin intents, skipped stages).
    pub warnings: Vec<String>,
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    /// Samples that entered the stage.
    pub before: usize,
    pub removed: usize,
    pub after: usize,
    /// Removed samples by kind of reason (the part of the reason before its first `:`).
    pub reasons: BTreeMap<String, usize>,
    pub seconds: f64,
    pub notes: Vec<String>,
}

/// One intent before and after filtering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentReport {
    pub intent: String,
    /// Samples that were read with this intent (before validity).
    pub before: usize,
    pub after: usize,
    /// Removed samples of this intent by stage.
    pub removed: BTreeMap<String, usize>,
    /// True when `after` is below `min_per_intent`.
    pub below_minimum: bool,
}

impl FilterReport {
    pub(crate) fn new(input: usize, settings: &FilterSettings, options: &FilterOptions) -> Self {
        FilterReport {
            input,
            kept: 0,
            rejected: 0,
            input_chars: 0,
            kept_chars: 0,
            funnel: Vec::new(),
            intents: Vec::new(),
            confidence: None,
            settings: settings.clone(),
            semantic: options.semantic,
            embedder: options.embedder_name.clone(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn record_stage(
        &mut self,
        stage: &str,
        before: usize,
        removed: usize,
        rejects: &[Reject],
        seconds: f64,
        notes: Vec<String>,
    ) {
        let mut reasons = BTreeMap::new();
        for reject in rejects {
            *reasons
                .entry(reason_kind(&reject.reason).to_string())
                .or_insert(0) += 1;
        }
        self.funnel.push(StageReport {
            stage: stage.into(),
            before,
            removed,
            after: before - removed,
            reasons,
            seconds,
            notes,
        });
    }

    pub(crate) fn finish(&mut self, kept: &[Sample], rejects: &[Reject]) {
        self.kept = kept.len();
        self.rejected = rejects.len();
        self.kept_chars = kept.iter().map(|s| char_len(&s.text)).sum();
        let readable = rejects.iter().filter(|r| r.stage != "read");
        self.input_chars =
            self.kept_chars + readable.map(|r| char_len(&r.sample.text)).sum::<usize>();
        debug_assert_eq!(
            self.kept + self.rejected,
            self.input,
            "kept + rejected must equal input"
        );
    }

    /// The funnel, the samples per intent and the confidence histograms as plain text for the
    /// terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>8} {:>8}  reasons",
            "stage", "in", "removed", "out"
        );
        for stage in &self.funnel {
            let reasons: Vec<String> = stage
                .reasons
                .iter()
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            let mut reasons = reasons.join(", ");
            for note in &stage.notes {
                reasons.push_str(if reasons.is_empty() { "" } else { "; " });
                reasons.push_str(note);
            }
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>8} {:>8}  {reasons}",
                stage.stage, stage.before, stage.removed, stage.after
            );
        }
        let saved = 1.0 - self.kept_chars as f64 / self.input_chars.max(1) as f64;
        let _ = writeln!(
            out,
            "kept {} of {} samples; {} of {} characters ({:.1}% fewer)",
            self.kept,
            self.input,
            self.kept_chars,
            self.input_chars,
            100.0 * saved
        );
        if let Some(confidence) = &self.confidence {
            out.push('\n');
            out.push_str(&confidence.text_histograms(&self.intents));
        }
        out
    }
}

/// The kind of a reject reason: its text up to the first `:`.
pub fn reason_kind(reason: &str) -> &str {
    reason
        .split_once(':')
        .map_or(reason, |(kind, _)| kind)
        .trim()
}

/// Bars for a 10-bucket histogram, one character per bucket, scaled to the largest bucket.
pub(crate) fn sparkline(counts: &[usize; BUCKETS]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .map(|&n| {
            if n == 0 {
                '·'
            } else {
                BARS[(1 + (n * 7).div_ceil(max)).min(8)]
            }
        })
        .collect()
}
