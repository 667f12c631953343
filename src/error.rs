//! The final error of a retried request and the reason its loop stopped.

use crate::{BoxError, Report};
use std::error::Error as StdError;
use std::fmt;

/// Why a retry loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The last attempt was classified a success.
    Success,
    /// The policy classified the outcome as not worth retrying.
    Fatal,
    /// Every allowed attempt was used.
    Exhausted,
    /// The recovery hook failed; its error ended the request.
    RecoveryFailed,
    /// The request could not be replayed, so its first result came back.
    NotReplayable,
    /// The policy allows zero attempts, so nothing was sent.
    NoAttempts,
    /// The next delay could not finish before the overall deadline.
    Deadline,
    /// The retry budget had no token for another attempt.
    Budget,
    /// The inner service failed while getting ready.
    Readiness,
}

impl Reason {
    /// A stable lower-case name, for tracing fields and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Success => "success",
            Reason::Fatal => "fatal",
            Reason::Exhausted => "exhausted",
            Reason::RecoveryFailed => "recovery_failed",
            Reason::NotReplayable => "not_replayable",
            Reason::NoAttempts => "no_attempts",
            Reason::Deadline => "deadline",
            Reason::Budget => "budget",
            Reason::Readiness => "readiness",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Reason::Success => "the request succeeded",
            Reason::Fatal => "the failure is not retryable",
            Reason::Exhausted => "every allowed attempt failed",
            Reason::RecoveryFailed => "the recovery hook failed",
            Reason::NotReplayable => "the request could not be replayed",
            Reason::NoAttempts => "no attempts allowed: the policy allows 0 attempts",
            Reason::Deadline => "the next retry could not finish before the overall deadline",
            Reason::Budget => "the retry budget is spent",
            Reason::Readiness => "the inner service failed while getting ready",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The error a retried request ends with.
///
/// It answers the three questions a caller has about a failed request:
///
/// - **what went wrong last**: the last underlying error (the inner service's,
///   or the recovery hook's), through [`source`](StdError::source),
///   [`downcast_ref`](Self::downcast_ref) or [`into_source`](Self::into_source);
/// - **how many attempts** were made: [`attempts`](Self::attempts);
/// - **why the loop stopped**: [`reason`](Self::reason).
///
/// The full [`Report`] is there too. `RetryError` does not need the inner
/// error to be `Clone`: the loop keeps only the last one.
///
/// # Example
///
/// ```
/// use tower_ollama_retry::{Reason, RetryError};
///
/// let err = RetryError::no_attempts();
/// assert_eq!(err.reason(), Reason::NoAttempts);
/// assert_eq!(err.attempts(), 0);
/// assert_eq!(err.to_string(), "no attempts allowed: the policy allows 0 attempts");
/// ```
pub struct RetryError {
    // One pointer: a `Result<Res, RetryError>` stays as small as the
    // response allows, and the success path moves no error-sized payload.
    inner: Box<Inner>,
}

struct Inner {
    report: Report,
    source: Option<BoxError>,
}

impl RetryError {
    /// Builds the error from the loop's report and its last underlying error.
    pub fn new(report: Report, source: Option<BoxError>) -> Self {
        Self {
            inner: Box::new(Inner { report, source }),
        }
    }

    /// The error for a policy that allows no attempts.
    pub fn no_attempts() -> Self {
        let report = Report {
            reason: Reason::NoAttempts,
            ..Report::default()
        };
        Self::new(report, None)
    }

    /// Why the loop stopped.
    pub fn reason(&self) -> Reason {
        self.inner.report.reason
    }

    /// How many attempts were sent.
    pub fn attempts(&self) -> u32 {
        self.inner.report.attempts
    }

    /// The whole attempt report.
    pub fn report(&self) -> &Report {
        &self.inner.report
    }

    /// The last underlying error, if there was one.
    pub fn last_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// The last underlying error as a `T`, if it is one.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.inner.source.as_deref()?.downcast_ref::<T>()
    }

    /// Whether the last underlying error is a `T`.
    pub fn is<T: StdError + 'static>(&self) -> bool {
        self.downcast_ref::<T>().is_some()
    }

    /// Takes the last underlying error out.
    pub fn into_source(self) -> Option<BoxError> {
        self.inner.source
    }

    /// Splits the error into its report and its last underlying error.
    pub fn into_parts(self) -> (Report, Option<BoxError>) {
        let inner = *self.inner;
        (inner.report, inner.source)
    }

    /// Whether an error is a `RetryError` (or wraps one in its `source()`
    /// chain): the mark that an inner retry layer already decided this
    /// request's fate, so an outer one should not retry it again.
    pub fn find<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a RetryError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(r) = e.downcast_ref::<RetryError>() {
                return Some(r);
            }
            cur = e.source();
        }
        None
    }
}

impl fmt::Debug for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryError")
            .field("reason", &self.inner.report.reason)
            .field("attempts", &self.inner.report.attempts)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.inner.report.reason;
        if reason == Reason::NoAttempts {
            return f.write_str(reason.describe());
        }
        let n = self.inner.report.attempts;
        let s = if n == 1 { "" } else { "s" };
        write!(f, "request failed after {n} attempt{s}: {reason}")?;
        if let Some(src) = &self.inner.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl StdError for RetryError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
