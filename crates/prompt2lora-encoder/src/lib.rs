//! The student: a BERT-family encoder in candle with LoRA adapters, trained on the filtered
//! samples and used for classification (eval, predict, serve) and for the filter's embeddings.
//!
//! - [`model`]: encoder, pooling and classification head, one implementation for all uses;
//! - `ops` and `kernels`: fused operations with hand-written backward passes;
//! - [`lora`]: adapter placement and initialisation;
//! - [`train`]: the training loop, rank choice, checkpoints, logs;
//! - [`adapter`]: the PEFT-layout adapter folder and merged export;
//! - [`SentenceEmbedder`] and [`AdapterClassifier`]: the [`prompt2lora_core::Embedder`] and
//!   [`prompt2lora_core::Classifier`] implementations other stages use.

pub mod adapter;
pub mod base;
pub mod classifier;
pub mod embedder;
pub mod fixtures;
mod kernels;
pub mod lora;
pub mod model;
mod ops;
pub mod tokenize;
pub mod train;

pub use classifier::AdapterClassifier;
pub use embedder::SentenceEmbedder;

/// Errors of the encoder crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A model, tokenizer or adapter that cannot be used.
    #[error("{0}")]
    Model(String),
    /// Settings that do not fit together or the data.
    #[error("{0}")]
    Settings(String),
    /// Training data that cannot be used.
    #[error("{0}")]
    Data(String),
    /// Training stopped on request; the checkpoint it left is named.
    #[error("training interrupted; checkpoint saved in {0}")]
    Interrupted(std::path::PathBuf),
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests;
