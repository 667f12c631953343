//! Recovery hooks: async work that runs between a failed attempt and the
//! next one.
//!
//! CodeWorm's OOM recovery unloads the model, waits, and reloads it before it
//! retries. A [`Recover`] is that hook in tower form: it gets the attempt
//! context, the classified failure and the request that the next attempt
//! will send (so it can read the model name, or rewrite the request), and
//! returns a future. `Ok(())` goes on to the next attempt; an error **ends
//! the request at once** with that error
//! ([`Reason::RecoveryFailed`](crate::Reason::RecoveryFailed)).
//!
//! `()` is the no-op hook, and any closure
//! `FnMut(&Attempt, &Failure) -> impl Future<Output = Result<(), BoxError>>`
//! is a hook. [`recover_fn`] helps the compiler infer such a closure.

use crate::{Attempt, BoxError, Failure};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An async hook run before the next attempt.
pub trait Recover<Req> {
    /// The hook's future.
    type Future: Future<Output = Result<(), BoxError>>;

    /// Starts a recovery after `attempt` failed with `failure`. `next` is the
    /// request the next attempt will send; the hook may rewrite it.
    fn recover(&mut self, attempt: &Attempt, failure: &Failure, next: &mut Req) -> Self::Future;

    /// Whether the hook needs [`Attempt::sent_at`]; policies then ask the
    /// engine to read the clock for each attempt. `false` by default.
    fn needs_clock(&self) -> bool {
        false
    }
}

/// The no-op hook: recovery succeeds at once.
impl<Req> Recover<Req> for () {
    type Future = Recovered;

    fn recover(&mut self, _: &Attempt, _: &Failure, _: &mut Req) -> Self::Future {
        Recovered
    }
}

/// The future of the no-op hook `()`: ready with `Ok(())` at once.
///
/// A type of its own rather than `Ready<Result<(), BoxError>>`: it holds no
/// error that might need dropping, so a retry future whose policy has no
/// hook carries nothing for it, and its drop stays small.
///
/// ```
/// use tower_ollama_retry::{Attempt, Class, Failure, Recover, Recovered};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let recovered: Recovered =
///     ().recover(&Attempt::new(1, 3), &Failure::new(Class::Oom), &mut "the request");
/// assert!(recovered.await.is_ok());
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[must_use = "futures do nothing unless polled"]
pub struct Recovered;

impl Future for Recovered {
    type Output = Result<(), BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

impl<F, Fut, Req> Recover<Req> for F
where
    F: FnMut(&Attempt, &Failure) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    type Future = Fut;

    fn recover(&mut self, attempt: &Attempt, failure: &Failure, _: &mut Req) -> Fut {
        self(attempt, failure)
    }
}

/// Pins a closure's signature down as a recovery hook, so that the compiler
/// can infer its argument and error types.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
/// use tower_ollama_retry::{Attempt, BoxError, Failure, recover_fn};
///
/// let runs = Arc::new(AtomicU32::new(0));
/// let seen = runs.clone();
/// let hook = recover_fn(move |attempt: &Attempt, _failure: &Failure| {
///     seen.fetch_add(1, Ordering::SeqCst);
///     let n = attempt.number();
///     async move {
///         if n > 5 { return Err::<(), BoxError>("gave up".into()) }
///         Ok(())
///     }
/// });
/// # let _ = hook;
/// ```
pub fn recover_fn<F, Fut>(f: F) -> F
where
    F: FnMut(&Attempt, &Failure) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    f
}
