//! Helpers shared by `tests/ollama_http.rs` and `tests/ollama_recovery.rs`:
//! the real HTTP stack (hyper-util's legacy client on loopback, a per-attempt
//! `tower::timeout`, and `HttpRetryLayer`), CodeWorm's request body, and
//! small readers of the fake server's log.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::ServiceExt;
use tower::timeout::Timeout;
use tower::util::BoxCloneService;
use tower_ollama_retry::http::{HttpRetryLayer, PeekBody, PeekService, ReplayBody};
use tower_ollama_retry::ollama::fake::{FakeOllama, LoggedRequest, RequestKind};
use tower_ollama_retry::{Attempt, BoxError, Failure, Report, Retry, RetryError, recover_fn};

/// The model CodeWorm asks for by default.
pub const MODEL: &str = "qwen2.5:7b";

/// The body of a response from the whole stack.
pub type Res = Response<PeekBody<Incoming>>;

/// The client below the stack.
pub type HttpClient = Client<HttpConnector, ReplayBody<Full<Bytes>>>;

/// The whole stack, boxed.
pub type Svc = BoxCloneService<Request<Full<Bytes>>, Res, RetryError>;

/// What `HttpRetryLayer` wraps.
type Inner = PeekService<Timeout<HttpClient>>;

/// A client with a short connect timeout and the default pool.
pub fn client() -> HttpClient {
    client_with(|_| {})
}

/// A client that never keeps an idle connection, so that each attempt opens
/// a fresh one (a refused connect is then seen by the next attempt).
pub fn fresh_client() -> HttpClient {
    client_with(|b| {
        b.pool_max_idle_per_host(0);
    })
}

/// A client with `connect_timeout` and `tweak` applied to its builder.
pub fn client_with(tweak: impl FnOnce(&mut hyper_util::client::legacy::Builder)) -> HttpClient {
    client_with_connect_timeout(Duration::from_secs(2), tweak)
}

/// A client whose connector gives up connecting after `connect_timeout`.
pub fn client_with_connect_timeout(
    connect_timeout: Duration,
    tweak: impl FnOnce(&mut hyper_util::client::legacy::Builder),
) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    tweak(&mut builder);
    builder.build(connector)
}

/// `layer` over a per-attempt `tower::timeout` over `client`, boxed.
pub fn stack<P>(layer: HttpRetryLayer<P>, attempt_timeout: Duration, client: HttpClient) -> Svc
where
    P: Clone + Send + 'static,
    Retry<Inner, P>: tower::Service<Request<ReplayBody<Full<Bytes>>>, Response = Res, Error = RetryError>
        + Clone
        + Send
        + 'static,
    <Retry<Inner, P> as tower::Service<Request<ReplayBody<Full<Bytes>>>>>::Future: Send + 'static,
{
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(layer)
            .timeout(attempt_timeout)
            .service(client),
    )
}

/// CodeWorm's generation body for `prompt`, non-streaming.
pub fn codeworm_body(prompt: &str) -> String {
    codeworm_json(prompt, false).to_string()
}

/// CodeWorm's generation body as JSON, streaming or not.
pub fn codeworm_json(prompt: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "prompt": prompt,
        "stream": stream,
        "keep_alive": -1,
        "options": {"temperature": 0.3, "num_predict": 4096, "num_ctx": 16384},
    })
}

/// `POST {base}/api/generate` with `body`, as CodeWorm sends it.
pub fn generate(base: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/api/generate"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A response read to its end.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub report: Option<Report>,
}

impl Got {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads `res` to its end; panics if the body fails.
pub async fn read(res: Res) -> Got {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the body failed").to_bytes();
    Got {
        status: parts.status,
        report: parts.extensions.get::<Report>().cloned(),
        headers: parts.headers,
        body,
    }
}

/// Sends `req` through `svc` and reads the response, or returns the error.
/// The future holds its own clone of `svc`, so it can be spawned.
pub fn call(
    svc: &Svc,
    req: Request<Full<Bytes>>,
) -> impl Future<Output = Result<Got, RetryError>> + Send + 'static {
    let svc = svc.clone();
    async move {
        let res = svc.oneshot(req).await?;
        Ok(read(res).await)
    }
}

/// What a counting hook's future resolves to.
pub type HookResult = std::future::Ready<Result<(), BoxError>>;

/// A recovery hook that only counts its runs, and the counter.
pub fn counting_hook() -> (Arc<AtomicU32>, impl CountingHook) {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let hook = recover_fn(move |_: &Attempt, _: &Failure| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    });
    (runs, hook)
}

/// The closure type of [`counting_hook`]: a `Recover` for any request.
pub trait CountingHook:
    FnMut(&Attempt, &Failure) -> HookResult + Clone + Send + Sync + 'static
{
}

impl<F> CountingHook for F where
    F: FnMut(&Attempt, &Failure) -> HookResult + Clone + Send + Sync + 'static
{
}

/// The kinds of every logged request, in arrival order.
pub fn kinds(fake: &FakeOllama) -> Vec<RequestKind> {
    fake.log().into_iter().map(|r| r.kind).collect()
}

/// The logged generation requests, in arrival order.
pub fn generations(fake: &FakeOllama) -> Vec<LoggedRequest> {
    fake.log()
        .into_iter()
        .filter(|r| r.kind.is_generation())
        .collect()
}

/// How many unloads the fake received.
pub fn unload_count(fake: &FakeOllama) -> usize {
    fake.log()
        .iter()
        .filter(|r| matches!(r.kind, RequestKind::Unload { .. }))
        .count()
}

/// `later - earlier`, or a panic if `later` is earlier.
pub fn gap(earlier: Instant, later: Instant) -> Duration {
    later
        .checked_duration_since(earlier)
        .unwrap_or_else(|| panic!("{later:?} is before {earlier:?}"))
}

/// Asserts `lo <= d <= hi`, with a message naming `what`.
#[track_caller]
pub fn assert_between(what: &str, d: Duration, lo: Duration, hi: Duration) {
    assert!(
        d >= lo && d <= hi,
        "{what}: {d:?} is not within [{lo:?}, {hi:?}]"
    );
}

/// Milliseconds.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `content-length` header of a logged request.
pub fn content_length(r: &LoggedRequest) -> Option<String> {
    r.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
