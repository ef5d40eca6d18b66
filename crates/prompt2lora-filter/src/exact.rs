//! Stage 3: exact duplicates after normalisation ([`prompt2lora_core::text::normalize`]: NFKC,
//! which also folds full-width forms to half-width, lower case, no punctuation, one space).
//! Of each group the best-ranked sample stays, whatever its intent: one text with two labels
//! is a conflict that only one label can win.

use std::collections::HashMap;

use prompt2lora_core::text::normalize;
use rayon::prelude::*;

use crate::{Candidate, StageOutput, rank_order};

pub(crate) fn run(mut candidates: Vec<Candidate>) -> StageOutput {
    candidates
        .par_iter_mut()
        .for_each(|c| c.normalized = normalize(&c.sample.text));
    let order = rank_order(&candidates);
    // normalised text -> index of the kept sample
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(candidates.len());
    let mut duplicate_of = vec![None; candidates.len()];
    for &i in &order {
        match first.get(candidates[i].normalized.as_str()) {
            Some(&kept) => duplicate_of[i] = Some(kept),
            None => {
                first.insert(candidates[i].normalized.as_str(), i);
            }
        }
    }
    let kept_info: Vec<Option<(String, String)>> = duplicate_of
        .iter()
        .map(|d| {
            d.map(|k| {
                (
                    candidates[k].sample.id.clone(),
                    candidates[k].sample.intent.clone(),
                )
            })
        })
        .collect();
    let mut output = StageOutput::new(Vec::with_capacity(candidates.len()), Vec::new());
    for (candidate, kept) in candidates.into_iter().zip(kept_info) {
        match kept {
            None => output.kept.push(candidate),
            Some((id, intent)) => {
                let reason = if intent == candidate.sample.intent {
                    "same text: equal after normalisation".to_string()
                } else {
                    format!(
                        "conflicting label: same text as a more confident sample labelled `{intent}`"
                    )
                };
                output
                    .rejects
                    .push(candidate.reject("exact_duplicate", reason, Some(id)));
            }
        }
    }
    output.kept.sort_by_key(|c| c.position);
    output
}
