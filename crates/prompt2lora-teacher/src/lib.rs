//! The generate stage: a teacher LLM writes customer messages for each intent of a task and
//! labels every message, and the samples are appended, exactly once, to a JSONL file.
//!
//! In the order data flows:
//! 1. [`prompts`]: the generation and labelling prompts, their JSON schemas and answer parsing;
//! 2. [`openai`]: the OpenAI-compatible HTTP teacher (the in-process one is `prompt2lora-local`);
//! 3. [`fewshot`]: diverse few-shot examples from seeds and accepted samples;
//! 4. [`label`]: one message to an intent with its confidence signals;
//! 5. [`generate`]: the resumable loop over intents, with the [`Ledger`] of tokens and money
//!    and the [`estimate`](generate::estimate) of a run before it spends anything.

pub mod fewshot;
pub mod generate;
pub mod label;
pub mod ledger;
pub mod openai;
pub mod prompts;

pub use generate::{GenerateError, GenerateOptions, GenerateSummary, Progress, Stop, generate};
pub use label::{Label, LabelError, LabelMethod, LabelOptions, label_text};
pub use ledger::{Ledger, ModelCost, Price};
pub use openai::{ApiKey, OpenAiConfig, OpenAiTeacher};
