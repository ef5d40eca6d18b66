//! Stage 6: the combined confidence of each sample, its histogram per intent, and the cut that
//! keeps the most confident share of every intent (or every sample above a threshold).
//!
//! The combined confidence is a weighted mean of the teacher's signals that a sample carries:
//! the probability of its label from token log-probabilities (weight [`WEIGHT_LOGPROB`]) and
//! the agreement of repeated labelling (weight [`WEIGHT_AGREEMENT`]); the weights are
//! renormalised over the signals present. The confidence the teacher writes in words is only a
//! tie-breaker, and the score itself when it is the only signal: small teachers write 0.9 for
//! almost everything, so it carries little information.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prompt2lora_core::Sample;
use prompt2lora_core::task::FilterSettings;
use serde::{Deserialize, Serialize};

use crate::report::{IntentReport, sparkline};
use crate::{Candidate, StageOutput};

/// Buckets of every confidence histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0].
pub const BUCKETS: usize = 10;
/// Weight of `label_logprob` in the combined confidence.
pub const WEIGHT_LOGPROB: f64 = 0.75;
/// Weight of `agreement` in the combined confidence.
pub const WEIGHT_AGREEMENT: f64 = 0.25;

/// The combined confidence of a sample in [0, 1], or `None` when it carries no signal (a seed
/// example or an imported record: such samples pass the confidence cut).
pub fn combined(sample: &Sample) -> Option<f64> {
    let signal = |value: Option<f64>| value.filter(|v| v.is_finite()).map(|v| v.clamp(0.0, 1.0));
    let weighted = [
        (signal(sample.label_logprob), WEIGHT_LOGPROB),
        (signal(sample.agreement), WEIGHT_AGREEMENT),
    ];
    let total: f64 = weighted
        .iter()
        .filter(|(v, _)| v.is_some())
        .map(|(_, w)| w)
        .sum();
    if total > 0.0 {
        let sum: f64 = weighted.iter().filter_map(|(v, w)| v.map(|v| v * w)).sum();
        return Some(sum / total);
    }
    signal(sample.confidence)
}

/// The confidence stage's record: how the score is made and, per intent, its histogram and cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceSummary {
    pub weight_logprob: f64,
    pub weight_agreement: f64,
    /// The share of each intent kept, when the cut is relative.
    pub keep_fraction: Option<f64>,
    /// The absolute threshold, when one was given.
    pub min_confidence: Option<f64>,
    pub intents: Vec<IntentConfidence>,
}

/// Confidence of the samples of one intent that reached the confidence stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentConfidence {
    pub intent: String,
    /// Samples with a combined confidence.
    pub scored: usize,
    /// Samples without any signal; they are kept.
    pub unscored: usize,
    /// Scored samples per bucket of width 0.1, before the cut.
    pub histogram: [usize; BUCKETS],
    /// The same for the samples kept.
    pub kept_histogram: [usize; BUCKETS],
    /// Lowest combined confidence kept; `None` when nothing scored was kept.
    pub cut: Option<f64>,
    pub mean: Option<f64>,
    pub removed: usize,
}

/// The histogram bucket of a score.
pub fn bucket(score: f64) -> usize {
    ((score * BUCKETS as f64).floor().max(0.0) as usize).min(BUCKETS - 1)
}

pub(crate) fn run(candidates: Vec<Candidate>, settings: &FilterSettings) -> StageOutput {
    let mut by_intent: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for candidate in candidates {
        by_intent
            .entry(candidate.sample.intent.clone())
            .or_default()
            .push(candidate);
    }
    let mut output = StageOutput::new(Vec::new(), Vec::new());
    let mut summaries = Vec::new();
    for (intent, group) in by_intent {
        let (kept, removed, summary) = cut_intent(&intent, group, settings);
        output.kept.extend(kept);
        output.rejects.extend(removed);
        summaries.push(summary);
    }
    output.confidence = Some(ConfidenceSummary {
        weight_logprob: WEIGHT_LOGPROB,
        weight_agreement: WEIGHT_AGREEMENT,
        keep_fraction: settings
            .min_confidence
            .is_none()
            .then_some(settings.keep_fraction),
        min_confidence: settings.min_confidence,
        intents: summaries,
    });
    output
}

/// Keeps the unscored samples and the best-ranked scored ones of one intent. Samples that tie
/// with the last one kept are kept too: the cut never separates samples it cannot tell apart.
fn cut_intent(
    intent: &str,
    group: Vec<Candidate>,
    settings: &FilterSettings,
) -> (
    Vec<Candidate>,
    Vec<prompt2lora_core::Reject>,
    IntentConfidence,
) {
    let (mut scored, unscored): (Vec<Candidate>, Vec<Candidate>) =
        group.into_iter().partition(|c| c.score.is_some());
    let order = crate::rank_order(&scored);
    let mut histogram = [0; BUCKETS];
    for c in &scored {
        histogram[bucket(c.score.unwrap_or(0.0))] += 1;
    }
    let mean = (!scored.is_empty())
        .then(|| scored.iter().filter_map(|c| c.score).sum::<f64>() / scored.len() as f64);

    // The lowest (score, verbalised) key that is kept.
    let key = |c: &Candidate| (c.score.unwrap_or(0.0), c.sample.confidence.unwrap_or(0.0));
    let cut_key = match settings.min_confidence {
        Some(threshold) => Some((threshold, f64::NEG_INFINITY)),
        None => {
            let keep = (settings.keep_fraction * scored.len() as f64).ceil() as usize;
            keep.checked_sub(1)
                .and_then(|last| order.get(last))
                .map(|&i| key(&scored[i]))
        }
    };
    let passes = |c: &Candidate| {
        cut_key.is_some_and(|(score, verbalised)| {
            let (s, v) = key(c);
            s > score || (s == score && v >= verbalised)
        })
    };
    let reason = |c: &Candidate| match settings.min_confidence {
        Some(t) => format!("below threshold: confidence {:.3} < {t:.3}", key(c).0),
        None => format!(
            "below cut: confidence {:.3} is outside the top {:.0}% of `{intent}` (cut {:.3})",
            key(c).0,
            100.0 * settings.keep_fraction,
            cut_key.map_or(f64::NAN, |k| k.0)
        ),
    };

    let mut kept_histogram = [0; BUCKETS];
    let mut rejects = Vec::new();
    let mut kept = unscored;
    let unscored_count = kept.len();
    let mut lowest_kept: Option<f64> = None;
    for c in scored.drain(..) {
        if passes(&c) {
            let score = key(&c).0;
            kept_histogram[bucket(score)] += 1;
            lowest_kept = Some(lowest_kept.map_or(score, |l| l.min(score)));
            kept.push(c);
        } else {
            let reason = reason(&c);
            rejects.push(c.reject("confidence", reason, None));
        }
    }
    let summary = IntentConfidence {
        intent: intent.to_string(),
        scored: kept.len() - unscored_count + rejects.len(),
        unscored: unscored_count,
        histogram,
        kept_histogram,
        cut: lowest_kept,
        mean,
        removed: rejects.len(),
    };
    (kept, rejects, summary)
}

impl ConfidenceSummary {
    /// One line per intent: a bar per bucket from 0.0 to 1.0, the counts and the cut.
    pub fn text_histograms(&self, intents: &[IntentReport]) -> String {
        let order: Vec<&str> = intents.iter().map(|i| i.intent.as_str()).collect();
        let mut rows: Vec<&IntentConfidence> = self.intents.iter().collect();
        rows.sort_by_key(|r| {
            order
                .iter()
                .position(|&o| o == r.intent)
                .unwrap_or(usize::MAX)
        });
        let width = rows
            .iter()
            .map(|r| r.intent.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = String::new();
        let rule = match (self.min_confidence, self.keep_fraction) {
            (Some(t), _) => format!("threshold {t:.2}"),
            (None, Some(f)) => format!("top {:.0}% per intent", 100.0 * f),
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "confidence ({rule}); buckets 0.0 .. 1.0");
        for r in rows {
            let cut = r.cut.map_or("-".to_string(), |c| format!("{c:.2}"));
            let counts: Vec<String> = r.histogram.iter().map(usize::to_string).collect();
            let _ = writeln!(
                out,
                "{:<width$} |{}| scored {:>5}, removed {:>4}, cut {cut:>4}, unscored {}  [{}]",
                r.intent,
                sparkline(&r.histogram),
                r.scored,
                r.removed,
                r.unscored,
                counts.join(" ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        text: &str,
        logprob: Option<f64>,
        agreement: Option<f64>,
        verbal: Option<f64>,
    ) -> Sample {
        let mut s = Sample::new(text, "a");
        s.label_logprob = logprob;
        s.agreement = agreement;
        s.confidence = verbal;
        s
    }

    #[test]
    fn combined_weighs_logprob_over_agreement_and_falls_back_to_words() {
        let both = combined(&sample("x", Some(0.8), Some(0.4), Some(0.99))).unwrap();
        assert!((both - (0.75 * 0.8 + 0.25 * 0.4)).abs() < 1e-12);
        assert_eq!(
            combined(&sample("x", None, Some(0.4), Some(0.9))),
            Some(0.4)
        );
        assert_eq!(combined(&sample("x", None, None, Some(0.9))), Some(0.9));
        assert_eq!(combined(&sample("x", None, None, None)), None);
        assert_eq!(combined(&sample("x", Some(f64::NAN), None, None)), None);
    }

    #[test]
    fn buckets_cover_the_closed_interval() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.0999), 0);
        assert_eq!(bucket(0.1), 1);
        assert_eq!(bucket(0.95), 9);
        assert_eq!(bucket(1.0), 9);
    }
}
