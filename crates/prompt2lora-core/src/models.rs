//! What the filter, eval, predict and serve stages need from the student encoder, as traits,
//! so that those stages do not depend on the model code. `prompt2lora-encoder` implements them.

/// Turns texts into L2-normalised sentence embeddings.
pub trait Embedder: Send + Sync {
    /// One unit-length vector per text, all of the same dimension.
    fn embed(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>>;
}

/// The top intents of one message.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    pub intent: String,
    pub probability: f32,
    /// Best alternatives after `intent`, most probable first.
    pub alternatives: Vec<(String, f32)>,
}

/// A trained intent classifier.
pub trait Classifier: Send + Sync {
    /// The label set, in the order of [`Classifier::probabilities`].
    fn labels(&self) -> &[String];

    /// Class probabilities for each text (rows sum to 1).
    fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>>;

    /// The best `top_k` intents of each text.
    fn predict(&self, texts: &[&str], top_k: usize) -> ModelResult<Vec<Prediction>> {
        let labels = self.labels();
        let rows = self.probabilities(texts)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let ranked: Vec<(String, f32)> = order
                    .iter()
                    .take(top_k.max(1))
                    .map(|&i| (labels[i].clone(), row[i]))
                    .collect();
                Prediction {
                    intent: ranked[0].0.clone(),
                    probability: ranked[0].1,
                    alternatives: ranked[1..].to_vec(),
                }
            })
            .collect())
    }
}

/// Errors of model backends, boxed so that this crate stays free of their error types.
pub type ModelError = Box<dyn std::error::Error + Send + Sync>;
pub type ModelResult<T> = std::result::Result<T, ModelError>;
