//! [`GrpcPolicy`]: retries for gRPC calls, after gRPC's retry design (A6).

use super::code::{
    CodeSet, code_class, grpc_message, message, response_code, status_in_chain, transport_failure,
};
use crate::backoff::{Exponential, Jitter, JitterKind};
use crate::hint::{Hint, grpc_pushback_header};
use crate::http::response::{already_retried, finish_response, first_success_response};
use crate::http::{DefaultHttpBackoff, ReplayableBody, replay_request};
use crate::settings::{Settings, settings_builders, settings_policy_methods};
use crate::{
    AsStdError, Attempt, Backoff, BoxError, Class, Decision, Failure, Finished, Policy, Recover,
    RetryError,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use std::time::Duration;
use tonic::Code;

/// The metadata key that tells how many attempts came before this one
/// (gRPC A6's "exposed retry metadata").
///
/// [`GrpcPolicy`] sets it on every retry it sends (`1` on the second
/// attempt, `2` on the third, ...), so that the server knows the call is a
/// retry, and on the final response of a call that was retried, where a
/// tonic client finds it in the response's metadata, or in the
/// [`Status`](tonic::Status)'s metadata when the call failed. A call that
/// succeeds at once never carries it.
pub const PREVIOUS_RPC_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

/// The default backoff of [`GrpcPolicy`], as in gRPC A6's example service
/// config: exponential from 100 ms, doubling, capped at 1 s, with full
/// jitter (the delay is uniform in `[0, backoff]`).
fn default_backoff() -> DefaultHttpBackoff {
    let max = Duration::from_secs(1);
    Jitter::new(
        Exponential::new(Duration::from_millis(100)).with_max(max),
        JitterKind::Full,
    )
    .with_cap(max)
}

/// Retries for gRPC calls over `http` services: a tonic
/// [`Channel`](tonic::transport::Channel), or tonic's server routes.
///
/// It classifies each attempt by its gRPC status, as gRPC's retry design
/// (A6) does:
///
/// | the attempt | its code | class | retried by default |
/// |---|---|---|---|
/// | HTTP 200 with `grpc-status` in the headers (trailers-only) | that status | see below | if `UNAVAILABLE` |
/// | HTTP 200 without `grpc-status` (the status comes in the trailers) | — | success | no: the call is committed |
/// | another HTTP status, no `grpc-status` (a proxy's 503) | mapped: 429, 502, 503, 504 → `UNAVAILABLE`, 401 → `UNAUTHENTICATED`, ... | see below | if `UNAVAILABLE` |
/// | an error holding a [`Status`](tonic::Status) in its `source()` chain | that status | see below | if `UNAVAILABLE` |
/// | a transport error: refused, reset, HTTP/2 `REFUSED_STREAM` | `UNAVAILABLE` | connection or transient | yes |
/// | a transport timeout (a `TimeoutLayer` below this one) | `DEADLINE_EXCEEDED` | timeout | no |
///
/// `OK` is a success; `DEADLINE_EXCEEDED` is a timeout, `UNAVAILABLE` and
/// `RESOURCE_EXHAUSTED` are transient, and every other code is fatal unless
/// [`with_codes`](Self::with_codes) makes it retryable (then it counts as
/// transient). Only the codes in that set are retried: `UNAVAILABLE` by
/// default.
///
/// A server may push back with `grpc-retry-pushback-ms` (in a trailers-only
/// response's headers, or in the [`Status`](tonic::Status)'s metadata): a
/// number of milliseconds replaces the computed backoff (still capped by
/// [`with_max_delay`](Self::with_max_delay)), and a negative or malformed
/// value means "do not retry". A code that is not retried ignores it.
///
/// The defaults are A6's example: 3 attempts in all (the first included),
/// exponential backoff from 100 ms doubling up to 1 s with full jitter, no
/// overall deadline, and at most 30 s for any one delay (a pushback up to
/// 30 s is honoured).
///
/// Retries carry [`PREVIOUS_RPC_ATTEMPTS`]; the final response of a
/// retried call carries it too, and the attempt [`Report`](crate::Report)
/// as an `http` extension (a tonic client hands that on in
/// `tonic::Response::extensions`). A response an inner retry layer already
/// gave up on is not retried again.
///
/// Requests replay through [`ReplayableBody`]: use
/// [`GrpcRetryLayer`](super::GrpcRetryLayer), which buffers tonic's
/// streaming bodies for this.
///
/// # Example
///
/// A trailers-only `UNAVAILABLE`, then `OK`:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ollama_retry::{BoxError, Reason, Report, RetryLayer, backoff::Constant};
/// use tower_ollama_retry::grpc::{GrpcPolicy, PREVIOUS_RPC_ATTEMPTS};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let server = service_fn(move |req: http::Request<Full<Bytes>>| {
///     let n = seen.fetch_add(1, Ordering::SeqCst);
///     // The retry says how many attempts came before it.
///     assert_eq!(req.headers().get(PREVIOUS_RPC_ATTEMPTS).is_some(), n > 0);
///     async move {
///         let status = if n == 0 { "14" } else { "0" };
///         Ok::<_, BoxError>(http::Response::builder().header("grpc-status", status).body(()).unwrap())
///     }
/// });
/// let policy = GrpcPolicy::new().with_backoff(Constant::new(Duration::from_millis(1)));
/// let svc = RetryLayer::new(policy).layer(server);
///
/// let req = http::Request::post("http://127.0.0.1:50051/grpc.health.v1.Health/Check")
///     .header("content-type", "application/grpc")
///     .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
///     .unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.headers()["grpc-status"], "0");
/// let report = res.extensions().get::<Report>().unwrap();
/// assert_eq!(report.attempts(), 2);
/// assert_eq!(report.reason(), Reason::Success);
/// assert_eq!(res.headers()[PREVIOUS_RPC_ATTEMPTS], "1");
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcPolicy<B = DefaultHttpBackoff, R = ()> {
    codes: CodeSet,
    recover_codes: CodeSet,
    backoff: B,
    recover: R,
    settings: Settings,
    // Per request: how many attempts were sent before the one `replay`
    // copies for.
    sent: u32,
}

impl Default for GrpcPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcPolicy {
    /// The defaults above.
    pub fn new() -> Self {
        Self {
            codes: CodeSet::of(Code::Unavailable),
            recover_codes: CodeSet::empty(),
            backoff: default_backoff(),
            recover: (),
            settings: Settings::new(3, Duration::from_secs(30)),
            sent: 0,
        }
    }
}

impl<B, R> GrpcPolicy<B, R> {
    settings_builders!("tower_ollama_retry::grpc::GrpcPolicy", "GrpcPolicy::new()");

    /// The codes to retry (A6's `retryableStatusCodes`), replacing the
    /// default `UNAVAILABLE`. `OK` is never a failure, whatever the set.
    ///
    /// Transport failures count as the code gRPC gives them: a connection
    /// that failed or broke is `UNAVAILABLE`, a timeout `DEADLINE_EXCEEDED`.
    ///
    /// ```
    /// use tonic::Code;
    /// use tower_ollama_retry::grpc::GrpcPolicy;
    ///
    /// let policy = GrpcPolicy::new().with_codes([Code::Unavailable, Code::Aborted]);
    /// assert!(policy.is_retryable(Code::Aborted));
    /// assert!(!policy.is_retryable(Code::NotFound));
    /// ```
    pub fn with_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.codes = codes.into_iter().collect();
        self
    }

    /// Whether a failure with `code` is retried (by backoff, or after the
    /// recovery hook).
    pub fn is_retryable(&self, code: Code) -> bool {
        code != Code::Ok && (self.codes.contains(code) || self.recover_codes.contains(code))
    }

    /// The backoff between attempts.
    pub fn with_backoff<B2>(self, backoff: B2) -> GrpcPolicy<B2, R> {
        GrpcPolicy {
            codes: self.codes,
            recover_codes: self.recover_codes,
            backoff,
            recover: self.recover,
            settings: self.settings,
            sent: self.sent,
        }
    }

    /// Runs `recover` before retrying a failure with one of `codes`, then
    /// retries at once instead of backing off.
    ///
    /// The hook gets the request the next attempt sends, so it can rewrite
    /// it: for `UNAUTHENTICATED`, fetch a fresh token and replace the
    /// `authorization` metadata. Its error ends the call
    /// ([`Reason::RecoveryFailed`](crate::Reason::RecoveryFailed)). A pushback of "do not retry" and the
    /// class limits apply as for any retry.
    pub fn with_recover<R2>(
        self,
        codes: impl IntoIterator<Item = Code>,
        recover: R2,
    ) -> GrpcPolicy<B, R2> {
        GrpcPolicy {
            codes: self.codes,
            recover_codes: codes.into_iter().collect(),
            backoff: self.backoff,
            recover,
            settings: self.settings,
            sent: self.sent,
        }
    }

    /// The decision on a failure with `code`, its class (for transport
    /// failures, the one [`classify_error`](crate::ollama::classify_error)
    /// found), the server's pushback and a message.
    fn decide(
        &mut self,
        code: Code,
        class: Option<Class>,
        pushback: Option<Hint>,
        message: std::borrow::Cow<'static, str>,
    ) -> Decision {
        if code == Code::Ok {
            return Decision::Success;
        }
        let recover = self.recover_codes.contains(code);
        let retried = recover || self.codes.contains(code);
        // A transport failure keeps the class `classify_error` found, unless
        // it is fatal and the user made its code retryable.
        let class = match class {
            Some(c) if c != Class::Fatal => c,
            _ => code_class(code, retried),
        };
        let failure = Failure::new(class).with_message(message);
        let failure = match pushback {
            _ if !retried => return Decision::Fatal(failure),
            Some(Hint::Stop) => return Decision::Fatal(failure),
            Some(Hint::After(delay)) => failure.with_hint(delay),
            None => failure,
        };
        if !self.settings.admit(class) {
            Decision::Fatal(failure)
        } else if recover {
            Decision::Recover(failure)
        } else {
            Decision::Retry(failure)
        }
    }

    fn decide_headers(&mut self, code: Code, headers: &HeaderMap) -> Decision {
        if code == Code::Ok {
            return Decision::Success;
        }
        let detail = grpc_message(headers);
        let pushback = grpc_pushback_header(headers);
        self.decide(code, None, pushback, message(code, detail.as_deref()))
    }
}

/// The value of [`PREVIOUS_RPC_ATTEMPTS`] for `n`, without formatting the
/// common ones.
fn attempts_value(n: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(n),
    }
}

fn set_previous_attempts(headers: &mut HeaderMap, n: u32) {
    headers.insert(
        HeaderName::from_static(PREVIOUS_RPC_ATTEMPTS),
        attempts_value(n),
    );
}

impl<ReqB, ResB, E, B, R> Policy<Request<ReqB>, Response<ResB>, E> for GrpcPolicy<B, R>
where
    ReqB: ReplayableBody,
    E: Into<BoxError> + AsStdError,
    B: Backoff,
    R: Recover<Request<ReqB>>,
{
    type Error = RetryError;
    type Recover = R::Future;

    settings_policy_methods!();

    fn replay(&mut self, req: &Request<ReqB>) -> Option<Request<ReqB>> {
        let mut copy = replay_request(req)?;
        // The copy is for the attempt after the one about to be sent.
        self.sent = self.sent.saturating_add(1);
        set_previous_attempts(copy.headers_mut(), self.sent);
        Some(copy)
    }

    fn classify(&mut self, _: &Attempt, result: &Result<Response<ResB>, E>) -> Decision {
        match result {
            Ok(res) if already_retried(res) => Decision::Fatal(Failure::new(Class::Fatal)),
            Ok(res) => match response_code(res.status(), res.headers()) {
                None => Decision::Success,
                Some(code) => self.decide_headers(code, res.headers()),
            },
            Err(e) => {
                let Some(err) = e.as_std_error() else {
                    return Decision::Success;
                };
                // An inner retry layer already decided this call's fate.
                if RetryError::find(err).is_some() {
                    return Decision::Fatal(Failure::new(Class::Fatal));
                }
                if let Some(status) = status_in_chain(err) {
                    let code = status.code();
                    let pushback = grpc_pushback_header(status.metadata().as_ref());
                    return self.decide(
                        code,
                        None,
                        pushback,
                        message(code, Some(status.message())),
                    );
                }
                let (class, code) = transport_failure(err);
                self.decide(code, Some(class), None, err.to_string().into())
            }
        }
    }

    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.settings.delay(&mut self.backoff, attempt, failure)
    }

    fn recover(
        &mut self,
        attempt: &Attempt,
        failure: &Failure,
        next: &mut Request<ReqB>,
    ) -> R::Future {
        self.recover.recover(attempt, failure, next)
    }

    #[inline]
    fn succeeded(
        &mut self,
        attempt: &Attempt,
        result: Result<Response<ResB>, E>,
    ) -> Result<Response<ResB>, RetryError> {
        first_success_response(&self.settings.common, attempt, result)
    }

    #[inline]
    fn finish(
        &mut self,
        finished: Finished<Response<ResB>, E>,
    ) -> Result<Response<ResB>, RetryError> {
        finish_response(&self.settings.common, finished, |res, report| {
            let previous = report.attempts().saturating_sub(1);
            if previous > 0 {
                set_previous_attempts(res.headers_mut(), previous);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hint::Hint;

    type Res = Result<Response<()>, BoxError>;

    fn trailers_only(code: &'static str, pushback: Option<&'static str>) -> Res {
        let mut b = Response::builder().header("grpc-status", code);
        if let Some(p) = pushback {
            b = b.header("grpc-retry-pushback-ms", p);
        }
        Ok(b.body(()).unwrap())
    }

    fn classify(p: &mut GrpcPolicy, r: &Res) -> Decision {
        <GrpcPolicy as Policy<Request<()>, Response<()>, BoxError>>::classify(
            p,
            &Attempt::new(1, 3),
            r,
        )
    }

    #[test]
    fn codes_and_classes() {
        let mut p = GrpcPolicy::new();
        assert_eq!(
            classify(&mut p, &trailers_only("0", None)),
            Decision::Success
        );
        assert_eq!(classify(&mut p, &Ok(Response::new(()))), Decision::Success);
        let d = classify(&mut p, &trailers_only("14", None));
        assert!(matches!(d, Decision::Retry(_)), "{d:?}");
        assert_eq!(d.class(), Class::Transient);
        assert_eq!(
            d.failure().unwrap().message(),
            Some("grpc-status 14 Unavailable")
        );
        let d = classify(&mut p, &trailers_only("4", None));
        assert!(matches!(d, Decision::Fatal(_)));
        assert_eq!(d.class(), Class::Timeout);
        let d = classify(&mut p, &trailers_only("8", None));
        assert!(matches!(d, Decision::Fatal(_)));
        assert_eq!(d.class(), Class::Transient);
        let d = classify(&mut p, &trailers_only("5", None));
        assert!(matches!(d, Decision::Fatal(_)));
        assert_eq!(d.class(), Class::Fatal);
        let d = classify(
            &mut p,
            &Ok(Response::builder().status(503).body(()).unwrap()),
        );
        assert!(matches!(d, Decision::Retry(_)));
    }

    #[test]
    fn pushback() {
        let mut p = GrpcPolicy::new();
        let d = classify(&mut p, &trailers_only("14", Some("250")));
        assert_eq!(
            d.failure().unwrap().hint(),
            Some(Duration::from_millis(250))
        );
        assert!(matches!(d, Decision::Retry(_)));
        assert!(matches!(
            classify(&mut p, &trailers_only("14", Some("-1"))),
            Decision::Fatal(_)
        ));
        assert!(matches!(
            classify(&mut p, &trailers_only("14", Some("x"))),
            Decision::Fatal(_)
        ));
        assert_eq!(crate::hint::grpc_pushback(b"-1"), Hint::Stop);
        // A pushback on a code that is not retried changes nothing.
        assert!(matches!(
            classify(&mut p, &trailers_only("5", Some("1"))),
            Decision::Fatal(_)
        ));
    }

    #[test]
    fn statuses_in_errors() {
        let mut p = GrpcPolicy::new().with_codes([Code::Aborted]);
        let err: BoxError = Box::new(tonic::Status::aborted("again"));
        let d = classify(&mut p, &Err(err));
        assert!(matches!(d, Decision::Retry(_)));
        assert_eq!(
            d.failure().unwrap().message(),
            Some("grpc-status 10 Aborted: again")
        );
        let mut meta = tonic::metadata::MetadataMap::new();
        meta.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        let err: BoxError = Box::new(tonic::Status::with_metadata(Code::Aborted, "no", meta));
        assert!(matches!(classify(&mut p, &Err(err)), Decision::Fatal(_)));
        // An inner retry layer's verdict is final.
        let inner = RetryError::new(
            crate::Report::default(),
            Some(Box::new(tonic::Status::aborted("x"))),
        );
        assert!(matches!(
            classify(&mut p, &Err(Box::new(inner))),
            Decision::Fatal(_)
        ));
    }

    #[test]
    fn transport_errors() {
        let mut p = GrpcPolicy::new();
        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let d = classify(&mut p, &Err(refused));
        assert!(matches!(d, Decision::Retry(_)));
        assert_eq!(d.class(), Class::Connection);
        let odd: BoxError = Box::new(std::io::Error::other("odd"));
        assert!(matches!(classify(&mut p, &Err(odd)), Decision::Fatal(_)));
        let mut p = GrpcPolicy::new().with_codes([Code::Unknown]);
        let odd: BoxError = Box::new(std::io::Error::other("odd"));
        let d = classify(&mut p, &Err(odd));
        assert!(matches!(d, Decision::Retry(_)));
        assert_eq!(d.class(), Class::Transient);
    }

    #[test]
    fn class_limits_and_recover_codes() {
        let mut p = GrpcPolicy::new().with_class_limit(Class::Transient, 1);
        assert!(matches!(
            classify(&mut p, &trailers_only("14", None)),
            Decision::Retry(_)
        ));
        assert!(matches!(
            classify(&mut p, &trailers_only("14", None)),
            Decision::Fatal(_)
        ));
        let mut p = GrpcPolicy::new().with_recover([Code::Unauthenticated], ());
        let d = <GrpcPolicy<DefaultHttpBackoff, ()> as Policy<
            Request<()>,
            Response<()>,
            BoxError,
        >>::classify(&mut p, &Attempt::new(1, 3), &trailers_only("16", None));
        assert!(matches!(d, Decision::Recover(_)), "{d:?}");
        assert!(p.is_retryable(Code::Unauthenticated) && !p.is_retryable(Code::Ok));
    }

    #[test]
    fn previous_attempts_values() {
        assert_eq!(attempts_value(1), "1");
        assert_eq!(attempts_value(42), "42");
    }
}
