//! Benchmark of the HTTP teacher's request throughput (generate stage): a local
//! OpenAI-compatible server that answers after a fixed delay, and a client that keeps a given
//! number of requests in flight and reports requests per second. `bench/teacher_http.sh` runs
//! both, next to Python's `openai.AsyncOpenAI` against the same server.
//!
//! ```text
//! teacher_http_bench serve --port 8787 --latency-ms 200
//! teacher_http_bench client --url http://127.0.0.1:8787/v1 --concurrency 64 --seconds 10
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use prompt2lora_core::{ChatMessage, ChatRequest, Teacher};
use prompt2lora_teacher::{OpenAiConfig, OpenAiTeacher};
use serde_json::{Value, json};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse `{v}`"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads", 0usize);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let runtime = builder.enable_all().build().expect("runtime");
    match args.get(1).map(String::as_str) {
        Some("serve") => runtime.block_on(serve(
            arg(&args, "--port", 8787),
            arg(&args, "--latency-ms", 200),
        )),
        Some("client") => runtime.block_on(client(
            arg(&args, "--url", "http://127.0.0.1:8787/v1".to_string()),
            arg(&args, "--concurrency", 64),
            arg(&args, "--seconds", 10.0),
            arg(&args, "--latency-ms", 200),
        )),
        _ => eprintln!(
            "usage: teacher_http_bench serve|client [--port P] [--latency-ms MS] [--url U] [--concurrency C] [--seconds S]"
        ),
    }
}

async fn serve(port: u16, latency_ms: u64) {
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(answer))
        .with_state(Duration::from_millis(latency_ms));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind");
    eprintln!(
        "serving on {} with {latency_ms} ms latency",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app).await.expect("serve");
}

async fn answer(State(latency): State<Duration>, Json(body): Json<Value>) -> Json<Value> {
    tokio::time::sleep(latency).await;
    let model = body["model"].as_str().unwrap_or("bench").to_string();
    Json(json!({
        "id": "bench", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "{\"intent\": \"refund\", \"confidence\": 0.9, \"reason\": \"asks for money back\"}"}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140},
    }))
}

/// Keeps `concurrency` requests in flight for `seconds` after a one-second warm-up and prints
/// one JSON line: requests per second and its share of the bound concurrency / latency.
async fn client(url: String, concurrency: usize, seconds: f64, latency_ms: u64) {
    let mut config = OpenAiConfig::new(url, "bench");
    config.concurrency = concurrency;
    config.max_retries = 0;
    let teacher = Arc::new(OpenAiTeacher::new(config).expect("teacher"));
    let request = ChatRequest {
        messages: vec![
            ChatMessage::system("You classify customer messages by the intent they express."),
            ChatMessage::user(
                "The message: I want my money back for the broken kettle. Answer with JSON.",
            ),
        ],
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: 64,
        json_schema: None,
        seed: None,
    };
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (teacher, request) = (teacher.clone(), request.clone());
        let (counting, stop, done, failed) =
            (counting.clone(), stop.clone(), done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = teacher.chat(&request).await.is_ok();
                if counting.load(Ordering::Relaxed) {
                    if ok { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let rps = done.load(Ordering::Relaxed) as f64 / elapsed;
    let bound = concurrency as f64 / (latency_ms as f64 / 1000.0);
    println!(
        "{}",
        json!({"client": "prompt2lora", "concurrency": concurrency, "requests_per_second": rps,
               "bound": bound, "fraction": rps / bound, "failed": failed.load(Ordering::Relaxed)})
    );
}
