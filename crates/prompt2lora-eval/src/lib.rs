//! The last stages of the pipeline, after `train`: measuring a trained student and putting it
//! to work. Everything here talks to the model through [`prompt2lora_core::Classifier`].
//!
//! - [`metrics`]: accuracy, macro-F1, per-intent scores, confusion, calibration and the
//!   catch-all threshold, from gold and predicted intents;
//! - [`evaluate`]: the eval stage: test set against the adapter's labels, student and teacher
//!   side by side ([`evaluate::Comparison`], written as `metrics.json`), the teacher's
//!   resumable label cache;
//! - [`plot`] and [`report`]: the confusion heat map as SVG, and terminal tables;
//! - [`predict`]: batched, streaming classification of messages from a reader to JSONL;
//! - [`serve`]: the HTTP service with dynamic batching, metrics and auth.

pub mod evaluate;
pub mod metrics;
pub mod plot;
pub mod predict;
pub mod report;
pub mod serve;

pub use evaluate::{Answers, Comparison, EvalError, TeacherCache, TestSet};
pub use metrics::Metrics;
