//! [`OllamaPolicy`]: CodeWorm's retry loop as a [`Policy`].

use super::rules::{Mode, classify_error};
use crate::backoff::Linear;
use crate::settings::{
    Settings, plain_succeeded, settings_builders, settings_policy_methods, split,
};
use crate::{
    AsStdError, Attempt, BoxError, Class, Decision, Failure, Finished, OllamaError, Policy, Reason,
    Recover, RetryError,
};
use std::marker::PhantomData;
use std::time::Duration;

/// Marker: the policy classifies `http::Request` / `http::Response` traffic
/// (see the [`http`](crate::http) module). The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http;

/// Marker: the policy is transport-agnostic. Requests are replayed by
/// `Clone`, every `Ok` is a success, and errors are classified by walking
/// their `source()` chain (an [`OllamaError`] names its class).
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// CodeWorm's retry loop: recover then retry at once on OOM, back off
/// linearly on timeouts and connection errors, fail at once on anything else.
///
/// - [`OllamaPolicy::codeworm`] reproduces CodeWorm exactly (see [`Mode`]).
/// - [`OllamaPolicy::default`] keeps the loop and classifies the real Ollama
///   error surface.
///
/// Both make 3 attempts in total, sleep `2 s × attempt` after a timeout or
/// connection error (2 s, then 4 s), never sleep after the last attempt, and
/// retry at once after a recovery.
///
/// `T` says what traffic the policy classifies: [`Http`] (the default) or
/// [`Plain`]. `R` is the recovery hook: `()` (none) by default, an
/// [`OllamaRecovery`](crate::ollama::OllamaRecovery) or any [`Recover`].
///
/// # Example
///
/// A transport-agnostic service that times out once, then answers:
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_ollama_retry::{OllamaError, OllamaPolicy, RetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// static CALLS: AtomicU32 = AtomicU32::new(0);
/// let ollama = service_fn(|prompt: &'static str| async move {
///     if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
///         Err(OllamaError::timeout("read timed out"))
///     } else {
///         Ok(format!("an answer to {prompt:?}"))
///     }
/// });
/// let policy = OllamaPolicy::plain().with_retry_delay(Duration::from_millis(1));
/// let answer = RetryLayer::new(policy).layer(ollama).oneshot("why").await.unwrap();
/// assert_eq!(answer, "an answer to \"why\"");
/// assert_eq!(CALLS.load(Ordering::SeqCst), 2);
///
/// // Three timeouts in a row: the third comes back, after 1 ms and then 2 ms
/// // of backoff (CodeWorm's `retry_delay × attempt`).
/// let always_slow = service_fn(|_: ()| async { Err::<(), _>(OllamaError::timeout("read timed out")) });
/// let policy = OllamaPolicy::plain().with_retry_delay(Duration::from_millis(1));
/// let err = RetryLayer::new(policy).layer(always_slow).oneshot(()).await.unwrap_err();
/// assert_eq!(err.attempts(), 3);
/// assert_eq!(err.report().total_delay(), Duration::from_millis(3));
/// assert_eq!(
///     err.to_string(),
///     "request failed after 3 attempts: every allowed attempt failed: read timed out"
/// );
/// # }
/// ```
#[derive(Debug)]
pub struct OllamaPolicy<T = Http, R = ()> {
    pub(crate) rules: Rules,
    pub(crate) recover: R,
    pub(crate) settings: Settings,
    _transport: PhantomData<fn() -> T>,
}

/// The plain-data part of an [`OllamaPolicy`], `Copy` for the reason
/// [`Knobs`](crate::settings::Knobs) is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    // CodeWorm's `retry_delay`, split like the durations in
    // `settings::Knobs`.
    retry_delay_secs: u64,
    retry_delay_nanos: u32,
    pub(crate) mode: Mode,
    // The class of the last failure, for `finish`'s CodeWorm messages.
    pub(crate) last_class: Class,
}

impl Rules {
    fn retry_delay(&self) -> Duration {
        Duration::new(self.retry_delay_secs, self.retry_delay_nanos)
    }

    fn set_retry_delay(&mut self, delay: Duration) {
        (self.retry_delay_secs, self.retry_delay_nanos) = split(delay);
    }
}

impl<T, R: Clone> Clone for OllamaPolicy<T, R> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            rules: self.rules,
            recover: self.recover.clone(),
            settings: self.settings.clone(),
            _transport: PhantomData,
        }
    }
}

impl Default for OllamaPolicy {
    /// The default mode, for HTTP traffic, with no recovery hook.
    fn default() -> Self {
        Self::with_mode(Mode::Default)
    }
}

impl OllamaPolicy {
    /// CodeWorm's exact semantics, for HTTP traffic.
    pub fn codeworm() -> Self {
        Self::with_mode(Mode::CodeWorm)
    }

    /// The default mode for transport-agnostic traffic ([`Plain`]).
    pub fn plain() -> OllamaPolicy<Plain> {
        Self::default().into_plain()
    }

    fn with_mode(mode: Mode) -> Self {
        Self {
            rules: Rules {
                retry_delay_secs: 2,
                retry_delay_nanos: 0,
                mode,
                last_class: Class::Success,
            },
            recover: (),
            // CodeWorm caps nothing; the default mode caps a server's hint.
            settings: Settings::new(
                3,
                match mode {
                    Mode::CodeWorm => Duration::MAX,
                    Mode::Default => Duration::from_secs(60),
                },
            ),
            _transport: PhantomData,
        }
    }
}

impl<T, R> OllamaPolicy<T, R> {
    settings_builders!(
        "tower_ollama_retry::OllamaPolicy",
        "OllamaPolicy::default()"
    );

    /// Switches to `mode`'s classification rules.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.rules.mode = mode;
        self
    }

    /// The classification mode.
    pub fn current_mode(&self) -> Mode {
        self.rules.mode
    }

    /// The linear step (CodeWorm's `retry_delay`, default 2 s).
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.rules.set_retry_delay(delay);
        self
    }

    /// The recovery hook run after an OOM.
    pub fn with_recovery<R2>(self, recover: R2) -> OllamaPolicy<T, R2> {
        OllamaPolicy {
            rules: self.rules,
            recover,
            settings: self.settings,
            _transport: PhantomData,
        }
    }

    /// The same policy for transport-agnostic traffic.
    pub fn into_plain(self) -> OllamaPolicy<Plain, R> {
        self.retype()
    }

    /// The same policy for HTTP traffic.
    pub fn into_http(self) -> OllamaPolicy<Http, R> {
        self.retype()
    }

    fn retype<T2>(self) -> OllamaPolicy<T2, R> {
        OllamaPolicy {
            rules: self.rules,
            recover: self.recover,
            settings: self.settings,
            _transport: PhantomData,
        }
    }

    /// The recovery hook.
    pub fn recovery(&self) -> &R {
        &self.recover
    }

    /// The loop's decision for a classified failure: shared by every
    /// transport.
    #[inline]
    pub(crate) fn decide(&mut self, attempt: &Attempt, failure: Failure) -> Decision {
        self.rules.last_class = failure.class();
        match failure.class() {
            Class::Success => Decision::Success,
            Class::Fatal => Decision::Fatal(failure),
            class if !self.settings.admit(class) => Decision::Fatal(failure),
            Class::Oom => match self.rules.mode {
                // CodeWorm recovers even after the last attempt.
                Mode::CodeWorm => Decision::Recover(failure),
                // A recovery after the last attempt helps nobody.
                Mode::Default if attempt.is_last() => Decision::Retry(failure),
                Mode::Default => Decision::Recover(failure),
            },
            _ => Decision::Retry(failure),
        }
    }

    pub(crate) fn delay(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.settings
            .delay(&mut Linear::new(self.rules.retry_delay()), attempt, failure)
    }

    /// The CodeWorm-shaped final error for a loop that ended without a
    /// usable result.
    pub(crate) fn final_error(&self, finished: Finished<impl Sized, BoxError>) -> RetryError {
        let (last, recovery_error, report) = finished.into_parts();
        self.settings.common.finish(&report);
        let source = match (report.reason(), last, recovery_error) {
            (Reason::RecoveryFailed, _, Some(e)) => Some(OllamaError::recovery_failed(e).into()),
            (Reason::Exhausted, Some(Err(_)), _)
                if self.rules.mode == Mode::CodeWorm && self.rules.last_class == Class::Oom =>
            {
                // CodeWorm drops the server's message for a fresh error.
                Some(OllamaError::oom_after_recovery().into())
            }
            (Reason::NoAttempts, _, _) if self.rules.mode == Mode::CodeWorm => {
                Some(OllamaError::other("Generation failed after retries").into())
            }
            (_, Some(Err(e)), _) => Some(e),
            (_, _, e) => e,
        };
        RetryError::new(report, source)
    }
}

impl<R> OllamaPolicy<Plain, R> {
    /// The ending of a loop with no response: out of the success path's way.
    #[cold]
    #[inline(never)]
    fn finish_failed<Res, E: Into<BoxError>>(
        &self,
        finished: Finished<Res, E>,
    ) -> Result<Res, RetryError> {
        let (last, recovery_error, report) = finished.into_parts();
        let last = last.map(|r| r.map_err(Into::into));
        let mut finished = Finished::<Res, BoxError>::new(last, report);
        finished.recovery_error = recovery_error;
        Err(self.final_error(finished))
    }
}

impl<R, Req, Res, E> Policy<Req, Res, E> for OllamaPolicy<Plain, R>
where
    R: Recover<Req>,
    Req: Clone,
    E: Into<BoxError> + AsStdError,
{
    type Error = RetryError;
    type Recover = R::Future;

    settings_policy_methods!();

    #[inline]
    fn replay(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    #[inline]
    fn classify(&mut self, attempt: &Attempt, result: &Result<Res, E>) -> Decision {
        let Err(e) = result else {
            return Decision::Success;
        };
        let Some(err) = e.as_std_error() else {
            return Decision::Success;
        };
        // No message: the error itself stays reachable from the result, and
        // formatting it here would allocate on every failure.
        self.decide(attempt, Failure::new(classify_error(self.rules.mode, err)))
    }

    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.delay(attempt, failure)
    }

    fn recover(&mut self, attempt: &Attempt, failure: &Failure, next: &mut Req) -> R::Future {
        self.recover.recover(attempt, failure, next)
    }

    #[inline(always)]
    fn finish(&mut self, finished: Finished<Res, E>) -> Result<Res, RetryError> {
        match finished.last {
            Some(Ok(res)) => {
                self.settings.common.finish(&finished.report);
                Ok(res)
            }
            last => self.finish_failed(Finished { last, ..finished }),
        }
    }

    plain_succeeded!();
}
