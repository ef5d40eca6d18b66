//! The teacher abstraction: the two primitives that generation and labelling need from an LLM.
//! `prompt2lora-teacher` implements it over HTTP, `prompt2lora-local` in process.

use serde::{Deserialize, Serialize};

/// One chat message (OpenAI roles: `system`, `user`, `assistant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "system".into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
        }
    }
}

/// A chat completion request, independent of the backend.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    /// JSON schema the answer must follow; backends enforce it where they can (structured
    /// output, grammar-constrained decoding) and callers validate the answer either way.
    pub json_schema: Option<serde_json::Value>,
    pub seed: Option<u64>,
}

/// Token counts of one request, for the cost ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

#[derive(Debug, Clone)]
pub struct ChatResponse {
    pub text: String,
    pub usage: Usage,
}

/// Log-probabilities of each candidate continuation of a prompt.
#[derive(Debug, Clone)]
pub struct ChoiceScores {
    /// Natural-log probability of each choice, in the order given.
    pub logprobs: Vec<f64>,
    pub usage: Usage,
}

/// One generated token, its natural-log probability and the most likely tokens at its place
/// (the token itself may be among them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text as bytes: a token may end inside a multi-byte character.
    pub bytes: Vec<u8>,
    pub logprob: f64,
    pub top: Vec<(Vec<u8>, f64)>,
}

/// A chat answer with the log-probabilities of its tokens, where the backend reports them.
#[derive(Debug, Clone)]
pub struct ChatWithLogprobs {
    pub response: ChatResponse,
    /// `None` where the backend does not report log-probabilities.
    pub tokens: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// Worth another try later: rate limits, server errors, timeouts, dropped connections.
    #[error("transient teacher failure: {0}")]
    Transient(String),
    /// Retrying will not help: bad request, authentication, a model that does not exist.
    #[error("teacher refused the request: {0}")]
    Fatal(String),
    /// The feature is not offered by this teacher (e.g. log-probabilities over HTTP).
    #[error("not supported by this teacher: {0}")]
    Unsupported(String),
}

/// An LLM that can complete chats and, where it can, score candidate answers.
#[async_trait::async_trait]
pub trait Teacher: Send + Sync {
    /// Model id recorded in sample provenance and in the ledger.
    fn model_id(&self) -> &str;

    /// How many requests are worth running at once (1 for an in-process model).
    fn concurrency(&self) -> usize {
        1
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, TeacherError>;

    /// Like [`Teacher::chat`], also asking for each answer token's log-probability and the
    /// `top` most likely alternatives at its place. Backends that cannot report them answer
    /// with `tokens: None` (the default).
    async fn chat_with_logprobs(
        &self,
        request: &ChatRequest,
        top: usize,
    ) -> Result<ChatWithLogprobs, TeacherError> {
        let _ = top;
        Ok(ChatWithLogprobs {
            response: self.chat(request).await?,
            tokens: None,
        })
    }

    /// Scores each of `choices` as the assistant's answer to `messages`, i.e. the
    /// log-probability of the choice's tokens followed by the end of the turn. Returns
    /// [`TeacherError::Unsupported`] where the backend cannot.
    async fn score_choices(
        &self,
        messages: &[ChatMessage],
        choices: &[String],
    ) -> Result<ChoiceScores, TeacherError> {
        let _ = (messages, choices);
        Err(TeacherError::Unsupported(
            "scoring answers by log-probability".into(),
        ))
    }
}
