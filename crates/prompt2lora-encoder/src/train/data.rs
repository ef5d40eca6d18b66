//! Training data: label indices, the stratified validation split, per-sample loss weights,
//! length-bucketed batch order, and macro-F1.

use prompt2lora_core::Sample;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::kernels::derive_seed;
use crate::{Error, Result};

/// One tokenised training example.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub label: usize,
    /// Loss weight: class weight times confidence, as the settings ask; 1 otherwise.
    pub weight: f32,
}

/// The combined confidence of a sample: `label_logprob` if present, else `agreement`, else the
/// teacher's stated `confidence`, else 1 (hand-labelled data).
pub fn combined_confidence(sample: &Sample) -> f64 {
    sample
        .label_logprob
        .or(sample.agreement)
        .or(sample.confidence)
        .unwrap_or(1.0)
        .clamp(0.0, 1.0)
}

/// Label index of every sample, with an error naming the first unknown intent.
pub fn label_indices(samples: &[Sample], labels: &[String]) -> Result<Vec<usize>> {
    samples
        .iter()
        .map(|s| {
            labels.iter().position(|l| *l == s.intent).ok_or_else(|| {
                Error::Data(format!(
                    "sample {} has intent `{}`, which is not one of the task's intents ({})",
                    s.id,
                    s.intent,
                    labels.join(", ")
                ))
            })
        })
        .collect()
}

/// Splits sample indices into (train, validation), holding out `fraction` of every intent
/// (rounded, at least one where an intent has two or more samples), shuffled by `seed`.
pub fn stratified_split(
    labels: &[usize],
    classes: usize,
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, 0x5e11));
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for class in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let mut held = (members.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && held == 0 && members.len() >= 2 {
            held = 1;
        }
        validation.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    train.sort_unstable();
    validation.sort_unstable();
    (train, validation)
}

/// Inverse-frequency class weights, normalised so that a balanced set gets weight 1.
pub fn class_weights(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l] += 1;
    }
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                labels.len() as f32 / (present as f32 * c as f32)
            }
        })
        .collect()
}

/// Windows of this many batches are sorted by length before being cut into batches.
const BUCKET_BATCHES: usize = 16;

/// The batches of one epoch: a seeded shuffle, then within windows of a few batches the examples
/// are sorted by length so that each batch needs little padding, and the batch order is shuffled
/// again. The same seed and epoch always give the same order, which is what makes `--resume`
/// reproduce an uninterrupted run.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(derive_seed(seed, 0xE90C + epoch as u64));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks_mut(batch_size * BUCKET_BATCHES) {
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Macro-averaged F1 over the classes that occur in `gold` or `predicted` (scikit-learn's
/// default label set).
pub fn macro_f1(gold: &[usize], predicted: &[usize], classes: usize) -> f64 {
    let mut tp = vec![0usize; classes];
    let mut fp = vec![0usize; classes];
    let mut fn_ = vec![0usize; classes];
    for (&g, &p) in gold.iter().zip(predicted) {
        if g == p {
            tp[g] += 1;
        } else {
            fp[p] += 1;
            fn_[g] += 1;
        }
    }
    let mut sum = 0.0;
    let mut n = 0usize;
    for c in 0..classes {
        if tp[c] + fp[c] + fn_[c] == 0 {
            continue;
        }
        n += 1;
        let denominator = 2 * tp[c] + fp[c] + fn_[c];
        sum += 2.0 * tp[c] as f64 / denominator as f64;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_and_seeded() {
        let labels: Vec<usize> = (0..100).map(|i| if i < 80 { 0 } else { 1 }).collect();
        let (train, val) = stratified_split(&labels, 2, 0.1, 1);
        assert_eq!(val.len(), 10);
        assert_eq!(val.iter().filter(|&&i| labels[i] == 1).count(), 2);
        assert_eq!(train.len() + val.len(), 100);
        assert_eq!(stratified_split(&labels, 2, 0.1, 1).1, val);
        assert_ne!(stratified_split(&labels, 2, 0.1, 2).1, val);
    }

    #[test]
    fn batches_cover_every_example_once_with_little_padding() {
        let lengths: Vec<usize> = (0..1000).map(|i| 3 + (i * 37) % 40).collect();
        let batches = epoch_batches(&lengths, 32, 9, 0);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let padded: usize = batches
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len())
            .sum();
        let real: usize = lengths.iter().sum();
        assert!((padded as f64) < real as f64 * 1.15, "{padded} vs {real}");
        assert_eq!(epoch_batches(&lengths, 32, 9, 0), batches);
        assert_ne!(epoch_batches(&lengths, 32, 9, 1), batches);
    }

    #[test]
    fn macro_f1_matches_hand_computation() {
        // class 0: tp 2, fn 1; class 1: tp 1, fp 1; class 2 absent.
        let f1 = macro_f1(&[0, 0, 0, 1], &[0, 0, 1, 1], 3);
        let expected = (2.0 * 2.0 / (4.0 + 1.0) + 2.0 / (2.0 + 1.0)) / 2.0;
        assert!((f1 - expected).abs() < 1e-12);
        assert_eq!(macro_f1(&[1, 2], &[1, 2], 3), 1.0);
    }

    #[test]
    fn confidence_prefers_logprob_then_agreement() {
        let mut s = Sample::new("x", "a");
        assert_eq!(combined_confidence(&s), 1.0);
        s.confidence = Some(0.9);
        assert_eq!(combined_confidence(&s), 0.9);
        s.agreement = Some(0.6);
        assert_eq!(combined_confidence(&s), 0.6);
        s.label_logprob = Some(0.3);
        assert_eq!(combined_confidence(&s), 0.3);
    }
}
