//! Backoffs: how long to wait before the next attempt.
//!
//! A [`Backoff`] maps the [`Attempt`] that just failed to a [`Duration`]. The
//! engine asks for it only when a policy decides to retry after a backoff
//! (never after a recovery, and never after the last attempt), so CodeWorm's
//! "2 s after the first attempt, 4 s after the second" is simply
//! [`Linear::new(2 s)`](Linear).
//!
//! All arithmetic saturates: no attempt number (up to `u32::MAX`) and no base
//! (up to `Duration::MAX`) can panic or wrap, in debug or release. Each
//! backoff has a cap, applied before any overflow can happen.
//!
//! A closure `FnMut(&Attempt) -> Duration` is a backoff too.
//!
//! ```
//! use std::time::Duration;
//! use tower_ollama_retry::{Attempt, Backoff, backoff::{Exponential, Linear}};
//!
//! let mut linear = Linear::new(Duration::from_secs(2));
//! assert_eq!(linear.delay(&Attempt::new(1, 3)), Duration::from_secs(2));
//! assert_eq!(linear.delay(&Attempt::new(2, 3)), Duration::from_secs(4));
//!
//! let mut exp = Exponential::new(Duration::from_millis(100)).with_max(Duration::from_secs(1));
//! assert_eq!(exp.delay(&Attempt::new(3, 9)), Duration::from_millis(400));
//! assert_eq!(exp.delay(&Attempt::new(u32::MAX, u32::MAX)), Duration::from_secs(1));
//!
//! let mut custom = |a: &Attempt| Duration::from_millis(10 * u64::from(a.number()));
//! assert_eq!(custom.delay(&Attempt::new(3, 5)), Duration::from_millis(30));
//! ```

mod jitter;

pub use jitter::{Jitter, JitterKind};

use crate::Attempt;
use std::time::Duration;

/// Schedules the delay before the next attempt.
///
/// `attempt` is the context of the attempt that just failed: its
/// [`number`](Attempt::number) is 1 after the first attempt. The backoff is
/// cloned with its policy for each request, so `&mut self` state (a jitter
/// RNG, the previous delay) belongs to one request.
pub trait Backoff {
    /// The delay to sleep before the attempt after `attempt`.
    fn delay(&mut self, attempt: &Attempt) -> Duration;
}

// Ensure `Backoff` is object safe.
const _: Option<&dyn Backoff> = None;

impl<F> Backoff for F
where
    F: FnMut(&Attempt) -> Duration,
{
    fn delay(&mut self, attempt: &Attempt) -> Duration {
        self(attempt)
    }
}

/// The same delay every time.
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::{Attempt, Backoff, backoff::Constant};
///
/// let mut b = Constant::new(Duration::from_millis(250));
/// assert_eq!(b.delay(&Attempt::new(7, 9)), Duration::from_millis(250));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Constant {
    delay: Duration,
}

impl Constant {
    /// A backoff that always waits `delay`.
    pub const fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

impl Backoff for Constant {
    fn delay(&mut self, _: &Attempt) -> Duration {
        self.delay
    }
}

/// `base × attempt`, capped: CodeWorm's `retry_delay * (attempt + 1)`.
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::{Attempt, Backoff, backoff::Linear};
///
/// let mut b = Linear::new(Duration::from_secs(2)).with_max(Duration::from_secs(5));
/// assert_eq!(b.delay(&Attempt::new(1, 9)), Duration::from_secs(2));
/// assert_eq!(b.delay(&Attempt::new(2, 9)), Duration::from_secs(4));
/// assert_eq!(b.delay(&Attempt::new(3, 9)), Duration::from_secs(5));
/// assert_eq!(Linear::new(Duration::MAX).delay(&Attempt::new(u32::MAX, u32::MAX)), Duration::MAX);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    base: Duration,
    max: Duration,
}

impl Linear {
    /// `base × attempt`, uncapped (saturating at `Duration::MAX`).
    pub const fn new(base: Duration) -> Self {
        Self {
            base,
            max: Duration::MAX,
        }
    }

    /// Caps every delay at `max`.
    pub const fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The base step.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub const fn max(&self) -> Duration {
        self.max
    }
}

impl Backoff for Linear {
    #[inline]
    fn delay(&mut self, attempt: &Attempt) -> Duration {
        self.base
            .saturating_mul(attempt.number().max(1))
            .min(self.max)
    }
}

/// `base × 2^(attempt − 1)`, capped.
///
/// A cap smaller than the base wins: every delay is at most the cap.
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::{Attempt, Backoff, backoff::Exponential};
///
/// let mut b = Exponential::new(Duration::from_secs(1)).with_max(Duration::from_secs(10));
/// let delays: Vec<_> = (1..=5).map(|n| b.delay(&Attempt::new(n, 9)).as_secs()).collect();
/// assert_eq!(delays, [1, 2, 4, 8, 10]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exponential {
    base: Duration,
    max: Duration,
}

impl Exponential {
    /// Doubles from `base`, uncapped (saturating at `Duration::MAX`).
    pub const fn new(base: Duration) -> Self {
        Self {
            base,
            max: Duration::MAX,
        }
    }

    /// Caps every delay at `max`.
    pub const fn with_max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The first delay.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub const fn max(&self) -> Duration {
        self.max
    }
}

impl Backoff for Exponential {
    fn delay(&mut self, attempt: &Attempt) -> Duration {
        let shift = attempt.number().saturating_sub(1);
        // In u128 nanoseconds even 2^127 × 1 ns fits; past that, or on
        // overflow, the product saturates and the cap applies.
        let factor = 1u128.checked_shl(shift).unwrap_or(u128::MAX);
        let nanos = self.base.as_nanos().saturating_mul(factor);
        from_nanos(nanos).min(self.max)
    }
}

/// A `Duration` of `n` nanoseconds, saturating at `Duration::MAX`.
pub(crate) fn from_nanos(n: u128) -> Duration {
    let secs = n / 1_000_000_000;
    let sub = (n % 1_000_000_000) as u32;
    match u64::try_from(secs) {
        Ok(s) => Duration::new(s, sub),
        Err(_) => Duration::MAX,
    }
}
