//! What a finished attempt was: its [`Class`], the [`Failure`] it carries and
//! the [`Decision`] a policy takes on it.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The class of one attempt's outcome.
///
/// The classes are few and fixed so that statistics and reports can count
/// them cheaply. CodeWorm's three retryable classes (`Oom`, `Timeout`,
/// `Connection`) are here, with `Transient` for everything else worth a
/// retry (busy servers, 503s, crashed runners) and `Fatal` for what is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Class {
    /// The attempt succeeded.
    Success,
    /// The model ran out of memory: recover, then retry at once.
    Oom,
    /// The attempt timed out (a connect timeout included, as in CodeWorm).
    Timeout,
    /// No connection could be made: refused, reset before sending, unreachable.
    Connection,
    /// A transient server-side failure: busy, overloaded, crashed runner.
    Transient,
    /// A failure that retrying will not fix.
    Fatal,
}

impl Class {
    /// Every class, in a fixed order (the order of [`Class::index`]).
    pub const ALL: [Class; 6] = [
        Class::Success,
        Class::Oom,
        Class::Timeout,
        Class::Connection,
        Class::Transient,
        Class::Fatal,
    ];

    /// A stable lower-case name, used in tracing fields and reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Oom => "oom",
            Class::Timeout => "timeout",
            Class::Connection => "connection",
            Class::Transient => "transient",
            Class::Fatal => "fatal",
        }
    }

    /// The position of this class in [`Class::ALL`], for counter arrays.
    pub const fn index(self) -> usize {
        match self {
            Class::Success => 0,
            Class::Oom => 1,
            Class::Timeout => 2,
            Class::Connection => 3,
            Class::Transient => 4,
            Class::Fatal => 5,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure: its class, an optional server hint for the delay,
/// and an optional message (for example the `error` field of an Ollama body).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::{Class, Failure};
///
/// let f = Failure::new(Class::Transient)
///     .with_hint(Duration::from_secs(3))
///     .with_message("server busy");
/// assert_eq!(f.class(), Class::Transient);
/// assert_eq!(f.hint(), Some(Duration::from_secs(3)));
/// assert_eq!(f.message(), Some("server busy"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    class: Class,
    hint: Option<Duration>,
    message: Option<Cow<'static, str>>,
}

impl Failure {
    /// A failure of `class`, with no hint and no message.
    pub const fn new(class: Class) -> Self {
        Self {
            class,
            hint: None,
            message: None,
        }
    }

    /// Attaches a server hint for the next delay (`Retry-After`,
    /// `grpc-retry-pushback-ms`).
    pub fn with_hint(mut self, hint: Duration) -> Self {
        self.hint = Some(hint);
        self
    }

    /// Attaches a hint if there is one.
    pub fn with_hint_opt(mut self, hint: Option<Duration>) -> Self {
        self.hint = hint;
        self
    }

    /// Attaches the failure's message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The class of the failure.
    pub const fn class(&self) -> Class {
        self.class
    }

    /// The server's hint for the next delay, if it gave one.
    pub const fn hint(&self) -> Option<Duration> {
        self.hint
    }

    /// The failure's message, if it has one.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{}: {m}", self.class),
            None => write!(f, "{}", self.class),
        }
    }
}

/// What a policy decides about one finished attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Done: hand the result to the caller as it is.
    Success,
    /// Stop now: retrying would not help. The result goes to the caller.
    Fatal(Failure),
    /// Sleep the scheduled backoff, then try again.
    Retry(Failure),
    /// Run the recovery hook, then try again at once.
    Recover(Failure),
}

impl Decision {
    /// The failure this decision carries, if it is not a success.
    pub const fn failure(&self) -> Option<&Failure> {
        match self {
            Decision::Success => None,
            Decision::Fatal(f) | Decision::Retry(f) | Decision::Recover(f) => Some(f),
        }
    }

    /// The class of the outcome.
    pub const fn class(&self) -> Class {
        match self {
            Decision::Success => Class::Success,
            Decision::Fatal(f) | Decision::Retry(f) | Decision::Recover(f) => f.class,
        }
    }
}

/// Per-class failure limits inside one request's loop, for example "at most
/// 1 OOM recovery within 3 attempts".
///
/// Policies keep one per request (it is part of their per-request state) and
/// ask [`admit`](Self::admit) for each failure; a failure past its class's
/// limit ends the loop as fatal.
///
/// ```
/// use tower_ollama_retry::{Class, ClassLimits};
///
/// let mut limits = ClassLimits::default().with_limit(Class::Oom, 1);
/// assert!(limits.admit(Class::Oom));
/// assert!(!limits.admit(Class::Oom));
/// assert!(limits.admit(Class::Timeout));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLimits {
    // u16 keeps a policy small enough to copy per request; a limit of
    // `u16::MAX` or more means no limit.
    max: [u16; Class::ALL.len()],
    seen: [u16; Class::ALL.len()],
}

impl Default for ClassLimits {
    fn default() -> Self {
        Self {
            max: [u16::MAX; Class::ALL.len()],
            seen: [0; Class::ALL.len()],
        }
    }
}

impl ClassLimits {
    /// Allows at most `max` retried failures of `class` per request
    /// (65 535 or more: no limit).
    pub fn with_limit(mut self, class: Class, max: u32) -> Self {
        self.max[class.index()] = u16::try_from(max).unwrap_or(u16::MAX);
        self
    }

    /// The limit for `class` (`u32::MAX` when there is none).
    pub fn limit(&self, class: Class) -> u32 {
        match self.max[class.index()] {
            u16::MAX => u32::MAX,
            n => u32::from(n),
        }
    }

    /// Counts one failure of `class`; `false` once it is past the limit.
    #[inline]
    pub fn admit(&mut self, class: Class) -> bool {
        let i = class.index();
        if self.max[i] == u16::MAX {
            return true;
        }
        self.seen[i] = self.seen[i].saturating_add(1);
        self.seen[i] <= self.max[i]
    }
}
