//! The attempt context every policy decision receives.

use crate::settings::split;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Where a request stands in its retry loop, handed to every policy decision.
///
/// The engine keeps one `Attempt` per request and updates it as the loop goes
/// on. It is `Copy` and costs nothing to pass around.
///
/// - [`number`](Self::number) is 1-based: the first attempt is attempt 1.
/// - [`elapsed`](Self::elapsed) is measured with tokio's clock, so a paused
///   test clock drives it. It is only measured when the policy asks for it
///   (see [`Policy::measure_elapsed`](crate::Policy::measure_elapsed)),
///   because reading the clock on every request costs more than the rest of
///   the success path.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::Attempt;
///
/// let attempt = Attempt::new(2, 3).with_total_delay(Duration::from_secs(2));
/// assert_eq!(attempt.number(), 2);
/// assert!(!attempt.is_last());
/// assert_eq!(attempt.remaining(), 1);
/// assert_eq!(attempt.total_delay(), Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub(crate) number: u32,
    pub(crate) max_attempts: u32,
    pub(crate) started: Option<Instant>,
    pub(crate) sent_at: Option<Instant>,
    // The delays are split into their parts, as in `settings::Knobs`, so
    // that the `u32`s share what would be padding: every request's future
    // carries an `Attempt`.
    total_delay_secs: u64,
    last_delay_secs: u64,
    total_delay_nanos: u32,
    last_delay_nanos: u32,
    pub(crate) recoveries: u32,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("number", &self.number)
            .field("max_attempts", &self.max_attempts)
            .field("started", &self.started)
            .field("sent_at", &self.sent_at)
            .field("total_delay", &self.total_delay())
            .field("last_delay", &self.last_delay())
            .field("recoveries", &self.recoveries)
            .finish()
    }
}

impl Attempt {
    /// An attempt context for attempt `number` (1-based) of `max_attempts`,
    /// with no delay and no recovery so far.
    ///
    /// The engine builds these itself; this constructor exists so that a
    /// [`Backoff`](crate::Backoff) or a classifier can be tested on its own.
    pub const fn new(number: u32, max_attempts: u32) -> Self {
        Self {
            number,
            max_attempts,
            started: None,
            sent_at: None,
            total_delay_secs: 0,
            last_delay_secs: 0,
            total_delay_nanos: 0,
            last_delay_nanos: 0,
            recoveries: 0,
        }
    }

    /// Sets the total delay slept so far.
    pub const fn with_total_delay(mut self, total: Duration) -> Self {
        self.set_total_delay(total);
        self
    }

    /// Sets the delay slept before this attempt.
    pub const fn with_last_delay(mut self, last: Duration) -> Self {
        self.set_last_delay(last);
        self
    }

    /// Sets the number of recoveries run so far.
    pub const fn with_recoveries(mut self, recoveries: u32) -> Self {
        self.recoveries = recoveries;
        self
    }

    /// Sets the instant the first attempt started, which turns on
    /// [`elapsed`](Self::elapsed).
    pub const fn with_start(mut self, started: Instant) -> Self {
        self.started = Some(started);
        self
    }

    /// Sets the instant this attempt was sent.
    pub const fn with_sent_at(mut self, sent_at: Instant) -> Self {
        self.sent_at = Some(sent_at);
        self
    }

    #[inline]
    pub(crate) const fn set_total_delay(&mut self, total: Duration) {
        (self.total_delay_secs, self.total_delay_nanos) = split(total);
    }

    #[inline]
    pub(crate) const fn set_last_delay(&mut self, last: Duration) {
        (self.last_delay_secs, self.last_delay_nanos) = split(last);
    }

    /// The 1-based number of this attempt.
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// The most attempts this request may make, the first included.
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether this is the last attempt the policy allows.
    pub const fn is_last(&self) -> bool {
        self.number >= self.max_attempts
    }

    /// How many attempts may still follow this one.
    pub const fn remaining(&self) -> u32 {
        self.max_attempts.saturating_sub(self.number)
    }

    /// Time since the first attempt started, on tokio's clock.
    ///
    /// `None` unless the policy asked the engine to measure it.
    pub fn elapsed(&self) -> Option<Duration> {
        self.started.map(|s| s.elapsed())
    }

    /// The instant the first attempt started, when measured.
    pub const fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The instant this attempt was sent, when measured (see
    /// [`elapsed`](Self::elapsed)). A single-flight recovery uses it to tell
    /// an attempt that failed before the latest recovery finished (and so
    /// needs none) from one that failed after it.
    pub const fn sent_at(&self) -> Option<Instant> {
        self.sent_at
    }

    /// The sum of all delays slept so far.
    #[inline]
    pub const fn total_delay(&self) -> Duration {
        Duration::new(self.total_delay_secs, self.total_delay_nanos)
    }

    /// The delay slept right before this attempt (zero for the first).
    #[inline]
    pub const fn last_delay(&self) -> Duration {
        Duration::new(self.last_delay_secs, self.last_delay_nanos)
    }

    /// How many recoveries have run so far.
    pub const fn recoveries(&self) -> u32 {
        self.recoveries
    }
}
