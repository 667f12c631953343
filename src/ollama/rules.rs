//! How an Ollama failure is classified, in each [`Mode`].
//!
//! The rules read the status and the `error` message of an Ollama error body
//! (`{"error":"..."}`), and walk an error's `source()` chain. They are total:
//! any status and any bytes give a class, and nothing here can panic.

use crate::classify::chain;
use crate::{Class, RetryError};
use std::error::Error as StdError;
use std::io;

/// Which classification rules an [`OllamaPolicy`](crate::OllamaPolicy) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// CodeWorm exactly, quirks included: a non-200 whose body contains
    /// `out of memory` or `cuda` is an OOM, every other non-200 is fatal, a
    /// connection closed mid-response is fatal, and recovery also runs after
    /// an OOM on the last attempt.
    CodeWorm,
    /// The same loop, with classification by the real Ollama error surface:
    /// busy, load-timeout and runner-crash responses back off and retry,
    /// permanent errors fail at once, and only real memory exhaustion starts a
    /// recovery.
    #[default]
    Default,
}

/// Lower-cased substrings that name memory exhaustion in real Ollama messages.
pub const OOM_MARKERS: &[&str] = &[
    "out of memory",
    "out-of-memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "unable to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "requires more system memory",
    "erroroutofmemory",
    "vk_error_out_of_device_memory",
];

/// Lower-cased substrings of a 500 that reports a busy, crashed or slow runner.
pub const TRANSIENT_MARKERS: &[&str] = &[
    "server busy",
    "timed out waiting for llama runner to start",
    "timed out waiting for llama-server to start",
    "llama runner process has terminated",
    "llama-server process has terminated",
    "model runner has unexpectedly stopped",
    "an error was encountered while running the model",
    "no slots available",
    "unexpected server status",
];

/// Lower-cased substrings of a cancellation: never retry one's own cancel.
pub const CANCEL_MARKERS: &[&str] = &["request canceled", "context canceled"];

/// The `error` message of an Ollama error body, or the body as text when it
/// is not that JSON shape (a truncated prefix, HTML from a proxy, bytes).
pub fn error_message(body: &[u8]) -> String {
    #[cfg(feature = "ollama")]
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(serde_json::Value::String(m)) = map.get("error")
    {
        return m.clone();
    }
    String::from_utf8_lossy(body).into_owned()
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| haystack.contains(n))
}

/// Classifies a non-success status and its body (or a prefix of it).
///
/// A 2xx is a success in both modes.
///
/// ```
/// use tower_ollama_retry::{Class, ollama::{Mode, classify_status}};
///
/// let busy = br#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
/// assert_eq!(classify_status(Mode::CodeWorm, 503, busy), Class::Fatal);
/// assert_eq!(classify_status(Mode::Default, 503, busy), Class::Transient);
///
/// let cuda = br#"{"error":"CUDA driver version is insufficient"}"#;
/// assert_eq!(classify_status(Mode::CodeWorm, 500, cuda), Class::Oom);
/// assert_eq!(classify_status(Mode::Default, 500, cuda), Class::Transient);
/// ```
pub fn classify_status(mode: Mode, status: u16, body: &[u8]) -> Class {
    if (200..300).contains(&status) {
        return Class::Success;
    }
    match mode {
        Mode::CodeWorm => {
            // CodeWorm lower-cases the whole body text, JSON and all.
            let text = String::from_utf8_lossy(body).to_lowercase();
            if text.contains("out of memory") || text.contains("cuda") {
                Class::Oom
            } else {
                Class::Fatal
            }
        }
        Mode::Default => classify_message(status, &error_message(body).to_lowercase()),
    }
}

/// Default mode's rules for a status and a lower-cased message.
fn classify_message(status: u16, message: &str) -> Class {
    if contains_any(message, CANCEL_MARKERS) {
        return Class::Fatal;
    }
    match status {
        400 | 401 | 403 | 404 | 405 | 499 => Class::Fatal,
        500..=599 if contains_any(message, OOM_MARKERS) => Class::Oom,
        429 | 502 | 503 | 504 => Class::Transient,
        // Every other 5xx, known runner trouble or not, is retried like a
        // timeout: the loop's own attempt limit (3 by default) is its small
        // budget. An unknown 500 is more often a runner that will come back
        // than a request that can never work.
        500..=599 => Class::Transient,
        _ => Class::Fatal,
    }
}

/// Classifies an error by walking its `source()` chain.
///
/// | found in the chain | class |
/// |---|---|
/// | a [`RetryError`] (an inner retry layer already gave up) | fatal |
/// | an [`OllamaError`](crate::OllamaError) | its kind (a status error by [`classify_status`]) |
/// | `tower::timeout::error::Elapsed`, tokio `Elapsed`, `io::ErrorKind::TimedOut`, a hyper timeout | timeout |
/// | a hyper-util connect error caused by a timeout | timeout (CodeWorm's rule) |
/// | a hyper-util connect error caused by a refused, reset or unreachable connection, or DNS | connection |
/// | an HTTP/2 `REFUSED_STREAM` (the request was never processed) | connection |
/// | a connection closed mid-response (`UnexpectedEof`, reset, an incomplete message) | CodeWorm: fatal; default: transient |
/// | anything else (a bad URI, an unsupported scheme) | fatal |
pub fn classify_error(mode: Mode, err: &(dyn StdError + 'static)) -> Class {
    #[cfg_attr(not(feature = "http"), allow(unused_mut))]
    let mut connect = false;
    let mut timeout = false;
    let mut unreachable = false;
    let mut broken = false;
    let mut under_hyper = false;
    for e in chain(err) {
        // Our own error first: it is what a plain Ollama service returns.
        if let Some(o) = e.downcast_ref::<crate::OllamaError>() {
            use crate::OllamaErrorKind as K;
            return match o.kind() {
                K::Model => Class::Oom,
                K::Timeout => Class::Timeout,
                K::Connection => Class::Connection,
                K::Status(s) => classify_status(mode, s, o.message().as_bytes()),
                _ => Class::Fatal,
            };
        }
        if e.is::<RetryError>() {
            return Class::Fatal;
        }
        if e.is::<tower::timeout::error::Elapsed>() || e.is::<tokio::time::error::Elapsed>() {
            timeout = true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            use io::ErrorKind as K;
            match io.kind() {
                K::TimedOut => timeout = true,
                K::ConnectionRefused
                | K::NotConnected
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable => unreachable = true,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    broken = true
                }
                _ => {}
            }
        }
        #[cfg(feature = "http")]
        {
            if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
                && h.is_connect()
            {
                connect = true;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                under_hyper = true;
                if h.is_timeout() {
                    timeout = true;
                }
                if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                    broken = true;
                }
            }
        }
        // HTTP/2's REFUSED_STREAM (also what streams past a GOAWAY get) says
        // the request was never processed; h2's reason reaches us only as
        // text, below hyper's own error.
        if under_hyper
            && e.to_string()
                .to_ascii_lowercase()
                .contains("refused stream")
        {
            unreachable = true;
        }
        // hyper-util reports a failed name lookup as "dns error".
        if connect && e.to_string().starts_with("dns error") {
            unreachable = true;
        }
    }
    if timeout {
        Class::Timeout
    } else if connect && (unreachable || broken) {
        // Nothing was sent on a connection that never came up.
        Class::Connection
    } else if unreachable && !connect {
        Class::Connection
    } else if broken {
        match mode {
            Mode::CodeWorm => Class::Fatal,
            Mode::Default => Class::Transient,
        }
    } else {
        Class::Fatal
    }
}
