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
use crate::report::Failures;
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
    /// whatever cloning the request's headers costs). A retry of a ready
    /// service with no delay allocates nothing either: the failed result is
    /// held on the stack until the next attempt is sent, and the first
    /// failure is recorded in two bytes. What must outlive a poll (a timer,
    /// a tracing span, a result held while the loop waits, a second
    /// failure's record) lives in one box allocated when first needed, so
    /// the future a success moves around stays small.
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
        // The first failed attempt, for the report: inline (two bytes), so
        // that a retry needs no allocation for it. Later ones are listed in
        // the retry state.
        first_failure: Option<FirstFailure>,
        // Allocated only for what outlives one poll of a retry: a timer, a
        // span, the held result while the loop waits, or the record of a
        // second failure. Neither this nor
        // the future has a `Drop` of its own: one would make the compiler
        // require every type parameter (a borrowed request's lifetime too)
        // to outlive the future.
        retrying: Option<Box<Retrying<Res, E>>>,
    }
}

/// A retry's result and failure, held from the failed attempt until the
/// next one is sent: the loop's answer if it stops before then, and what
/// `permit_retry` is asked about.
type Held<Res, E> = (Result<Res, E>, Failure);

/// The first failed attempt of a request, as its report needs it: most
/// retried requests fail once, and then its number is 1 and its delay the
/// request's total. A second failure lists it in full in the retry state.
#[derive(Clone, Copy)]
struct FirstFailure {
    class: Class,
    recovered: bool,
}

impl FirstFailure {
    fn full(self, delay: Duration) -> FailedAttempt {
        FailedAttempt {
            number: 1,
            class: self.class,
            delay,
            recovered: self.recovered,
        }
    }
}

/// What a retry keeps across polls.
struct Retrying<Res, E> {
    // The held result while the loop waits (for a timer, a recovery or the
    // inner service's readiness); within one poll it stays on the stack.
    held: Option<Held<Res, E>>,
    // Opened on the first failure, when a subscriber wants it.
    span: Option<Span>,
    // Reused (reset) for every delay of the request.
    sleep: Option<Pin<Box<Sleep>>>,
    // Every failed attempt, the first included, once there are two.
    failures: Failures,
}

impl<Res, E> Retrying<Res, E> {
    fn new() -> Self {
        Self {
            held: None,
            span: None,
            sleep: None,
            failures: Failures::new(),
        }
    }
}

/// The request's span, if it has one.
fn span<Res, E>(slot: &Option<Box<Retrying<Res, E>>>) -> Option<&Span> {
    slot.as_deref()?.span.as_ref()
}

/// Runs `f` (a tracing event) inside the request's span, if it has one.
fn in_span(span: Option<&Span>, f: impl FnOnce()) {
    match span {
        Some(span) => span.in_scope(f),
        None => f(),
    }
}

/// Ends this poll with `Pending`, keeping the held result for the next.
#[inline]
fn pending<Res, E, T>(
    slot: &mut Option<Box<Retrying<Res, E>>>,
    held: Option<Held<Res, E>>,
) -> Poll<T> {
    if held.is_some() {
        retrying(slot).held = held;
    }
    Poll::Pending
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
            first_failure: None,
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
        // The fast path: the first attempt, nothing failed yet (every failed
        // attempt is recorded). Small enough to inline; everything else is
        // in `poll_loop`.
        let mut this = self.as_mut().project();
        if this.first_failure.is_none()
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
    /// Each state is polled and its outcome handled in place. A retry's
    /// result is held on the stack while this poll lasts, and moved into
    /// the retry state only if the loop must wait: an immediate retry of a
    /// ready service allocates nothing.
    #[inline(never)]
    fn poll_loop(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: Option<(Result<Res, E>, Decision)>,
    ) -> Poll<Result<Res, P::Error>> {
        let mut this = self.project();
        let mut held = this.retrying.as_deref_mut().and_then(|r| r.held.take());
        let ending = 'ending: {
            if let Some((result, decision)) = first
                && let Some(ending) = after_attempt(&mut this, result, decision, &mut held)
            {
                break 'ending ending;
            }
            loop {
                match this.state.as_mut().project() {
                    StateProj::Calling { future } => {
                        // Nothing is held while an attempt is out.
                        let result = {
                            let _entered = enter(this.retrying);
                            ready!(future.poll(cx))
                        };
                        let decision = this.policy.classify(this.attempt, &result);
                        if let Some(ending) = after_attempt(&mut this, result, decision, &mut held)
                        {
                            break 'ending ending;
                        }
                    }
                    StateProj::Waiting => {
                        if let Some(r) = this.retrying.as_deref_mut()
                            && let Some(sleep) = r.sleep.as_mut()
                        {
                            let polled = {
                                let _entered = r.span.as_ref().map(Span::enter);
                                sleep.as_mut().poll(cx)
                            };
                            if polled.is_pending() {
                                r.held = held;
                                return Poll::Pending;
                            }
                        }
                        this.state.set(State::Readying);
                    }
                    StateProj::Recovering {
                        future,
                        class,
                        bounded,
                    } => {
                        let (class, bounded) = (*class, *bounded);
                        let outcome = {
                            let _entered = span(this.retrying).map(Span::enter);
                            future.poll(cx)
                        };
                        let outcome = match outcome {
                            Poll::Ready(outcome) => outcome,
                            // A recovery has no known length: it races the
                            // overall deadline.
                            Poll::Pending => {
                                let deadline = match this.retrying.as_deref_mut() {
                                    Some(Retrying {
                                        sleep: Some(deadline),
                                        ..
                                    }) if bounded => deadline,
                                    _ => return pending(this.retrying, held),
                                };
                                if deadline.as_mut().poll(cx).is_pending() {
                                    return pending(this.retrying, held);
                                }
                                in_span(span(this.retrying), || {
                                    tracing::warn!(
                                        attempt = this.attempt.number,
                                        "recovery_past_deadline"
                                    )
                                });
                                break 'ending (last(held), None, Reason::Deadline);
                            }
                        };
                        if let Some(ending) = after_recovery(&mut this, outcome, class, &mut held) {
                            break 'ending ending;
                        }
                    }
                    StateProj::Readying => {
                        // A run of immediate retries must not starve the
                        // executor: tokio's cooperative budget makes a long
                        // one yield (and is a no-op outside a runtime).
                        let Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
                            return pending(this.retrying, held);
                        };
                        let ready = {
                            let _entered = enter(this.retrying);
                            this.service.poll_ready(cx)
                        };
                        let Poll::Ready(ready) = ready else {
                            return pending(this.retrying, held);
                        };
                        coop.made_progress();
                        if let Some(ending) = when_ready(&mut this, ready, &mut held) {
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
        // The timer and the span go now, before the policy's `finish`.
        let failures = failures(*this.first_failure, this.retrying.take(), this.attempt);
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

/// The held result, if any: what the loop returns when it stops waiting.
fn last<Res, E>(held: Option<Held<Res, E>>) -> Option<Result<Res, E>> {
    held.map(|(result, _)| result)
}

/// After an attempt: the state that follows it is set (and its result
/// held, for a retry), or the loop ends.
#[inline]
fn after_attempt<S, P, Req, F, R, Res, E>(
    this: &mut RetryFutureProj<'_, S, P, Req, F, R, Res, E>,
    result: Result<Res, E>,
    decision: Decision,
    held: &mut Option<Held<Res, E>>,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    let attempt: &mut Attempt = this.attempt;
    match decision {
        Decision::Success => {
            if let Some(span) = span(this.retrying) {
                span.in_scope(|| tracing::info!(attempt = attempt.number, "retry_succeeded"));
            }
            Some((Some(result), None, Reason::Success))
        }
        Decision::Fatal(failure) => {
            record(this.first_failure, this.retrying, attempt, &failure);
            in_span(span(this.retrying), || {
                tracing::debug!(
                    attempt = attempt.number,
                    class = %failure.class(),
                    message = failure.message().unwrap_or(""),
                    "fatal_failure"
                )
            });
            Some((Some(result), None, Reason::Fatal))
        }
        Decision::Retry(failure) => retry(this, result, failure, false, held),
        Decision::Recover(failure) => retry(this, result, failure, true, held),
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
    held: &mut Option<Held<Res, E>>,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    record(this.first_failure, this.retrying, this.attempt, &failure);
    let scheduled = schedule(
        this.policy,
        this.next,
        this.first_failure,
        this.retrying,
        this.attempt,
        &failure,
        recover,
    );
    match scheduled {
        Ok(next_state) => {
            *held = Some((result, failure));
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
    held: &mut Option<Held<Res, E>>,
) -> Option<Ending<Res, E>>
where
    P: Policy<Req, Res, E, Recover = R>,
{
    let attempt: &mut Attempt = this.attempt;
    attempt.recoveries = attempt.recoveries.saturating_add(1);
    let [_, complete, failed] = recovery_names(class);
    let span = span(this.retrying);
    match outcome {
        Err(e) => {
            in_span(
                span,
                || tracing::error!(attempt = attempt.number, error = %e, "{failed}"),
            );
            // The hook's error ends the request; the failed attempt's
            // result is dropped, as in CodeWorm.
            held.take();
            Some((None, Some(e), Reason::RecoveryFailed))
        }
        Ok(()) => {
            in_span(span, || {
                tracing::info!(attempt = attempt.number, "{complete}")
            });
            if attempt.is_last() {
                Some((last(held.take()), None, exhausted(span, attempt)))
            } else if let Some(reason) = past_deadline(&*this.policy, attempt, Duration::ZERO) {
                Some((last(held.take()), None, reason))
            } else {
                // No delay is slept before the attempt that follows a
                // recovery (the hook itself saw the delay before the one
                // that failed).
                attempt.set_last_delay(Duration::ZERO);
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
    held: &mut Option<Held<Res, E>>,
) -> Option<Ending<Res, E>>
where
    S: Service<Req, Future = F, Response = Res, Error = E>,
    P: Policy<Req, Res, E, Recover = R>,
{
    if let Err(e) = ready {
        return Some((Some(Err(e)), None, Reason::Readiness));
    }
    let attempt: &mut Attempt = this.attempt;
    // The copy first, then the budget: a retry that cannot be sent must
    // cost no token.
    let Some(req) = this.next.take() else {
        return Some((last(held.take()), None, Reason::NotReplayable));
    };
    // The budget is asked about the attempt to come, in place; a denied one
    // is not counted as made.
    let made = attempt.number;
    attempt.number = made.saturating_add(1);
    let failure = held.as_ref().map(|(_, failure)| failure);
    let denied = this
        .policy
        .permit_retry(attempt, failure.unwrap_or(&Failure::new(Class::Transient)));
    if let Err(reason) = denied {
        in_span(span(this.retrying), || {
            tracing::warn!(
                attempt = attempt.number,
                reason = reason.as_str(),
                "retry_denied"
            )
        });
        attempt.number = made;
        return Some((last(held.take()), None, reason));
    }
    if attempt.started.is_some() {
        attempt.sent_at = Some(Instant::now());
    }
    if let Some(r) = this.retrying.as_deref_mut()
        && r.span.is_some()
    {
        // A span per attempt, so that every event under it names the
        // attempt it belongs to.
        r.span = Some(attempt_span(attempt));
    }
    held.take();
    *this.next = this.policy.replay(&req);
    let future = this.service.call(req);
    this.state.set(State::Calling { future });
    None
}

/// Enters the request's span, if it has one, while an inner future is
/// polled: the inner service's events then belong to the attempt.
fn enter<Res, E>(slot: &Option<Box<Retrying<Res, E>>>) -> Option<tracing::span::Entered<'_>> {
    span(slot).map(Span::enter)
}

fn attempt_span(attempt: &Attempt) -> Span {
    tracing::info_span!(
        "retry",
        attempt = attempt.number,
        max_attempts = attempt.max_attempts
    )
}

/// The retry state, allocated the first time something must outlive a
/// poll (never on the success path).
#[cold]
fn allocate<Res, E>(slot: &mut Option<Box<Retrying<Res, E>>>) -> &mut Retrying<Res, E> {
    slot.insert(Box::new(Retrying::new()))
}

/// The retry state of a request.
#[inline]
fn retrying<Res, E>(slot: &mut Option<Box<Retrying<Res, E>>>) -> &mut Retrying<Res, E> {
    match slot {
        Some(r) => r,
        None => allocate(slot),
    }
}

/// Notes a failed attempt; the first one opens the request's span, when a
/// subscriber wants one.
#[inline]
fn record<Res, E>(
    first: &mut Option<FirstFailure>,
    slot: &mut Option<Box<Retrying<Res, E>>>,
    attempt: &Attempt,
    failure: &Failure,
) {
    if span(slot).is_none() && tracing::enabled!(Level::INFO) {
        retrying(slot).span = Some(attempt_span(attempt));
    }
    if failure.class() == Class::Oom {
        in_span(span(slot), || {
            tracing::warn!(attempt = attempt.number, "model_oom_detected")
        });
    }
    let Some(earlier) = *first else {
        *first = Some(FirstFailure {
            class: failure.class(),
            recovered: false,
        });
        return;
    };
    let failures = &mut retrying(slot).failures;
    if failures.is_empty() {
        // Only one delay has been slept so far: the first failure's.
        failures.push(earlier.full(attempt.total_delay()));
    }
    // A policy allowing millions of immediate attempts must not grow the
    // record without bound; the report keeps the first ones.
    if failures.len() < crate::report::MAX_RECORDED_FAILURES {
        failures.push(FailedAttempt {
            number: attempt.number,
            class: failure.class(),
            delay: Duration::ZERO,
            recovered: false,
        });
    }
}

/// Completes the record of the attempt that just failed, if it was
/// recorded (a full record keeps only the first ones): whether a recovery
/// runs after it, and the delay slept after it. A lone first failure's
/// delay needs no setting: it is the request's total.
fn note_latest<Res, E>(
    first: &mut Option<FirstFailure>,
    slot: &mut Option<Box<Retrying<Res, E>>>,
    attempt: &Attempt,
    recovered: bool,
    delay: Duration,
) {
    match slot.as_deref_mut().and_then(|r| r.failures.last_mut()) {
        Some(latest) => {
            if latest.number == attempt.number {
                latest.recovered = recovered;
                latest.delay = delay;
            }
        }
        None => {
            if let Some(first) = first {
                first.recovered = recovered;
            }
        }
    }
}

/// The record of every failed attempt, for the report, from its two
/// parts: the first failure inline, and the list once there are two.
fn failures<Res, E>(
    first: Option<FirstFailure>,
    slot: Option<Box<Retrying<Res, E>>>,
    attempt: &Attempt,
) -> Failures {
    match (slot, first) {
        (Some(r), _) if !r.failures.is_empty() => r.failures,
        (_, Some(first)) => smallvec::smallvec![first.full(attempt.total_delay())],
        (_, None) => Failures::new(),
    }
}

fn exhausted(span: Option<&Span>, attempt: &Attempt) -> Reason {
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
    first: &mut Option<FirstFailure>,
    slot: &mut Option<Box<Retrying<Res, E>>>,
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
        if let Some(reason) = past_deadline(policy, attempt, Duration::ZERO) {
            return Err(reason);
        }
        note_latest(first, slot, attempt, true, Duration::ZERO);
        // A recovery has no known length: race it against the deadline.
        let bounded = match (policy.deadline(), attempt.started) {
            (Some(deadline), Some(started)) => {
                arm(&mut retrying(slot).sleep, started, deadline);
                true
            }
            _ => false,
        };
        let [attempting, _, _] = recovery_names(failure.class());
        in_span(
            span(slot),
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
        return Err(exhausted(span(slot), attempt));
    }
    if next.is_none() {
        return Err(Reason::NotReplayable);
    }
    let delay = policy.backoff(attempt, failure);
    if let Some(reason) = past_deadline(policy, attempt, delay) {
        in_span(span(slot), || {
            tracing::warn!(
                attempt = n,
                delay_ms = delay_ms(delay),
                "retry_past_deadline"
            )
        });
        return Err(reason);
    }
    note_latest(first, slot, attempt, false, delay);
    attempt.set_total_delay(attempt.total_delay().saturating_add(delay));
    attempt.set_last_delay(delay);
    in_span(span(slot), || {
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
    arm(&mut retrying(slot).sleep, Instant::now(), delay);
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
        total_delay: attempt.total_delay(),
        recoveries: attempt.recoveries,
        reason,
    };
    policy.finish(Finished {
        last,
        recovery_error,
        report,
    })
}
