//! [`RetryPolicy`]: a [`Policy`] assembled from a classifier, a backoff and
//! a recovery hook.

use crate::backoff::Exponential;
use crate::settings::{Settings, plain_succeeded, settings_builders, settings_policy_methods};
use crate::{
    AsStdError, Attempt, Backoff, BoxError, Classify, Decision, Failure, Finished, Policy, Reason,
    Recover, Report, RetryError,
};
use std::time::Duration;

/// A policy built from parts: a [`Classify`], a [`Backoff`] and a
/// [`Recover`] hook, with an attempt limit, an optional overall deadline and
/// a cap on any single delay.
///
/// The defaults are 3 attempts, exponential backoff from 100 ms, a 30 s cap
/// on one delay, no deadline and no recovery. A server hint carried by a
/// [`Failure`] replaces the computed backoff, still capped. Requests are
/// replayed by `Clone`; errors end as a [`RetryError`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceExt, service_fn};
/// use tower_ollama_retry::{Attempt, BoxError, Class, Decision, Failure, RetryLayer, RetryPolicy,
///     backoff::Linear};
/// use tower::Layer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let classify = |_: &Attempt, r: &Result<&'static str, BoxError>| match r {
///     Ok(_) => Decision::Success,
///     Err(_) => Decision::Retry(Failure::new(Class::Transient)),
/// };
/// let policy = RetryPolicy::new(classify)
///     .with_max_attempts(5)
///     .with_backoff(Linear::new(Duration::from_millis(1)));
///
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
/// let seen = calls.clone();
/// let flaky = service_fn(move |_: ()| {
///     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move { if n < 2 { Err::<&str, BoxError>("flaky".into()) } else { Ok("ok") } }
/// });
/// let svc = RetryLayer::new(policy).layer(flaky);
/// assert_eq!(svc.oneshot(()).await.unwrap(), "ok");
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RetryPolicy<C, B = Exponential, R = ()> {
    classify: C,
    backoff: B,
    recover: R,
    settings: Settings,
}

impl<C> RetryPolicy<C> {
    /// A policy that classifies with `classify`, with the defaults above.
    pub fn new(classify: C) -> Self {
        Self {
            classify,
            backoff: Exponential::new(Duration::from_millis(100)),
            recover: (),
            settings: Settings::new(3, Duration::from_secs(30)),
        }
    }
}

impl<C, B, R> RetryPolicy<C, B, R> {
    settings_builders!(
        "tower_ollama_retry::{RetryPolicy, Decision}",
        "RetryPolicy::new(|_: &tower_ollama_retry::Attempt, _: &Result<(), tower_ollama_retry::BoxError>| Decision::Success)"
    );

    /// The backoff between attempts.
    pub fn with_backoff<B2>(self, backoff: B2) -> RetryPolicy<C, B2, R> {
        RetryPolicy {
            classify: self.classify,
            backoff,
            recover: self.recover,
            settings: self.settings,
        }
    }

    /// The recovery hook for [`Decision::Recover`].
    pub fn with_recover<R2>(self, recover: R2) -> RetryPolicy<C, B, R2> {
        RetryPolicy {
            classify: self.classify,
            backoff: self.backoff,
            recover,
            settings: self.settings,
        }
    }
}

/// The delay for a failure: the server's hint if it gave one, else the
/// backoff's; either way at most `max`.
#[inline]
pub(crate) fn hinted_delay<B: Backoff>(
    backoff: &mut B,
    attempt: &Attempt,
    failure: &Failure,
    max: Duration,
) -> Duration {
    match failure.hint() {
        Some(hint) => hint,
        None => backoff.delay(attempt),
    }
    .min(max)
}

/// The error for a readiness failure before the first attempt.
pub(crate) fn readiness_error<E: Into<BoxError>>(error: E) -> RetryError {
    let report = Report {
        reason: Reason::Readiness,
        ..Report::default()
    };
    RetryError::new(report, Some(error.into()))
}

impl<C, B, R, Req, Res, E> Policy<Req, Res, E> for RetryPolicy<C, B, R>
where
    C: Classify<Res, E>,
    B: Backoff,
    R: Recover<Req>,
    Req: Clone,
    E: Into<BoxError> + AsStdError,
{
    type Error = RetryError;
    type Recover = R::Future;

    settings_policy_methods!();

    fn replay(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn classify(&mut self, attempt: &Attempt, result: &Result<Res, E>) -> Decision {
        // An inner retry layer already decided this error's fate.
        if let Err(e) = result
            && e.as_std_error().and_then(RetryError::find).is_some()
        {
            return Decision::Fatal(Failure::new(crate::Class::Fatal));
        }
        self.classify.classify(attempt, result)
    }

    fn backoff(&mut self, attempt: &Attempt, failure: &Failure) -> Duration {
        self.settings.delay(&mut self.backoff, attempt, failure)
    }

    fn recover(&mut self, attempt: &Attempt, failure: &Failure, next: &mut Req) -> R::Future {
        self.recover.recover(attempt, failure, next)
    }

    fn finish(&mut self, finished: Finished<Res, E>) -> Result<Res, RetryError> {
        self.settings.common.finish(finished.report());
        finished.into_result()
    }

    plain_succeeded!();
}
