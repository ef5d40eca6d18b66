//! Shared ground of prompt2lora: the task file, the sample record, the JSONL store and the
//! traits through which the stages talk to models.
//!
//! The pipeline, in order:
//! 1. **generate** (`prompt2lora-teacher`, `prompt2lora-local`): a teacher writes and labels
//!    [`Sample`]s for the intents of a [`Task`];
//! 2. **filter** (`prompt2lora-filter`): invalid, drifted, duplicate and doubtful samples go to
//!    a rejects file, the rest is training data;
//! 3. **train** (`prompt2lora-encoder`): a BERT-family student learns LoRA adapters;
//! 4. **eval**, **predict**, **serve** (`prompt2lora-eval`): the student is measured against its
//!    teacher and put to work;
//! 5. **run** (`prompt2lora-cli`): all of the above in one run folder with a report.
//!
//! This crate has no model code: stages depend on the [`Teacher`], [`Embedder`] and
//! [`Classifier`] traits, and the binary plugs in the implementations.

pub mod cpu;
pub mod jsonl;
pub mod models;
pub mod sample;
pub mod task;
pub mod teacher;
pub mod text;

pub use jsonl::{JsonlWriter, LineError, ReadReport};
pub use models::{Classifier, Embedder, ModelError, ModelResult, Prediction};
pub use sample::{Reject, Sample};
pub use task::{Intent, Task, TaskError};
pub use teacher::{
    ChatMessage, ChatRequest, ChatResponse, ChatWithLogprobs, ChoiceScores, Teacher, TeacherError,
    TokenLogprob, Usage,
};
