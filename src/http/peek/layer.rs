//! [`PeekLayer`]: wraps services in [`PeekService`].

use super::{DEFAULT_PEEK_LIMIT, DEFAULT_PEEK_TIMEOUT, PeekService};
use std::time::Duration;
use tower_layer::Layer;

/// Wraps services in [`PeekService`], which reads the first bytes of each
/// non-success response so that a retry policy can classify it.
///
/// Put it *inside* the retry layer, so that every attempt's response is
/// peeked before the policy sees it. `Clone + Send + Sync`.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_ollama_retry::BoxError;
/// use tower_ollama_retry::http::PeekLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(PeekLayer::new().with_limit(8))
///     .service(service_fn(|req: http::Request<()>| async move {
///         let status = if req.uri().path() == "/ok" { 200 } else { 503 };
///         let body = Full::new(Bytes::from_static(b"server busy, try later"));
///         Ok::<_, BoxError>(http::Response::builder().status(status).body(body).unwrap())
///     }));
///
/// // A failure: its first 8 bytes were read, the rest still streams on.
/// let res = svc.clone().oneshot(http::Request::get("/api").body(()).unwrap()).await.unwrap();
/// assert_eq!(res.body().prefix(), b"server b");
/// assert!(!res.body().is_complete());
/// let all = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(all, "server busy, try later");
///
/// // A success is not touched.
/// let res = svc.oneshot(http::Request::get("/ok").body(()).unwrap()).await.unwrap();
/// assert!(res.body().is_passthrough());
/// assert!(res.body().prefix().is_empty());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct PeekLayer {
    limit: usize,
    timeout: Duration,
}

impl PeekLayer {
    /// A layer that peeks at up to [`DEFAULT_PEEK_LIMIT`] bytes.
    pub const fn new() -> Self {
        Self {
            limit: DEFAULT_PEEK_LIMIT,
            timeout: DEFAULT_PEEK_TIMEOUT,
        }
    }

    /// Peeks at up to `limit` bytes instead; `0` turns peeking off.
    pub const fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The most bytes a peek reads.
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// Gives up reading a failed response's body after `timeout` (default
    /// [`DEFAULT_PEEK_TIMEOUT`]): the peek runs above a per-attempt timeout,
    /// so without its own bound a stalled error body would hang the request.
    /// A stalled peek counts as a broken body (a transport failure).
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a peek may take.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Default for PeekLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for PeekLayer {
    type Service = PeekService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeekService::new(inner)
            .with_limit(self.limit)
            .with_timeout(self.timeout)
    }
}
