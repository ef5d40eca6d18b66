//! The student: a BERT-family encoder in candle with LoRA adapters, trained on the filtered
//! samples and used for classification (eval, predict, serve) and for the filter's embeddings.
//!
//! - [`model`]: encoder, pooling and classification head, one implementation for all uses;
//! - [`ops`] and `kernels`: fused operations with hand-written backward passes;
//! - [`lora`]: adapter placement and initialisation;
//! - [`train`]: the training loop, rank choice, checkpoints, logs;
//! - [`adapter`]: the PEFT-layout adapter folder and merged export;
//! - [`SentenceEmbedder`] and [`AdapterClassifier`]: the [`prompt2lora_core::Embedder`] and
//!   [`prompt2lora_core::Classifier`] implementations other stages use.

pub mod adapter;
pub mod base;
pub mod classifier;
mod denormals;
pub mod embedder;
pub mod fixtures;
mod kernels;
pub mod lora;
pub mod model;
mod ops;
pub mod tokenize;
pub mod train;

pub use classifier::AdapterClassifier;
pub use denormals::flush_denormals;
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

/// Makes candle's idle CPU workers sleep at once instead of spinning, unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` says otherwise. The encoder's own kernels run on rayon's
/// pool; candle's workers spinning between its ops took cores from them: training ran 14%
/// faster on 2 cores without the spin (bench/results/train.md). Call it first thing in `main`,
/// before any thread starts; candle reads the variable when its pool first runs.
pub fn quiet_candle_workers() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        set_no_spin();
    }
}

#[expect(
    unsafe_code,
    reason = "candle configures its thread pool from the environment only"
)]
fn set_no_spin() {
    // SAFETY: documented to be called at the start of `main`, before any other thread exists,
    // so nothing reads or writes the environment concurrently.
    unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") }
}
