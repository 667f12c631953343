//! [`RespondOnError`]: a policy adapter for services that must not fail
//! (axum routes), and [`error_response`], the response a gateway sends when
//! a retried request ends with no response at all.

use crate::{Attempt, Class, Decision, Failure, Finished, Policy, Reason, RetryError};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use std::convert::Infallible;
use std::time::Duration;

/// The status a gateway answers with when a retried request got no
/// response: `504 Gateway Timeout` when every attempt timed out or the
/// deadline stopped the loop, `502 Bad Gateway` otherwise (unreachable,
/// connection broken, recovery failed).
pub fn error_status(err: &RetryError) -> StatusCode {
    let report = err.report();
    let timed_out = report.reason() == Reason::Deadline
        || (report.retried() && report.classes().all(|c| c == Class::Timeout));
    if timed_out {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// The Ollama-shaped body for `err`: `{"error":"<message>"}`, where the
/// message is the error and its whole `source()` chain (hyper-util's own
/// message, "client error (Connect)", says too little on its own).
pub fn error_body(err: &RetryError) -> Bytes {
    let mut text = err.to_string();
    // `RetryError`'s own message already shows its direct source.
    let mut source = std::error::Error::source(err).and_then(|e| e.source());
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    let message = serde_json::Value::String(text);
    Bytes::from(format!("{{\"error\":{message}}}"))
}

/// A complete error response for `err` ([`error_status`], [`error_body`],
/// JSON content type), with the attempt report as an extension.
///
/// ```
/// use bytes::Bytes;
/// use tower_ollama_retry::{RetryError, http::error_response};
///
/// let res: http::Response<Bytes> = error_response(&RetryError::no_attempts());
/// assert_eq!(res.status(), 502);
/// assert_eq!(res.body(), r#"{"error":"no attempts allowed: the policy allows 0 attempts"}"#);
/// ```
pub fn error_response<B: From<Bytes>>(err: &RetryError) -> Response<B> {
    let mut res = Response::new(B::from(error_body(err)));
    *res.status_mut() = error_status(err);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res.extensions_mut().insert(err.report().clone());
    res
}

/// Wraps an HTTP policy so that the retrying service never fails: a request
/// that ends without a response gets an [`error_response`] instead, and the
/// service's error type is [`Infallible`].
///
/// That is what `axum::Router::layer` needs, whose routes cannot fail.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ollama_retry::{RetryLayer, http::{HttpPolicy, RespondOnError}};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let route = service_fn(|_: http::Request<Full<Bytes>>| async {
///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
/// });
/// let svc = RetryLayer::new(RespondOnError::new(HttpPolicy::new().with_max_attempts(0))).layer(route);
/// let req = http::Request::new(Full::new(Bytes::new()));
/// let res = svc.oneshot(req).await.unwrap(); // the error type is Infallible
/// assert_eq!(res.status(), 502);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RespondOnError<P> {
    inner: P,
}

impl<P> RespondOnError<P> {
    /// Wraps `policy`.
    pub const fn new(policy: P) -> Self {
        Self { inner: policy }
    }

    /// The wrapped policy.
    pub fn get_ref(&self) -> &P {
        &self.inner
    }

    /// Unwraps the policy.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P, Req, B, E> Policy<Req, Response<B>, E> for RespondOnError<P>
where
    P: Policy<Req, Response<B>, E, Error = RetryError>,
    B: From<Bytes>,
    E: Into<Infallible>,
{
    type Error = Infallible;
    type Recover = P::Recover;

    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts()
    }

    fn deadline(&self) -> Option<Duration> {
        self.inner.deadline()
    }

    fn measure_elapsed(&self) -> bool {
        self.inner.measure_elapsed()
    }

    fn replay(&mut self, req: &Req) -> Option<Req> {
        self.inner.replay(req)
    }

    fn classify(&mut self, attempt: &Attempt, result: &Result<Response<B>, E>) -> Decision {
        self.inner.classify(attempt, result)
    }

    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.inner.backoff(attempt, failure)
    }

    fn recover(&mut self, attempt: &Attempt, failure: &Failure, next: &mut Req) -> P::Recover {
        self.inner.recover(attempt, failure, next)
    }

    fn permit_retry(&mut self, attempt: &Attempt, failure: &Failure) -> Result<(), Reason> {
        self.inner.permit_retry(attempt, failure)
    }

    fn readiness_error(&mut self, error: E) -> Infallible {
        error.into()
    }

    fn finish(&mut self, finished: Finished<Response<B>, E>) -> Result<Response<B>, Infallible> {
        Ok(self
            .inner
            .finish(finished)
            .unwrap_or_else(|e| error_response(&e)))
    }

    #[inline]
    fn succeeded(
        &mut self,
        attempt: &Attempt,
        result: Result<Response<B>, E>,
    ) -> Result<Response<B>, Infallible> {
        Ok(self
            .inner
            .succeeded(attempt, result)
            .unwrap_or_else(|e| error_response(&e)))
    }
}
