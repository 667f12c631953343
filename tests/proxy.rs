//! End to end: a real hyper-util client → the `ollama_proxy` example's app
//! (served by `axum::serve` on loopback) → the embedded `FakeOllama`.
//!
//! The app is the example's own code: `examples/ollama_proxy/proxy.rs` is
//! included below, so these tests run what the binary serves, CLI parsing
//! included. Settings are millisecond-scale (20 ms delay, 200 ms attempt
//! timeout, 20 ms settle); nothing sleeps to wait for something, and every
//! bound on time is generous.

#![cfg(feature = "test-util")]

#[path = "../examples/ollama_proxy/proxy.rs"]
mod proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proxy::{Config, ProxyMode, Upstream};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tower_ollama_retry::ollama::fake::{
    DEFAULT_MODEL, DEFAULT_RESPONSE, FakeOllama, Reply, RequestKind,
};

const JSON_CT: &str = "application/json; charset=utf-8";
const NDJSON_CT: &str = "application/x-ndjson";
/// A bound on anything that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The test settings, through the proxy's own CLI parser.
fn config(upstream: &str, mode: &str) -> Config {
    Config::try_parse_from([
        "ollama_proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--mode",
        mode,
        "--retry-delay",
        "20ms",
        "--attempt-timeout",
        "200ms",
        "--recovery-settle",
        "20ms",
    ])
    .unwrap()
}

/// The proxy app, served on a free loopback port until dropped.
struct Running {
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(app: axum::Router) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Running {
        url: format!("http://{addr}"),
        task,
    }
}

async fn start_proxy(upstream: &str, mode: &str) -> Running {
    serve(proxy::router(&config(upstream, mode))).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let res = timeout(PATIENCE, client.request(req))
        .await
        .expect("response head in time")
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = timeout(PATIENCE, res.into_body().collect())
        .await
        .expect("whole body in time")
        .unwrap()
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: Method, url: String, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// CodeWorm's generation request, non-streaming.
fn generate_body() -> String {
    json!({
        "model": DEFAULT_MODEL,
        "prompt": "why is the sky blue?",
        "stream": false,
        "keep_alive": -1,
        "options": {"temperature": 0.3, "num_predict": 4096, "num_ctx": 16384},
    })
    .to_string()
}

async fn generate(client: &HttpClient, proxy: &Running) -> Answer {
    send(
        client,
        request(
            Method::POST,
            format!("{}/api/generate", proxy.url),
            generate_body(),
        ),
    )
    .await
}

/// A corpus row: its reply, status, content type and exact body.
fn row(id: &str) -> (Reply, u16, String, Vec<u8>) {
    let (_, reply) = Reply::corpus()
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no corpus row {id}"));
    let Reply::Status {
        status,
        content_type,
        body,
    } = reply.clone()
    else {
        unreachable!("corpus rows are statuses")
    };
    (reply, status, content_type, body)
}

fn kinds(fake: &FakeOllama) -> Vec<RequestKind> {
    fake.log().into_iter().map(|r| r.kind).collect()
}

/// A free loopback port that nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn assert_ollama_error_body(a: &Answer) -> String {
    assert_eq!(a.content_type(), JSON_CT);
    let v = a.json();
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 1, "only an `error` field: {v}");
    obj["error"]
        .as_str()
        .expect("`error` is a string")
        .to_owned()
}

// ----- the CLI ---------------------------------------------------------------

#[test]
fn cli_defaults() {
    let c = Config::try_parse_from(["ollama_proxy"]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:11435".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.upstream,
        Upstream::parse("http://127.0.0.1:11434").unwrap()
    );
    assert_eq!(c.upstream.to_string(), "http://127.0.0.1:11434");
    assert_eq!(c.mode, ProxyMode::Default);
    assert_eq!(c.max_attempts, 3);
    assert_eq!(c.retry_delay, Duration::from_secs(2));
    assert_eq!(c.attempt_timeout, Duration::from_secs(600));
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.recovery_settle, Duration::from_secs(5));
}

#[test]
fn cli_human_durations_and_options() {
    let c = Config::try_parse_from([
        "ollama_proxy",
        "--retry-delay",
        "150ms",
        "--attempt-timeout",
        "2m",
        "--connect-timeout",
        "1s 500ms",
        "--recovery-settle",
        "0s",
        "--mode",
        "codeworm",
        "--max-attempts",
        "5",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://localhost:9/ollama/",
    ])
    .unwrap();
    assert_eq!(c.retry_delay, Duration::from_millis(150));
    assert_eq!(c.attempt_timeout, Duration::from_secs(120));
    assert_eq!(c.connect_timeout, Duration::from_millis(1500));
    assert_eq!(c.recovery_settle, Duration::ZERO);
    assert_eq!(c.mode, ProxyMode::Codeworm);
    assert_eq!(c.max_attempts, 5);
    assert_eq!(c.listen.port(), 0);
    assert_eq!(c.upstream.to_string(), "http://localhost:9/ollama");
}

#[test]
fn cli_errors_are_clap_errors() {
    use clap::error::ErrorKind;
    let bad = |args: &[&str]| {
        let mut argv = vec!["ollama_proxy"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap_err()
    };
    let e = bad(&["--retry-delay", "2"]);
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    assert!(e.to_string().contains("--retry-delay"), "{e}");
    assert_eq!(
        bad(&["--attempt-timeout", "fast"]).kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(bad(&["--mode", "strict"]).kind(), ErrorKind::InvalidValue);
    assert_eq!(
        bad(&["--max-attempts", "-1"]).kind(),
        ErrorKind::UnknownArgument
    );
    assert_eq!(
        bad(&["--max-attempts", "many"]).kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        bad(&["--listen", "localhost"]).kind(),
        ErrorKind::ValueValidation
    );
    let e = bad(&["--upstream", "https://127.0.0.1:11434"]);
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    assert!(e.to_string().contains("plain http"), "{e}");
    assert_eq!(bad(&["--frobnicate"]).kind(), ErrorKind::UnknownArgument);
    // A zero timeout would fail every attempt before it started.
    assert_eq!(
        bad(&["--attempt-timeout", "0s"]).kind(),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        bad(&["--connect-timeout", "0ms"]).kind(),
        ErrorKind::ValueValidation
    );
    // The exit code clap uses for these is 2, not a panic.
    assert_eq!(bad(&["--retry-delay", "2"]).exit_code(), 2);
}

// ----- OOM ---------------------------------------------------------------------

#[tokio::test]
async fn oom_recovers_then_succeeds_default_mode() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let (oom, ..) = row("G01"); // "llama runner process has terminated: CUDA error: out of memory"
    fake.push(oom);

    let a = generate(&client(), &proxy).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.content_type(), JSON_CT);
    assert_eq!(a.json()["response"], DEFAULT_RESPONSE);
    assert_eq!(fake.generation_count(), 2);

    // Default recovery: unload, poll /api/ps until the model is gone, no
    // reload; then the retried generation.
    let k = kinds(&fake);
    assert_eq!(k.first(), Some(&RequestKind::Generate), "{k:?}");
    assert_eq!(k.last(), Some(&RequestKind::Generate), "{k:?}");
    let middle = &k[1..k.len() - 1];
    assert_eq!(
        middle.first(),
        Some(&RequestKind::Unload {
            model: DEFAULT_MODEL.into()
        }),
        "{k:?}"
    );
    assert!(middle[1..].iter().all(|k| *k == RequestKind::Ps), "{k:?}");
    assert!(!middle[1..].is_empty(), "polled /api/ps: {k:?}");
    // Both generations carried the client's bytes unchanged.
    let log = fake.log();
    let gens: Vec<_> = log.iter().filter(|r| r.kind.is_generation()).collect();
    assert_eq!(gens[0].body, generate_body());
    assert_eq!(gens[1].body, generate_body());
}

#[tokio::test]
async fn oom_recovers_then_succeeds_codeworm_mode() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "codeworm").await;
    let (oom, ..) = row("G01");
    fake.push(oom);

    let a = generate(&client(), &proxy).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["done_reason"], "stop");
    // CodeWorm's recovery: unload, sleep the settle time, reload at 8192.
    assert_eq!(
        kinds(&fake),
        [
            RequestKind::Generate,
            RequestKind::Unload {
                model: DEFAULT_MODEL.into()
            },
            RequestKind::Load {
                model: DEFAULT_MODEL.into(),
                num_ctx: Some(8192)
            },
            RequestKind::Generate,
        ]
    );
    let log = fake.log();
    assert!(
        log[2].at - log[1].at >= Duration::from_millis(20),
        "slept the settle time"
    );
}

// ----- transient ---------------------------------------------------------------

#[tokio::test]
async fn busy_503_is_retried_in_default_mode() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let (busy, ..) = row("G03");
    fake.push(busy);

    let a = generate(&client(), &proxy).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["response"], DEFAULT_RESPONSE);
    assert_eq!(kinds(&fake), [RequestKind::Generate, RequestKind::Generate]);
    let log = fake.log();
    assert!(
        log[1].at - log[0].at >= Duration::from_millis(20),
        "backed off 1 × 20 ms"
    );
}

#[tokio::test]
async fn busy_503_comes_back_byte_exact_in_codeworm_mode() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "codeworm").await;
    let (busy, status, content_type, body) = row("G03");
    fake.push(busy);

    let a = generate(&client(), &proxy).await;
    assert_eq!(a.status.as_u16(), status);
    assert_eq!(a.content_type(), content_type);
    assert_eq!(&a.body[..], &body[..]);
    assert_eq!(fake.generation_count(), 1);
}

// ----- permanent ---------------------------------------------------------------

#[tokio::test]
async fn not_found_404_comes_back_at_once_byte_exact() {
    for mode in ["default", "codeworm"] {
        let fake = FakeOllama::start().await.unwrap();
        let proxy = start_proxy(&fake.url(), mode).await;
        let (missing, status, content_type, body) = row("G04");
        fake.push(missing);

        let a = generate(&client(), &proxy).await;
        assert_eq!(a.status.as_u16(), status, "{mode}");
        assert_eq!(a.content_type(), content_type, "{mode}");
        assert_eq!(&a.body[..], &body[..], "{mode}");
        assert_eq!(kinds(&fake), [RequestKind::Generate], "{mode}");
    }
}

// ----- no response at all ------------------------------------------------------

#[tokio::test]
async fn every_attempt_timing_out_gives_504() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    fake.push_many([Reply::Hang, Reply::Hang, Reply::Hang]);

    let started = Instant::now();
    let a = generate(&client(), &proxy).await;
    let took = started.elapsed();
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let message = assert_ollama_error_body(&a);
    assert!(message.contains("3 attempts"), "{message}");
    assert_eq!(fake.generation_count(), 3);
    // Three 200 ms attempts and the 20 ms, 40 ms sleeps between them.
    assert!(took >= Duration::from_millis(660), "{took:?}");
}

#[tokio::test]
async fn unreachable_upstream_gives_502() {
    let dead = dead_port().await;
    let proxy = start_proxy(&format!("http://{dead}"), "default").await;

    let a = generate(&client(), &proxy).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let message = assert_ollama_error_body(&a);
    assert!(
        message.contains("3 attempts"),
        "connection errors are retried: {message}"
    );

    // CodeWorm retries connection errors too.
    let proxy = start_proxy(&format!("http://{dead}"), "codeworm").await;
    let a = send(
        &client(),
        request(Method::GET, format!("{}/api/tags", proxy.url), ""),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert!(assert_ollama_error_body(&a).contains("3 attempts"));
}

#[tokio::test]
async fn zero_attempts_sends_nothing_and_gives_502() {
    let fake = FakeOllama::start().await.unwrap();
    let mut c = config(&fake.url(), "default");
    c.max_attempts = 0;
    let proxy = serve(proxy::router(&c)).await;
    let a = generate(&client(), &proxy).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_ollama_error_body(&a);
    assert!(fake.log().is_empty());
}

// ----- streaming ---------------------------------------------------------------

fn ndjson_lines() -> Vec<Vec<u8>> {
    let line = |token: &str, done: bool| {
        let mut v = json!({"model": DEFAULT_MODEL, "created_at": "2026-01-01T00:00:00Z", "response": token, "done": done});
        if done {
            v["done_reason"] = json!("stop");
        }
        format!("{v}\n").into_bytes()
    };
    vec![line("The", false), line(" sky", false), line("", true)]
}

#[tokio::test]
async fn streamed_chunks_pass_through_unbuffered() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let chunks = ndjson_lines();
    let gap = Duration::from_millis(500);
    fake.push(Reply::Chunked {
        chunks: chunks.clone(),
        gap,
    });

    let body = json!({"model": DEFAULT_MODEL, "prompt": "why?", "stream": true}).to_string();
    let started = Instant::now();
    let res = timeout(
        PATIENCE,
        client().request(request(
            Method::POST,
            format!("{}/api/generate", proxy.url),
            body,
        )),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], NDJSON_CT);
    let mut body = res.into_body();

    // The first chunk arrives before the second is even due...
    let mut got = Vec::new();
    while got.len() < chunks[0].len() {
        let frame = timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    let first_at = started.elapsed();
    assert_eq!(got, chunks[0]);
    assert!(
        first_at < gap,
        "first chunk after {first_at:?}, the gap is {gap:?}"
    );
    // ...and nothing more comes until the fake sends it.
    assert!(
        timeout(Duration::from_millis(100), body.frame())
            .await
            .is_err(),
        "the second chunk came early"
    );

    // The rest, byte for byte, past the 200 ms attempt timeout: the timeout
    // bounds the response head, not a stream.
    while let Some(frame) = timeout(PATIENCE, body.frame()).await.unwrap() {
        got.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(got, chunks.concat());
    assert!(started.elapsed() >= gap * 2, "the gaps were kept");
}

#[tokio::test]
async fn streaming_ndjson_success_is_byte_exact() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let chunks = ndjson_lines();
    fake.push(Reply::Chunked {
        chunks: chunks.clone(),
        gap: Duration::ZERO,
    });
    let body = json!({"model": DEFAULT_MODEL, "prompt": "why?"}).to_string();
    let client = client();
    let url = format!("{}/api/generate", proxy.url);

    let a = send(&client, request(Method::POST, url.clone(), body.clone())).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), NDJSON_CT);
    assert_eq!(&a.body[..], &chunks.concat()[..]);

    // The fake's own streamed success: NDJSON lines ending in `done: true`.
    let a = send(&client, request(Method::POST, url, body)).await;
    assert_eq!(a.content_type(), NDJSON_CT);
    let lines: Vec<Value> = std::str::from_utf8(&a.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 1);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    assert_eq!(lines.last().unwrap()["done"], true);
    let text: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert_eq!(text, DEFAULT_RESPONSE);
}

// ----- headers, methods, paths ---------------------------------------------------

#[tokio::test]
async fn headers_pass_through_and_hop_by_hop_ones_do_not() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let (busy, ..) = row("G03");
    fake.push(busy); // a retried request carries the same headers
    let mut req = request(
        Method::POST,
        format!("{}/api/generate", proxy.url),
        generate_body(),
    );
    let h = req.headers_mut();
    h.insert("x-request-id", "abc-123".parse().unwrap());
    h.insert(header::AUTHORIZATION, "Bearer token".parse().unwrap());
    h.insert(header::CONNECTION, "x-hop".parse().unwrap());
    h.insert("x-hop", "for the proxy only".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());

    let a = send(&client(), req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.content_type(), JSON_CT, "the upstream's content type");
    assert!(a.headers.contains_key(header::CONTENT_LENGTH));

    let log = fake.log();
    assert_eq!(log.len(), 2);
    for r in &log {
        assert_eq!(r.headers["x-request-id"], "abc-123");
        assert_eq!(r.headers[header::AUTHORIZATION], "Bearer token");
        assert_eq!(r.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            r.headers[header::HOST],
            fake.addr().to_string(),
            "Host is the upstream's"
        );
        assert!(!r.headers.contains_key("x-hop"));
        assert!(!r.headers.contains_key("keep-alive"));
    }
}

#[tokio::test]
async fn every_method_and_path_is_forwarded() {
    let fake = FakeOllama::start().await.unwrap();
    let proxy = start_proxy(&fake.url(), "default").await;
    let client = client();
    let get = |path: &str| request(Method::GET, format!("{}{path}", proxy.url), "");

    let tags = send(&client, get("/api/tags")).await;
    assert_eq!(tags.status, StatusCode::OK);
    assert_eq!(tags.json()["models"][0]["name"], DEFAULT_MODEL);

    let chat = json!({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false});
    let chat = send(
        &client,
        request(
            Method::POST,
            format!("{}/api/chat", proxy.url),
            chat.to_string(),
        ),
    )
    .await;
    assert_eq!(chat.status, StatusCode::OK);
    assert_eq!(chat.json()["message"]["content"], DEFAULT_RESPONSE);

    let ps = send(&client, get("/api/ps")).await;
    assert_eq!(ps.status, StatusCode::OK);
    assert_eq!(
        ps.json()["models"][0]["name"],
        DEFAULT_MODEL,
        "the chat loaded it"
    );

    let root = send(&client, get("/")).await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(&root.body[..], b"Ollama is running");
    assert!(root.content_type().starts_with("text/plain"));

    let version = send(&client, get("/api/version?verbose=1")).await;
    assert_eq!(version.json(), json!({"version": "0.15.0"}));

    // The fake's own 404 for an unknown path comes back as it is.
    let other = send(
        &client,
        request(Method::DELETE, format!("{}/api/nothing", proxy.url), ""),
    )
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(&other.body[..], b"404 page not found");

    let seen: Vec<_> = fake
        .log()
        .into_iter()
        .map(|r| (r.method, r.path, r.kind))
        .collect();
    assert_eq!(
        seen,
        [
            (Method::GET, "/api/tags".into(), RequestKind::Tags),
            (Method::POST, "/api/chat".into(), RequestKind::Chat),
            (Method::GET, "/api/ps".into(), RequestKind::Ps),
            (Method::GET, "/".into(), RequestKind::Root),
            (Method::GET, "/api/version".into(), RequestKind::Version),
            (Method::DELETE, "/api/nothing".into(), RequestKind::Other),
        ]
    );
}

/// An upstream that echoes what it received, and sets a custom response
/// header (which the fake cannot).
fn echo_upstream() -> axum::Router {
    axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let echo = json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "host": parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()),
            "x-custom": parts.headers.get("x-custom").and_then(|v| v.to_str().ok()),
            "body": String::from_utf8_lossy(&body),
        });
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(201)
                .header("x-upstream", "echo")
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(echo.to_string()))
                .unwrap(),
        )
    })
}

#[tokio::test]
async fn query_prefix_methods_and_response_headers_pass_through() {
    let upstream = serve(echo_upstream()).await;
    // An upstream with a path prefix: it is kept in front of every path.
    let proxy = start_proxy(&format!("{}/prefix/", upstream.url), "default").await;
    let client = client();
    for method in [Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS] {
        let mut req = request(
            method.clone(),
            format!("{}/v1/models?a=1&b=two", proxy.url),
            "payload",
        );
        req.headers_mut().insert("x-custom", "yes".parse().unwrap());
        let a = send(&client, req).await;
        assert_eq!(a.status, StatusCode::CREATED, "{method}");
        assert_eq!(a.headers["x-upstream"], "echo", "{method}");
        let echo = a.json();
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["uri"], "/prefix/v1/models?a=1&b=two");
        assert_eq!(echo["host"], upstream.url.trim_start_matches("http://"));
        assert_eq!(echo["x-custom"], "yes");
        assert_eq!(echo["body"], "payload");
    }
}
