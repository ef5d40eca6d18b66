//! Sentence embeddings for the filter's semantic de-duplication: the base encoder, mean (or
//! CLS) pooling and L2 normalisation, in length-sorted batches.

use prompt2lora_core::{Embedder, ModelResult};

use crate::Result;
use crate::base::BaseModel;
use crate::model::{Encoder, Pooling, normalize_rows, rows};
use crate::tokenize::TextEncoder;

/// Texts per forward pass.
const BATCH_SIZE: usize = 64;

/// The base encoder as an [`Embedder`]. e5 models get their `query: ` prefix automatically.
pub struct SentenceEmbedder {
    encoder: Encoder,
    text: TextEncoder,
    pooling: Pooling,
    id: String,
}

impl SentenceEmbedder {
    /// Loads `model` (embedded short name, folder or `hf:` id), truncating texts to
    /// `max_length` tokens.
    pub fn load(model: &str, max_length: usize) -> Result<Self> {
        let base = BaseModel::resolve(model)?;
        Self::from_base(&base, max_length)
    }

    pub fn from_base(base: &BaseModel, max_length: usize) -> Result<Self> {
        Ok(SentenceEmbedder {
            encoder: base.load_encoder()?,
            text: base.text_encoder(max_length)?,
            pooling: base.pooling,
            id: base.id.clone(),
        })
    }

    /// The model id, for reports.
    pub fn model_id(&self) -> &str {
        &self.id
    }

    pub fn dimension(&self) -> usize {
        self.encoder.config.hidden_size
    }

    /// Unit-length embeddings, in the order of `texts`.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); texts.len()];
        for (indices, packed) in self.text.sorted_packs(texts, BATCH_SIZE)? {
            let hidden = self.encoder.forward_packed(&packed)?;
            let mut vectors = rows(&self.pooling.pool_packed(&hidden, &packed)?)?;
            normalize_rows(&mut vectors);
            for (i, v) in indices.into_iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

impl Embedder for SentenceEmbedder {
    fn embed(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        Ok(self.embed_texts(texts)?)
    }
}
