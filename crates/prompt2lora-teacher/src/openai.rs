//! The HTTP teacher: `/chat/completions` of any OpenAI-compatible endpoint (OpenAI, vLLM,
//! Ollama, llama.cpp's server, DeepSeek, Qwen), with bounded concurrency, request and token
//! rate limits, retries, structured output with graceful fallback, and log-probabilities.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prompt2lora_core::task::TeacherSettings;
use prompt2lora_core::teacher::ChatWithLogprobs;
use prompt2lora_core::{ChatRequest, ChatResponse, Teacher, TeacherError, TokenLogprob, Usage};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// The most alternatives per token that OpenAI accepts (`top_logprobs`).
const MAX_TOP_LOGPROBS: usize = 20;

/// An API key that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How to reach and pace one endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`; a URL without
    /// a path gets `/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per minute, 0 for no limit.
    pub requests_per_minute: u32,
    /// Prompt plus `max_tokens` per minute, 0 for no limit (as OpenAI counts them).
    pub tokens_per_minute: u32,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Retries of one request on transient failures.
    pub max_retries: u32,
    /// First backoff; doubled on every retry, with full jitter.
    pub backoff_base: Duration,
    /// Longest wait between two attempts, also for `Retry-After`.
    pub backoff_max: Duration,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            concurrency: 16,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            timeout: Duration::from_secs(120),
            max_retries: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }

    /// The pacing keys of a task's `[teacher]` section.
    pub fn from_settings(base_url: &str, settings: &TeacherSettings) -> Self {
        OpenAiConfig {
            concurrency: settings.concurrency.max(1),
            requests_per_minute: settings.requests_per_minute,
            tokens_per_minute: settings.tokens_per_minute,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            max_retries: settings.max_retries,
            ..OpenAiConfig::new(base_url, settings.model.clone())
        }
    }
}

/// How much of OpenAI's structured output the endpoint accepts; lowered on the first refusal.
const SCHEMA_STRICT: u8 = 0;
const SCHEMA_JSON_OBJECT: u8 = 1;
const SCHEMA_NONE: u8 = 2;

const LOGPROBS_UNKNOWN: u8 = 0;
const LOGPROBS_YES: u8 = 1;
const LOGPROBS_NO: u8 = 2;

/// What the endpoint was found to support. Optional request features start on and are
/// switched off when the server refuses them before any request with them succeeded; after a
/// success, an error is an error.
#[derive(Debug, Default)]
struct Capabilities {
    schema: AtomicU8,
    schema_confirmed: AtomicBool,
    logprobs: AtomicU8,
}

/// The OpenAI-compatible HTTP teacher.
#[derive(Clone)]
pub struct OpenAiTeacher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OpenAiTeacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTeacher")
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .finish()
    }
}

struct Inner {
    config: OpenAiConfig,
    url: String,
    client: reqwest::Client,
    slots: Semaphore,
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
    capabilities: Capabilities,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("base URL `{0}` is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// One attempt's outcome, before the retry loop decides.
enum Failure {
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// An optional feature was refused: try again without it, right away.
    Downgraded,
    Fatal(String),
}

/// What one request asks for beyond the plain chat.
#[derive(Clone, Copy)]
struct Extras {
    schema: u8,
    logprobs: Option<usize>,
}

impl OpenAiTeacher {
    pub fn new(config: OpenAiConfig) -> Result<Self, ConfigError> {
        let url = chat_url(&config.base_url)?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(ApiKey(key)) = &config.api_key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| ConfigError::BadUrl("API key with invalid characters".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.concurrency.max(1))
            .tcp_nodelay(true)
            .build()?;
        let per_minute = |limit: u32, burst: u32| {
            NonZeroU32::new(limit).map(|limit| {
                let burst = NonZeroU32::new(burst.clamp(1, limit.get())).expect("at least 1");
                RateLimiter::direct(Quota::per_minute(limit).allow_burst(burst))
            })
        };
        let inner = Inner {
            // A full minute's requests at once would trip servers that enforce the limit over
            // shorter windows; one request per slot is the most a burst needs.
            requests: per_minute(config.requests_per_minute, config.concurrency as u32),
            tokens: per_minute(config.tokens_per_minute, config.tokens_per_minute),
            slots: Semaphore::new(config.concurrency.max(1)),
            capabilities: Capabilities::default(),
            url,
            client,
            config,
        };
        Ok(OpenAiTeacher {
            inner: Arc::new(inner),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.inner.config
    }

    /// Sends one chat request with retries; `top` asks for log-probabilities.
    async fn complete(
        &self,
        request: &ChatRequest,
        top: Option<usize>,
    ) -> Result<ChatWithLogprobs, TeacherError> {
        let inner = &self.inner;
        let mut attempt = 0;
        loop {
            let extras = inner.extras(request, top);
            let body = inner.body(request, extras);
            inner.pace(request).await;
            let outcome = {
                let _slot = inner.slots.acquire().await.expect("never closed");
                inner.attempt(&body, extras).await
            };
            let (message, after) = match outcome {
                Ok(answer) => return Ok(answer),
                Err(Failure::Fatal(message)) => return Err(TeacherError::Fatal(message)),
                Err(Failure::Downgraded) => continue,
                Err(Failure::Retry { message, after }) => (message, after),
            };
            if attempt >= inner.config.max_retries {
                let tries = attempt + 1;
                return Err(TeacherError::Transient(format!(
                    "{message} (gave up after {tries} attempts)"
                )));
            }
            let wait = after
                .unwrap_or_else(|| inner.backoff(attempt))
                .min(inner.config.backoff_max);
            tracing::warn!("{message}; retrying in {:.1} s", wait.as_secs_f64());
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

impl Inner {
    fn extras(&self, request: &ChatRequest, top: Option<usize>) -> Extras {
        let schema = match request.json_schema {
            Some(_) => self.capabilities.schema.load(Ordering::Relaxed),
            None => SCHEMA_NONE,
        };
        let logprobs =
            top.filter(|_| self.capabilities.logprobs.load(Ordering::Relaxed) != LOGPROBS_NO);
        Extras { schema, logprobs }
    }

    fn body(&self, request: &ChatRequest, extras: Extras) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        });
        if let Some(seed) = request.seed {
            body["seed"] = json!(seed);
        }
        if let Some(schema) = &request.json_schema {
            let name = schema
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("answer");
            match extras.schema {
                SCHEMA_STRICT => {
                    body["response_format"] = json!({
                        "type": "json_schema",
                        "json_schema": { "name": name, "strict": true, "schema": schema },
                    });
                }
                // llama.cpp's servers take the schema here and refuse OpenAI's form.
                SCHEMA_JSON_OBJECT => {
                    body["response_format"] = json!({ "type": "json_object", "schema": schema });
                }
                _ => {}
            }
        }
        if let Some(top) = extras.logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(top.min(MAX_TOP_LOGPROBS));
        }
        body
    }

    /// Waits for the request and token rate limits.
    async fn pace(&self, request: &ChatRequest) {
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
        if let Some(limiter) = &self.tokens {
            let prompt: usize = request
                .messages
                .iter()
                .map(|m| estimate_tokens(&m.content) + 4)
                .sum();
            let wanted =
                (prompt as u64 + u64::from(request.max_tokens)).min(u64::from(u32::MAX)) as u32;
            let capacity = self.config.tokens_per_minute;
            let n = NonZeroU32::new(wanted.clamp(1, capacity)).expect("at least 1");
            // Cannot fail: `n` is clamped to the burst size.
            let _ = limiter.until_n_ready(n).await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1 << attempt.min(16));
        let ceiling = ceiling.min(self.config.backoff_max);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    async fn attempt(&self, body: &Value, extras: Extras) -> Result<ChatWithLogprobs, Failure> {
        let response = match self.client.post(&self.url).json(body).send().await {
            Ok(response) => response,
            Err(e) => {
                return Err(Failure::Retry {
                    message: describe_reqwest(&e),
                    after: None,
                });
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                return Err(Failure::Retry {
                    message: describe_reqwest(&e),
                    after: None,
                });
            }
        };
        if !status.is_success() {
            return Err(self.refusal(status, &text, retry_after, extras));
        }
        let answer = parse_answer(&text).map_err(|message| Failure::Retry {
            message: format!("{}: unreadable answer: {message}", self.url),
            after: None,
        })?;
        self.confirm(extras, answer.tokens.is_some());
        Ok(answer)
    }

    fn refusal(
        &self,
        status: reqwest::StatusCode,
        text: &str,
        retry_after: Option<Duration>,
        extras: Extras,
    ) -> Failure {
        let message = format!("{} answered {status}: {}", self.url, snippet(text));
        if status.as_u16() == 429 {
            return Failure::Retry {
                message,
                after: retry_after,
            };
        }
        if self.downgrade(status, text, extras) {
            tracing::debug!("{message}; trying again without that feature");
            return Failure::Downgraded;
        }
        if status.is_server_error() || matches!(status.as_u16(), 408 | 409) {
            return Failure::Retry {
                message,
                after: retry_after,
            };
        }
        Failure::Fatal(message)
    }

    /// Switches off the optional feature a refused request most likely failed on; `false` when
    /// every feature it used is known to work.
    ///
    /// A server error counts only when its message names the feature (llama.cpp's servers
    /// answer an unknown response format with a 500); a client error blames the feature it
    /// names, or the only unconfirmed one.
    fn downgrade(&self, status: reqwest::StatusCode, text: &str, extras: Extras) -> bool {
        let caps = &self.capabilities;
        // Another request already switched off a feature this one used: just ask again.
        let stale_logprobs =
            extras.logprobs.is_some() && caps.logprobs.load(Ordering::Relaxed) == LOGPROBS_NO;
        if stale_logprobs || extras.schema < caps.schema.load(Ordering::Relaxed) {
            return true;
        }
        let lower = text.to_ascii_lowercase();
        let names_logprobs = lower.contains("logprob");
        let names_schema = ["response_format", "json_schema", "schema", "format"]
            .iter()
            .any(|w| lower.contains(w));
        let client = matches!(status.as_u16(), 400 | 422);
        let logprobs_open =
            extras.logprobs.is_some() && caps.logprobs.load(Ordering::Relaxed) == LOGPROBS_UNKNOWN;
        let schema_open =
            extras.schema != SCHEMA_NONE && !caps.schema_confirmed.load(Ordering::Relaxed);
        let blame_logprobs =
            logprobs_open && (names_logprobs || (client && !schema_open && !names_schema));
        let blame_schema = schema_open && (names_schema || (client && !names_logprobs));
        if blame_logprobs {
            tracing::info!(
                "{}: log-probabilities are not offered; labelling goes on without them",
                self.url
            );
            caps.logprobs.store(LOGPROBS_NO, Ordering::Relaxed);
            return true;
        }
        if blame_schema {
            let next = extras.schema + 1;
            // Several requests may fail on the same level at once: lower it only once.
            let _ = caps.schema.compare_exchange(
                extras.schema,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let what = if next == SCHEMA_JSON_OBJECT {
                "a JSON object with schema"
            } else {
                "a JSON answer described in the prompt"
            };
            tracing::info!(
                "{}: structured output refused; asking for {what} instead",
                self.url
            );
            return true;
        }
        false
    }

    fn confirm(&self, extras: Extras, got_logprobs: bool) {
        let caps = &self.capabilities;
        if extras.schema != SCHEMA_NONE {
            caps.schema_confirmed.store(true, Ordering::Relaxed);
        }
        if extras.logprobs.is_some() {
            let state = if got_logprobs {
                LOGPROBS_YES
            } else {
                LOGPROBS_NO
            };
            let _ = caps.logprobs.compare_exchange(
                LOGPROBS_UNKNOWN,
                state,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

#[async_trait::async_trait]
impl Teacher for OpenAiTeacher {
    fn model_id(&self) -> &str {
        &self.inner.config.model
    }

    fn concurrency(&self) -> usize {
        self.inner.config.concurrency.max(1)
    }

    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, TeacherError> {
        Ok(self.complete(request, None).await?.response)
    }

    async fn chat_with_logprobs(
        &self,
        request: &ChatRequest,
        top: usize,
    ) -> Result<ChatWithLogprobs, TeacherError> {
        self.complete(request, Some(top)).await
    }
}

fn chat_url(base: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(base.trim()).map_err(|_| ConfigError::BadUrl(base.into()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::BadUrl(base.into()));
    }
    let base = url.as_str().trim_end_matches('/');
    let base = if url.path().trim_matches('/').is_empty() {
        format!("{base}/v1")
    } else {
        base.to_string()
    };
    Ok(format!("{base}/chat/completions"))
}

/// Retry-After as seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let format = time::format_description::well_known::Rfc2822;
    let when = time::OffsetDateTime::parse(value, &format).ok()?;
    let wait = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let url = e.url().map(|u| u.as_str().to_string()).unwrap_or_default();
    if e.is_timeout() {
        format!("{url}: no answer within the timeout")
    } else if e.is_connect() {
        format!("{url}: cannot connect")
    } else {
        // The error's source chain names the cause (connection reset, closed early, ...).
        let mut message = format!("{url}: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: WireMessage,
    #[serde(default)]
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct WireLogprobs {
    #[serde(default)]
    content: Option<Vec<WireToken>>,
}

#[derive(Deserialize)]
struct WireToken {
    token: String,
    logprob: f64,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<WireTop>,
}

#[derive(Deserialize)]
struct WireTop {
    token: String,
    logprob: f64,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

fn parse_answer(text: &str) -> Result<ChatWithLogprobs, String> {
    let completion: Completion = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let choice = completion.choices.into_iter().next().ok_or("no choices")?;
    let content = choice.message.content.unwrap_or_default();
    let usage = match completion.usage {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        },
        // Some servers leave usage out; an estimate beats counting nothing.
        None => Usage {
            prompt_tokens: 0,
            completion_tokens: estimate_tokens(&content) as u64,
        },
    };
    let tokens = choice
        .logprobs
        .and_then(|l| l.content)
        .filter(|t| !t.is_empty())
        .map(|tokens| {
            tokens
                .into_iter()
                .map(|t| TokenLogprob {
                    bytes: t.bytes.unwrap_or_else(|| t.token.into_bytes()),
                    logprob: t.logprob,
                    top: t
                        .top_logprobs
                        .into_iter()
                        .map(|a| (a.bytes.unwrap_or_else(|| a.token.into_bytes()), a.logprob))
                        .collect(),
                })
                .collect()
        });
    Ok(ChatWithLogprobs {
        response: ChatResponse {
            text: content,
            usage,
        },
        tokens,
    })
}

/// A rough token count for pacing and estimates: a CJK character is about one token, other
/// text about four characters per token.
pub fn estimate_tokens(text: &str) -> usize {
    let (mut wide, mut narrow) = (0usize, 0usize);
    for c in text.chars() {
        if (c as u32) >= 0x2E80 {
            wide += 1;
        } else {
            narrow += 1;
        }
    }
    wide + narrow.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_url_adds_v1_only_to_bare_hosts() {
        assert_eq!(
            chat_url("http://localhost:8000").unwrap(),
            "http://localhost:8000/v1/chat/completions"
        );
        assert_eq!(
            chat_url("https://api.openai.com/v1/").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            chat_url("https://dashscope.aliyuncs.com/compatible-mode/v1").unwrap(),
            "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions"
        );
        assert!(chat_url("localhost:8000").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn key_is_redacted() {
        let mut config = OpenAiConfig::new("http://localhost:1", "m");
        config.api_key = Some(ApiKey::new("sk-secret"));
        assert!(!format!("{config:?}").contains("sk-secret"));
        let teacher = OpenAiTeacher::new(config).unwrap();
        assert!(!format!("{teacher:?}").contains("sk-secret"));
    }

    #[test]
    fn parses_logprobs_with_and_without_bytes() {
        let text = r#"{"choices":[{"message":{"content":"ok"},"logprobs":{"content":[
            {"token":"o","logprob":-0.1,"top_logprobs":[{"token":"o","logprob":-0.1},{"token":"n","logprob":-2.5,"bytes":[110]}]},
            {"token":"k","logprob":-0.2,"bytes":[107],"top_logprobs":[]}]}}],
            "usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        let answer = parse_answer(text).unwrap();
        assert_eq!(answer.response.text, "ok");
        assert_eq!(
            answer.response.usage,
            Usage {
                prompt_tokens: 7,
                completion_tokens: 2
            }
        );
        let tokens = answer.tokens.unwrap();
        assert_eq!(tokens[0].top[1], (b"n".to_vec(), -2.5));
        assert_eq!(tokens[1].bytes, b"k");
        let plain = parse_answer(r#"{"choices":[{"message":{"content":null}}]}"#).unwrap();
        assert!(plain.tokens.is_none());
        assert!(parse_answer("{\"choices\":[]}").is_err());
    }

    #[test]
    fn token_estimate_counts_cjk_per_character() {
        assert_eq!(estimate_tokens("我要退货"), 4);
        assert_eq!(estimate_tokens("where is it"), 3);
    }
}
