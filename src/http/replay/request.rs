//! [`replay_request`]: the copy a retry policy sends on the next attempt.

use crate::http::ReplayableBody;
use http::Request;

/// A copy of `req` for another attempt, or `None` when its body cannot be
/// copied (a [`ReplayBody`](super::ReplayBody) that is not
/// [replayable](super::ReplayBody::is_replayable)).
///
/// The copy has the same method, URI, version, headers and extensions
/// (`http` 1's `Extensions` is `Clone`), and a body that yields the same
/// bytes and trailers. The body's data is shared, not copied.
///
/// This is what an HTTP retry policy's [`replay`](crate::Policy::replay)
/// calls.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_ollama_retry::http::{ReplayBody, replay_request};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let req = http::Request::post("http://127.0.0.1:11434/api/generate")
///     .header("content-type", "application/json")
///     .body(ReplayBody::<Full<Bytes>>::full(Bytes::from_static(b"{}")))
///     .unwrap();
/// let copy = replay_request(&req).unwrap();
/// assert_eq!(copy.uri(), req.uri());
/// assert_eq!(copy.headers(), req.headers());
/// assert_eq!(copy.into_body().collect().await.unwrap().to_bytes(), "{}");
/// # }
/// ```
pub fn replay_request<B: ReplayableBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}
