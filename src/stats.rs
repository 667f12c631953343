//! [`Stats`]: counters shared by every clone of a layer.

use crate::{Class, Reason, Report};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
struct Counters {
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: [AtomicU64; Class::ALL.len()],
    recoveries: AtomicU64,
    recovery_failures: AtomicU64,
    exhausted: AtomicU64,
    budget_denied: AtomicU64,
    deadline_stopped: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
}

/// Counters for a layer, shared by all its clones and cheap to read.
///
/// A policy updates them once per request, when it finishes, from the
/// request's [`Report`]; a request that succeeds at once costs a few relaxed
/// atomic adds, and nothing at all when no `Stats` is configured.
///
/// # Example
///
/// ```
/// use tower_ollama_retry::{Stats, OllamaPolicy};
///
/// let stats = Stats::new();
/// let policy = OllamaPolicy::default().with_stats(stats.clone());
/// # let _ = policy;
/// let snap = stats.snapshot();
/// assert_eq!(snap.requests, 0);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Stats {
    counters: Arc<Counters>,
}

/// A point-in-time copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Requests finished.
    pub requests: u64,
    /// Attempts sent.
    pub attempts: u64,
    /// Requests that ended in success.
    pub succeeded: u64,
    /// Requests that ended in failure.
    pub failed: u64,
    /// Retries (attempts after the first), by the class of the failure that
    /// caused them, indexed by [`Class::index`].
    pub retries_by_class: [u64; Class::ALL.len()],
    /// Recovery hooks run.
    pub recoveries: u64,
    /// Recovery hooks that failed.
    pub recovery_failures: u64,
    /// Requests that used every attempt.
    pub exhausted: u64,
    /// Requests whose retry the budget denied.
    pub budget_denied: u64,
    /// Requests stopped by the overall deadline.
    pub deadline_stopped: u64,
}

impl StatsSnapshot {
    /// Retries caused by failures of `class`.
    pub fn retries(&self, class: Class) -> u64 {
        self.retries_by_class[class.index()]
    }

    /// All retries.
    pub fn total_retries(&self) -> u64 {
        self.retries_by_class.iter().sum()
    }
}

impl Stats {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &*self.counters;
        StatsSnapshot {
            requests: c.requests.load(Relaxed),
            attempts: c.attempts.load(Relaxed),
            succeeded: c.succeeded.load(Relaxed),
            failed: c.failed.load(Relaxed),
            retries_by_class: std::array::from_fn(|i| c.retries[i].load(Relaxed)),
            recoveries: c.recoveries.load(Relaxed),
            recovery_failures: c.recovery_failures.load(Relaxed),
            exhausted: c.exhausted.load(Relaxed),
            budget_denied: c.budget_denied.load(Relaxed),
            deadline_stopped: c.deadline_stopped.load(Relaxed),
        }
    }

    /// Records one finished request.
    pub fn record(&self, report: &Report) {
        let c = &*self.counters;
        c.requests.fetch_add(1, Relaxed);
        c.attempts.fetch_add(u64::from(report.attempts()), Relaxed);
        // Every failure but the one that ended the loop caused a retry.
        let retried = report.attempts().saturating_sub(1) as usize;
        for f in report.failures().iter().take(retried) {
            c.retries[f.class.index()].fetch_add(1, Relaxed);
        }
        if report.recoveries() > 0 {
            c.recoveries
                .fetch_add(u64::from(report.recoveries()), Relaxed);
        }
        let counter = match report.reason() {
            Reason::Success => &c.succeeded,
            _ => &c.failed,
        };
        counter.fetch_add(1, Relaxed);
        let extra = match report.reason() {
            Reason::RecoveryFailed => Some(&c.recovery_failures),
            Reason::Exhausted => Some(&c.exhausted),
            Reason::Budget => Some(&c.budget_denied),
            Reason::Deadline => Some(&c.deadline_stopped),
            _ => None,
        };
        if let Some(counter) = extra {
            counter.fetch_add(1, Relaxed);
        }
    }
}
