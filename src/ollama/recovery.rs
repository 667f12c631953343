//! [`OllamaRecovery`]: the OOM recovery hook, single-flight per model.

use crate::http::ReplayBody;
use crate::{Attempt, BoxError, Class, Failure, Recover};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// CodeWorm reloads with at most this context after an OOM.
pub const CODEWORM_RECOVERY_CTX: u64 = 8192;

/// The most bytes of a `/api/ps` reply the recovery reads.
const PS_BODY_LIMIT: usize = 1024 * 1024;

type SharedRecovery = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

#[derive(Default)]
struct ModelState {
    in_flight: Option<SharedRecovery>,
    last_done: Option<Instant>,
}

struct Inner {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Option<Uri>,
    strict: bool,
    settle: Duration,
    poll_interval: Duration,
    request_timeout: Duration,
    reduced_ctx: Option<u64>,
    models: Mutex<HashMap<String, ModelState>>,
}

/// The OOM recovery hook: unload the model from the Ollama server, wait for
/// its memory to come back, and (in CodeWorm mode) reload it.
///
/// It reads the model, `options.num_ctx` and `keep_alive` from the failing
/// request's JSON body, and talks to the Ollama server the request went to
/// (its URI's scheme and authority), or to [`with_base_url`](Self::with_base_url)
/// when the request URI is relative.
///
/// - **CodeWorm** ([`codeworm`](Self::codeworm)): unload
///   (`{"model":M,"keep_alive":0}`), sleep the settle time (5 s), then reload
///   with `num_ctx = min(C, 8192)`. Statuses are ignored; only a transport
///   failure fails the recovery.
/// - **Default** ([`new`](Self::new)): unload, then poll `GET /api/ps` until
///   the model is gone, for at most the settle time. No reload: the retried
///   request loads the model itself. [`with_reduced_ctx`](Self::with_reduced_ctx)
///   opts in to carrying a smaller `num_ctx` into the retried request, which
///   is what CodeWorm's reload meant to achieve (Ollama reloads whenever
///   `num_ctx` changes, so CodeWorm's reload is undone by its own retry).
///
/// # Single-flight
///
/// All clones share one state. Concurrent OOM failures for the same model
/// share **one** recovery in flight; and a request whose failed attempt was
/// sent before the latest finished recovery for its model does not start
/// another (that recovery already freed the memory), it retries at once.
/// The recovery itself runs on a spawned task, so a caller that goes away
/// does not cancel it for the others.
///
/// # Example
///
/// ```
/// use tower_ollama_retry::{OllamaPolicy, RetryLayer, ollama::OllamaRecovery};
///
/// let layer = RetryLayer::new(OllamaPolicy::default().with_recovery(OllamaRecovery::new()));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct OllamaRecovery {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OllamaRecovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaRecovery")
            .field("strict", &self.inner.strict)
            .field("settle", &self.inner.settle)
            .field("reduced_ctx", &self.inner.reduced_ctx)
            .finish_non_exhaustive()
    }
}

impl Default for OllamaRecovery {
    fn default() -> Self {
        Self::new()
    }
}

/// The parts of the failing request that a recovery needs.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    model: String,
    num_ctx: Option<u64>,
    keep_alive: Option<Value>,
}

impl Target {
    fn from_body(body: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let model = v.get("model")?.as_str()?.to_owned();
        let num_ctx = v
            .get("options")
            .and_then(|o| o.get("num_ctx"))
            .and_then(Value::as_u64);
        Some(Self {
            model,
            num_ctx,
            keep_alive: v.get("keep_alive").cloned(),
        })
    }
}

impl OllamaRecovery {
    fn build(strict: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            inner: Arc::new(Inner {
                client,
                base: None,
                strict,
                settle: Duration::from_secs(5),
                poll_interval: Duration::from_millis(100),
                request_timeout: Duration::from_secs(60),
                reduced_ctx: None,
                models: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The default recovery: unload, then wait until `/api/ps` no longer
    /// lists the model (at most the settle time, 5 s).
    pub fn new() -> Self {
        Self::build(false)
    }

    /// CodeWorm's recovery: unload, sleep 5 s, reload with
    /// `num_ctx = min(C, 8192)`.
    pub fn codeworm() -> Self {
        Self::build(true)
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        // Configuration happens before any clone is shared; if it was
        // cloned already, the clone keeps its own copy of the settings.
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(inner),
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    client: old.client.clone(),
                    base: old.base.clone(),
                    strict: old.strict,
                    settle: old.settle,
                    poll_interval: old.poll_interval,
                    request_timeout: old.request_timeout,
                    reduced_ctx: old.reduced_ctx,
                    models: Mutex::new(HashMap::new()),
                };
                f(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    /// The settle time: CodeWorm's fixed sleep, or the default mode's
    /// deadline for `/api/ps` polling (default 5 s).
    pub fn with_settle(self, settle: Duration) -> Self {
        self.configure(|i| i.settle = settle)
    }

    /// How often the default mode polls `/api/ps` (default 100 ms).
    pub fn with_poll_interval(self, every: Duration) -> Self {
        self.configure(|i| i.poll_interval = every.max(Duration::from_millis(1)))
    }

    /// The timeout of each unload, poll or reload request (default 60 s).
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        self.configure(|i| i.request_timeout = timeout)
    }

    /// The Ollama base URL to use when a request's URI is relative.
    pub fn with_base_url(self, base: Uri) -> Self {
        self.configure(|i| i.base = Some(base))
    }

    /// Opt-in (default mode): rewrite the retried request so that its
    /// `options.num_ctx` is at most `max_ctx` (CodeWorm's intent: 8192).
    pub fn with_reduced_ctx(self, max_ctx: u64) -> Self {
        self.configure(|i| i.reduced_ctx = Some(max_ctx))
    }

    /// Uses `client` for the recovery's own requests.
    pub fn with_client(self, client: Client<HttpConnector, Full<Bytes>>) -> Self {
        self.configure(|i| i.client = client)
    }

    /// The recovery for `model`, shared with any other in flight for it.
    fn run(
        &self,
        target: Target,
        base: Uri,
        sent_at: Option<Instant>,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let mut models = self.inner.models.lock().unwrap_or_else(|p| p.into_inner());
        let state = models.entry(target.model.clone()).or_default();
        if let (Some(sent), Some(done)) = (sent_at, state.last_done)
            && sent < done
        {
            tracing::info!(model = %target.model, "oom_recovery_already_done");
            return async { Ok(()) }.boxed();
        }
        let shared = match &state.in_flight {
            Some(shared) => {
                tracing::info!(model = %target.model, "oom_recovery_joined");
                shared.clone()
            }
            None => {
                let inner = self.inner.clone();
                let model = target.model.clone();
                let task = tokio::spawn(async move {
                    // Clears the slot however the task ends, a panic or an
                    // abort included, so that a model's recovery can never
                    // stay stuck "in flight".
                    let mut guard = InFlight {
                        inner: inner.clone(),
                        model,
                        done: false,
                    };
                    let result = recover(&inner, &target, &base).await;
                    guard.done = true;
                    drop(guard);
                    result.map_err(|e| Arc::<str>::from(e.to_string()))
                });
                let shared = async move {
                    match task.await {
                        Ok(r) => r,
                        Err(e) => Err(Arc::<str>::from(format!("recovery task failed: {e}"))),
                    }
                }
                .boxed()
                .shared();
                state.in_flight = Some(shared.clone());
                shared
            }
        };
        drop(models);
        async move { shared.await.map_err(|e| BoxError::from(e.to_string())) }.boxed()
    }
}

/// Ends a model's recovery in the shared state when dropped.
struct InFlight {
    inner: Arc<Inner>,
    model: String,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut models = self.inner.models.lock().unwrap_or_else(|p| p.into_inner());
        let state = models.entry(std::mem::take(&mut self.model)).or_default();
        state.in_flight = None;
        if self.done {
            state.last_done = Some(Instant::now());
        }
    }
}

/// `now + d`, or far in the future when that does not fit.
fn later(d: Duration) -> Instant {
    crate::future::instant_after(Instant::now(), d)
}

/// The base URI (scheme and authority) of `uri`, or `fallback`.
fn base_of(uri: &Uri, fallback: Option<&Uri>) -> Option<Uri> {
    let src = if uri.authority().is_some() {
        uri
    } else {
        fallback?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(src.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP));
    parts.authority = src.authority().cloned();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    Uri::from_parts(parts).ok()
}

fn endpoint(base: &Uri, path: &'static str) -> Result<Uri, BoxError> {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static(path));
    Ok(Uri::from_parts(parts)?)
}

/// Sends one request of the recovery; only a transport failure (or the
/// request timeout) is an error.
async fn send(
    inner: &Inner,
    method: Method,
    uri: Uri,
    body: Option<Value>,
) -> Result<Bytes, BoxError> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut req = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Full::new(body))?;
    let fut = async {
        let res = inner.client.request(req).await?;
        let bytes = Limited::new(res.into_body(), PS_BODY_LIMIT)
            .collect()
            .await?
            .to_bytes();
        Ok::<_, BoxError>(bytes)
    };
    tokio::time::timeout(inner.request_timeout, fut)
        .await
        .map_err(|_| BoxError::from("recovery request timed out"))?
}

async fn recover(inner: &Inner, target: &Target, base: &Uri) -> Result<(), BoxError> {
    let generate = endpoint(base, "/api/generate")?;
    tracing::info!(model = %target.model, "unloading model");
    send(
        inner,
        Method::POST,
        generate.clone(),
        Some(json!({"model": target.model, "keep_alive": 0})),
    )
    .await?;
    if inner.strict {
        tokio::time::sleep(inner.settle).await;
        let new_ctx = target.num_ctx.unwrap_or(16384).min(CODEWORM_RECOVERY_CTX);
        let mut reload =
            json!({"model": target.model, "prompt": "", "options": {"num_ctx": new_ctx}});
        reload["keep_alive"] = target.keep_alive.clone().unwrap_or(json!(-1));
        send(inner, Method::POST, generate, Some(reload)).await?;
        tracing::info!(new_ctx, "oom_recovery_complete");
        return Ok(());
    }
    let ps = endpoint(base, "/api/ps")?;
    let deadline = later(inner.settle);
    loop {
        let body = send(inner, Method::GET, ps.clone(), None).await?;
        if !lists_model(&body, &target.model) {
            tracing::info!(model = %target.model, "model unloaded");
            return Ok(());
        }
        if later(inner.poll_interval) > deadline {
            tracing::warn!(model = %target.model, settle_ms = inner.settle.as_millis() as u64,
                "model still loaded after the settle time; retrying anyway");
            return Ok(());
        }
        tokio::time::sleep(inner.poll_interval).await;
    }
}

/// A model name as Ollama lists it: `llama3` is `llama3:latest`.
fn canonical(model: &str) -> std::borrow::Cow<'_, str> {
    if model.contains(':') {
        model.into()
    } else {
        format!("{model}:latest").into()
    }
}

/// Whether a `/api/ps` reply lists `model`. An unreadable reply counts as
/// "not listed": the recovery then retries rather than wait on garbage.
fn lists_model(body: &[u8], model: &str) -> bool {
    let model = canonical(model);
    let model = model.as_ref();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    v.get("models")
        .and_then(Value::as_array)
        .is_some_and(|models| {
            models.iter().any(|m| {
                ["name", "model"]
                    .iter()
                    .filter_map(|k| m.get(*k).and_then(Value::as_str))
                    .any(|listed| canonical(listed) == model)
            })
        })
}

/// Rewrites a JSON request body so that `options.num_ctx <= max_ctx`.
fn reduce_ctx(body: &[u8], max_ctx: u64) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let options = obj.get_mut("options")?;
    // No num_ctx means the model's own default, which may be smaller:
    // never raise it.
    let current = options.get("num_ctx").and_then(Value::as_u64)?;
    let options = options.as_object_mut()?;
    if current <= max_ctx {
        return None;
    }
    options.insert("num_ctx".into(), json!(max_ctx));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

impl<B> Recover<Request<ReplayBody<B>>> for OllamaRecovery {
    type Future = BoxFuture<'static, Result<(), BoxError>>;

    fn recover(
        &mut self,
        attempt: &Attempt,
        failure: &Failure,
        next: &mut Request<ReplayBody<B>>,
    ) -> Self::Future {
        if failure.class() != Class::Oom {
            return async { Ok(()) }.boxed();
        }
        let Some(body) = next.body().buffered_bytes() else {
            return async { Ok(()) }.boxed();
        };
        let body = body.clone();
        let body = &body[..];
        let Some(target) = Target::from_body(body) else {
            tracing::warn!("OOM recovery skipped: the request body names no model");
            return async { Ok(()) }.boxed();
        };
        let Some(base) = base_of(next.uri(), self.inner.base.as_ref()) else {
            return async {
                Err(BoxError::from(
                    "OOM recovery: the request has no Ollama base URL",
                ))
            }
            .boxed();
        };
        if let Some(max_ctx) = self.inner.reduced_ctx.filter(|_| !self.inner.strict)
            && let Some(new_body) = reduce_ctx(body, max_ctx)
        {
            let len = new_body.len();
            *next.body_mut() = ReplayBody::full(new_body);
            next.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        self.run(target, base, attempt.sent_at())
    }

    fn needs_clock(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_reads_model_ctx_and_keep_alive() {
        let t = Target::from_body(
            br#"{"model":"qwen2.5:7b","prompt":"p","keep_alive":-1,"options":{"num_ctx":16384}}"#,
        )
        .unwrap();
        assert_eq!(t.model, "qwen2.5:7b");
        assert_eq!(t.num_ctx, Some(16384));
        assert_eq!(t.keep_alive, Some(json!(-1)));
        assert!(Target::from_body(b"not json").is_none());
        assert!(Target::from_body(br#"{"prompt":"no model"}"#).is_none());
    }

    #[test]
    fn reduce_ctx_only_lowers() {
        let b = reduce_ctx(br#"{"model":"m","options":{"num_ctx":16384}}"#, 8192).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["options"]["num_ctx"], 8192);
        assert!(reduce_ctx(br#"{"model":"m","options":{"num_ctx":4096}}"#, 8192).is_none());
        assert!(reduce_ctx(br#"{"model":"m"}"#, 8192).is_none());
    }

    #[test]
    fn ps_listing() {
        assert!(lists_model(
            br#"{"models":[{"name":"m","model":"m"}]}"#,
            "m"
        ));
        assert!(!lists_model(br#"{"models":[]}"#, "m"));
        assert!(!lists_model(b"garbage", "m"));
        assert!(lists_model(
            br#"{"models":[{"name":"llama3:latest"}]}"#,
            "llama3"
        ));
        assert!(!lists_model(
            br#"{"models":[{"name":"llama3:8b"}]}"#,
            "llama3"
        ));
    }

    #[test]
    fn base_urls() {
        let u: Uri = "http://127.0.0.1:11434/api/generate".parse().unwrap();
        assert_eq!(
            base_of(&u, None).unwrap().to_string(),
            "http://127.0.0.1:11434/"
        );
        let rel: Uri = "/api/generate".parse().unwrap();
        assert!(base_of(&rel, None).is_none());
        let fb: Uri = "http://h:1".parse().unwrap();
        assert_eq!(base_of(&rel, Some(&fb)).unwrap().to_string(), "http://h:1/");
    }
}
