//! [`RetryLayer`]: the tower [`Layer`] that wraps a service in [`Retry`].

use crate::Retry;
use tower_layer::Layer;

/// Wraps services in [`Retry`] with a clone of `policy`.
///
/// The layer is `Clone + Send + Sync` whenever the policy is, so it fits
/// `ServiceBuilder`, `axum::Router::layer` and tonic's `Server::layer`.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_ollama_retry::{BoxError, Decision, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let policy = RetryPolicy::new(|_: &_, result: &Result<u32, BoxError>| match result {
///     Ok(_) => Decision::Success,
///     Err(_) => Decision::Retry(tower_ollama_retry::Failure::new(tower_ollama_retry::Class::Transient)),
/// })
/// .with_max_attempts(3)
/// .with_backoff(tower_ollama_retry::backoff::Constant::new(Duration::ZERO));
///
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(policy))
///     .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n * 2) }));
/// assert_eq!(svc.oneshot(21).await.unwrap(), 42);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<P> {
    policy: P,
}

impl<P> RetryLayer<P> {
    /// A layer that retries with `policy`.
    pub const fn new(policy: P) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}
