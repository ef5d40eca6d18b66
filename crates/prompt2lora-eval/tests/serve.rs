//! In-process tests of the HTTP service: answers, JSON errors for bad and over-size bodies,
//! auth, several models, metrics, batching under concurrent load and graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use prompt2lora_core::{Classifier, ModelResult};
use prompt2lora_eval::serve::{ServeOptions, ServedModel, router, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// `refund` for texts that mention money, else `shipping`; optionally slow; records batch sizes.
struct Keyword {
    labels: Vec<String>,
    delay: Duration,
    batches: Mutex<Vec<usize>>,
}

impl Keyword {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Keyword {
            labels: vec!["refund".into(), "shipping".into(), "other".into()],
            delay,
            batches: Mutex::new(Vec::new()),
        })
    }
}

impl Classifier for Keyword {
    fn labels(&self) -> &[String] {
        &self.labels
    }
    fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        self.batches.lock().unwrap().push(texts.len());
        std::thread::sleep(self.delay);
        Ok(texts
            .iter()
            .map(|t| {
                if t.contains("money") {
                    vec![0.7, 0.2, 0.1]
                } else {
                    vec![0.1, 0.6, 0.3]
                }
            })
            .collect())
    }
}

fn app(options: ServeOptions) -> Router {
    let classifier = Keyword::new(Duration::ZERO);
    router(
        vec![ServedModel {
            name: "shop".into(),
            classifier,
        }],
        options,
    )
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

async fn classify(app: &Router, body: &str) -> (StatusCode, Value) {
    call(app, "POST", "/v1/classify", Some(body), None).await
}

fn error_code(value: &Value) -> &str {
    value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {value}"))
}

#[tokio::test]
async fn classifies_one_and_many_texts() {
    let app = app(ServeOptions::default());
    let (status, body) = classify(&app, r#"{"text": "I want my money back"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["model"], "shop");
    let p = &body["predictions"][0];
    assert_eq!(p["intent"], "refund");
    assert!((p["probability"].as_f64().unwrap() - 0.7).abs() < 1e-6);
    assert_eq!(p["alternatives"].as_array().unwrap().len(), 2);
    assert_eq!(p["alternatives"][0]["intent"], "shipping");

    let (status, body) = classify(
        &app,
        r#"{"model": "shop", "texts": ["where is it", "money please"], "top_k": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let intents: Vec<&str> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["intent"].as_str().unwrap())
        .collect();
    assert_eq!(intents, vec!["shipping", "refund"]);
    assert_eq!(body["predictions"][0]["alternatives"], json!([]));

    let (status, body) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (_, body) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(
        body["models"][0]["intents"],
        json!(["refund", "shipping", "other"])
    );
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let options = ServeOptions {
        max_chars: 20,
        max_texts: 3,
        ..Default::default()
    };
    let app = app(options);
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{not json", StatusCode::BAD_REQUEST, "bad_json"),
        (
            r#"{"txt": "hello"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"texts": "hello"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        ("{}", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            r#"{"texts": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"text": "a", "texts": ["b"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"texts": ["fine", "  "]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_text",
        ),
        (
            r#"{"text": "this text is longer than twenty characters"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "text_too_long",
        ),
        (
            r#"{"texts": ["a", "b", "c", "d"]}"#,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_texts",
        ),
        (
            r#"{"text": "a", "top_k": 0}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"text": "a", "model": "nope"}"#,
            StatusCode::NOT_FOUND,
            "unknown_model",
        ),
    ];
    for (body, status, code) in cases {
        let (got_status, got) = classify(&app, body).await;
        assert_eq!(
            (got_status, error_code(&got)),
            (*status, *code),
            "{body} -> {got}"
        );
        assert!(!got["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, got) = classify(&app, r#"{"texts": ["fine", ""]}"#).await;
    assert_eq!(got["error"]["message"], "text 1 is empty");
    let (_, got) = classify(&app, r#"{"txt": "hello"}"#).await;
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `txt`"),
        "{got}"
    );

    // Not declared as JSON.
    let request = Request::post("/v1/classify")
        .body(Body::from(r#"{"text": "a"}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, got) = call(&app, "GET", "/nowhere", None, None).await;
    assert_eq!(
        (status, error_code(&got)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn over_size_bodies_are_refused() {
    let app = app(ServeOptions {
        max_body_bytes: 1024,
        ..Default::default()
    });
    let body = json!({ "text": "x".repeat(2000) }).to_string();
    let (status, got) = classify(&app, &body).await;
    assert_eq!(
        (status, error_code(&got)),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );

    // Without a Content-Length the limit applies while reading the stream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let request = Request::post("/v1/classify")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn bearer_token_guards_the_api_but_not_health() {
    let app = app(ServeOptions {
        token: Some("s3cret".into()),
        ..Default::default()
    });
    let body = r#"{"text": "money"}"#;
    let (status, got) = call(&app, "POST", "/v1/classify", Some(body), None).await;
    assert_eq!(
        (status, error_code(&got)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = call(&app, "POST", "/v1/classify", Some(body), Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, "POST", "/v1/classify", Some(body), Some("s3cre")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, "GET", "/v1/models", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, got) = call(&app, "POST", "/v1/classify", Some(body), Some("s3cret")).await;
    assert_eq!(
        (status, &got["predictions"][0]["intent"]),
        (StatusCode::OK, &json!("refund"))
    );
    let (status, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);

    let request = Request::post("/v1/classify").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
}

struct Constant(Vec<String>);

impl Classifier for Constant {
    fn labels(&self) -> &[String] {
        &self.0
    }
    fn probabilities(&self, texts: &[&str]) -> ModelResult<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|_| vec![0.25, 0.75]).collect())
    }
}

#[tokio::test]
async fn several_models_are_served_by_name() {
    let models = vec![
        ServedModel {
            name: "shop".into(),
            classifier: Keyword::new(Duration::ZERO),
        },
        ServedModel {
            name: "mood".into(),
            classifier: Arc::new(Constant(vec!["happy".into(), "sad".into()])),
        },
    ];
    let app = router(models, ServeOptions::default());
    let (_, got) = classify(&app, r#"{"model": "mood", "text": "money"}"#).await;
    assert_eq!(got["model"], "mood");
    assert_eq!(got["predictions"][0]["intent"], "sad");
    let (_, got) = classify(&app, r#"{"model": "shop", "text": "money"}"#).await;
    assert_eq!(got["predictions"][0]["intent"], "refund");
    // top_k larger than the label set is cut to it.
    let (_, got) = classify(&app, r#"{"model": "mood", "text": "x", "top_k": 9}"#).await;
    assert_eq!(
        got["predictions"][0]["alternatives"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, got) = classify(&app, r#"{"text": "money"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = got["error"]["message"].as_str().unwrap();
    assert!(message.contains("`mood`, `shop`"), "{message}");
    let (_, got) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(got["models"], json!(["mood", "shop"]));
}

#[tokio::test]
async fn metrics_count_requests_latency_and_errors() {
    let app = app(ServeOptions::default());
    classify(&app, r#"{"text": "money"}"#).await;
    classify(&app, r#"{"texts": ["a", "b"]}"#).await;
    classify(&app, "{broken").await;
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for expected in [
        "prompt2lora_http_requests_total{route=\"/v1/classify\",status=\"200\"} 2",
        "prompt2lora_http_requests_total{route=\"/v1/classify\",status=\"400\"} 1",
        "prompt2lora_http_errors_total{code=\"bad_json\"} 1",
        "prompt2lora_http_request_duration_seconds_count{route=\"/v1/classify\"} 3",
        "prompt2lora_classified_texts_total{model=\"shop\"} 3",
        "# EOF",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_batches() {
    // The first call takes long enough for every other request to queue behind it.
    let classifier = Keyword::new(Duration::from_millis(200));
    let models = vec![ServedModel {
        name: "shop".into(),
        classifier: classifier.clone(),
    }];
    let app = router(
        models,
        ServeOptions {
            max_batch: 64,
            ..Default::default()
        },
    );
    let requests: Vec<_> = (0..32)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"texts": ["money {i}", "parcel {i}"]}}"#);
                classify(&app, &body).await
            })
        })
        .collect();
    for (i, request) in requests.into_iter().enumerate() {
        let (status, got) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // Each request gets its own answers back, in its own order.
        let intents: Vec<&str> = got["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["intent"].as_str().unwrap())
            .collect();
        assert_eq!(intents, vec!["refund", "shipping"], "request {i}");
    }
    let batches = classifier.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 64);
    assert!(batches.len() < 32, "no batching happened: {batches:?}");
    assert!(batches.iter().all(|&b| b <= 64), "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let classifier = Keyword::new(Duration::from_millis(300));
    let app = router(
        vec![ServedModel {
            name: "shop".into(),
            classifier,
        }],
        ServeOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"text": "money"}"#;
    let request = format!(
        "POST /v1/classify HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"refund\""), "{response}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
