//! Few-shot examples for generation requests: a diverse handful from the intent's seed
//! examples and the samples accepted so far, different in each request.
//!
//! Diversity is measured on character trigrams (Jaccard distance), which needs no model and
//! works for Chinese as for English; the pick is greedy farthest-point from a random start, so
//! each request sees a different, spread-out set rather than the same few messages.

use std::collections::HashSet;

use prompt2lora_core::text::normalize;
use rand::Rng;
use rand::seq::SliceRandom;

/// Largest candidate set scored per pick; larger pools are subsampled first.
const MAX_POOL: usize = 256;

/// A candidate example: its sample id and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub text: String,
}

/// Picks up to `k` examples from `pool`, spread out by trigram distance.
pub fn pick_diverse<'a>(pool: &'a [Example], k: usize, rng: &mut impl Rng) -> Vec<&'a Example> {
    if k == 0 || pool.is_empty() {
        return Vec::new();
    }
    let mut candidates: Vec<&Example> = pool.iter().collect();
    candidates.shuffle(rng);
    candidates.truncate(MAX_POOL);
    let grams: Vec<HashSet<String>> = candidates.iter().map(|e| trigrams(&e.text)).collect();

    // `nearest[i]`: distance from candidate i to the closest example already picked.
    let mut nearest = vec![f64::INFINITY; candidates.len()];
    let mut picked = Vec::with_capacity(k.min(candidates.len()));
    let mut next = 0; // the shuffle made the first candidate a random start
    while picked.len() < k.min(candidates.len()) {
        picked.push(next);
        nearest[next] = f64::NEG_INFINITY;
        for i in 0..candidates.len() {
            if nearest[i] > f64::NEG_INFINITY {
                nearest[i] = nearest[i].min(jaccard_distance(&grams[i], &grams[next]));
            }
        }
        match (0..candidates.len()).max_by(|&a, &b| nearest[a].total_cmp(&nearest[b])) {
            Some(best) if nearest[best] > f64::NEG_INFINITY => next = best,
            _ => break,
        }
    }
    picked.into_iter().map(|i| candidates[i]).collect()
}

fn trigrams(text: &str) -> HashSet<String> {
    let chars: Vec<char> = normalize(text).chars().collect();
    if chars.len() < 3 {
        return HashSet::from([chars.iter().collect()]);
    }
    chars.windows(3).map(|w| w.iter().collect()).collect()
}

fn jaccard_distance(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    1.0 - a.intersection(b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn example(text: &str) -> Example {
        Example {
            id: prompt2lora_core::Sample::id_for(text),
            text: text.into(),
        }
    }

    #[test]
    fn prefers_different_messages_over_near_copies() {
        let pool = vec![
            example("where is my parcel"),
            example("where is my parcel?? "),
            example("where is my parcel please"),
            example("I want my money back for the broken kettle"),
            example("can you change the delivery address"),
        ];
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let picked = pick_diverse(&pool, 3, &mut rng);
            let parcels = picked
                .iter()
                .filter(|e| e.text.starts_with("where is my parcel"))
                .count();
            assert_eq!(parcels, 1, "seed {seed}: {picked:?}");
        }
    }

    #[test]
    fn varies_between_requests_and_handles_small_pools() {
        let pool: Vec<Example> = (0..30)
            .map(|i| example(&format!("message number {i} about topic {}", i * 7)))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let sets: HashSet<Vec<String>> = (0..10)
            .map(|_| {
                pick_diverse(&pool, 4, &mut rng)
                    .iter()
                    .map(|e| e.id.clone())
                    .collect()
            })
            .collect();
        assert!(sets.len() > 5, "only {} different sets", sets.len());
        assert_eq!(pick_diverse(&pool[..2], 4, &mut rng).len(), 2);
        assert!(pick_diverse(&[], 4, &mut rng).is_empty());
    }
}
