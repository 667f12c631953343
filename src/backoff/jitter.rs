//! Jitter: randomising any backoff so that clients do not retry in lockstep.

use super::{Backoff, from_nanos};
use crate::Attempt;
use std::time::Duration;

/// How [`Jitter`] randomises the delay `d` its inner backoff computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum JitterKind {
    /// Uniform in `[0, d]`.
    Full,
    /// `d/2` plus uniform in `[0, d/2]`.
    Equal,
    /// `min(cap, uniform in [base, previous × 3])`, where `previous` starts at
    /// `base` (AWS's "decorrelated jitter"). The inner backoff is not used.
    Decorrelated {
        /// The smallest delay, and the first `previous`.
        base: Duration,
    },
    /// `d × uniform in [1 − r, 1 + r]`, with `r` clamped to `[0, 1]`
    /// (a NaN `r` counts as 0).
    Proportional(f64),
}

/// Wraps any [`Backoff`] and randomises its delays.
///
/// Every delay, after jitter, lies within `[floor, cap]` (by default
/// `[0, Duration::MAX]`); no input panics. The random source is
/// [`fastrand`], seeded per request from the thread's generator, or from
/// [`with_seed`](Self::with_seed) so that tests fix the sequence: with a
/// seed, every request replays the same sequence.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::{Attempt, Backoff, backoff::{Exponential, Jitter, JitterKind}};
///
/// let mut b = Jitter::new(Exponential::new(Duration::from_millis(100)), JitterKind::Full)
///     .with_cap(Duration::from_secs(1))
///     .with_seed(7);
/// for n in 1..=10 {
///     let d = b.delay(&Attempt::new(n, 10));
///     assert!(d <= Duration::from_secs(1));
/// }
/// ```
// `Copy` when `B` is: a policy holding it is cloned per request, and a
// bitwise copy moves into the response future without store-forwarding
// stalls (see `settings::Knobs`).
#[derive(Clone, Copy, Debug)]
pub struct Jitter<B> {
    inner: B,
    kind: JitterKind,
    floor: Duration,
    cap: Duration,
    // The generator's state: the seed until first use (each request's clone
    // of a seeded template starts from it), or `None` for a fresh random
    // stream per request. Kept as its `u64` state so that `Jitter` is
    // `Copy`.
    rng: Option<u64>,
    previous: Option<Duration>,
}

impl<B> Jitter<B> {
    /// Randomises `inner` by `kind`.
    pub fn new(inner: B, kind: JitterKind) -> Self {
        Self {
            inner,
            kind,
            floor: Duration::ZERO,
            cap: Duration::MAX,
            rng: None,
            previous: None,
        }
    }

    /// The smallest delay this backoff returns.
    pub fn with_floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// The largest delay this backoff returns (also the decorrelated cap).
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Fixes the random sequence (for tests and reproducible runs).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Some(seed);
        self
    }

    /// The wrapped backoff.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Runs `f` on this request's generator, creating it on first use.
    fn with_rng<T>(&mut self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        let mut rng = match self.rng {
            Some(state) => fastrand::Rng::with_seed(state),
            None => fastrand::Rng::new(),
        };
        let out = f(&mut rng);
        self.rng = Some(rng.get_seed());
        out
    }

    fn bounds(&self) -> (Duration, Duration) {
        // A floor above the cap is a configuration slip; the cap wins.
        (self.floor.min(self.cap), self.cap)
    }
}

fn nanos(d: Duration) -> u128 {
    d.as_nanos()
}

/// Uniform in `[lo, hi]` (inclusive), `lo <= hi`.
fn uniform(rng: &mut fastrand::Rng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (nanos(lo), nanos(hi));
    if lo >= hi {
        return from_nanos(lo);
    }
    from_nanos(rng.u128(lo..=hi))
}

impl<B: Backoff> Backoff for Jitter<B> {
    fn delay(&mut self, attempt: &Attempt) -> Duration {
        let (floor, cap) = self.bounds();
        let d = match self.kind {
            JitterKind::Full => {
                let d = self.inner.delay(attempt).min(cap);
                self.with_rng(|rng| uniform(rng, Duration::ZERO, d))
            }
            JitterKind::Equal => {
                let d = self.inner.delay(attempt).min(cap);
                let half = d / 2;
                half.saturating_add(self.with_rng(|rng| uniform(rng, Duration::ZERO, d - half)))
            }
            JitterKind::Decorrelated { base } => {
                let base = base.min(cap);
                let prev = self.previous.unwrap_or(base);
                let hi = prev.saturating_mul(3).min(cap).max(base);
                let d = self.with_rng(|rng| uniform(rng, base, hi));
                self.previous = Some(d);
                d
            }
            JitterKind::Proportional(r) => {
                let d = self.inner.delay(attempt).min(cap);
                let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
                let factor = 1.0 - r + 2.0 * r * self.with_rng(|rng| rng.f64());
                // `as` saturates a too-large float, so this cannot wrap.
                from_nanos((nanos(d) as f64 * factor) as u128)
            }
        };
        d.clamp(floor, cap)
    }
}
