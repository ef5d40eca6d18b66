//! Stage 4: near duplicates within one intent, on the normalised text.
//!
//! Similarity is the Jaccard similarity of the sets of character n-grams, which needs no word
//! boundaries and so works for Chinese. Candidate pairs come from MinHash signatures with LSH
//! banding, and every candidate is verified with the exact Jaccard similarity, so the banding
//! only decides what is looked at (it is tuned to find pairs at the threshold with
//! probability >= 0.99).
//!
//! Short messages need a second measure: one changed character in a ten-character Chinese
//! message changes three of its eight trigrams, so its Jaccard similarity falls below 0.5. For
//! texts of up to [`EDIT_MAX_CHARS`] characters, the edit similarity 1 - distance / length of
//! the longer text also counts, and pairs one edit apart are found through an index of
//! single-character deletions.
//!
//! Written here rather than taken from a crate: the MinHash crates on crates.io hash word
//! tokens or whole documents, none combines character n-grams, per-intent buckets and
//! verified candidates, and the whole method is a page of code.

use std::hash::{BuildHasher, Hasher};

use prompt2lora_core::task::FilterSettings;
use rayon::prelude::*;

use crate::{Candidate, FilterOptions, StageOutput, rank_order};

/// MinHash signature length.
pub const PERMUTATIONS: usize = 128;
/// Longest text (in characters of the normalised form) for which edit similarity counts.
pub const EDIT_MAX_CHARS: usize = 40;
/// Smallest probability with which a pair exactly at the threshold becomes a candidate.
const RECALL_AT_THRESHOLD: f64 = 0.99;

pub(crate) fn run(
    candidates: Vec<Candidate>,
    settings: &FilterSettings,
    _options: &FilterOptions,
) -> StageOutput {
    let texts: Vec<&str> = candidates.iter().map(|c| c.normalized.as_str()).collect();
    let groups = group_ids(&candidates);
    let pairs = similar_pairs(
        &texts,
        &groups,
        settings.ngram,
        settings.near_duplicate_threshold,
    );
    let duplicate_of = greedy(&candidates, &pairs);
    split(
        candidates,
        duplicate_of,
        "near_duplicate",
        |similarity, how| format!("near duplicate: {how} similarity {similarity:.3}"),
    )
}

/// A verified pair `(a, b, similarity, measure)` with `a < b`.
pub type Pair = (u32, u32, f32, Measure);

/// Which similarity made a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Jaccard,
    Edit,
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Measure::Jaccard => "n-gram",
            Measure::Edit => "edit",
        })
    }
}

/// A small number per intent, so that hashes of different intents never meet.
pub(crate) fn group_ids(candidates: &[Candidate]) -> Vec<u32> {
    let mut names: Vec<&str> = candidates
        .iter()
        .map(|c| c.sample.intent.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    candidates
        .iter()
        .map(|c| names.binary_search(&c.sample.intent.as_str()).unwrap_or(0) as u32)
        .collect()
}

/// Every pair of texts in the same group whose similarity reaches `threshold`.
pub fn similar_pairs(texts: &[&str], groups: &[u32], ngram: usize, threshold: f64) -> Vec<Pair> {
    let shingles: Vec<Vec<u64>> = texts.par_iter().map(|t| shingle_set(t, ngram)).collect();
    let (bands, rows) = banding(threshold);
    let mut candidates = lsh_candidates(&shingles, groups, bands, rows);
    candidates.extend(one_edit_candidates(texts, groups));
    candidates.par_sort_unstable();
    candidates.dedup();
    tracing::debug!(
        "near duplicates: {} candidate pairs from {bands} bands of {rows} rows",
        candidates.len()
    );
    let lengths: Vec<usize> = texts.iter().map(|t| t.chars().count()).collect();
    candidates
        .par_iter()
        .filter_map(|&(a, b)| {
            let (a_, b_) = (a as usize, b as usize);
            let jaccard = jaccard(&shingles[a_], &shingles[b_]);
            if jaccard >= threshold {
                return Some((a, b, jaccard as f32, Measure::Jaccard));
            }
            let longer = lengths[a_].max(lengths[b_]);
            if longer > EDIT_MAX_CHARS || longer == 0 {
                return None;
            }
            // Edit similarity cannot beat 1 - (length difference) / longer: skip hopeless pairs.
            let gap = lengths[a_].abs_diff(lengths[b_]);
            if 1.0 - (gap as f64 / longer as f64) < threshold {
                return None;
            }
            let edit = 1.0 - strsim::levenshtein(texts[a_], texts[b_]) as f64 / longer as f64;
            (edit >= threshold).then_some((a, b, edit as f32, Measure::Edit))
        })
        .collect()
}

/// Hashes of the distinct character n-grams of a text, sorted. A text shorter than `n`
/// characters is one n-gram.
pub fn shingle_set(text: &str, n: usize) -> Vec<u64> {
    let chars: Vec<char> = text.chars().collect();
    let mut set: Vec<u64> = if chars.len() <= n {
        vec![hash_chars(chars.iter().copied())]
    } else {
        chars
            .windows(n)
            .map(|w| hash_chars(w.iter().copied()))
            .collect()
    };
    set.sort_unstable();
    set.dedup();
    set
}

/// Jaccard similarity of two sorted sets.
pub fn jaccard(a: &[u64], b: &[u64]) -> f64 {
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - common;
    if union == 0 {
        1.0
    } else {
        common as f64 / union as f64
    }
}

/// Bands and rows per band: the most rows (fewest false candidates) that still make a pair at
/// `threshold` a candidate with probability [`RECALL_AT_THRESHOLD`].
pub fn banding(threshold: f64) -> (usize, usize) {
    let t = threshold.clamp(0.05, 1.0);
    let mut best = (PERMUTATIONS, 1);
    for rows in 1..=PERMUTATIONS {
        let bands = PERMUTATIONS / rows;
        let p = 1.0 - (1.0 - t.powi(rows as i32)).powi(bands as i32);
        if p >= RECALL_AT_THRESHOLD {
            best = (bands, rows);
        }
    }
    best
}

/// MinHash signatures of the shingle sets. The permutations are multiply-shift hashes of the
/// 64-bit n-gram hashes; 32 bits of each minimum are kept.
pub fn signatures(shingles: &[Vec<u64>]) -> Vec<[u32; PERMUTATIONS]> {
    let mut state = 0x5EED_u64;
    let params: Vec<(u64, u64)> = (0..PERMUTATIONS)
        .map(|_| (splitmix(&mut state) | 1, splitmix(&mut state)))
        .collect();
    shingles
        .par_iter()
        .map(|set| {
            let mut signature = [u32::MAX; PERMUTATIONS];
            for &x in set {
                for (slot, &(a, b)) in signature.iter_mut().zip(&params) {
                    let h = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
                    *slot = (*slot).min(h);
                }
            }
            signature
        })
        .collect()
}

/// Pairs that share at least one band of their signature, within a group.
fn lsh_candidates(
    shingles: &[Vec<u64>],
    groups: &[u32],
    bands: usize,
    rows: usize,
) -> Vec<(u32, u32)> {
    let signatures = signatures(shingles);
    (0..bands)
        .into_par_iter()
        .flat_map_iter(|band| {
            let mut keys: Vec<(u64, u32)> = signatures
                .iter()
                .enumerate()
                .map(|(i, signature)| {
                    let mut hasher = FixedState.build_hasher();
                    hasher.write_u32(groups[i]);
                    hasher.write_usize(band);
                    for &v in &signature[band * rows..(band + 1) * rows] {
                        hasher.write_u32(v);
                    }
                    (hasher.finish(), i as u32)
                })
                .collect();
            keys.sort_unstable();
            pairs_in_runs(&keys)
        })
        .collect()
}

/// Pairs of short texts one insertion, deletion or substitution apart: they share a key among
/// "the text" and "the text without character k".
fn one_edit_candidates(texts: &[&str], groups: &[u32]) -> Vec<(u32, u32)> {
    let mut keys: Vec<(u64, u32)> = texts
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, text)| {
            let chars: Vec<char> = text.chars().collect();
            let group = groups[i];
            let variants = if chars.len() > EDIT_MAX_CHARS {
                0
            } else {
                chars.len() + 1
            };
            (0..variants).map(move |skip| {
                // skip == len: the whole text
                let kept = chars
                    .iter()
                    .enumerate()
                    .filter(|&(k, _)| k != skip)
                    .map(|(_, &c)| c);
                let mut hasher = FixedState.build_hasher();
                hasher.write_u32(group);
                hasher.write_u64(hash_chars(kept));
                (hasher.finish(), i as u32)
            })
        })
        .collect();
    keys.par_sort_unstable();
    pairs_in_runs(&keys)
}

/// All pairs within each run of equal keys of a sorted list.
fn pairs_in_runs(keys: &[(u64, u32)]) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    for run in keys.chunk_by(|x, y| x.0 == y.0) {
        for (k, &(_, a)) in run.iter().enumerate() {
            for &(_, b) in &run[k + 1..] {
                if a != b {
                    pairs.push((a.min(b), a.max(b)));
                }
            }
        }
    }
    pairs
}

/// Walks the samples best-ranked first and marks each as a duplicate of the most similar
/// already-kept sample it is paired with, if any. Greedy on purpose: a chain a~b~c with a kept
/// and b removed leaves c if c is not close to a itself.
pub(crate) fn greedy<M: Copy>(
    candidates: &[Candidate],
    pairs: &[(u32, u32, f32, M)],
) -> Vec<Option<(usize, f32, M)>> {
    let mut neighbours: Vec<Vec<(u32, f32, M)>> = vec![Vec::new(); candidates.len()];
    for &(a, b, similarity, measure) in pairs {
        neighbours[a as usize].push((b, similarity, measure));
        neighbours[b as usize].push((a, similarity, measure));
    }
    let mut kept = vec![false; candidates.len()];
    let mut duplicate_of = vec![None; candidates.len()];
    for i in rank_order(candidates) {
        let best = neighbours[i]
            .iter()
            .filter(|(j, _, _)| kept[*j as usize])
            .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)));
        match best {
            Some(&(j, similarity, measure)) => {
                duplicate_of[i] = Some((j as usize, similarity, measure))
            }
            None => kept[i] = true,
        }
    }
    duplicate_of
}

/// Splits candidates into kept and rejected by the result of [`greedy`].
pub(crate) fn split<M>(
    candidates: Vec<Candidate>,
    duplicate_of: Vec<Option<(usize, f32, M)>>,
    stage: &str,
    reason: impl Fn(f32, &M) -> String,
) -> StageOutput {
    let ids: Vec<Option<String>> = duplicate_of
        .iter()
        .map(|d| d.as_ref().map(|(j, _, _)| candidates[*j].sample.id.clone()))
        .collect();
    let mut output = StageOutput::new(Vec::with_capacity(candidates.len()), Vec::new());
    for ((candidate, duplicate), id) in candidates.into_iter().zip(duplicate_of).zip(ids) {
        match duplicate {
            None => output.kept.push(candidate),
            Some((_, similarity, measure)) => {
                let reason = reason(similarity, &measure);
                output.rejects.push(candidate.reject(stage, reason, id));
            }
        }
    }
    output
}

/// FNV-1a over the characters, then a final mix.
fn hash_chars(chars: impl Iterator<Item = char>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for c in chars {
        h ^= u64::from(u32::from(c));
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = h;
    splitmix(&mut state)
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hasher with fixed keys, so that runs are reproducible.
#[derive(Clone, Copy)]
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = std::hash::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::hash::DefaultHasher::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompt2lora_core::text::normalize;

    fn pairs_of(texts: &[&str], threshold: f64) -> Vec<(u32, u32)> {
        let normalized: Vec<String> = texts.iter().map(|t| normalize(t)).collect();
        let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
        let groups = vec![0; texts.len()];
        let mut pairs: Vec<(u32, u32)> = similar_pairs(&refs, &groups, 3, threshold)
            .into_iter()
            .map(|p| (p.0, p.1))
            .collect();
        pairs.sort_unstable();
        pairs
    }

    #[test]
    fn banding_finds_threshold_pairs_with_high_probability() {
        let (bands, rows) = banding(0.7);
        assert_eq!((bands, rows), (32, 4));
        let p = |j: f64| 1.0 - (1.0 - j.powi(rows as i32)).powi(bands as i32);
        assert!(p(0.7) >= 0.99);
        assert!(p(0.2) < 0.1);
    }

    #[test]
    fn minhash_agreement_estimates_jaccard() {
        let a = shingle_set(
            "the quick brown fox jumps over the lazy dog again and again",
            3,
        );
        let b = shingle_set(
            "the quick brown fox leaps over the lazy dog again and again",
            3,
        );
        let sig = signatures(&[a.clone(), b.clone()]);
        let agree = sig[0].iter().zip(&sig[1]).filter(|(x, y)| x == y).count();
        let estimate = agree as f64 / PERMUTATIONS as f64;
        assert!(
            (estimate - jaccard(&a, &b)).abs() < 0.15,
            "{estimate} vs {}",
            jaccard(&a, &b)
        );
    }

    #[test]
    fn one_character_edits_are_near_duplicates_in_chinese_and_english() {
        let texts = [
            "我的快递到哪里了，能帮我查一下吗",
            "我的快递到哪里了，能帮我查一下嘛",
            "我想退掉昨天买的鞋子",
            "我要退掉昨天买的鞋子",
            "Where is my parcel? It should have arrived yesterday.",
            "Where is my parcel? It should have arived yesterday.",
            "Can I change the delivery address of my order?",
        ];
        assert_eq!(pairs_of(&texts, 0.7), vec![(0, 1), (2, 3), (4, 5)]);
    }

    #[test]
    fn different_messages_are_not_near_duplicates() {
        let texts = [
            "我要退货",
            "我要开发票",
            "where is my order",
            "cancel my order please",
        ];
        assert!(pairs_of(&texts, 0.7).is_empty());
    }

    #[test]
    fn groups_keep_intents_apart() {
        let texts = ["where is my parcel now", "where is my parcel now?!"];
        let groups = [0, 1];
        assert!(similar_pairs(&texts, &groups, 3, 0.7).is_empty());
    }
}
