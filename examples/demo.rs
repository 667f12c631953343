//! The README's main command: CodeWorm's retry loop over real HTTP.
//!
//! ```sh
//! cargo run --example demo
//! ```
//!
//! With no `OLLAMA_HOST` set, it starts the embedded fake Ollama on
//! 127.0.0.1, scripts it to answer a real out-of-memory body, then to stall
//! until the attempt times out, then to succeed, and prints the timeline.
//!
//! With `OLLAMA_HOST=http://host:port` (the variable Ollama's own clients
//! use) it sends one real generation (`OLLAMA_MODEL`, default `qwen2.5:7b`)
//! through the same stack and prints the result or a clear error.
//!
//! `RUST_LOG=tower_ollama_retry=info` also prints the engine's tracing events.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody};
use tower_ollama_retry::ollama::fake::{FakeOllama, Reply, RequestKind};
use tower_ollama_retry::ollama::{OllamaRecovery, error_message};
use tower_ollama_retry::{OllamaPolicy, Report, RetryError};

/// The knobs that differ between the demo and a real server.
struct Settings {
    attempt_timeout: Duration,
    retry_delay: Duration,
    settle: Duration,
}

/// CodeWorm's request body (section 1 of the spec).
fn generate_body(model: &str) -> Bytes {
    let body = serde_json::json!({
        "model": model,
        "prompt": "Explain what a retry budget is in one sentence.",
        "stream": false,
        "keep_alive": -1,
        "options": {"temperature": 0.3, "num_predict": 4096, "num_ctx": 16384},
    });
    Bytes::from(body.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    // `RUST_LOG=tower_ollama_retry=info` adds the engine's own tracing story
    // (model_oom_detected, attempting_oom_recovery, retry_scheduled, ...).
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let real = std::env::var("OLLAMA_HOST").ok().filter(|h| !h.is_empty());
    let result = match real {
        Some(host) => real_run(&host).await,
        None => fake_run().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain: hyper-util's own message is terse.
            let mut line = format!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                // `RetryError` already shows its direct source.
                let text = s.to_string();
                if !line.ends_with(&text) {
                    line.push_str(&format!(": {text}"));
                }
                source = s.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

type Stack = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<tower_ollama_retry::http::PeekBody<hyper::body::Incoming>>,
    RetryError,
>;

/// The stack a CodeWorm user runs, with the demo's short timings.
fn stack(settings: &Settings, clock: Instant) -> Stack {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let policy = OllamaPolicy::default()
        .with_retry_delay(settings.retry_delay)
        .with_recovery(OllamaRecovery::new().with_settle(settings.settle))
        .on_retry(move |e| {
            println!(
                "[{:>6.3}s] retrying: attempt {}, after a failure of class {} (slept {:?})",
                clock.elapsed().as_secs_f64(),
                e.attempt.number(),
                e.failure.class(),
                e.delay,
            );
        });
    let svc = ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy))
        .timeout(settings.attempt_timeout)
        .service(client);
    tower::util::BoxCloneService::new(svc)
}

async fn send(
    svc: Stack,
    base: &str,
    model: &str,
) -> Result<(u16, Bytes, Option<Report>), RetryError> {
    let req = http::Request::post(format!("{base}/api/generate"))
        .header("content-type", "application/json")
        .body(Full::new(generate_body(model)))
        .expect("a static request is valid");
    let res = svc.oneshot(req).await?;
    let status = res.status().as_u16();
    let report = res.extensions().get::<Report>().cloned();
    let body = res
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, body, report))
}

fn response_text(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("response")
                .and_then(|r| r.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

async fn fake_run() -> Result<(), Box<dyn std::error::Error>> {
    let fake = FakeOllama::start().await?;
    let oom = r#"{"error":"llama runner process has terminated: CUDA error: out of memory"}"#;
    fake.push_many([
        Reply::Status {
            status: 500,
            content_type: "application/json; charset=utf-8".into(),
            body: oom.as_bytes().to_vec(),
        },
        Reply::Hang,
        Reply::text("A retry budget caps retries at a share of recent successes, so a failing server is not buried under them."),
    ]);
    fake.set_unload_delay(Duration::from_millis(300));
    let settings = Settings {
        attempt_timeout: Duration::from_millis(1500),
        retry_delay: Duration::from_secs(1),
        settle: Duration::from_secs(5),
    };
    println!("tower-ollama-retry demo: CodeWorm's retry loop against an embedded fake Ollama");
    println!("  fake Ollama at {}", fake.url());
    println!(
        "  policy: default mode, 3 attempts, linear {:?} steps, {:?} per attempt, OOM recovery (unload, wait for /api/ps)",
        settings.retry_delay, settings.attempt_timeout
    );
    println!("  script: 500 out of memory, then a stall, then success\n");

    let clock = Instant::now();
    let outcome = send(stack(&settings, clock), &fake.url(), "qwen2.5:7b").await;

    println!("\ntimeline (as the server saw it):");
    let log = fake.log();
    let mut attempt = 0;
    let mut i = 0;
    while i < log.len() {
        let entry = &log[i];
        let t = entry.at.saturating_duration_since(clock).as_secs_f64();
        match &entry.kind {
            kind if kind.is_generation() => {
                attempt += 1;
                println!("[{t:>6.3}s] attempt {attempt}: POST {}", entry.path);
            }
            RequestKind::Unload { model } => {
                println!("[{t:>6.3}s]   recovery: unload {model} (keep_alive 0)")
            }
            RequestKind::Load { model, num_ctx } => {
                println!("[{t:>6.3}s]   recovery: reload {model} (num_ctx {num_ctx:?})")
            }
            RequestKind::Ps => {
                let mut polls = 1;
                while log
                    .get(i + 1)
                    .is_some_and(|e| matches!(e.kind, RequestKind::Ps))
                {
                    polls += 1;
                    i += 1;
                }
                println!(
                    "[{t:>6.3}s]   recovery: polled GET /api/ps {polls}× until the model was gone"
                );
            }
            _ => println!("[{t:>6.3}s] {} {}", entry.method, entry.path),
        }
        i += 1;
    }

    println!();
    match outcome {
        Ok((status, body, report)) => {
            if let Some(report) = report {
                for f in report.failures() {
                    let after = if f.recovered {
                        "recovered, retried at once".to_string()
                    } else {
                        format!("slept {:?}", f.delay)
                    };
                    println!("attempt {}: {} -> {after}", f.number, f.class);
                }
                println!(
                    "attempt {}: success ({} attempts, {} recovery, {:?} of backoff)",
                    report.attempts(),
                    report.attempts(),
                    report.recoveries(),
                    report.total_delay()
                );
            }
            println!("\nresult: HTTP {status}: {}", response_text(&body));
            println!("total time: {:.2}s", clock.elapsed().as_secs_f64());
            Ok(())
        }
        Err(e) => Err(format!("the demo's request failed: {e}").into()),
    }
}

async fn real_run(host: &str) -> Result<(), Box<dyn std::error::Error>> {
    let base = host.trim_end_matches('/').to_string();
    let base = if base.contains("://") {
        base
    } else {
        format!("http://{base}")
    };
    base.parse::<http::Uri>()
        .map_err(|e| format!("OLLAMA_HOST={host:?} is not a valid URL: {e}"))?;
    let model = std::env::var("OLLAMA_MODEL").unwrap_or_else(|_| "qwen2.5:7b".into());
    let settings = Settings {
        attempt_timeout: Duration::from_secs(600),
        retry_delay: Duration::from_secs(2),
        settle: Duration::from_secs(5),
    };
    println!(
        "sending one generation to {base} with model {model} (CodeWorm's numbers: 3 attempts, 2 s steps, 600 s per attempt)"
    );
    let clock = Instant::now();
    match send(stack(&settings, clock), &base, &model).await {
        Ok((status, body, report)) => {
            let attempts = report.map_or(1, |r| r.attempts());
            if (200..300).contains(&status) {
                println!(
                    "HTTP {status} after {attempts} attempt(s): {}",
                    response_text(&body)
                );
                Ok(())
            } else {
                Err(format!(
                    "Ollama answered HTTP {status} after {attempts} attempt(s): {}",
                    error_message(&body)
                )
                .into())
            }
        }
        Err(e) => Err(e.into()),
    }
}
