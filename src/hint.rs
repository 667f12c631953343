//! Server hints for the next delay: `Retry-After` and gRPC's
//! `grpc-retry-pushback-ms`.
//!
//! Both parsers are total: any bytes give an answer, nothing panics, and a
//! value that is not valid never becomes a delay.
//!
//! | header value | [`retry_after`] | [`grpc_pushback`] |
//! |---|---|---|
//! | `120` | 120 s | 120 ms |
//! | `Wed, 21 Oct 2015 07:28:00 GMT` (HTTP-date) | until then; a past date is 0 | do not retry |
//! | `-1`, `1.5`, `nan`, `1e999`, over `u64::MAX`, garbage, empty | none: use the computed backoff | do not retry |
//!
//! gRPC's retry design (A6) says a negative or unparseable pushback means
//! "do not retry"; for `Retry-After` an invalid value is ignored.

use std::time::{Duration, SystemTime};

/// What a server hint says about the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Wait this long before the next attempt.
    After(Duration),
    /// Do not retry at all.
    Stop,
}

fn digits(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // All digits: the only failure left is overflow.
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses a `Retry-After` value (delta-seconds or an HTTP-date) against
/// `now`. `None` for anything invalid.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_ollama_retry::hint::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400);
/// assert_eq!(retry_after(b"120", now), Some(Duration::from_secs(120)));
/// assert_eq!(retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(80)));
/// assert_eq!(retry_after(b"Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
/// for bad in [&b"-1"[..], b"1.5", b"nan", b"1e999", b"99999999999999999999999", b"soon", b""] {
///     assert_eq!(retry_after(bad, now), None);
/// }
/// ```
pub fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    if let Some(secs) = digits(value) {
        return Some(Duration::from_secs(secs));
    }
    // ASCII whitespace only, as for delta-seconds: HTTP's OWS is spaces
    // and tabs, never Unicode spaces.
    let text = std::str::from_utf8(value.trim_ascii()).ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a `grpc-retry-pushback-ms` value: a non-negative integer of
/// milliseconds, and [`Hint::Stop`] for anything else.
///
/// ```
/// use std::time::Duration;
/// use tower_ollama_retry::hint::{Hint, grpc_pushback};
///
/// assert_eq!(grpc_pushback(b"250"), Hint::After(Duration::from_millis(250)));
/// assert_eq!(grpc_pushback(b"-1"), Hint::Stop);
/// assert_eq!(grpc_pushback(b"1.5"), Hint::Stop);
/// ```
pub fn grpc_pushback(value: &[u8]) -> Hint {
    match digits(value) {
        Some(ms) => Hint::After(Duration::from_millis(ms)),
        None => Hint::Stop,
    }
}

/// The `Retry-After` hint of a header map, if it has a valid one.
#[cfg(feature = "http")]
pub fn retry_after_header(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?;
    retry_after(v.as_bytes(), SystemTime::now())
}

/// The `grpc-retry-pushback-ms` hint of a header map, if it has one.
#[cfg(feature = "http")]
pub fn grpc_pushback_header(headers: &http::HeaderMap) -> Option<Hint> {
    headers
        .get("grpc-retry-pushback-ms")
        .map(|v| grpc_pushback(v.as_bytes()))
}
