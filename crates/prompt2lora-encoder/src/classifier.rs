//! The trained student as a [`Classifier`] for eval, predict and serve: the adapter is merged
//! into the base weights at load, so inference costs the same as the base model.

use std::path::Path;

use prompt2lora_core::{Classifier, ModelResult};

use crate::Result;
use crate::adapter;
use crate::model::{Student, rows};
use crate::tokenize::TextEncoder;

/// Messages per forward pass, unless set with [`AdapterClassifier::with_batch_size`].
const BATCH_SIZE: usize = 32;

/// An adapter folder (or merged export) loaded for classification.
pub struct AdapterClassifier {
    student: Student,
    text: TextEncoder,
    labels: Vec<String>,
    base_model: String,
    batch_size: usize,
}

impl AdapterClassifier {
    /// Loads the adapter in `adapter_dir`; labels come from its `labels.json`.
    pub fn load(adapter_dir: &Path) -> Result<Self> {
        let loaded = adapter::load(adapter_dir)?;
        let text = loaded.base.text_encoder(loaded.meta.max_length)?;
        Ok(AdapterClassifier {
            student: loaded.student,
            text,
            labels: loaded.meta.labels,
            base_model: loaded.meta.base_model,
            batch_size: BATCH_SIZE,
        })
    }

    /// Sets how many messages go through the model in one forward pass (at least 1). A call
    /// with more texts sorts them by length and cuts them into batches of this size.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The base model's id, for reports.
    pub fn base_model(&self) -> &str {
        &self.base_model
    }

    /// Logits of each text, in the order of `texts`. The texts go through the model in
    /// batches packed without padding.
    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); texts.len()];
        for (indices, packed) in self.text.sorted_packs(texts, self.batch_size)? {
            let logits = rows(&self.student.forward_packed(&packed)?)?;
            for (i, row) in indices.into_iter().zip(logits) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

impl Classifier for AdapterClassifier {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        let mut rows = self.logits(texts)?;
        rows.iter_mut().for_each(|r| softmax(r));
        Ok(rows)
    }
}
