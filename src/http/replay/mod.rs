//! Request replay: buffer a request body once, send it on every attempt.
//!
//! An `http::Request` is not `Clone`: its body is a stream, and the first
//! attempt consumes it. A retry policy's [`replay`](crate::Policy::replay)
//! is synchronous, so it cannot read a body either. [`ReplayLayer`] bridges
//! the two: it sits above the retry layer, reads each request body into
//! memory (asynchronously, once per request), and hands the retry layer a
//! request whose body is a [`ReplayBody`]. The policy's `replay` is then
//! [`replay_request`]: a copy of the head and a reference-count bump of the
//! body, so that every attempt sends byte-identical bytes.
//!
//! # The rules
//!
//! | the body | what is sent | replayable |
//! |---|---|---|
//! | ends within the limit | one buffered `Bytes` (no copy for a single-frame body), then its trailers | yes |
//! | ... had no `content-length` and no exact size hint (a stream) | the same, with `content-length` set to the buffered length, so every attempt has the same head | yes |
//! | has a `size_hint` lower bound or a `content-length` over the limit | the original body, untouched, never buffered | no |
//! | goes over the limit while being read | the bytes already read, then the rest of the original body | no |
//! | fails while being read | the bytes already read, then that error | no |
//!
//! A body that is not replayable is still sent, exactly once, without
//! losing or reordering a byte; [`replay_request`] returns `None` for it, so
//! the retry loop hands back its first result. A body over the limit is
//! reported with a `tracing` warning. A body error is never swallowed: the
//! client sees it while sending and fails that attempt.
//!
//! A body that knew its exact length (`Full`, a `ReplayBody` of bytes)
//! gets no header: its exact size hint says the same, and hyper writes the
//! same `content-length` from it on every attempt.
//!
//! A `content-length` that the request already has is left alone. One that
//! disagrees with the buffered body would cut or stall the message on the
//! wire, so the request is sent once with a body that yields its bytes and
//! then a clear error ("the request's content-length is 10 but its body has
//! 5 bytes"), and the attempt fails with it. No length is added when the request has
//! a `transfer-encoding` or the body has trailers, which HTTP/1 can only send
//! in a chunked body.
//!
//! The memory cost is one copy of each body within the limit, held until
//! the request's last attempt is done; nothing is allocated for a request
//! whose body is empty.

mod body;
mod future;
mod layer;
mod request;
mod service;

pub use body::ReplayBody;
pub use future::ReplayFuture;
pub use layer::ReplayLayer;
pub use request::replay_request;
pub use service::ReplayService;

/// The default most bytes a request body may have and still be replayed:
/// 16 MiB.
///
/// Ollama's `/api/generate` and `/api/chat` carry images inline, as base64
/// strings in the JSON body. Base64 inflates data by a third, so a prompt
/// with a few photos of 2–4 MiB each is already several MiB on the wire;
/// 16 MiB holds about 12 MiB of raw images plus the text. A larger body is
/// still sent, once. Lower the limit with
/// [`ReplayLayer::with_limit`] when many large requests run at once, since
/// each buffered body stays in memory until its last attempt is done.
pub const DEFAULT_REPLAY_LIMIT: usize = 16 * 1024 * 1024;
