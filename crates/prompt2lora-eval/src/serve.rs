//! The serve stage: an HTTP service (axum) that classifies texts with one or more adapters.
//!
//! - `POST /v1/classify`: `{"model"?: "name", "text": "..." | "texts": [...], "top_k"?: 3}`
//!   answers `{"model": "name", "predictions": [{"intent", "probability", "alternatives"}]}`;
//! - `GET /v1/models`: the served adapters and their intents;
//! - `GET /healthz`: liveness, without auth;
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text), without auth.
//!
//! Every error is JSON: `{"error": {"code": "...", "message": "..."}}`. Requests to one model
//! go through a queue; a worker takes everything waiting (up to a batch size, waiting a few
//! milliseconds for more) and runs one classifier call on a blocking thread, so concurrent
//! requests share batches under load while a lone request is answered at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prompt2lora_core::Classifier;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::predict::PredictionRecord;

/// Limits and batching of the service.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most texts in one request. Default 256.
    pub max_texts: usize,
    /// Longest text, in characters. Default 2000.
    pub max_chars: usize,
    /// Most texts in one classifier call. Default 64.
    pub max_batch: usize,
    /// How long the batcher waits for more requests once it has one. Default 1 ms.
    pub max_wait: Duration,
    /// Requests waiting per model before new ones get 503. Default 1024.
    pub queue: usize,
    /// Longest a request waits for its answer before it gets 503. Default 30 s.
    pub timeout: Duration,
    /// Intents reported per text when the request does not say. Default 3.
    pub top_k: usize,
    /// Bearer token required on `/v1/*`; `None` serves without auth.
    pub token: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body_bytes: 1 << 20,
            max_texts: 256,
            max_chars: 2000,
            max_batch: 64,
            max_wait: Duration::from_millis(1),
            queue: 1024,
            timeout: Duration::from_secs(30),
            top_k: 3,
            token: None,
        }
    }
}

/// A classifier served under a name.
pub struct ServedModel {
    pub name: String,
    pub classifier: Arc<dyn Classifier>,
}

/// The service's routes. Starts one batching worker per model, so it must be called inside a
/// Tokio runtime; the workers stop when the router is dropped.
pub fn router(models: Vec<ServedModel>, options: ServeOptions) -> Router {
    let metrics = Arc::new(ServerMetrics::new());
    let models: BTreeMap<String, ModelHandle> = models
        .into_iter()
        .map(|model| {
            let handle = ModelHandle::start(&model, &options, metrics.clone());
            (model.name, handle)
        })
        .collect();
    let state = AppState {
        models: Arc::new(models),
        options: Arc::new(options),
        metrics,
    };

    let api = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/models", get(list_models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[derive(Clone)]
struct AppState {
    models: Arc<BTreeMap<String, ModelHandle>>,
    options: Arc<ServeOptions>,
    metrics: Arc<ServerMetrics>,
}

// ---------------------------------------------------------------------------------------
// Requests and answers

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    texts: Option<Vec<String>>,
    #[serde(default)]
    top_k: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ClassifyResponse {
    model: String,
    predictions: Vec<PredictionRecord>,
}

async fn classify(
    State(state): State<AppState>,
    body: Result<Json<ClassifyRequest>, JsonRejection>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let Json(request) = body.map_err(ApiError::from_rejection)?;
    let (name, model) = pick_model(&state.models, request.model.as_deref())?;
    let texts = validate_texts(request.text, request.texts, &state.options)?;
    let top_k = match request.top_k {
        Some(0) => return Err(ApiError::invalid("`top_k` must be at least 1")),
        Some(k) => k.min(model.labels.len()),
        None => state.options.top_k.min(model.labels.len()),
    };

    let (respond, answer) = oneshot::channel();
    let job = Job {
        texts,
        top_k,
        respond,
    };
    model.queue.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests are waiting; retry shortly",
        ),
        mpsc::error::TrySendError::Closed(_) => ApiError::internal("the model worker has stopped"),
    })?;
    let predictions = tokio::time::timeout(state.options.timeout, answer)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "no answer in time; retry shortly",
            )
        })?
        .map_err(|_| ApiError::internal("the model worker dropped the request"))?
        .map_err(|e| ApiError::internal(&format!("the classifier failed: {e}")))?;
    Ok(Json(ClassifyResponse {
        model: name.to_string(),
        predictions,
    }))
}

fn pick_model<'a>(
    models: &'a BTreeMap<String, ModelHandle>,
    requested: Option<&str>,
) -> Result<(&'a str, &'a ModelHandle), ApiError> {
    let known = || {
        models
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match requested {
        Some(name) => models
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_model",
                    &format!("no model `{name}`; served: {}", known()),
                )
            }),
        None if models.len() == 1 => {
            let (k, v) = models.iter().next().expect("one model");
            Ok((k.as_str(), v))
        }
        None => Err(ApiError::invalid(&format!(
            "several models are served: name one with `model` ({})",
            known()
        ))),
    }
}

fn validate_texts(
    text: Option<String>,
    texts: Option<Vec<String>>,
    options: &ServeOptions,
) -> Result<Vec<String>, ApiError> {
    let texts = match (text, texts) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give `text` or `texts`, not both")),
        (Some(text), None) => vec![text],
        (None, Some(texts)) => texts,
        (None, None) => return Err(ApiError::invalid("missing `text` or `texts`")),
    };
    if texts.is_empty() {
        return Err(ApiError::invalid("`texts` is empty"));
    }
    if texts.len() > options.max_texts {
        let message = format!(
            "{} texts in one request, over the limit of {}",
            texts.len(),
            options.max_texts
        );
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_texts",
            &message,
        ));
    }
    for (i, text) in texts.iter().enumerate() {
        if text.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty_text",
                &format!("text {i} is empty"),
            ));
        }
        let chars = text.chars().count();
        if chars > options.max_chars {
            let message = format!(
                "text {i} is {chars} characters long, over the limit of {}",
                options.max_chars
            );
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "text_too_long",
                &message,
            ));
        }
    }
    Ok(texts)
}

#[derive(Serialize)]
struct ModelInfo {
    name: String,
    intents: Vec<String>,
}

async fn list_models(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: Vec<ModelInfo> = state
        .models
        .iter()
        .map(|(name, m)| ModelInfo {
            name: name.clone(),
            intents: m.labels.clone(),
        })
        .collect();
    Json(serde_json::json!({ "models": models }))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let models: Vec<&String> = state.models.keys().collect();
    Json(serde_json::json!({ "status": "ok", "models": models }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.metrics.registry) {
        return ApiError::internal(&format!("cannot encode metrics: {e}")).into_response();
    }
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

// ---------------------------------------------------------------------------------------
// Errors

/// A JSON error answer. Its code also travels in the response extensions, for the metrics.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Debug, Clone, Copy)]
struct ErrorCode(&'static str);

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Self {
        ApiError {
            status,
            code,
            message: message.to_string(),
        }
    }

    fn invalid(message: &str) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    fn internal(message: &str) -> Self {
        tracing::error!("{message}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    fn from_rejection(rejection: JsonRejection) -> Self {
        let code = match rejection {
            JsonRejection::JsonDataError(_) => "invalid_request",
            JsonRejection::JsonSyntaxError(_) => "bad_json",
            JsonRejection::MissingJsonContentType(_) => "not_json",
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "bad_body",
        };
        let message = if code == "body_too_large" {
            "the request body is larger than the server accepts".to_string()
        } else {
            rejection.body_text()
        };
        ApiError {
            status: rejection.status(),
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

// ---------------------------------------------------------------------------------------
// Middleware: auth and metrics

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.options.token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong bearer token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` header",
        )
        .into_response(),
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
    let elapsed = started.elapsed().as_secs_f64();
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(elapsed);
    let status = response.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels { route, status })
        .inc();
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        metrics
            .errors
            .get_or_create(&ErrorLabels {
                code: (*code).to_string(),
            })
            .inc();
    }
    response
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RouteLabels>,
    errors: Family<ErrorLabels, Counter>,
    texts: Family<ModelLabels, Counter>,
    batch_texts: HistogramFamily<ModelLabels>,
    batch_seconds: HistogramFamily<ModelLabels>,
}

impl ServerMetrics {
    fn new() -> Self {
        fn seconds() -> Histogram {
            // 0.25 ms to about 8 s.
            Histogram::new(exponential_buckets(0.00025, 2.0, 16))
        }
        fn sizes() -> Histogram {
            Histogram::new(exponential_buckets(1.0, 2.0, 10))
        }
        let metrics = ServerMetrics {
            registry: Registry::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(seconds as fn() -> Histogram),
            errors: Family::default(),
            texts: Family::default(),
            batch_texts: Family::new_with_constructor(sizes as fn() -> Histogram),
            batch_seconds: Family::new_with_constructor(seconds as fn() -> Histogram),
        };
        let mut registry = Registry::with_prefix("prompt2lora");
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            metrics.latency.clone(),
        );
        registry.register(
            "http_errors",
            "Error answers by error code",
            metrics.errors.clone(),
        );
        registry.register(
            "classified_texts",
            "Texts classified, by model",
            metrics.texts.clone(),
        );
        registry.register(
            "batch_texts",
            "Texts per classifier call",
            metrics.batch_texts.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time of one classifier call",
            metrics.batch_seconds.clone(),
        );
        ServerMetrics {
            registry,
            ..metrics
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dynamic batching

type Answer = Result<Vec<PredictionRecord>, String>;

struct Job {
    texts: Vec<String>,
    top_k: usize,
    respond: oneshot::Sender<Answer>,
}

#[derive(Clone)]
struct ModelHandle {
    labels: Vec<String>,
    queue: mpsc::Sender<Job>,
}

impl ModelHandle {
    fn start(model: &ServedModel, options: &ServeOptions, metrics: Arc<ServerMetrics>) -> Self {
        let (queue, jobs) = mpsc::channel(options.queue.max(1));
        let worker = Batcher {
            name: model.name.clone(),
            classifier: model.classifier.clone(),
            max_batch: options.max_batch.max(1),
            max_wait: options.max_wait,
            metrics,
        };
        tokio::spawn(worker.run(jobs));
        ModelHandle {
            labels: model.classifier.labels().to_vec(),
            queue,
        }
    }
}

struct Batcher {
    name: String,
    classifier: Arc<dyn Classifier>,
    max_batch: usize,
    max_wait: Duration,
    metrics: Arc<ServerMetrics>,
}

impl Batcher {
    /// Takes the first waiting job, adds whatever else is waiting or arrives within
    /// `max_wait` (up to `max_batch` texts), classifies them in one call and answers each.
    /// While a call runs, new requests queue up and form the next batch.
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let labels = ModelLabels {
            model: self.name.clone(),
        };
        while let Some(first) = jobs.recv().await {
            let mut size = first.texts.len();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while size < self.max_batch {
                let next = match jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(mpsc::error::TryRecvError::Empty) if !self.max_wait.is_zero() => {
                        tokio::time::timeout_at(deadline, jobs.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    Err(_) => None,
                };
                let Some(job) = next else { break };
                size += job.texts.len();
                batch.push(job);
            }

            let started = Instant::now();
            let outcome = self.classify(&batch).await;
            self.metrics
                .batch_seconds
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .batch_texts
                .get_or_create(&labels)
                .observe(size as f64);
            self.metrics
                .texts
                .get_or_create(&labels)
                .inc_by(size as u64);
            answer(batch, outcome);
        }
    }

    /// One classifier call on a blocking thread for all texts of `batch`, at the largest
    /// `top_k` any job asked for.
    async fn classify(&self, batch: &[Job]) -> Answer {
        let texts: Vec<String> = batch.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let top_k = batch.iter().map(|j| j.top_k).max().unwrap_or(1);
        let classifier = self.classifier.clone();
        let max_batch = self.max_batch;
        let result = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(texts.len());
            // One request may bring more texts than a batch; split it.
            for chunk in texts.chunks(max_batch) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                out.extend(
                    classifier
                        .predict(&refs, top_k)?
                        .into_iter()
                        .map(PredictionRecord::from),
                );
            }
            Ok::<_, prompt2lora_core::ModelError>(out)
        })
        .await;
        match result {
            Ok(Ok(predictions)) => Ok(predictions),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the classifier panicked: {e}")),
        }
    }
}

/// Hands each job its share of the batch's predictions, cut to its own `top_k`.
fn answer(batch: Vec<Job>, outcome: Answer) {
    match outcome {
        Ok(predictions) => {
            let mut predictions = predictions.into_iter();
            for job in batch {
                let mine: Vec<PredictionRecord> = predictions
                    .by_ref()
                    .take(job.texts.len())
                    .map(|mut p| {
                        p.alternatives.truncate(job.top_k.saturating_sub(1));
                        p
                    })
                    .collect();
                // The client may have gone; nothing to do then.
                let _ = job.respond.send(Ok(mine));
            }
        }
        Err(message) => {
            for job in batch {
                let _ = job.respond.send(Err(message.clone()));
            }
        }
    }
}
