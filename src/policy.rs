//! The [`Policy`] trait: what the engine asks about each attempt.

use crate::{Attempt, BoxError, Decision, Failure, Reason, Report, RetryError};
use std::future::Future;
use std::time::Duration;

/// Decides, for each finished attempt, whether and how to try again.
///
/// A policy answers three separate questions, in this order:
///
/// 1. **Classify** ([`classify`](Self::classify)): what was this outcome? The
///    answer is a [`Decision`]: success, fail now, retry after a backoff, or
///    recover and then retry. It carries a [`Failure`] with a class, an
///    optional server hint and a message.
/// 2. **Schedule** ([`backoff`](Self::backoff)): how long to sleep before
///    the next attempt. Asked only for [`Decision::Retry`], and never after the
///    last attempt.
/// 3. **Recover** ([`recover`](Self::recover)): an async hook run before the
///    next attempt. Asked only for [`Decision::Recover`]. Its error ends the
///    request at once.
///
/// Around them sit [`replay`](Self::replay) (copy the request for another
/// attempt; `None` means the first result comes back unchanged),
/// [`permit_retry`](Self::permit_retry) (a last say, for budgets) and
/// [`finish`](Self::finish), which turns the loop's last result into the
/// service's output and so chooses its error type
/// ([`succeeded`](Self::succeeded) is its fast path for a first-attempt
/// success, and defaults to it).
///
/// The engine clones the policy once per request, so `&mut self` state is
/// per request (a per-class counter, a jitter RNG); state shared by all
/// requests lives behind an `Arc`.
///
/// Most users never implement this trait: [`RetryPolicy`](crate::RetryPolicy)
/// composes one from a classifier closure, a [`Backoff`](crate::Backoff) and a
/// [`Recover`](crate::Recover) hook, and [`OllamaPolicy`](crate::OllamaPolicy)
/// is a ready one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a retry policy for requests `{Req}`, responses `{Res}` and errors `{E}`",
    note = "`OllamaPolicy` (HTTP form) wants `http::Request` in and `http::Response<PeekBody<_>>` out: put it under `http::HttpRetryLayer`, or use `OllamaPolicy::plain()` for other services",
    note = "`HttpPolicy` and `GrpcPolicy` want bodies that can be replayed (`ReplayBody`, `Full`, ...): put `http::ReplayLayer` in front",
    note = "the inner service's error must implement `AsStdError` (see its docs for your own error types)"
)]
pub trait Policy<Req, Res, E> {
    /// The error the retrying service returns.
    type Error;
    /// The future of a recovery.
    type Recover: Future<Output = Result<(), BoxError>>;

    /// The most attempts a request may make, the first included. Zero means
    /// no call is made at all ([`Reason::NoAttempts`]).
    fn max_attempts(&self) -> u32;

    /// An overall deadline across attempts, measured from the start of the
    /// first. A delay that cannot finish before it is not started.
    fn deadline(&self) -> Option<Duration> {
        None
    }

    /// Whether the engine should read the clock as each attempt is sent, so
    /// that [`Attempt::elapsed`] and [`Attempt::sent_at`] work. It is on
    /// whenever a [`deadline`](Self::deadline) is set. Off by default because
    /// reading the clock costs more than the rest of the success path.
    fn measure_elapsed(&self) -> bool {
        self.deadline().is_some()
    }

    /// A copy of `req` for another attempt, or `None` when it cannot be
    /// replayed. Called before an attempt is sent, only when another one may
    /// follow it.
    fn replay(&mut self, req: &Req) -> Option<Req>;

    /// Classifies a finished attempt.
    fn classify(&mut self, attempt: &Attempt, result: &Result<Res, E>) -> Decision;

    /// The delay before the attempt after `attempt`.
    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration;

    /// Starts a recovery before the attempt after `attempt`. `next` is the
    /// request that attempt will send.
    fn recover(&mut self, attempt: &Attempt, failure: &Failure, next: &mut Req) -> Self::Recover;

    /// A last say just before a retry is sent, after the delay or recovery
    /// and after the inner service is ready: a retry budget withdraws its
    /// token here, so that a retry that is never sent costs none. `attempt`
    /// is the attempt about to be sent, `failure` the one it retries.
    fn permit_retry(&mut self, attempt: &Attempt, failure: &Failure) -> Result<(), Reason> {
        let _ = (attempt, failure);
        Ok(())
    }

    /// Converts an error from the inner service's `poll_ready`, seen before
    /// the first attempt, into the service's error.
    fn readiness_error(&mut self, error: E) -> Self::Error;

    /// Turns how the loop ended into the service's output.
    fn finish(&mut self, finished: Finished<Res, E>) -> Result<Res, Self::Error>;

    /// The output of a request whose first attempt was classified a
    /// success: what [`finish`](Self::finish) returns for it. The engine's
    /// fast path calls this instead of `finish`, so that a policy can skip
    /// the report a first-attempt success has no use for. The default
    /// builds the [`Finished`] and calls `finish`: override it only to go
    /// faster, never to behave differently.
    #[inline]
    fn succeeded(&mut self, attempt: &Attempt, result: Result<Res, E>) -> Result<Res, Self::Error> {
        self.finish(Finished::first(attempt, result))
    }
}

/// How a request's retry loop ended, handed to [`Policy::finish`].
#[derive(Debug)]
pub struct Finished<Res, E> {
    pub(crate) last: Option<Result<Res, E>>,
    pub(crate) recovery_error: Option<BoxError>,
    pub(crate) report: Report,
}

impl<Res, E> Finished<Res, E> {
    /// Builds one by hand (for testing a policy's `finish`).
    pub fn new(last: Option<Result<Res, E>>, report: Report) -> Self {
        Self {
            last,
            recovery_error: None,
            report,
        }
    }

    /// How a loop ends whose first attempt was classified a success: what
    /// the default [`Policy::succeeded`] hands to [`Policy::finish`], for an
    /// override that falls back to `finish`.
    ///
    /// ```
    /// use tower_ollama_retry::{Attempt, Finished, Reason};
    ///
    /// let finished = Finished::<u32, ()>::first(&Attempt::new(1, 3), Ok(7));
    /// assert_eq!(finished.reason(), Reason::Success);
    /// assert_eq!(finished.report().attempts(), 1);
    /// assert!(!finished.report().retried());
    /// ```
    #[inline]
    pub fn first(attempt: &Attempt, result: Result<Res, E>) -> Self {
        Self {
            last: Some(result),
            recovery_error: None,
            report: Report::first_success(attempt),
        }
    }

    /// Why the loop stopped.
    pub fn reason(&self) -> Reason {
        self.report.reason
    }

    /// The attempt report.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The last attempt's result. `None` when no attempt was made, or when a
    /// recovery failed (its error is [`recovery_error`](Self::recovery_error)).
    pub fn last(&self) -> Option<&Result<Res, E>> {
        self.last.as_ref()
    }

    /// The recovery hook's error, when that is what ended the loop.
    pub fn recovery_error(&self) -> Option<&BoxError> {
        self.recovery_error.as_ref()
    }

    /// Splits into the last result, the recovery error and the report.
    #[inline]
    pub fn into_parts(self) -> (Option<Result<Res, E>>, Option<BoxError>, Report) {
        (self.last, self.recovery_error, self.report)
    }

    /// The standard ending: a response comes back as it is, and anything
    /// else becomes a [`RetryError`] that carries the report and the last
    /// underlying error.
    #[inline]
    pub fn into_result(self) -> Result<Res, RetryError>
    where
        E: Into<BoxError>,
    {
        match self.last {
            Some(Ok(res)) => Ok(res),
            last => Err(ending_error(last, self.recovery_error, self.report)),
        }
    }
}

/// The error a loop that did not end with a response ends with: its last
/// error, or else the recovery hook's, with the report. Out of line: only
/// failures take it.
#[cold]
#[inline(never)]
pub(crate) fn ending_error<Res, E: Into<BoxError>>(
    last: Option<Result<Res, E>>,
    recovery_error: Option<BoxError>,
    report: Report,
) -> RetryError {
    let source = match last {
        Some(Err(e)) => Some(e.into()),
        _ => recovery_error,
    };
    RetryError::new(report, source)
}
