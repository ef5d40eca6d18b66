//! Tokenizer loading and batching: truncation to the maximum length, the e5 `query: ` prefix,
//! and length-sorted dynamic padding.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::model::Packed;
use crate::{Error, Result};

/// A Hugging Face `tokenizer.json` set up for the encoder.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    prefix: Option<String>,
    pad_id: u32,
}

impl TextEncoder {
    /// Loads `tokenizer.json`, switches its padding off (batches are padded here, to the longest
    /// message) and truncates to `max_length` tokens including special tokens.
    pub fn load(
        path: &Path,
        max_length: usize,
        prefix: Option<String>,
        pad_id: u32,
    ) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        Ok(TextEncoder {
            tokenizer,
            prefix,
            pad_id,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids of each text.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<String> = match &self.prefix {
            Some(prefix) => texts.iter().map(|t| format!("{prefix}{t}")).collect(),
            None => texts.iter().map(|t| t.to_string()).collect(),
        };
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| Error::Model(format!("tokenizer: {e}")))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Groups of at most `batch_size` texts, packed end to end without padding (for
    /// inference), sorted by length so that the groups carry similar work; each group comes
    /// with the indices of its texts.
    pub fn sorted_packs(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Vec<(Vec<usize>, Packed)>> {
        let ids = self.encode(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        Ok(order
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let seqs: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
                (chunk.to_vec(), Packed::new(&seqs))
            })
            .collect())
    }
}

/// The prefix a model expects before each input: e5 models were trained with `query: `.
pub fn query_prefix(model_id: &str) -> Option<String> {
    let id = model_id.to_ascii_lowercase();
    let name = id.rsplit('/').next().unwrap_or(&id);
    (name.contains("e5-") || name.starts_with("e5")).then(|| "query: ".to_string())
}
