//! [`HttpRetryLayer`]: replay, retry and peek, stacked in the right order.

use super::{PeekLayer, PeekService, ReplayLayer, ReplayService};
use crate::{Retry, RetryLayer};
use tower_layer::Layer;

/// The whole HTTP retry stack as one layer:
/// [`ReplayLayer`] → [`RetryLayer`] → [`PeekLayer`] → your service.
///
/// Bodies are buffered once for replay (up to
/// [`DEFAULT_REPLAY_LIMIT`](super::DEFAULT_REPLAY_LIMIT)), and each failed
/// response has a prefix of its body read for the policy (up to
/// [`DEFAULT_PEEK_LIMIT`](super::DEFAULT_PEEK_LIMIT)). A per-attempt
/// timeout goes right below it.
///
/// # Example
///
/// The stack an Ollama client runs:
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::{Client, connect::HttpConnector};
/// use hyper_util::rt::TokioExecutor;
/// use tower::ServiceBuilder;
/// use tower_ollama_retry::{OllamaPolicy, http::{HttpRetryLayer, ReplayBody}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut connector = HttpConnector::new();
/// connector.set_connect_timeout(Some(Duration::from_secs(10)));
/// let client: Client<_, ReplayBody<Full<Bytes>>> =
///     Client::builder(TokioExecutor::new()).build(connector);
/// let svc = ServiceBuilder::new()
///     .layer(HttpRetryLayer::new(OllamaPolicy::default()))
///     .timeout(Duration::from_secs(600)) // per attempt
///     .service(client);
/// # let _ = svc;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpRetryLayer<P> {
    replay: ReplayLayer,
    retry: RetryLayer<P>,
    peek: PeekLayer,
}

impl<P> HttpRetryLayer<P> {
    /// The stack with `policy` and the default limits.
    pub fn new(policy: P) -> Self {
        Self {
            replay: ReplayLayer::new(),
            retry: RetryLayer::new(policy),
            peek: PeekLayer::new(),
        }
    }

    /// The most request-body bytes buffered for replay.
    pub fn with_replay_limit(mut self, limit: usize) -> Self {
        self.replay = self.replay.with_limit(limit);
        self
    }

    /// The most bytes of a failed response's body read for classification.
    pub fn with_peek_limit(mut self, limit: usize) -> Self {
        self.peek = self.peek.with_limit(limit);
        self
    }

    /// How long reading a failed response's body for the policy may take
    /// (default [`DEFAULT_PEEK_TIMEOUT`](super::DEFAULT_PEEK_TIMEOUT)). The
    /// per-attempt timeout below this layer bounds only the wait for the
    /// response head.
    pub fn with_peek_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.peek = self.peek.with_timeout(timeout);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        self.retry.policy()
    }
}

impl<S, P: Clone> Layer<S> for HttpRetryLayer<P> {
    type Service = ReplayService<Retry<PeekService<S>, P>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.replay.layer(self.retry.layer(self.peek.layer(inner)))
    }
}
