//! Picking the next token from the model's logits: greedy at temperature 0, else nucleus
//! (top-p) sampling at the requested temperature, over the tokens a constraint allows.

use rand::Rng;
use rand::rngs::StdRng;

/// Sampling settings of one request.
#[derive(Debug, Clone, Copy)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
}

/// Picks a token from `logits`, considering only ids for which `allowed` is true. Returns
/// `None` when no token is allowed.
pub fn sample(
    logits: &[f32],
    allowed: impl Fn(usize) -> bool,
    params: SamplingParams,
    rng: &mut StdRng,
) -> Option<u32> {
    let candidates = logits
        .iter()
        .enumerate()
        .filter(|&(id, logit)| logit.is_finite() && allowed(id))
        .map(|(id, &logit)| (id as u32, logit));
    if params.temperature <= 0.0 {
        return candidates
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id);
    }
    let mut candidates: Vec<(u32, f32)> = candidates.collect();
    if candidates.is_empty() {
        return None;
    }
    candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    let max = candidates[0].1;
    let mut total = 0.0f64;
    let mut weights: Vec<f64> = candidates
        .iter()
        .map(|&(_, logit)| {
            let w = f64::from((logit - max) / params.temperature).exp();
            total += w;
            w
        })
        .collect();

    // Keep the smallest head of the sorted distribution whose mass reaches top_p.
    let top_p = f64::from(params.top_p.clamp(0.0, 1.0));
    let mut kept = weights.len();
    if top_p < 1.0 {
        let mut mass = 0.0;
        for (i, w) in weights.iter().enumerate() {
            mass += w / total;
            if mass >= top_p {
                kept = i + 1;
                break;
            }
        }
    }
    weights.truncate(kept);
    let kept_total: f64 = weights.iter().sum();
    let mut draw = rng.random::<f64>() * kept_total;
    for (i, w) in weights.iter().enumerate() {
        if draw < *w {
            return Some(candidates[i].0);
        }
        draw -= w;
    }
    Some(candidates[kept - 1].0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params(temperature: f32, top_p: f32) -> SamplingParams {
        SamplingParams { temperature, top_p }
    }

    #[test]
    fn greedy_takes_the_largest_allowed_logit() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits = [0.1, 3.0, 2.0, f32::NEG_INFINITY];
        assert_eq!(
            sample(&logits, |_| true, params(0.0, 1.0), &mut rng),
            Some(1)
        );
        assert_eq!(
            sample(&logits, |id| id != 1, params(0.0, 1.0), &mut rng),
            Some(2)
        );
        assert_eq!(
            sample(&logits, |id| id == 3, params(0.0, 1.0), &mut rng),
            None
        );
    }

    #[test]
    fn top_p_cuts_the_tail_and_temperature_spreads_the_head() {
        let mut rng = StdRng::seed_from_u64(7);
        // Probabilities at temperature 1: about 0.64, 0.24, 0.09, 0.03.
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample(&logits, |_| true, params(1.0, 0.8), &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(
            counts[2] + counts[3],
            0,
            "tokens outside the 0.8 nucleus: {counts:?}"
        );
        let share = counts[0] as f64 / 4000.0;
        assert!((share - 0.64 / 0.88).abs() < 0.03, "head share {share}");

        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            counts[sample(&logits, |_| true, params(100.0, 1.0), &mut rng).unwrap() as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| c > 800),
            "a hot sampler is near uniform: {counts:?}"
        );
    }
}
