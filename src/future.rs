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
//! loop through [`Policy::finish`]. A first attempt classified a success
//! takes the fast path, [`Policy::succeeded`]: no report, no retry state.

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
    /// whatever cloning the request's headers costs). Everything only a
    /// failed attempt needs (the failure record, the result held during a
    /// delay, the tracing span, the timer) lives in one box allocated on the
    /// first failure, so the future a success moves around stays small.
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
    #[project = RetryFutureProj]
    pub struct RetryFuture<S, P, Req, F, R, Res, E> {
        #[pin]
        state: State<F, R>,
        service: S,
        policy: P,
        // The copy the next attempt (or a recovery hook) will use.
        next: Option<Req>,
        attempt: Attempt,
        // Allocated on the first failure. Neither this nor the future has
        // a `Drop` of its own: one would make the compiler require every
        // type parameter (a borrowed request's lifetime too) to outlive the
        // future.
        retrying: Option<Box<Retrying<Res, E>>>,
    }
}

/// What a request that failed once carries through its retries.
struct Retrying<Res, E> {
    // The result the loop returns if it stops while waiting.
    last: Option<Result<Res, E>>,
    // The failure the next attempt retries.
    failure: Option<Failure>,
    failures: crate::report::Failures,
    // Opened on the first failure, when a subscriber wants it.
    span: Option<Span>,
    // Reused (reset) for every delay of the request.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<Res, E> Retrying<Res, E> {
    fn new() -> Self {
        Self {
            last: None,
            failure: None,
            failures: crate::report::Failures::new(),
            span: None,
            sleep: None,
        }
    }
}

/// Runs `f` (a tracing event) inside the request's span, if it has one.
fn in_span(span: &Option<Span>, f: impl FnOnce()) {
    match span {
        Some(span) => span.in_scope(f),
        None => f(),
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Calling { #[pin] future: F },
        Waiting,
        // `bounded`: the overall deadline is armed on the retry timer.
        Recovering { #[pin] future: R, class: Class, bounded: bool },
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
    #[inline]
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
            attempt,
            retrying: None,
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

/// How a loop ended: the last result, the recovery hook's error, why.
type Ending<Res, E> = (Option<Result<Res, E>>, Option<crate::BoxError>, Reason);

impl<S, P, Req, F, R, Res, E> Future for RetryFuture<S, P, Req, F, R, Res, E>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    F: Future<Output = Result<Res, E>>,
    P: Policy<Req, Res, E, Recover = R>,
    R: Future<Output = Result<(), crate::BoxError>>,
{
    type Output = Result<Res, P::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The fast path: the first attempt, nothing failed yet. Small enough
        // to inline; everything else is in `poll_loop`.
        let mut this = self.as_mut().project();
        if this.retrying.is_none()
            && let StateProj::Calling { future } = this.state.as_mut().project()
        {
            let result = ready!(future.poll(cx));
            let decision = this.policy.classify(this.attempt, &result);
            if decision == Decision::Success {
                this.state.set(State::Done);
                return Poll::Ready(this.policy.succeeded(this.attempt, result));
            }
            return self.poll_loop(cx, Some((result, decision)));
        }
        self.poll_loop(cx, None)
    }
}

impl<S, P, Req, F, R, Res, E> RetryFuture<S, P, Req, F, R, Res, E>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    F: Future<Output = Result<Res, E>>,
    P: Policy<Req, Res, E, Recover = R>,
    R: Future<Output = Result<(), crate::BoxError>>,
{
    /// The whole loop, from the first attempt's classified result (when
    /// the fast path in `poll` had it) or from the current state.
    ///
    /// Each state is polled and its outcome handled in place: a result is
    /// moved once, into the retry state, and only when the loop waits.
    #[inline(never)]
    fn poll_loop(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: Option<(Result<Res, E>, Decision)>,
    ) -> Poll<Result<Res, P::Error>> {
        let mut this = self.project();
        let ending = 'ending: {
            if let Some((result, decision)) = first
                && let Some(ending) = after_attempt(&mut this, result, decision)
            {
                break 'ending ending;
            }
            loop {
                match this.state.as_mut().project() {
                    StateProj::Calling { future } => {
                        let result = {
                            let _entered = enter(this.retrying);
                            ready!(future.poll(cx))
                        };
                        let decision = this.policy.classify(this.attempt, &result);
                        if let Some(ending) = after_attempt(&mut this, result, decision) {
                            break 'ending ending;
                        }
                    }
                    StateProj::Waiting => {
                        if let Some(r) = this.retrying.as_deref_mut()
                            && let Some(sleep) = r.sleep.as_mut()
                        {
                            let _entered = r.span.as_ref().map(Span::enter);
                            ready!(sleep.as_mut().poll(cx));
                        }
                        this.state.set(State::Readying);
                    }
                    StateProj::Recovering {
                        future,
                        class,
                        bounded,
                    } => {
                        let (class, bounded) = (*class, *bounded);
                        let r = retrying(this.retrying);
                        let outcome = {
                            let _entered = r.span.as_ref().map(Span::enter);
                            match future.poll(cx) {
                                Poll::Ready(outcome) => outcome,
                                Poll::Pending => {
                                    // A recovery has no known length: it
                                    // races the overall deadline.
                                    if let (true, Some(deadline)) = (bounded, r.sleep.as_mut()) {
                                        ready!(deadline.as_mut().poll(cx));
                                        in_span(&r.span, || {
                                            tracing::warn!(
                                                attempt = this.attempt.number,
                                                "recovery_past_deadline"
                                            )
                                        });
                                        break 'ending (r.last.take(), None, Reason::Deadline);
                                    }
                                    return Poll::Pending;
                                }
                            }
                        };
                        if let Some(ending) = after_recovery(&mut this, outcome, class) {
                            break 'ending ending;
                        }
                    }
                    StateProj::Readying => {
                        // A run of immediate retries must not starve the
                        // executor: tokio's cooperative budget makes a long
                        // one yield (and is a no-op outside a runtime).
                        let coop = ready!(tokio::task::coop::poll_proceed(cx));
                        let ready = {
                            let _entered = enter(this.retrying);
                            ready!(this.service.poll_ready(cx))
                        };
                        coop.made_progress();
                        if let Some(ending) = when_ready(&mut this, ready) {
                            break 'ending ending;
                        }
                    }
                    StateProj::NoAttempts => break 'ending (None, None, Reason::NoAttempts),
                    StateProj::Done => {
                        panic!("tower_ollama_retry::ResponseFuture polled after completion")
                    }
                }
            }
        };
        let (last, recovery_error, reason) = ending;
        this.state.set(State::Done);
        let failures = this.retrying.take().map(|r| r.failures).unwrap_or_default();
        Poll::Ready(finish(
            this.policy,
            failures,
            this.attempt,
            last,
            recovery_error,
            reason,
        ))
    }
}

/// After an attempt: the state that follows it is set, or the loop ends.
#[inline]
fn after_attempt<S, P, Req, F, R, Res, E>(
    this: &mut RetryFutureProj<'_, S, P, Req, F, R, Res, E>,
    result: Result<Res, E>,
    decision: Decision,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    let attempt: &mut Attempt = this.attempt;
    match decision {
        Decision::Success => {
            if let Some(r) = this.retrying.as_deref() {
                in_span(&r.span, || {
                    tracing::info!(attempt = attempt.number, "retry_succeeded")
                });
            }
            Some((Some(result), None, Reason::Success))
        }
        Decision::Fatal(failure) => {
            let r = record(this.retrying, attempt, &failure);
            in_span(&r.span, || {
                tracing::debug!(
                    attempt = attempt.number,
                    class = %failure.class(),
                    message = failure.message().unwrap_or(""),
                    "fatal_failure"
                )
            });
            Some((Some(result), None, Reason::Fatal))
        }
        Decision::Retry(failure) => retry(this, result, failure, false),
        Decision::Recover(failure) => retry(this, result, failure, true),
    }
}

/// A retryable failure: schedule what follows, holding the result (the
/// loop's answer if it stops while waiting), or end here.
#[inline]
fn retry<S, P, Req, F, R, Res, E>(
    this: &mut RetryFutureProj<'_, S, P, Req, F, R, Res, E>,
    result: Result<Res, E>,
    failure: Failure,
    recover: bool,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    let r = record(this.retrying, this.attempt, &failure);
    match schedule(this.policy, this.next, r, this.attempt, &failure, recover) {
        Ok(next_state) => {
            r.last = Some(result);
            r.failure = Some(failure);
            this.state.set(next_state);
            None
        }
        Err(reason) => Some((Some(result), None, reason)),
    }
}

/// After a recovery: on to the next attempt, or the end.
fn after_recovery<S, P, Req, F, R, Res, E>(
    this: &mut RetryFutureProj<'_, S, P, Req, F, R, Res, E>,
    outcome: Result<(), crate::BoxError>,
    class: Class,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    let attempt: &mut Attempt = this.attempt;
    attempt.recoveries = attempt.recoveries.saturating_add(1);
    let [_, complete, failed] = recovery_names(class);
    let r = retrying(this.retrying);
    match outcome {
        Err(e) => {
            in_span(
                &r.span,
                || tracing::error!(attempt = attempt.number, error = %e, "{failed}"),
            );
            // The hook's error ends the request; the failed attempt's
            // result is dropped, as in CodeWorm.
            r.last.take();
            Some((None, Some(e), Reason::RecoveryFailed))
        }
        Ok(()) => {
            in_span(&r.span, || {
                tracing::info!(attempt = attempt.number, "{complete}")
            });
            if attempt.is_last() {
                Some((r.last.take(), None, exhausted(&r.span, attempt)))
            } else if let Some(reason) = past_deadline(&*this.policy, attempt, Duration::ZERO) {
                Some((r.last.take(), None, reason))
            } else {
                this.state.set(State::Readying);
                None
            }
        }
    }
}

/// The inner service is ready (or failed to be) for the next attempt: send
/// it, or end the loop.
fn when_ready<S, P, Req, F, R, Res, E>(
    this: &mut RetryFutureProj<'_, S, P, Req, F, R, Res, E>,
    ready: Result<(), E>,
) -> Option<Ending<Res, E>>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    P: Policy<Req, Res, E, Recover = R>,
{
    if let Err(e) = ready {
        return Some((Some(Err(e)), None, Reason::Readiness));
    }
    let attempt: &mut Attempt = this.attempt;
    let r = retrying(this.retrying);
    let mut upcoming = *attempt;
    upcoming.number = upcoming.number.saturating_add(1);
    let failure = r.failure.take().unwrap_or(Failure::new(Class::Transient));
    // The copy first, then the budget: a retry that cannot be sent must
    // cost no token.
    let Some(req) = this.next.take() else {
        return Some((r.last.take(), None, Reason::NotReplayable));
    };
    if let Err(reason) = this.policy.permit_retry(&upcoming, &failure) {
        in_span(&r.span, || {
            tracing::warn!(
                attempt = upcoming.number,
                reason = reason.as_str(),
                "retry_denied"
            )
        });
        return Some((r.last.take(), None, reason));
    }
    if attempt.started.is_some() {
        upcoming.sent_at = Some(Instant::now());
    }
    *attempt = upcoming;
    if r.span.is_some() {
        // A span per attempt, so that every event under it names the
        // attempt it belongs to.
        r.span = Some(attempt_span(&upcoming));
    }
    r.last.take();
    *this.next = this.policy.replay(&req);
    let future = this.service.call(req);
    this.state.set(State::Calling { future });
    None
}

/// Enters the request's span, if it has one, while an inner future is
/// polled: the inner service's events then belong to the attempt.
fn enter<Res, E>(slot: &Option<Box<Retrying<Res, E>>>) -> Option<tracing::span::Entered<'_>> {
    slot.as_deref()?.span.as_ref().map(Span::enter)
}

fn attempt_span(attempt: &Attempt) -> Span {
    tracing::info_span!(
        "retry",
        attempt = attempt.number,
        max_attempts = attempt.max_attempts
    )
}

/// The retry state of a request that has failed before.
fn retrying<Res, E>(slot: &mut Option<Box<Retrying<Res, E>>>) -> &mut Retrying<Res, E> {
    slot.get_or_insert_with(|| Box::new(Retrying::new()))
}

/// Notes a failed attempt; the first one allocates the retry state and opens
/// the request's span (never on the success path).
#[inline]
fn record<'a, Res, E>(
    slot: &'a mut Option<Box<Retrying<Res, E>>>,
    attempt: &Attempt,
    failure: &Failure,
) -> &'a mut Retrying<Res, E> {
    let r = retrying(slot);
    if r.span.is_none() && tracing::enabled!(Level::INFO) {
        r.span = Some(attempt_span(attempt));
    }
    if failure.class() == Class::Oom {
        in_span(&r.span, || {
            tracing::warn!(attempt = attempt.number, "model_oom_detected")
        });
    }
    // A policy allowing millions of immediate attempts must not grow the
    // record without bound; the report keeps the first ones.
    if r.failures.len() < crate::report::MAX_RECORDED_FAILURES {
        r.failures.push(FailedAttempt {
            number: attempt.number,
            class: failure.class(),
            delay: Duration::ZERO,
            recovered: false,
        });
    }
    r
}

fn exhausted(span: &Option<Span>, attempt: &Attempt) -> Reason {
    in_span(span, || {
        tracing::warn!(attempts = attempt.number, "retries_exhausted")
    });
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
#[inline]
fn schedule<F, P, Req, Res, E>(
    policy: &mut P,
    next: &mut Option<Req>,
    r: &mut Retrying<Res, E>,
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
        if let Some(f) = r.failures.last_mut() {
            f.recovered = true;
        }
        attempt.last_delay = Duration::ZERO;
        if let Some(reason) = past_deadline(policy, attempt, Duration::ZERO) {
            return Err(reason);
        }
        // A recovery has no known length: race it against the deadline.
        let bounded = match (policy.deadline(), attempt.started) {
            (Some(deadline), Some(started)) => {
                arm(&mut r.sleep, started, deadline);
                true
            }
            _ => false,
        };
        let [attempting, _, _] = recovery_names(failure.class());
        in_span(
            &r.span,
            || tracing::info!(attempt = n, class = %failure.class(), "{attempting}"),
        );
        let future = policy.recover(attempt, failure, req);
        return Ok(State::Recovering {
            future,
            class: failure.class(),
            bounded,
        });
    }
    if attempt.is_last() {
        return Err(exhausted(&r.span, attempt));
    }
    if next.is_none() {
        return Err(Reason::NotReplayable);
    }
    let delay = policy.backoff(attempt, failure);
    if let Some(reason) = past_deadline(policy, attempt, delay) {
        in_span(&r.span, || {
            tracing::warn!(
                attempt = n,
                delay_ms = delay_ms(delay),
                "retry_past_deadline"
            )
        });
        return Err(reason);
    }
    if let Some(f) = r.failures.last_mut() {
        f.delay = delay;
    }
    attempt.total_delay = attempt.total_delay.saturating_add(delay);
    attempt.last_delay = delay;
    in_span(&r.span, || {
        tracing::info!(
            attempt = n,
            class = %failure.class(),
            delay_ms = delay_ms(delay),
            "retry_scheduled"
        )
    });
    if delay.is_zero() {
        // No timer at all: an immediate retry needs no runtime.
        return Ok(State::Readying);
    }
    arm(&mut r.sleep, Instant::now(), delay);
    Ok(State::Waiting)
}

/// `from + after`, saturating far in the future as tokio's own `sleep` does
/// (its "far future" is about 30 years away): plain adding would panic on a
/// huge delay.
pub(crate) fn instant_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .unwrap_or_else(|| from + Duration::from_secs(30 * 365 * 86_400))
}

/// A delay in whole milliseconds, for tracing fields.
fn delay_ms(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// Sets the request's one timer to `from + after`, creating it the first
/// time.
fn arm(sleep: &mut Option<Pin<Box<Sleep>>>, from: Instant, after: Duration) {
    let at = instant_after(from, after);
    match sleep {
        Some(sleep) => sleep.as_mut().reset(at),
        None => *sleep = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

#[inline(always)]
fn finish<P, Req, Res, E>(
    policy: &mut P,
    failures: crate::report::Failures,
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
        failures,
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
