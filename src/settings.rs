//! [`Settings`]: what every policy of this crate has besides its
//! classifier, backoff and recovery hook, with the builder methods and the
//! `Policy` methods that only read it, written once.

use crate::common::Common;
use crate::compose::hinted_delay;
use crate::{Attempt, Backoff, Class, ClassLimits, Failure};
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) max_attempts: u32,
    pub(crate) max_delay: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) limits: ClassLimits,
    pub(crate) common: Common,
}

impl Settings {
    pub(crate) fn new(max_attempts: u32, max_delay: Duration) -> Self {
        Self {
            max_attempts,
            max_delay,
            deadline: None,
            limits: ClassLimits::default(),
            common: Common::default(),
        }
    }

    /// The server's hint or the backoff's delay, capped.
    pub(crate) fn delay<B: Backoff>(
        &self,
        backoff: &mut B,
        attempt: &Attempt,
        failure: &Failure,
    ) -> Duration {
        hinted_delay(backoff, attempt, failure, self.max_delay)
    }

    /// Counts a retryable failure against its class's limit.
    pub(crate) fn admit(&mut self, class: Class) -> bool {
        self.limits.admit(class)
    }
}

/// The builder methods over a `settings: Settings` field.
macro_rules! settings_builders {
    () => {
        /// Total attempts, the first included. Zero sends nothing and fails
        /// with [`Reason::NoAttempts`](crate::Reason::NoAttempts).
        pub fn with_max_attempts(mut self, n: u32) -> Self {
            self.settings.max_attempts = n;
            self
        }

        /// The cap on any single delay, server hints included.
        pub fn with_max_delay(mut self, max: std::time::Duration) -> Self {
            self.settings.max_delay = max;
            self
        }

        /// An overall deadline across attempts, measured from the start of
        /// the first: a delay that cannot end before it is not started, and
        /// the loop stops with [`Reason::Deadline`](crate::Reason::Deadline).
        pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
            self.settings.deadline = Some(deadline);
            self
        }

        /// At most `max` retried failures of `class` per request, for
        /// example one OOM recovery: `with_class_limit(Class::Oom, 1)`. The
        /// failure past the limit ends the loop as fatal.
        pub fn with_class_limit(mut self, class: crate::Class, max: u32) -> Self {
            self.settings.limits = self.settings.limits.with_limit(class, max);
            self
        }

        /// Shares `budget` across every clone: each success deposits, each
        /// retry withdraws just before it is sent, and a denied retry ends
        /// the loop with [`Reason::Budget`](crate::Reason::Budget).
        pub fn with_budget(mut self, budget: crate::RetryBudget) -> Self {
            self.settings.common.budget = Some(budget);
            self
        }

        /// Records every finished request in `stats`.
        pub fn with_stats(mut self, stats: crate::Stats) -> Self {
            self.settings.common.stats = Some(stats);
            self
        }

        /// Calls `f` just before each retry is sent.
        pub fn on_retry(
            mut self,
            f: impl Fn(&crate::RetryEvent<'_>) + Send + Sync + 'static,
        ) -> Self {
            self.settings.common.set_on_retry(f);
            self
        }
    };
}

/// The `Policy` methods that only read `self.settings`, for an impl whose
/// error type parameter is `E` and whose error is `RetryError`.
macro_rules! settings_policy_methods {
    () => {
        fn max_attempts(&self) -> u32 {
            self.settings.max_attempts
        }

        fn deadline(&self) -> Option<std::time::Duration> {
            self.settings.deadline
        }

        fn permit_retry(
            &mut self,
            attempt: &crate::Attempt,
            failure: &crate::Failure,
        ) -> Result<(), crate::Reason> {
            self.settings.common.permit_retry(attempt, failure)
        }

        fn readiness_error(&mut self, error: E) -> crate::RetryError {
            crate::compose::readiness_error(error)
        }
    };
}

pub(crate) use {settings_builders, settings_policy_methods};
