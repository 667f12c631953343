//! Response peeking: read the start of an error response before the retry
//! policy classifies it, and give every byte back to the caller.
//!
//! A retry policy classifies each attempt synchronously, from
//! `&Result<Response, Error>`, but Ollama explains its failures in the body:
//! a 500 whose body is `{"error":"model requires more system memory"}` is an
//! out-of-memory error to recover from, another 500 is not. [`PeekLayer`]
//! sits below the retry layer and, for every non-success response, reads
//! the first bytes of the body (asynchronously) before handing the response
//! up. The policy then reads [`PeekBody::prefix`]; the caller reads the body
//! as usual and receives all of it.
//!
//! # The rules
//!
//! | the response | what the caller receives | [`prefix`](PeekBody::prefix) | [`is_complete`](PeekBody::is_complete) |
//! |---|---|---|---|
//! | 2xx | the body, frame by frame, nothing buffered | empty | `false` |
//! | other, body ends within the limit | the same bytes, then the trailers | the whole body | `true` |
//! | other, body longer than the limit | the first `limit` bytes, then the rest as it arrives | exactly `limit` bytes | `false` |
//! | other, body fails during the peek | the bytes read, then that error | the bytes read | `false`, and [`peek_error`](PeekBody::peek_error) is `Some` |
//!
//! Status and headers are never changed, and `size_hint` and
//! `is_end_stream` stay truthful. The peek never copies a frame more than
//! once: a single-frame body is kept as it is, and the frame that crosses the
//! limit is split without a copy.
//!
//! The peek waits for body bytes after the response head has arrived. A
//! per-attempt timeout placed *below* this layer bounds only the wait for
//! the head; place it above (between the retry layer and this one) to bound
//! the peek too.

mod body;
mod future;
mod layer;
mod service;

pub use body::PeekBody;
pub use future::PeekFuture;
pub use layer::PeekLayer;
pub use service::PeekService;

/// The default most bytes a peek reads from a non-success response: 64 KiB.
///
/// Ollama's error bodies are small JSON objects, `{"error":"..."}`, well
/// under a kilobyte; 64 KiB leaves room for a verbose proxy error page while
/// bounding what one failed attempt can hold in memory. Anything beyond it
/// is not read by the peek, and streams on to the caller.
pub const DEFAULT_PEEK_LIMIT: usize = 64 * 1024;

/// How long a peek may take by default: 30 s. Ollama sends an error body in
/// one piece at once; a body that trickles for this long is treated as a
/// broken one.
pub const DEFAULT_PEEK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
