//! Classification metrics of the eval stage: accuracy, macro-F1, per-intent scores, the
//! confusion matrix, calibration and the catch-all routing threshold, computed from gold and
//! predicted intent indices. Serialised as the `student`/`teacher` parts of `metrics.json`.

use serde::{Deserialize, Serialize};

/// Confidence bins of the expected calibration error: ten of equal width over [0, 1].
pub const CALIBRATION_BINS: usize = 10;

/// Scores of one classifier on one test set.
///
/// JSON shape (all rates in [0, 1]):
/// ```json
/// { "labels": ["refund", "other"], "support": 20, "correct": 17,
///   "accuracy": 0.85, "macro_f1": 0.84, "weighted_f1": 0.85,
///   "per_intent": [{ "intent": "refund", "precision": 0.9, "recall": 0.8, "f1": 0.85,
///                    "support": 10, "predicted": 9 }, ...],
///   "confusion": [[8, 2], [1, 9]],
///   "calibration": { "ece": 0.04, "bins": [{ "lower": 0.0, "upper": 0.1, "count": 0,
///                    "confidence": null, "accuracy": null }, ...] },
///   "catch_all": { "intent": "other", "threshold": 0.55, "routed": 3, "accuracy": 0.9,
///                  "macro_f1": 0.89 } }
/// ```
/// `confusion[g][p]` counts messages of gold intent `labels[g]` predicted as `labels[p]`.
/// `calibration` is `null` when no probabilities were given, `catch_all` when the task has no
/// catch-all intent or the test set has no message of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Intent names; the order of `per_intent` and of the confusion matrix.
    pub labels: Vec<String>,
    /// Messages scored.
    pub support: usize,
    /// Messages predicted right.
    pub correct: usize,
    pub accuracy: f64,
    /// Unweighted mean of the F1 of every intent that occurs in the gold labels or the
    /// predictions (scikit-learn's `average="macro"` without an explicit label list).
    pub macro_f1: f64,
    /// Mean F1 weighted by each intent's support.
    pub weighted_f1: f64,
    pub per_intent: Vec<IntentMetrics>,
    pub confusion: Vec<Vec<usize>>,
    pub calibration: Option<Calibration>,
    pub catch_all: Option<CatchAllThreshold>,
}

/// Scores of one intent. A rate whose denominator is zero is 0, as in scikit-learn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentMetrics {
    pub intent: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test messages whose gold intent this is.
    pub support: usize,
    /// Test messages predicted as this intent.
    pub predicted: usize,
}

/// How well the probability of the predicted intent matches how often it is right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: the support-weighted mean over the bins of
    /// |accuracy - mean confidence|.
    pub ece: f64,
    /// [`CALIBRATION_BINS`] bins of equal width; bin `i` holds confidences in
    /// (`lower`, `upper`], the first also holds 0.
    pub bins: Vec<CalibrationBin>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence of the bin; `null` when empty.
    pub confidence: Option<f64>,
    /// Share right in the bin; `null` when empty.
    pub accuracy: Option<f64>,
}

/// The best rule "when the top probability is below `threshold`, answer the catch-all intent",
/// chosen on this test set by macro-F1 (ties go to the lower threshold). A threshold of 0
/// means routing does not help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatchAllThreshold {
    pub intent: String,
    pub threshold: f64,
    /// Messages whose prediction the rule changes to the catch-all intent.
    pub routed: usize,
    /// Accuracy with the rule applied.
    pub accuracy: f64,
    /// Macro-F1 with the rule applied.
    pub macro_f1: f64,
}

/// Inputs that metrics cannot be computed from.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("no messages to score")]
    Empty,
    #[error("{what} has {found} entries for {expected} messages")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("intent index {index} is outside the {labels} labels")]
    Index { index: usize, labels: usize },
    #[error("probability {value} of message {message} is not between 0 and 1")]
    Probability { message: usize, value: f32 },
    #[error("catch-all intent `{0}` is not one of the labels")]
    CatchAll(String),
}

impl Metrics {
    /// Scores `predicted` against `gold` (indices into `labels`). `probs`, where given, is the
    /// probability of each predicted intent; it adds calibration.
    pub fn compute(
        gold: &[usize],
        predicted: &[usize],
        probs: Option<&[f32]>,
        labels: &[String],
    ) -> Result<Metrics, MetricsError> {
        Metrics::compute_with_catch_all(gold, predicted, probs, labels, None)
    }

    /// [`Metrics::compute`], plus the best catch-all threshold where `catch_all` names one of
    /// `labels`, the gold labels include it and `probs` are given.
    pub fn compute_with_catch_all(
        gold: &[usize],
        predicted: &[usize],
        probs: Option<&[f32]>,
        labels: &[String],
        catch_all: Option<&str>,
    ) -> Result<Metrics, MetricsError> {
        check_inputs(gold, predicted, probs, labels.len())?;
        let catch_all = catch_all
            .map(|name| {
                labels
                    .iter()
                    .position(|l| l == name)
                    .ok_or_else(|| MetricsError::CatchAll(name.to_string()))
            })
            .transpose()?;

        let counts = Counts::new(gold, predicted, labels.len());
        let per_intent = (0..labels.len())
            .map(|c| {
                let (precision, recall, f1) = counts.rates(c);
                IntentMetrics {
                    intent: labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support: counts.gold[c],
                    predicted: counts.predicted[c],
                }
            })
            .collect::<Vec<_>>();
        let weighted_f1 = per_intent
            .iter()
            .map(|m| m.f1 * m.support as f64)
            .sum::<f64>()
            / gold.len() as f64;
        let confusion = confusion(gold, predicted, labels.len());

        let calibration = probs.map(|p| calibration(gold, predicted, p));
        let catch_all = match (catch_all, probs) {
            (Some(c), Some(p)) if counts.gold[c] > 0 => {
                Some(best_catch_all_threshold(gold, predicted, p, labels, c))
            }
            _ => None,
        };
        Ok(Metrics {
            labels: labels.to_vec(),
            support: gold.len(),
            correct: counts.correct,
            accuracy: counts.accuracy(),
            macro_f1: counts.macro_f1(),
            weighted_f1,
            per_intent,
            confusion,
            calibration,
            catch_all,
        })
    }

    /// The scores of one intent by name.
    pub fn intent(&self, name: &str) -> Option<&IntentMetrics> {
        self.per_intent.iter().find(|m| m.intent == name)
    }
}

fn check_inputs(
    gold: &[usize],
    predicted: &[usize],
    probs: Option<&[f32]>,
    labels: usize,
) -> Result<(), MetricsError> {
    if gold.is_empty() {
        return Err(MetricsError::Empty);
    }
    let expected = gold.len();
    if predicted.len() != expected {
        return Err(MetricsError::Length {
            what: "predicted",
            found: predicted.len(),
            expected,
        });
    }
    if let Some(probs) = probs {
        if probs.len() != expected {
            return Err(MetricsError::Length {
                what: "probs",
                found: probs.len(),
                expected,
            });
        }
        if let Some((message, &value)) = probs
            .iter()
            .enumerate()
            .find(|(_, p)| !(0.0..=1.0).contains(*p))
        {
            return Err(MetricsError::Probability { message, value });
        }
    }
    match gold.iter().chain(predicted).find(|&&i| i >= labels) {
        Some(&index) => Err(MetricsError::Index { index, labels }),
        None => Ok(()),
    }
}

/// Per-intent counts from which every rate follows; updated in place by the threshold search.
#[derive(Debug, Clone)]
struct Counts {
    gold: Vec<usize>,
    predicted: Vec<usize>,
    true_positives: Vec<usize>,
    correct: usize,
}

impl Counts {
    fn new(gold: &[usize], predicted: &[usize], labels: usize) -> Counts {
        let mut counts = Counts {
            gold: vec![0; labels],
            predicted: vec![0; labels],
            true_positives: vec![0; labels],
            correct: 0,
        };
        for (&g, &p) in gold.iter().zip(predicted) {
            counts.gold[g] += 1;
            counts.predicted[p] += 1;
            if g == p {
                counts.true_positives[g] += 1;
                counts.correct += 1;
            }
        }
        counts
    }

    /// Precision, recall and F1 of intent `c`.
    fn rates(&self, c: usize) -> (f64, f64, f64) {
        let tp = self.true_positives[c] as f64;
        let precision = ratio(tp, self.predicted[c] as f64);
        let recall = ratio(tp, self.gold[c] as f64);
        let f1 = ratio(2.0 * tp, (self.predicted[c] + self.gold[c]) as f64);
        (precision, recall, f1)
    }

    fn accuracy(&self) -> f64 {
        ratio(self.correct as f64, self.gold.iter().sum::<usize>() as f64)
    }

    fn macro_f1(&self) -> f64 {
        let present: Vec<usize> = (0..self.gold.len())
            .filter(|&c| self.gold[c] + self.predicted[c] > 0)
            .collect();
        present.iter().map(|&c| self.rates(c).2).sum::<f64>() / present.len().max(1) as f64
    }

    /// Changes one message's prediction from `from` to `to`.
    fn repredict(&mut self, gold: usize, from: usize, to: usize) {
        self.predicted[from] -= 1;
        self.predicted[to] += 1;
        if gold == from {
            self.true_positives[from] -= 1;
            self.correct -= 1;
        }
        if gold == to {
            self.true_positives[to] += 1;
            self.correct += 1;
        }
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

fn confusion(gold: &[usize], predicted: &[usize], labels: usize) -> Vec<Vec<usize>> {
    let mut matrix = vec![vec![0; labels]; labels];
    for (&g, &p) in gold.iter().zip(predicted) {
        matrix[g][p] += 1;
    }
    matrix
}

fn calibration(gold: &[usize], predicted: &[usize], probs: &[f32]) -> Calibration {
    let mut count = [0usize; CALIBRATION_BINS];
    let mut confidence = [0f64; CALIBRATION_BINS];
    let mut right = [0usize; CALIBRATION_BINS];
    for ((&g, &p), &prob) in gold.iter().zip(predicted).zip(probs) {
        // Bin i holds (i/B, (i+1)/B]; 0 falls into the first bin.
        let bin = ((prob as f64 * CALIBRATION_BINS as f64).ceil() as usize)
            .clamp(1, CALIBRATION_BINS)
            - 1;
        count[bin] += 1;
        confidence[bin] += prob as f64;
        right[bin] += usize::from(g == p);
    }
    let total = gold.len() as f64;
    let mut ece = 0.0;
    let bins = (0..CALIBRATION_BINS)
        .map(|i| {
            let n = count[i] as f64;
            let (mean, accuracy) = if count[i] == 0 {
                (None, None)
            } else {
                let (mean, accuracy) = (confidence[i] / n, right[i] as f64 / n);
                ece += n / total * (accuracy - mean).abs();
                (Some(mean), Some(accuracy))
            };
            CalibrationBin {
                lower: i as f64 / CALIBRATION_BINS as f64,
                upper: (i + 1) as f64 / CALIBRATION_BINS as f64,
                count: count[i],
                confidence: mean,
                accuracy,
            }
        })
        .collect();
    Calibration { ece, bins }
}

/// Tries every threshold that changes the outcome: messages are routed in order of rising
/// probability, updating the counts incrementally, so the search costs O(n log n + n·k).
fn best_catch_all_threshold(
    gold: &[usize],
    predicted: &[usize],
    probs: &[f32],
    labels: &[String],
    catch_all: usize,
) -> CatchAllThreshold {
    let mut order: Vec<usize> = (0..gold.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));

    let mut counts = Counts::new(gold, predicted, labels.len());
    let score = |counts: &Counts| (counts.macro_f1(), counts.accuracy());
    let (mut best_f1, mut best_accuracy) = score(&counts);
    let (mut best_threshold, mut best_routed, mut routed) = (0.0, 0, 0);
    let mut i = 0;
    while i < order.len() {
        // Route every message with this probability at once: a threshold cannot split them.
        let value = probs[order[i]];
        while i < order.len() && probs[order[i]] == value {
            let m = order[i];
            if predicted[m] != catch_all {
                counts.repredict(gold[m], predicted[m], catch_all);
                routed += 1;
            }
            i += 1;
        }
        let next = order.get(i).map_or(1.0, |&m| probs[m]);
        if next <= value {
            // Everything left has probability 1 and cannot be routed by `p < threshold`.
            break;
        }
        let (f1, accuracy) = score(&counts);
        if f1 > best_f1 + 1e-12 {
            // Midway to the next probability, so the rule does not sit on a test message.
            best_threshold = (value as f64 + next as f64) / 2.0;
            (best_f1, best_accuracy, best_routed) = (f1, accuracy, routed);
        }
    }
    CatchAllThreshold {
        intent: labels[catch_all].clone(),
        threshold: best_threshold,
        routed: best_routed,
        accuracy: best_accuracy,
        macro_f1: best_f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    /// Three intents, ten messages; expected values worked out by hand (and matching
    /// scikit-learn's `classification_report` on the same arrays).
    ///
    /// gold:      a a a a b b b c c c
    /// predicted: a a b c b b a c c b
    #[test]
    fn hand_computed_example() {
        let names = labels(&["a", "b", "c"]);
        let gold = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2];
        let predicted = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1];
        let m = Metrics::compute(&gold, &predicted, None, &names).unwrap();

        assert_eq!(m.support, 10);
        assert_eq!(m.correct, 6);
        close(m.accuracy, 0.6);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 1], vec![1, 2, 0], vec![0, 1, 2]]
        );
        // a: tp 2, predicted 3, support 4 -> p 2/3, r 1/2, f1 4/7
        // b: tp 2, predicted 4, support 3 -> p 1/2, r 2/3, f1 4/7
        // c: tp 2, predicted 3, support 3 -> p 2/3, r 2/3, f1 2/3
        let a = m.intent("a").unwrap();
        close(a.precision, 2.0 / 3.0);
        close(a.recall, 0.5);
        close(a.f1, 4.0 / 7.0);
        assert_eq!((a.support, a.predicted), (4, 3));
        let b = m.intent("b").unwrap();
        close(b.precision, 0.5);
        close(b.recall, 2.0 / 3.0);
        close(b.f1, 4.0 / 7.0);
        close(m.intent("c").unwrap().f1, 2.0 / 3.0);
        close(m.macro_f1, (4.0 / 7.0 + 4.0 / 7.0 + 2.0 / 3.0) / 3.0);
        close(
            m.weighted_f1,
            (4.0 * 4.0 / 7.0 + 3.0 * 4.0 / 7.0 + 3.0 * 2.0 / 3.0) / 10.0,
        );
        assert!(m.calibration.is_none());
        assert!(m.catch_all.is_none());
    }

    #[test]
    fn macro_f1_skips_intents_absent_from_gold_and_predictions() {
        let names = labels(&["a", "b", "unused"]);
        let m = Metrics::compute(&[0, 1], &[0, 0], None, &names).unwrap();
        // a: p 1/2, r 1, f1 2/3; b: 0; `unused` does not count.
        close(m.macro_f1, (2.0 / 3.0) / 2.0);
        assert_eq!(m.intent("unused").unwrap().f1, 0.0);
    }

    #[test]
    fn expected_calibration_error_by_hand() {
        let names = labels(&["a", "b"]);
        // Bin (0.9, 1.0]: 0.95, 0.95, 0.95, 0.95 with 3 right -> |0.75 - 0.95| = 0.2, weight 4/6.
        // Bin (0.5, 0.6]: 0.55, 0.58 with 1 right -> |0.5 - 0.565| = 0.065, weight 2/6.
        let gold = [0, 0, 0, 1, 0, 1];
        let predicted = [0, 0, 0, 0, 0, 0];
        let probs = [0.95, 0.95, 0.95, 0.95, 0.55, 0.58];
        let m = Metrics::compute(&gold, &predicted, Some(&probs), &names).unwrap();
        let c = m.calibration.unwrap();
        assert!(
            (c.ece - (4.0 / 6.0 * 0.2 + 2.0 / 6.0 * 0.065)).abs() < 1e-6,
            "{}",
            c.ece
        );
        assert_eq!(c.bins.len(), CALIBRATION_BINS);
        assert_eq!(c.bins[9].count, 4);
        assert_eq!(c.bins[5].count, 2);
        assert_eq!(c.bins[0].confidence, None);
        let f32_mean = (0.55f32 as f64 + 0.58f32 as f64) / 2.0;
        close(c.bins[5].confidence.unwrap(), f32_mean);
    }

    #[test]
    fn catch_all_threshold_routes_doubtful_predictions() {
        let names = labels(&["refund", "shipping", "other"]);
        // Two `other` messages were forced into real intents with low probability; one real
        // message has a low probability too but is right.
        let gold = [0, 0, 1, 1, 2, 2, 0];
        let predicted = [0, 0, 1, 1, 0, 1, 0];
        let probs = [0.9, 0.95, 0.9, 0.8, 0.4, 0.35, 0.6];
        let m =
            Metrics::compute_with_catch_all(&gold, &predicted, Some(&probs), &names, Some("other"))
                .unwrap();
        close(m.accuracy, 5.0 / 7.0);
        let t = m.catch_all.unwrap();
        assert_eq!(t.intent, "other");
        // Routing below 0.5 (midway between 0.4 and 0.6) fixes both `other` messages and
        // breaks nothing.
        assert!((t.threshold - 0.5).abs() < 1e-6, "{}", t.threshold);
        assert_eq!(t.routed, 2);
        close(t.accuracy, 1.0);
        close(t.macro_f1, 1.0);
    }

    #[test]
    fn catch_all_threshold_is_zero_when_routing_does_not_help() {
        let names = labels(&["a", "other"]);
        let m = Metrics::compute_with_catch_all(
            &[0, 1],
            &[0, 1],
            Some(&[0.3, 0.9]),
            &names,
            Some("other"),
        )
        .unwrap();
        let t = m.catch_all.unwrap();
        assert_eq!((t.threshold, t.routed), (0.0, 0));
        close(t.macro_f1, 1.0);
    }

    #[test]
    fn catch_all_needs_gold_messages_of_it() {
        let names = labels(&["a", "b", "other"]);
        let m = Metrics::compute_with_catch_all(
            &[0, 1],
            &[0, 1],
            Some(&[0.3, 0.9]),
            &names,
            Some("other"),
        )
        .unwrap();
        assert!(m.catch_all.is_none());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let names = labels(&["a", "b"]);
        assert_eq!(
            Metrics::compute(&[], &[], None, &names),
            Err(MetricsError::Empty)
        );
        assert!(matches!(
            Metrics::compute(&[0], &[0, 1], None, &names),
            Err(MetricsError::Length {
                what: "predicted",
                ..
            })
        ));
        assert_eq!(
            Metrics::compute(&[0], &[2], None, &names),
            Err(MetricsError::Index {
                index: 2,
                labels: 2
            })
        );
        assert!(matches!(
            Metrics::compute(&[0], &[0], Some(&[1.5]), &names),
            Err(MetricsError::Probability { message: 0, .. })
        ));
        assert_eq!(
            Metrics::compute_with_catch_all(&[0], &[0], None, &names, Some("x")),
            Err(MetricsError::CatchAll("x".into()))
        );
    }

    #[test]
    fn metrics_round_trip_through_json() {
        let names = labels(&["a", "b"]);
        let m = Metrics::compute(&[0, 1, 1], &[0, 1, 0], Some(&[0.9, 0.8, 0.7]), &names).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }
}
