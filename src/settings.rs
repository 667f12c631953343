//! [`Settings`]: what every policy of this crate has besides its
//! classifier, backoff and recovery hook, with the builder methods and the
//! `Policy` methods that only read it, written once.

use crate::common::Common;
use crate::compose::hinted_delay;
use crate::{Attempt, Backoff, Class, ClassLimits, Failure};
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) knobs: Knobs,
    pub(crate) common: Common,
}

/// The plain-data part of [`Settings`]. It is `Copy` so that cloning a
/// policy per request copies it as one block: a clone written field by
/// field and then moved into the response future in wide loads stalls
/// store-to-load forwarding, which cost more than the rest of the success
/// path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Knobs {
    pub(crate) max_attempts: u32,
    // The durations are split into their parts so that the `u32`s share
    // what would be padding: exact, and 8 bytes smaller per `Duration`.
    max_delay_nanos: u32,
    max_delay_secs: u64,
    // `NO_DEADLINE` in the nanoseconds: none.
    deadline_secs: u64,
    deadline_nanos: u32,
    pub(crate) limits: ClassLimits,
}

/// No real `Duration` has this many subsecond nanoseconds.
const NO_DEADLINE: u32 = u32::MAX;

/// `d` as its whole seconds and subsecond nanoseconds, for the split
/// durations of the per-request policy data; `Duration::new` joins them.
#[inline]
pub(crate) const fn split(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

impl Knobs {
    #[inline]
    pub(crate) fn max_delay(&self) -> Duration {
        Duration::new(self.max_delay_secs, self.max_delay_nanos)
    }

    pub(crate) fn set_max_delay(&mut self, max: Duration) {
        (self.max_delay_secs, self.max_delay_nanos) = split(max);
    }

    #[inline]
    pub(crate) fn deadline(&self) -> Option<Duration> {
        (self.deadline_nanos != NO_DEADLINE)
            .then(|| Duration::new(self.deadline_secs, self.deadline_nanos))
    }

    pub(crate) fn set_deadline(&mut self, deadline: Duration) {
        (self.deadline_secs, self.deadline_nanos) = split(deadline);
    }
}

impl Settings {
    pub(crate) fn new(max_attempts: u32, max_delay: Duration) -> Self {
        let (max_delay_secs, max_delay_nanos) = split(max_delay);
        Self {
            knobs: Knobs {
                max_attempts,
                max_delay_nanos,
                max_delay_secs,
                deadline_secs: 0,
                deadline_nanos: NO_DEADLINE,
                limits: ClassLimits::default(),
            },
            common: Common::default(),
        }
    }

    /// The server's hint or the backoff's delay, capped.
    #[inline]
    pub(crate) fn delay<B: Backoff>(
        &self,
        backoff: &mut B,
        attempt: &Attempt,
        failure: &Failure,
    ) -> Duration {
        hinted_delay(backoff, attempt, failure, self.knobs.max_delay())
    }

    /// Counts a retryable failure against its class's limit.
    #[inline]
    pub(crate) fn admit(&mut self, class: Class) -> bool {
        self.knobs.limits.admit(class)
    }
}

/// The builder methods over a `settings: Settings` field. `$path` is the
/// policy's import path and `$new` an expression that builds one, for the
/// examples.
macro_rules! settings_builders {
    ($path:literal, $new:literal) => {
        #[doc = concat!(
            "Total attempts, the first included. Zero sends nothing and fails with ",
            "[`Reason::NoAttempts`](crate::Reason::NoAttempts).\n\n```\nuse ", $path, ";\n\n",
            "let policy = ", $new, ".with_max_attempts(5);\n# let _ = policy;\n```"
        )]
        pub fn with_max_attempts(mut self, n: u32) -> Self {
            self.settings.knobs.max_attempts = n;
            self
        }

        #[doc = concat!(
            "The cap on any single delay, server hints (`Retry-After`, pushback) included.",
            "\n\n```\nuse std::time::Duration;\nuse ", $path, ";\n\n",
            "let policy = ", $new, ".with_max_delay(Duration::from_secs(10));\n# let _ = policy;\n```"
        )]
        pub fn with_max_delay(mut self, max: std::time::Duration) -> Self {
            self.settings.knobs.set_max_delay(max);
            self
        }

        #[doc = concat!(
            "An overall deadline across attempts, measured from the start of the first: ",
            "a delay that cannot end before it is not started, and the loop stops with ",
            "[`Reason::Deadline`](crate::Reason::Deadline). Compose it with a per-attempt ",
            "`tower::timeout` inside the retry layer.",
            "\n\n```\nuse std::time::Duration;\nuse ", $path, ";\n\n",
            "let policy = ", $new, ".with_deadline(Duration::from_secs(30));\n# let _ = policy;\n```"
        )]
        pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
            self.settings.knobs.set_deadline(deadline);
            self
        }

        #[doc = concat!(
            "At most `max` retried failures of `class` per request; the failure past ",
            "the limit ends the loop as fatal. For example, at most one OOM recovery:",
            "\n\n```\nuse tower_ollama_retry::Class;\nuse ", $path, ";\n\n",
            "let policy = ", $new, ".with_class_limit(Class::Oom, 1);\n# let _ = policy;\n```"
        )]
        pub fn with_class_limit(mut self, class: crate::Class, max: u32) -> Self {
            self.settings.knobs.limits = self.settings.knobs.limits.with_limit(class, max);
            self
        }

        #[doc = concat!(
            "Shares `budget` across every clone: each success deposits, each retry ",
            "withdraws just before it is sent, and a denied retry ends the loop with ",
            "[`Reason::Budget`](crate::Reason::Budget).",
            "\n\n```\nuse std::time::Duration;\nuse tower_ollama_retry::RetryBudget;\nuse ", $path, ";\n\n",
            "// Retries may be 20 % of recent successes, plus 1 a second.\n",
            "let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2).unwrap();\n",
            "let policy = ", $new, ".with_budget(budget);\n# let _ = policy;\n```"
        )]
        pub fn with_budget(mut self, budget: crate::RetryBudget) -> Self {
            self.settings.common.set_budget(budget);
            self
        }

        #[doc = concat!(
            "Records every finished request in `stats`.",
            "\n\n```\nuse tower_ollama_retry::Stats;\nuse ", $path, ";\n\n",
            "let stats = Stats::new();\n",
            "let policy = ", $new, ".with_stats(stats.clone());\n",
            "assert_eq!(stats.snapshot().requests, 0);\n# let _ = policy;\n```"
        )]
        pub fn with_stats(mut self, stats: crate::Stats) -> Self {
            self.settings.common.set_stats(stats);
            self
        }

        #[doc = concat!(
            "Calls `f` just before each retry is sent.",
            "\n\n```\nuse ", $path, ";\n\n",
            "let policy = ", $new, ".on_retry(|e| {\n",
            "    eprintln!(\"attempt {} after {} (slept {:?})\", e.attempt.number(), e.failure, e.delay);\n",
            "});\n# let _ = policy;\n```"
        )]
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
        #[inline]
        fn max_attempts(&self) -> u32 {
            self.settings.knobs.max_attempts
        }

        #[inline]
        fn deadline(&self) -> Option<std::time::Duration> {
            self.settings.knobs.deadline()
        }

        /// On with a deadline, or when the recovery hook reads
        /// `Attempt::sent_at` (a single-flight recovery does).
        #[inline]
        fn measure_elapsed(&self) -> bool {
            self.settings.knobs.deadline().is_some() || self.recover.needs_clock()
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

/// `Policy::succeeded` for a policy whose responses need nothing on a
/// first-attempt success (the transport-agnostic ones): the response goes
/// back as it is, and anything else takes `finish`'s path.
macro_rules! plain_succeeded {
    () => {
        #[inline(always)]
        fn succeeded(
            &mut self,
            attempt: &crate::Attempt,
            result: Result<Res, E>,
        ) -> Result<Res, crate::RetryError> {
            match result {
                Ok(res) => {
                    self.settings.common.first_success(attempt);
                    Ok(res)
                }
                err => self.finish(crate::Finished::first(attempt, err)),
            }
        }
    };
}

pub(crate) use {plain_succeeded, settings_builders, settings_policy_methods};
