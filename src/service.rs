//! [`Retry`]: the retrying service.

use crate::Policy;
use crate::future::ResponseFuture;
use std::mem;
use std::task::{Context, Poll};
use tower_service::Service;

/// Retries requests to an inner service as its [`Policy`] decides.
///
/// # Readiness
///
/// Every attempt, each retry included, is sent only after the inner
/// service's `poll_ready` returned `Ready(Ok)`, and the instance that became
/// ready is the instance that is called: `call` takes the ready service out
/// and leaves a fresh clone behind (tower's `mem::replace` pattern), and the
/// response future drives that same instance through `poll_ready` again
/// before each retry.
///
/// # Clone
///
/// The inner service must be `Clone` (put it behind
/// [`tower::buffer::Buffer`] if it is not). The policy is cloned for each
/// request, so its `&mut self` state is per request.
///
/// # Example
///
/// ```
/// use tower::{ServiceExt, service_fn};
/// use tower_ollama_retry::{OllamaError, OllamaPolicy, Retry};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = service_fn(|prompt: &'static str| async move {
///     Ok::<_, OllamaError>(format!("echo: {prompt}"))
/// });
/// let svc = Retry::new(inner, OllamaPolicy::plain());
/// assert_eq!(svc.oneshot("hi").await.unwrap(), "echo: hi");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Retry<S, P> {
    inner: S,
    policy: P,
}

impl<S, P> Retry<S, P> {
    /// Wraps `inner`, retrying by `policy`.
    pub const fn new(inner: S, policy: P) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    S: Service<Req> + Clone,
    P: Policy<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = P::Error;
    type Future = ResponseFuture<S, P, Req>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.policy.readiness_error(e))),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // The ready instance goes with this request; a clone stays behind
        // for the next `poll_ready`.
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        ResponseFuture::new(ready, self.policy.clone(), req)
    }
}
