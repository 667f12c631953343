//! What every policy of this crate shares across requests: a retry budget,
//! statistics and an on-retry callback. All off by default, so a policy
//! without them touches no shared state per request.

use crate::{Attempt, Failure, Reason, Report, RetryBudget, Stats};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What [`on_retry`](crate::OllamaPolicy::on_retry) callbacks receive.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a> {
    /// The attempt about to be sent (its number is 2 for the first retry).
    pub attempt: &'a Attempt,
    /// The failure that caused the retry.
    pub failure: &'a Failure,
    /// The delay slept before it (zero after a recovery).
    pub delay: Duration,
}

type OnRetry = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct Common {
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) stats: Option<Stats>,
    pub(crate) on_retry: Option<OnRetry>,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("budget", &self.budget)
            .field("stats", &self.stats.is_some())
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

impl Common {
    pub(crate) fn set_on_retry(&mut self, f: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) {
        self.on_retry = Some(Arc::new(f));
    }

    /// The budget's say, then the callback, just before a retry is sent.
    pub(crate) fn permit_retry(&self, attempt: &Attempt, failure: &Failure) -> Result<(), Reason> {
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return Err(Reason::Budget);
        }
        if let Some(cb) = &self.on_retry {
            cb(&RetryEvent {
                attempt,
                failure,
                delay: attempt.last_delay(),
            });
        }
        Ok(())
    }

    /// Deposits a success into the budget and records the request.
    pub(crate) fn finish(&self, report: &Report) {
        if let Some(budget) = &self.budget
            && report.reason() == Reason::Success
        {
            budget.deposit();
        }
        if let Some(stats) = &self.stats {
            stats.record(report);
        }
    }
}
