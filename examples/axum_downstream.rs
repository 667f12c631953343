//! An axum handler that calls a downstream Ollama through the retry stack.
//!
//! The downstream is the embedded `FakeOllama` (feature `test-util`),
//! scripted to answer the first generation with a real "server busy" 503.
//! The handler's stack retries it (default mode backs off on a busy server)
//! and returns the generated text. The example serves its app on
//! `127.0.0.1:0`, asks itself one question, prints the answer and exits 0.
//!
//! ```text
//! cargo run --example axum_downstream --features test-util
//! ```
//!
//! The retry events go to stderr (`RUST_LOG` sets the filter).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower::timeout::{Timeout, TimeoutLayer};
use tower_ollama_retry::http::{
    HttpRetryLayer, PeekService, ReplayBody, ReplayService, error_response,
};
use tower_ollama_retry::ollama::fake::{DEFAULT_MODEL, FakeOllama, Reply};
use tower_ollama_retry::{OllamaPolicy, Report, Retry};
use tracing_subscriber::EnvFilter;

/// The downstream call: replay → retry (OllamaPolicy) → peek → timeout → client.
type Ollama = ReplayService<
    Retry<PeekService<Timeout<Client<HttpConnector, ReplayBody<Full<Bytes>>>>>, OllamaPolicy>,
>;

#[derive(Clone)]
struct App {
    ollama: Ollama,
    base_url: String,
}

fn ollama_stack() -> Ollama {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    // CodeWorm's loop in default mode; a 100 ms step instead of 2 s keeps
    // the example quick.
    let policy = OllamaPolicy::default().with_retry_delay(Duration::from_millis(100));
    tower::ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy))
        .layer(TimeoutLayer::new(Duration::from_secs(600)))
        .service(client)
}

/// `POST /ask` with the prompt as the body: the generated text.
async fn ask(State(app): State<App>, prompt: String) -> Response {
    let body = serde_json::json!({"model": DEFAULT_MODEL, "prompt": prompt, "stream": false});
    let req = http::Request::post(format!("{}/api/generate", app.base_url))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let res = match app.ollama.oneshot(req).await {
        Ok(res) => res,
        // No response at all: 502 or 504 with an Ollama-shaped body.
        Err(e) => return error_response::<axum::body::Body>(&e),
    };
    let status = res.status();
    let attempts = res.extensions().get::<Report>().map_or(1, Report::attempts);
    let bytes = match Limited::new(res.into_body(), 16 * 1024 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("downstream body failed: {e}"),
            )
                .into_response();
        }
    };
    if !status.is_success() {
        // The downstream's last answer, as it was.
        return (status, bytes).into_response();
    }
    let text = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("response")?.as_str().map(str::to_owned));
    match text {
        Some(text) => ([("x-ollama-attempts", attempts.to_string())], text).into_response(),
        None => (
            StatusCode::BAD_GATEWAY,
            "downstream sent no `response` text",
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = match std::env::var_os("RUST_LOG") {
        Some(_) => EnvFilter::from_default_env(),
        None => EnvFilter::new("warn,tower_ollama_retry=info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let ollama = match FakeOllama::start().await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: cannot start the fake Ollama: {e}");
            return ExitCode::FAILURE;
        }
    };
    ollama.push_many([
        Reply::error(
            503,
            "server busy, please try again.  maximum pending requests exceeded",
        ),
        Reply::text("The sky is blue because air scatters blue light the most."),
    ]);

    let app = Router::new().route("/ask", post(ask)).with_state(App {
        ollama: ollama_stack(),
        base_url: ollama.url(),
    });
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound address");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // One request to ourselves, like any HTTP client would make.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{addr}/ask"))
        .body(Full::new(Bytes::from_static(b"why is the sky blue?")))
        .expect("a valid request");
    let outcome = async {
        let res = client.request(req).await?;
        let status = res.status();
        let attempts = res
            .headers()
            .get("x-ollama-attempts")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error>>((status, attempts, body))
    };
    let code = match tokio::time::timeout(Duration::from_secs(30), outcome).await {
        Ok(Ok((status, attempts, body))) => {
            println!("status: {status}");
            println!(
                "downstream attempts: {attempts} (generations the fake saw: {})",
                ollama.generation_count()
            );
            println!("answer: {}", String::from_utf8_lossy(&body));
            if status == StatusCode::OK {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("error: the request failed: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: no answer within 30 s");
            ExitCode::FAILURE
        }
    };
    server.abort();
    code
}
