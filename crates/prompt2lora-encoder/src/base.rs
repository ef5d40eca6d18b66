//! Base models: from a model name (embedded short name, folder or `hf:` id, through
//! `prompt2lora_hub::resolve`) to config, weights, tokenizer and pooling.

use std::path::{Path, PathBuf};

use crate::model::{BertConfig, Encoder, Pooling, Weights};
use crate::tokenize::{TextEncoder, query_prefix};
use crate::{Error, Result};

/// A base encoder on disk.
#[derive(Debug, Clone)]
pub struct BaseModel {
    /// The name it was asked for (`minilm-l6`, a folder).
    pub name: String,
    /// The id recorded in adapters (`sentence-transformers/all-MiniLM-L6-v2`).
    pub id: String,
    pub dir: PathBuf,
    pub config: BertConfig,
    pub pooling: Pooling,
}

impl BaseModel {
    /// Resolves `name` and reads its config.
    pub fn resolve(name: &str) -> Result<Self> {
        let files = prompt2lora_hub::resolve(name).map_err(|e| Error::Model(e.to_string()))?;
        let dir = files.dir.ok_or_else(|| {
            Error::Model(format!(
                "model `{name}` is not an encoder (no Hugging Face folder)"
            ))
        })?;
        Self::from_dir(name, &files.id, &dir)
    }

    pub fn from_dir(name: &str, id: &str, dir: &Path) -> Result<Self> {
        let config = BertConfig::load(&dir.join("config.json"))?;
        Ok(BaseModel {
            name: name.to_string(),
            id: id.to_string(),
            dir: dir.to_path_buf(),
            pooling: Pooling::of_model(dir),
            config,
        })
    }

    pub fn load_encoder(&self) -> Result<Encoder> {
        let weights = Weights::load(&self.dir)?;
        Encoder::load(self.config.clone(), &weights)
    }

    pub fn text_encoder(&self, max_length: usize) -> Result<TextEncoder> {
        let max_length = max_length.min(self.config.max_position_embeddings);
        TextEncoder::load(
            &self.dir.join("tokenizer.json"),
            max_length,
            query_prefix(&self.id),
            self.config.pad_token_id,
        )
    }
}
