//! CodeWorm's Ollama retry semantics.
//!
//! CodeWorm wraps each generation in a loop of `max_retries` (3) attempts:
//!
//! | outcome | CodeWorm does |
//! |---|---|
//! | model out of memory | run the recovery hook (unload, wait, reload), then retry at once |
//! | timeout or connection error | sleep `retry_delay × (attempt + 1)` (2 s, 4 s), then retry |
//! | anything else | fail at once |
//!
//! There is no sleep after the last attempt, recovery runs even after an OOM
//! on the last attempt, a failed recovery ends the request at once, and the
//! last attempt's error wins.
//!
//! [`OllamaPolicy`] is that loop. It has two modes:
//!
//! | case | [`Mode::CodeWorm`] | [`Mode::Default`] |
//! |---|---|---|
//! | non-200 containing `out of memory` | OOM: recover | OOM: recover |
//! | non-200 containing `cuda` but no memory text | OOM: recover | transient: back off (never recover) |
//! | real OOM texts CodeWorm misses (`requires more system memory`, `unable to allocate`, …) | fatal | OOM: recover |
//! | 503 server busy, 429, 502, 504 | fatal | transient: back off |
//! | 500 load timeout, runner crashed or stopped | fatal | transient: back off |
//! | 400, 401, 403, 404, 405, 499, `request canceled` | fatal | fatal |
//! | other 5xx | fatal | transient: back off |
//! | connection closed before the response head arrives | fatal | transient: back off |
//! | connection closed in a 2xx body | the caller's body read fails (success bodies stream, never buffered) | the same |
//! | OOM on the last attempt | recover, then fail | fail (no pointless recovery) |
//! | timeout (connect timeout included), refused connection | back off | back off |
//! | bad URI, unsupported scheme | fatal | fatal |

mod error;
#[cfg(feature = "test-util")]
pub mod fake;
#[cfg(feature = "ollama")]
mod http;
mod policy;
#[cfg(feature = "ollama")]
mod recovery;
mod rules;

pub use error::{OllamaError, OllamaErrorKind};
pub use policy::{Http, OllamaPolicy, Plain};
#[cfg(feature = "ollama")]
pub use recovery::{CODEWORM_RECOVERY_CTX, OllamaRecovery};
pub use rules::{
    CANCEL_MARKERS, Mode, OOM_MARKERS, TRANSIENT_MARKERS, classify_error, classify_status,
    error_message,
};
