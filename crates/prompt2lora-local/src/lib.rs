//! The in-process teacher: a GGUF chat model (Qwen2 or Llama layout) run on the CPU with
//! candle, behind the [`prompt2lora_core::Teacher`] trait. It is the teacher of the generate
//! stage when no HTTP endpoint is configured.
//!
//! How a request flows through the crate:
//! - [`gguf`] reads the model file; [`tokenizer`] builds the tokenizer from its metadata and
//!   [`template`] renders its chat template;
//! - [`model`] runs the transformer with caller-owned key/value caches, so that prompts can
//!   share prefixes and sequences can be batched;
//! - [`engine`] decodes batches of chats ([`sampling`], and [`constraint`] for JSON schemas)
//!   and scores candidate answers on a shared prompt prefix;
//! - [`LocalTeacher`] owns one engine on a worker thread and batches the requests that
//!   arrive together.

pub mod constraint;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod sampling;
pub mod template;
#[cfg(test)]
mod testing;
mod threads;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use futures::channel::oneshot;
use prompt2lora_core::{
    ChatMessage, ChatRequest, ChatResponse, ChoiceScores, Teacher, TeacherError,
};

use crate::engine::Engine;

/// Errors of the local teacher.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LocalError {
    #[error("{}: {message}", path.display())]
    Gguf { path: PathBuf, message: String },
    #[error("{}: cannot load the tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer failed: {0}")]
    Encode(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("constrained decoding: {0}")]
    Constraint(String),
    #[error("{tokens} tokens do not fit in the model's context of {limit}")]
    ContextOverflow { tokens: usize, limit: usize },
    #[error("model computation failed: {0}")]
    Model(String),
    #[error("{0}")]
    Io(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for LocalError {
    fn from(e: candle_core::Error) -> Self {
        LocalError::Model(e.to_string())
    }
}

impl From<std::io::Error> for LocalError {
    fn from(e: std::io::Error) -> Self {
        // fs-err's messages already name the file.
        LocalError::Io(e.to_string())
    }
}

impl From<LocalError> for TeacherError {
    fn from(e: LocalError) -> Self {
        TeacherError::Fatal(e.to_string())
    }
}

/// Settings of the local teacher.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Compute threads; 0 (the default) means one per core. Candle's thread pool is
    /// process-wide and is sized once, by the first teacher loaded.
    pub threads: usize,
    /// Seed of the sampler for requests that carry no seed of their own.
    pub seed: u64,
    /// Model id recorded in provenance and in the ledger; empty means the file's stem.
    pub model_id: String,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            threads: threads::DEFAULT_THREADS,
            seed: 0,
            model_id: String::new(),
        }
    }
}

/// Chats that arrive within this window of the first are decoded in the same batch.
const GATHER_WINDOW: Duration = Duration::from_millis(5);
/// Most sequences decoded together by default.
pub const DEFAULT_MAX_BATCH: usize = 4;

enum Job {
    Chat(
        ChatRequest,
        oneshot::Sender<Result<ChatResponse, LocalError>>,
    ),
    Score(
        Vec<ChatMessage>,
        Vec<String>,
        oneshot::Sender<Result<ChoiceScores, LocalError>>,
    ),
}

/// A GGUF model run in this process. Requests go to one worker thread that owns the model;
/// chats sent concurrently (up to [`LocalTeacher::max_batch`]) are decoded as one batch.
pub struct LocalTeacher {
    model_id: String,
    max_batch: usize,
    jobs: mpsc::Sender<Job>,
}

impl LocalTeacher {
    /// Loads `gguf` (reading its tokenizer, chat template and weights) and starts the worker.
    pub fn load(gguf: &Path, options: LocalOptions) -> Result<LocalTeacher, LocalError> {
        Self::load_with_batch(gguf, options, DEFAULT_MAX_BATCH)
    }

    /// Like [`LocalTeacher::load`], decoding up to `max_batch` chats together.
    pub fn load_with_batch(
        gguf: &Path,
        options: LocalOptions,
        max_batch: usize,
    ) -> Result<LocalTeacher, LocalError> {
        threads::configure(options.threads);
        let engine = Engine::load(gguf, options.seed)?;
        let model_id = if options.model_id.is_empty() {
            gguf.file_stem()
                .map_or_else(|| "local".into(), |s| s.to_string_lossy().into_owned())
        } else {
            options.model_id
        };
        let max_batch = max_batch.max(1);
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("local-teacher".into())
            .spawn(move || serve(engine, queue, max_batch))
            .map_err(|e| LocalError::Internal(format!("cannot start the worker thread: {e}")))?;
        Ok(LocalTeacher {
            model_id,
            max_batch,
            jobs,
        })
    }

    /// Most chats decoded together.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn send(&self, job: Job) -> Result<(), TeacherError> {
        self.jobs.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> TeacherError {
    TeacherError::Fatal("the local teacher's worker thread has stopped".into())
}

/// The worker: takes jobs in order, gathering chats that arrive together into one batch.
fn serve(mut engine: Engine, queue: mpsc::Receiver<Job>, max_batch: usize) {
    let mut pending = None;
    loop {
        let job = match pending.take() {
            Some(job) => job,
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Score(messages, choices, reply) => {
                let _ = reply.send(engine.score_choices(&messages, &choices));
            }
            Job::Chat(request, reply) => {
                let mut requests = vec![request];
                let mut replies = vec![reply];
                let deadline = std::time::Instant::now() + GATHER_WINDOW;
                while requests.len() < max_batch {
                    let wait = deadline.saturating_duration_since(std::time::Instant::now());
                    match queue.recv_timeout(wait) {
                        Ok(Job::Chat(request, reply)) => {
                            requests.push(request);
                            replies.push(reply);
                        }
                        Ok(other) => {
                            pending = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let results = engine.chat_batch(&requests);
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Teacher for LocalTeacher {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn concurrency(&self) -> usize {
        self.max_batch
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, TeacherError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Chat(request.clone(), reply))?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    async fn score_choices(
        &self,
        messages: &[ChatMessage],
        choices: &[String],
    ) -> Result<ChoiceScores, TeacherError> {
        if choices.is_empty() {
            return Err(TeacherError::Fatal("no choices to score".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Job::Score(messages.to_vec(), choices.to_vec(), reply))?;
        Ok(answer.await.map_err(|_| stopped())??)
    }
}
