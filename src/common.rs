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
struct Shared {
    budget: Option<RetryBudget>,
    stats: Option<Stats>,
    on_retry: Option<OnRetry>,
}

/// The cross-request parts of a policy. `None` until one is configured, so
/// that cloning a policy per request is a plain copy and touches no shared
/// state.
#[derive(Clone, Default)]
pub(crate) struct Common {
    shared: Option<Arc<Shared>>,
}

impl Drop for Common {
    // Out of line unless configured: the per-request clone of a policy
    // without shared parts then drops with one test, which keeps the drop
    // glue of the response future small enough to inline.
    #[inline]
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            release(shared);
        }
    }
}

#[cold]
#[inline(never)]
fn release(shared: Arc<Shared>) {
    drop(shared);
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.as_deref();
        f.debug_struct("Common")
            .field("budget", &s.and_then(|s| s.budget.as_ref()))
            .field("stats", &s.is_some_and(|s| s.stats.is_some()))
            .field("on_retry", &s.is_some_and(|s| s.on_retry.is_some()))
            .finish()
    }
}

impl Common {
    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(self.shared.get_or_insert_with(Default::default))
    }

    pub(crate) fn set_budget(&mut self, budget: RetryBudget) {
        self.shared_mut().budget = Some(budget);
    }

    pub(crate) fn set_stats(&mut self, stats: Stats) {
        self.shared_mut().stats = Some(stats);
    }

    pub(crate) fn set_on_retry(&mut self, f: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) {
        self.shared_mut().on_retry = Some(Arc::new(f));
    }

    /// The budget's say, then the callback, just before a retry is sent.
    #[inline]
    pub(crate) fn permit_retry(&self, attempt: &Attempt, failure: &Failure) -> Result<(), Reason> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if let Some(budget) = &shared.budget
            && !budget.withdraw()
        {
            return Err(Reason::Budget);
        }
        if let Some(cb) = &shared.on_retry {
            cb(&RetryEvent {
                attempt,
                failure,
                delay: attempt.last_delay(),
            });
        }
        Ok(())
    }

    /// Deposits a success into the budget and records the request.
    #[inline(always)]
    pub(crate) fn finish(&self, report: &Report) {
        if let Some(shared) = &self.shared {
            shared.finish(report);
        }
    }

    /// [`finish`](Self::finish) for a first-attempt success, whose report
    /// is only built when something shared will read it.
    #[inline(always)]
    pub(crate) fn first_success(&self, attempt: &Attempt) {
        if let Some(shared) = &self.shared {
            shared.finish(&Report::first_success(attempt));
        }
    }
}

impl Shared {
    #[inline(never)]
    fn finish(&self, report: &Report) {
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
