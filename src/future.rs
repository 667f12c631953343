//! [`ResponseFuture`]: the retry loop as a state machine.
//!
//! ```text
//!            ┌──────────── Retry(f): sleep backoff ───► Waiting ──┐
//!  Calling ──┤                                                    ├─► Readying ──► Calling …
//!            └──────────── Recover(f): run hook ──────► Recovering┘
//! ```
//!
//! `Calling` classifies each result; `Success`, `Fatal`, the last attempt, a
//! request that cannot be replayed, a deadline or a failed recovery end the
//! loop through [`Policy::finish`].

use crate::policy::Finished;
use crate::{Attempt, Class, Decision, FailedAttempt, Failure, Policy, Reason, Report};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::{Level, Span};

/// The response future of [`Retry`](crate::Retry) for service `S`, policy
/// `P` and request `Req`: a [`RetryFuture`] with its types spelled out.
pub type ResponseFuture<S, P, Req> = RetryFuture<
    S,
    P,
    Req,
    <S as Service<Req>>::Future,
    <P as Policy<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Recover,
    <S as Service<Req>>::Response,
    <S as Service<Req>>::Error,
>;

pin_project! {
    /// The retry loop's state machine; name it through [`ResponseFuture`].
    ///
    /// A named state machine, `Send` when the service, its future, the
    /// policy, its recovery future and the request are. On the success path
    /// it allocates nothing of its own: the only work beyond the inner call
    /// is the policy's [`replay`](Policy::replay) of the request (free for a
    /// `Copy` request, a reference-count bump for a buffered HTTP body, plus
    /// whatever cloning the request's headers costs). The failure record
    /// and the tracing span are created on the first failure.
    ///
    /// Dropping it at any point (during a call, a delay or a recovery) stops
    /// the loop: no further attempt is sent, no hook runs, and the timer is
    /// released.
    ///
    /// `F` is the inner service's future, `R` the recovery's, `Res` and `E`
    /// the inner response and error. They are parameters, not projections
    /// behind trait bounds, so that the future is `Send` structurally: a
    /// `where` clause on the struct would be re-checked with erased
    /// lifetimes when the future is held across an `.await` in another
    /// `Send` future, and fail for errors such as `BoxError`.
    pub struct RetryFuture<S, P, Req, F, R, Res, E> {
        #[pin]
        state: State<F, R>,
        service: S,
        policy: P,
        // The copy the next attempt (or a recovery hook) will use.
        next: Option<Req>,
        // The result that the loop returns if it stops while waiting.
        last: Option<Result<Res, E>>,
        // The failure that the next attempt retries.
        failure: Option<Failure>,
        attempt: Attempt,
        failures: Vec<FailedAttempt>,
        span: Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Calling { #[pin] future: F },
        Waiting { #[pin] sleep: Sleep },
        Recovering { #[pin] future: R, class: Class },
        Readying,
        NoAttempts,
        Done,
    }
}

impl<S, P, Req, F, R, Res, E> RetryFuture<S, P, Req, F, R, Res, E>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    P: Policy<Req, Res, E, Recover = R>,
{
    pub(crate) fn new(mut service: S, mut policy: P, req: Req) -> Self {
        let max = policy.max_attempts();
        // Attempt 0 of 0: nothing is ever sent.
        let mut attempt = Attempt::new(max.min(1), max);
        let (state, next) = if max == 0 {
            (State::NoAttempts, None)
        } else {
            if policy.measure_elapsed() {
                let now = Instant::now();
                attempt.started = Some(now);
                attempt.sent_at = Some(now);
            }
            let next = policy.replay(&req);
            let future = service.call(req);
            (State::Calling { future }, next)
        };
        Self {
            state,
            service,
            policy,
            next,
            last: None,
            failure: None,
            attempt,
            failures: Vec::new(),
            span: Span::none(),
        }
    }
}

impl<S, P, Req, F, R, Res, E> std::fmt::Debug for RetryFuture<S, P, Req, F, R, Res, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Tracing's event names for a recovery, in CodeWorm's words for an OOM.
fn recovery_names(class: Class) -> [&'static str; 3] {
    if class == Class::Oom {
        [
            "attempting_oom_recovery",
            "oom_recovery_complete",
            "oom_recovery_failed",
        ]
    } else {
        [
            "attempting_recovery",
            "recovery_complete",
            "recovery_failed",
        ]
    }
}

/// What one poll of the current state produced.
enum Step<Res, E, RE> {
    Finished(Result<Res, E>),
    Slept,
    Recovered(Result<(), RE>, Class),
    Ready(Result<(), E>),
    NoAttempts,
}

impl<S, P, Req, F, R, Res, E> Future for RetryFuture<S, P, Req, F, R, Res, E>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    F: Future<Output = Result<Res, E>>,
    P: Policy<Req, Res, E, Recover = R>,
    R: Future<Output = Result<(), crate::BoxError>>,
{
    type Output = Result<Res, P::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let step = {
                let _entered = this.span.enter();
                match this.state.as_mut().project() {
                    StateProj::Calling { future } => Step::Finished(ready!(future.poll(cx))),
                    StateProj::Waiting { sleep } => {
                        ready!(sleep.poll(cx));
                        Step::Slept
                    }
                    StateProj::Recovering { future, class } => {
                        let class = *class;
                        Step::Recovered(ready!(future.poll(cx)), class)
                    }
                    StateProj::Readying => Step::Ready(ready!(this.service.poll_ready(cx))),
                    StateProj::NoAttempts => Step::NoAttempts,
                    StateProj::Done => {
                        panic!("tower_ollama_retry::ResponseFuture polled after completion")
                    }
                }
            };

            let attempt: &mut Attempt = this.attempt;
            let (last, recovery_error, reason) = match step {
                Step::NoAttempts => (None, None, Reason::NoAttempts),
                Step::Finished(result) => {
                    let decision = this.policy.classify(attempt, &result);
                    let recover = matches!(decision, Decision::Recover(_));
                    match decision {
                        Decision::Success => {
                            if !this.failures.is_empty() {
                                this.span.in_scope(|| {
                                    tracing::info!(attempt = attempt.number, "retry_succeeded")
                                });
                            }
                            (Some(result), None, Reason::Success)
                        }
                        Decision::Fatal(failure) => {
                            record(this.failures, this.span, attempt, &failure);
                            this.span.in_scope(|| {
                                tracing::debug!(
                                    attempt = attempt.number,
                                    class = %failure.class(),
                                    message = failure.message().unwrap_or(""),
                                    "fatal_failure"
                                )
                            });
                            (Some(result), None, Reason::Fatal)
                        }
                        Decision::Retry(failure) | Decision::Recover(failure) => {
                            record(this.failures, this.span, attempt, &failure);
                            match schedule(
                                this.policy,
                                this.next,
                                this.failures,
                                this.span,
                                attempt,
                                &failure,
                                recover,
                            ) {
                                Ok(next_state) => {
                                    *this.last = Some(result);
                                    *this.failure = Some(failure);
                                    this.state.set(next_state);
                                    continue;
                                }
                                Err(reason) => (Some(result), None, reason),
                            }
                        }
                    }
                }
                Step::Slept => {
                    this.state.set(State::Readying);
                    continue;
                }
                Step::Recovered(outcome, class) => {
                    attempt.recoveries = attempt.recoveries.saturating_add(1);
                    let [_, complete, failed] = recovery_names(class);
                    match outcome {
                        Err(e) => {
                            this.span.in_scope(|| {
                                tracing::error!(attempt = attempt.number, error = %e, "{failed}")
                            });
                            // The hook's error ends the request; the failed
                            // attempt's result is dropped, as in CodeWorm.
                            this.last.take();
                            (None, Some(e), Reason::RecoveryFailed)
                        }
                        Ok(()) => {
                            this.span.in_scope(|| {
                                tracing::info!(attempt = attempt.number, "{complete}")
                            });
                            if attempt.is_last() {
                                (this.last.take(), None, exhausted(this.span, attempt))
                            } else if let Some(reason) =
                                past_deadline(this.policy, attempt, Duration::ZERO)
                            {
                                (this.last.take(), None, reason)
                            } else {
                                this.state.set(State::Readying);
                                continue;
                            }
                        }
                    }
                }
                Step::Ready(Err(e)) => (Some(Err(e)), None, Reason::Readiness),
                Step::Ready(Ok(())) => {
                    let mut upcoming = *attempt;
                    upcoming.number = upcoming.number.saturating_add(1);
                    let failure = this
                        .failure
                        .take()
                        .unwrap_or(Failure::new(Class::Transient));
                    // The copy first, then the budget: a retry that cannot
                    // be sent must cost no token.
                    match this.next.take() {
                        None => (this.last.take(), None, Reason::NotReplayable),
                        Some(req) => match this.policy.permit_retry(&upcoming, &failure) {
                            Err(reason) => {
                                this.span.in_scope(|| {
                                    tracing::warn!(
                                        attempt = upcoming.number,
                                        reason = reason.as_str(),
                                        "retry_denied"
                                    )
                                });
                                (this.last.take(), None, reason)
                            }
                            Ok(()) => {
                                if attempt.started.is_some() {
                                    upcoming.sent_at = Some(Instant::now());
                                }
                                *attempt = upcoming;
                                if !this.span.is_none() {
                                    // A span per attempt, so that every event
                                    // under it names the attempt it belongs to.
                                    *this.span = attempt_span(&upcoming);
                                }
                                this.last.take();
                                *this.next = this.policy.replay(&req);
                                let future = this.service.call(req);
                                this.state.set(State::Calling { future });
                                continue;
                            }
                        },
                    }
                }
            };
            this.state.set(State::Done);
            return Poll::Ready(finish(
                this.policy,
                this.failures,
                attempt,
                last,
                recovery_error,
                reason,
            ));
        }
    }
}

fn attempt_span(attempt: &Attempt) -> Span {
    tracing::info_span!(
        "retry",
        attempt = attempt.number,
        max_attempts = attempt.max_attempts
    )
}

/// Notes a failed attempt, and opens the request's span on its first one
/// (never on the success path).
fn record(
    failures: &mut Vec<FailedAttempt>,
    span: &mut Span,
    attempt: &Attempt,
    failure: &Failure,
) {
    if span.is_none() && tracing::enabled!(Level::INFO) {
        *span = attempt_span(attempt);
    }
    if failure.class() == Class::Oom {
        span.in_scope(|| tracing::warn!(attempt = attempt.number, "model_oom_detected"));
    }
    failures.push(FailedAttempt {
        number: attempt.number,
        class: failure.class(),
        delay: Duration::ZERO,
        recovered: false,
    });
}

fn exhausted(span: &Span, attempt: &Attempt) -> Reason {
    span.in_scope(|| tracing::warn!(attempts = attempt.number, "retries_exhausted"));
    Reason::Exhausted
}

/// The deadline check: `Some(Reason::Deadline)` when waiting `delay` more
/// would end past the policy's overall deadline.
fn past_deadline<P, Req, Res, E>(policy: &P, attempt: &Attempt, delay: Duration) -> Option<Reason>
where
    P: Policy<Req, Res, E>,
{
    let deadline = policy.deadline()?;
    let elapsed = attempt.elapsed()?;
    (elapsed.saturating_add(delay) >= deadline).then_some(Reason::Deadline)
}

/// After a retryable failure: the state that recovers or backs off, or the
/// reason the loop stops here.
fn schedule<F, P, Req, Res, E>(
    policy: &mut P,
    next: &mut Option<Req>,
    failures: &mut [FailedAttempt],
    span: &Span,
    attempt: &mut Attempt,
    failure: &Failure,
    recover: bool,
) -> Result<State<F, P::Recover>, Reason>
where
    P: Policy<Req, Res, E>,
{
    let n = attempt.number;
    if recover {
        // The hook may run after the last attempt too (CodeWorm does); the
        // loop then ends once it is done.
        let Some(req) = next.as_mut() else {
            return Err(Reason::NotReplayable);
        };
        if let Some(f) = failures.last_mut() {
            f.recovered = true;
        }
        attempt.last_delay = Duration::ZERO;
        let [attempting, _, _] = recovery_names(failure.class());
        span.in_scope(|| tracing::info!(attempt = n, class = %failure.class(), "{attempting}"));
        let future = policy.recover(attempt, failure, req);
        return Ok(State::Recovering {
            future,
            class: failure.class(),
        });
    }
    if attempt.is_last() {
        return Err(exhausted(span, attempt));
    }
    if next.is_none() {
        return Err(Reason::NotReplayable);
    }
    let delay = policy.backoff(attempt, failure);
    if let Some(reason) = past_deadline(policy, attempt, delay) {
        span.in_scope(|| {
            tracing::warn!(
                attempt = n,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "retry_past_deadline"
            )
        });
        return Err(reason);
    }
    if let Some(f) = failures.last_mut() {
        f.delay = delay;
    }
    attempt.total_delay = attempt.total_delay.saturating_add(delay);
    attempt.last_delay = delay;
    span.in_scope(|| {
        tracing::info!(
            attempt = n,
            class = %failure.class(),
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "retry_scheduled"
        )
    });
    if delay.is_zero() {
        Ok(State::Readying)
    } else {
        Ok(State::Waiting {
            sleep: tokio::time::sleep(delay),
        })
    }
}

fn finish<P, Req, Res, E>(
    policy: &mut P,
    failures: &mut Vec<FailedAttempt>,
    attempt: &Attempt,
    last: Option<Result<Res, E>>,
    recovery_error: Option<crate::BoxError>,
    reason: Reason,
) -> Result<Res, P::Error>
where
    P: Policy<Req, Res, E>,
{
    let report = Report {
        attempts: attempt.number,
        failures: std::mem::take(failures),
        total_delay: attempt.total_delay,
        recoveries: attempt.recoveries,
        reason,
    };
    policy.finish(Finished {
        last,
        recovery_error,
        report,
    })
}
