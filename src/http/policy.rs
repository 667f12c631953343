//! [`HttpPolicy`]: retries for any HTTP API, the way Envoy and browsers do.

use super::response::{already_retried, finish_response, first_success_response};
use super::{ReplayableBody, replay_request};
use crate::backoff::{Exponential, Jitter, JitterKind};
use crate::hint::retry_after_header;
use crate::ollama::{Mode, classify_error};
use crate::settings::{Settings, settings_builders, settings_policy_methods};
use crate::{
    AsStdError, Attempt, Backoff, BoxError, Class, Decision, Failure, Finished, Policy, Recover,
    RetryError,
};
use http::{Method, Request, Response, StatusCode};
use std::time::Duration;

/// A request extension that lets [`HttpPolicy`] retry a request whose method
/// is not idempotent (a `POST`, say) when its failure is retryable.
///
/// ```
/// use tower_ollama_retry::http::RetryNonIdempotent;
///
/// let mut req = http::Request::post("http://example.com/jobs").body(()).unwrap();
/// req.extensions_mut().insert(RetryNonIdempotent);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryNonIdempotent;

/// A set of HTTP failure statuses (4xx and 5xx), as a bitset: no
/// allocation, `Copy`, and small, because every request's policy carries
/// one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusSet {
    // Bit `s - 400` for status `s`.
    bits: [u64; 4],
}

/// The statuses a [`StatusSet`] can hold: the ones that report a failure.
const FAILURES: std::ops::RangeInclusive<u16> = 400..=599;

impl StatusSet {
    /// No status.
    pub const fn empty() -> Self {
        Self { bits: [0; 4] }
    }

    /// 408, 429, 500, 502, 503 and 504: the statuses worth retrying.
    pub fn default_retryable() -> Self {
        [408, 429, 500, 502, 503, 504].into_iter().collect()
    }

    /// Adds `status`. Only 400 to 599 can be added: any other status is not
    /// a failure a retry could fix, and is ignored.
    ///
    /// ```
    /// use tower_ollama_retry::http::StatusSet;
    ///
    /// let mut set = StatusSet::empty();
    /// set.insert(418);
    /// set.insert(302);
    /// assert!(set.contains(418));
    /// assert!(!set.contains(302));
    /// ```
    pub fn insert(&mut self, status: u16) {
        if let Some((word, bit)) = Self::slot(status) {
            self.bits[word] |= bit;
        }
    }

    /// Removes `status`.
    pub fn remove(&mut self, status: u16) {
        if let Some((word, bit)) = Self::slot(status) {
            self.bits[word] &= !bit;
        }
    }

    /// Whether `status` is in the set.
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        Self::slot(status).is_some_and(|(word, bit)| self.bits[word] & bit != 0)
    }

    #[inline]
    fn slot(status: u16) -> Option<(usize, u64)> {
        let offset = status.checked_sub(*FAILURES.start())?;
        FAILURES
            .contains(&status)
            .then(|| (usize::from(offset / 64), 1 << (offset % 64)))
    }
}

impl FromIterator<u16> for StatusSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut set = Self::empty();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(FAILURES.filter(|s| self.contains(*s)))
            .finish()
    }
}

/// The default backoff of [`HttpPolicy`]: exponential from 100 ms, capped
/// at 10 s, with full jitter.
pub type DefaultHttpBackoff = Jitter<Exponential>;

fn default_backoff() -> DefaultHttpBackoff {
    let max = Duration::from_secs(10);
    Jitter::new(
        Exponential::new(Duration::from_millis(100)).with_max(max),
        JitterKind::Full,
    )
    .with_cap(max)
}

/// Whether a method is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether an error proves that the request never reached the server's
/// application logic: no connection was made, or HTTP/2 refused the stream
/// (`REFUSED_STREAM`, also what streams past a `GOAWAY` get).
pub fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    classify_error(Mode::Default, err) == Class::Connection
}

/// Retries for any HTTP API.
///
/// - It retries responses whose status is in a [`StatusSet`] (by default 408,
///   429, 500, 502, 503 and 504) and transport failures (connection errors,
///   timeouts, connections closed mid-response), honouring `Retry-After`
///   (capped by [`with_max_delay`](Self::with_max_delay)).
/// - It retries only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE,
///   TRACE), unless [`retry_non_idempotent`](Self::retry_non_idempotent) is
///   on or the request carries [`RetryNonIdempotent`]. A failure that proves
///   the request was never sent (connection refused, HTTP/2
///   `REFUSED_STREAM`) is retried even for a `POST`.
/// - The defaults: 3 attempts, exponential backoff from 100 ms with full
///   jitter, 10 s at most per delay (a `Retry-After` up to 30 s is honoured).
/// - A response an inner retry layer already gave up on is not retried
///   again, and the final response carries the attempt [`Report`](crate::Report)
///   as an extension when it was retried.
///
/// Requests replay through [`ReplayableBody`]: put [`ReplayLayer`](super::ReplayLayer)
/// outside the retry layer for streaming bodies.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use std::time::Duration;
/// use tower::{ServiceExt, service_fn, Layer};
/// use tower_ollama_retry::{BoxError, Report, RetryLayer, http::HttpPolicy};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let seen = calls.clone();
/// let api = service_fn(move |_req: http::Request<Full<Bytes>>| {
///     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move {
///         let status = if n == 0 { 503 } else { 200 };
///         Ok::<_, BoxError>(http::Response::builder().status(status).header("retry-after", "0")
///             .body(Full::new(Bytes::new())).unwrap())
///     }
/// });
/// let svc = RetryLayer::new(HttpPolicy::new()).layer(api);
/// let req = http::Request::get("http://example.com/").body(Full::new(Bytes::new())).unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.extensions().get::<Report>().unwrap().attempts(), 2);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpPolicy<B = DefaultHttpBackoff, R = ()> {
    rules: Rules,
    backoff: B,
    recover: R,
    settings: Settings,
}

/// The plain-data part of an [`HttpPolicy`], `Copy` for the reason
/// `settings::Knobs` is.
#[derive(Clone, Copy, Debug)]
struct Rules {
    statuses: StatusSet,
    non_idempotent: bool,
    // Per request: whether this request may be retried after it was sent.
    idempotent: bool,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpPolicy {
    /// The defaults above.
    pub fn new() -> Self {
        Self {
            rules: Rules {
                statuses: StatusSet::default_retryable(),
                non_idempotent: false,
                idempotent: true,
            },
            backoff: default_backoff(),
            recover: (),
            settings: Settings::new(3, Duration::from_secs(30)),
        }
    }
}

impl<B, R> HttpPolicy<B, R> {
    settings_builders!("tower_ollama_retry::http::HttpPolicy", "HttpPolicy::new()");

    /// The statuses to retry.
    pub fn with_statuses(mut self, statuses: StatusSet) -> Self {
        self.rules.statuses = statuses;
        self
    }

    /// Retries every method, not only idempotent ones.
    pub fn retry_non_idempotent(mut self, on: bool) -> Self {
        self.rules.non_idempotent = on;
        self
    }

    /// The backoff between attempts.
    pub fn with_backoff<B2>(self, backoff: B2) -> HttpPolicy<B2, R> {
        HttpPolicy {
            rules: self.rules,
            backoff,
            recover: self.recover,
            settings: self.settings,
        }
    }

    /// A recovery hook, run for failures a custom classifier marks
    /// [`Decision::Recover`]. (`HttpPolicy` itself never does.)
    pub fn with_recover<R2>(self, recover: R2) -> HttpPolicy<B, R2> {
        HttpPolicy {
            rules: self.rules,
            backoff: self.backoff,
            recover,
            settings: self.settings,
        }
    }

    /// Everything but the success path of `classify`.
    fn classify_failure<ResB, E: AsStdError>(
        &mut self,
        result: &Result<Response<ResB>, E>,
    ) -> Decision {
        match result {
            Ok(res) if already_retried(res) => Decision::Fatal(Failure::new(Class::Fatal)),
            Ok(res) if self.rules.statuses.contains(res.status().as_u16()) => {
                let failure = Failure::new(status_class(res.status()))
                    .with_hint_opt(retry_after_header(res.headers()))
                    .with_message(
                        res.status()
                            .canonical_reason()
                            .unwrap_or("retryable status"),
                    );
                self.gate(failure, true)
            }
            Ok(_) => Decision::Success,
            Err(e) => {
                let Some(err) = e.as_std_error() else {
                    return Decision::Success;
                };
                // One classification: a connection failure is the proof that
                // nothing was sent (what `never_sent` says).
                let class = classify_error(Mode::Default, err);
                self.gate(Failure::new(class), class != Class::Connection)
            }
        }
    }

    fn gate(&mut self, failure: Failure, sent: bool) -> Decision {
        if failure.class() == Class::Fatal || (sent && !self.rules.idempotent) {
            return Decision::Fatal(failure);
        }
        if !self.settings.admit(failure.class()) {
            return Decision::Fatal(failure);
        }
        Decision::Retry(failure)
    }
}

/// The class of a retryable status.
fn status_class(status: StatusCode) -> Class {
    match status.as_u16() {
        408 | 504 => Class::Timeout,
        _ => Class::Transient,
    }
}

impl<ReqB, ResB, E, B, R> Policy<Request<ReqB>, Response<ResB>, E> for HttpPolicy<B, R>
where
    ReqB: ReplayableBody,
    E: Into<BoxError> + AsStdError,
    B: Backoff,
    R: Recover<Request<ReqB>>,
{
    type Error = RetryError;
    type Recover = R::Future;

    settings_policy_methods!();

    // Inlined: the engine calls it on the policy's fresh per-request copy,
    // which must not escape into a call to stay a plain block copy.
    #[inline]
    fn replay(&mut self, req: &Request<ReqB>) -> Option<Request<ReqB>> {
        self.rules.idempotent = self.rules.non_idempotent
            || is_idempotent(req.method())
            || req.extensions().get::<RetryNonIdempotent>().is_some();
        replay_request(req)
    }

    #[inline]
    fn classify(&mut self, _: &Attempt, result: &Result<Response<ResB>, E>) -> Decision {
        // A response whose status is not retryable, from a layer that did
        // not already give up on it: the success path, inline.
        if let Ok(res) = result
            && !self.rules.statuses.contains(res.status().as_u16())
            && !already_retried(res)
        {
            return Decision::Success;
        }
        self.classify_failure(result)
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
        finish_response(&self.settings.common, finished, |_, _| {})
    }
}
