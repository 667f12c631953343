//! The attempt report: what happened to one request, attempt by attempt.

use crate::{Class, Reason};
use smallvec::SmallVec;
use std::time::Duration;

/// The failed attempts of one request: the first inline, so that a request
/// retried once does not allocate for its record, while a first-attempt
/// success still moves a small report.
/// How many failed attempts a report records; later ones are counted in
/// [`Report::attempts`] only.
pub const MAX_RECORDED_FAILURES: usize = 1024;

pub(crate) type Failures = SmallVec<[FailedAttempt; 1]>;

/// One failed attempt in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedAttempt {
    /// The 1-based attempt number.
    pub number: u32,
    /// How the attempt was classified.
    pub class: Class,
    /// The delay slept after it (zero when none).
    pub delay: Duration,
    /// Whether a recovery ran after it.
    pub recovered: bool,
}

/// What happened to one request: the attempts, the class of each failure, the
/// delays and recoveries, and why the loop stopped.
///
/// The engine builds it as it goes and hands it to
/// [`Policy::finish`](crate::Policy::finish). [`RetryError`](crate::RetryError)
/// carries it, and the HTTP policies put it into a response extension. A
/// request that succeeds on its first attempt has an empty report that never
/// touched the heap.
///
/// # Example
///
/// ```
/// use tower_ollama_retry::{Reason, Report};
///
/// let report = Report::default();
/// assert_eq!(report.attempts(), 0);
/// assert_eq!(report.reason(), Reason::Success);
/// assert!(report.failures().is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub(crate) attempts: u32,
    pub(crate) failures: Failures,
    pub(crate) total_delay: Duration,
    pub(crate) recoveries: u32,
    pub(crate) reason: Reason,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            attempts: 0,
            failures: Failures::new(),
            total_delay: Duration::ZERO,
            recoveries: 0,
            reason: Reason::Success,
        }
    }
}

impl Report {
    /// The report of a request whose first attempt succeeded.
    #[inline]
    pub(crate) fn first_success(attempt: &crate::Attempt) -> Self {
        Self {
            attempts: attempt.number(),
            ..Self::default()
        }
    }

    /// How many attempts were sent.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Every attempt that failed, in order, with its class, delay and
    /// recovery (the first [`MAX_RECORDED_FAILURES`] of them).
    pub fn failures(&self) -> &[FailedAttempt] {
        &self.failures
    }

    /// The classes of the failed attempts, in order.
    pub fn classes(&self) -> impl Iterator<Item = Class> + '_ {
        self.failures.iter().map(|f| f.class)
    }

    /// The sum of all delays slept.
    pub fn total_delay(&self) -> Duration {
        self.total_delay
    }

    /// How many recoveries ran (successful or not).
    pub fn recoveries(&self) -> u32 {
        self.recoveries
    }

    /// Why the loop stopped.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Whether the request went through more than one attempt or any
    /// recovery; a cheap test before publishing the report.
    pub fn retried(&self) -> bool {
        !self.failures.is_empty()
    }
}
