//! HTTP support: request replay and response peeking.
//!
//! The retry engine is synchronous at the two points where HTTP needs to
//! wait for a body:
//!
//! - it copies the request for the next attempt with
//!   [`Policy::replay(&Req)`](crate::Policy::replay), but a request body is
//!   a stream that the first attempt consumes;
//! - it classifies each attempt from `&Result<Response, Error>`, but Ollama
//!   says *why* a request failed in the response body (`{"error":"..."}`).
//!
//! This module supplies the two asynchronous pieces that go around it:
//!
//! - [`ReplayLayer`] reads each request body into memory once, so that every
//!   attempt sends byte-identical bytes; [`replay_request`] is the copy;
//! - [`PeekLayer`] reads a bounded prefix of each non-success response body,
//!   so that the policy can read the error text ([`PeekBody::prefix`]),
//!   while the caller still receives every byte.
//!
//! # Assembling the stack
//!
//! ```text
//!  ReplayLayer               buffers the body, once per request
//!   └─ RetryLayer(policy)    replays Request<ReplayBody<B>> with replay_request,
//!       │                    classifies Response<PeekBody<_>> by status and prefix
//!       └─ PeekLayer         reads the start of each failed attempt's body
//!           └─ TimeoutLayer  bounds one attempt (optional)
//!               └─ hyper-util Client<_, ReplayBody<B>>
//! ```
//!
//! The order matters:
//!
//! - **[`ReplayLayer`] goes outside the retry layer.** Buffering is done
//!   once, before the first attempt; the retry loop then only ever sees
//!   requests whose body is already in memory, and each replay is a
//!   reference-count bump. Below the retry layer it would be too late: the
//!   retry layer needs the copy *before* the first attempt consumes the body.
//! - **[`PeekLayer`] goes inside the retry layer.** Every attempt has its own
//!   response, and the policy classifies what the service it wraps returns,
//!   so the prefix must already be there when the retry layer sees the
//!   result. Above the retry layer it would only ever see the last attempt.
//!
//! Both layers leave errors untouched (their error types are the inner
//! service's) and never drop a byte: a body too large to replay is sent
//! once, and a body longer than the peek limit streams on after its prefix.
//!
//! # Example
//!
//! Both layers around an in-process service that stands in for Ollama:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ollama_retry::BoxError;
//! use tower_ollama_retry::http::{PeekLayer, ReplayBody, ReplayLayer, replay_request};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let ollama = service_fn(|req: http::Request<ReplayBody<Full<Bytes>>>| async move {
//!     // Below the retry layer, every request is replayable.
//!     assert!(replay_request(&req).is_some());
//!     let body = Full::new(Bytes::from_static(br#"{"error":"server busy"}"#));
//!     Ok::<_, BoxError>(http::Response::builder().status(503).body(body).unwrap())
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(ReplayLayer::new())
//!     // .layer(RetryLayer::new(policy)) goes here
//!     .layer(PeekLayer::new())
//!     .service(ollama);
//!
//! let req = http::Request::post("http://127.0.0.1:11434/api/generate")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"llama3","prompt":"hi"}"#)))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.body().prefix(), br#"{"error":"server busy"}"#);
//! # }
//! ```

mod frames;
pub mod peek;
mod policy;
pub mod replay;
mod replayable;
mod respond;
pub(crate) mod response;
mod stack;

pub use policy::{
    DefaultHttpBackoff, HttpPolicy, RetryNonIdempotent, StatusSet, is_idempotent, never_sent,
};
pub use replayable::ReplayableBody;
pub use respond::{RespondOnError, error_body, error_response, error_status};
pub use response::already_retried;
pub use stack::HttpRetryLayer;

#[doc(no_inline)]
pub use peek::{
    DEFAULT_PEEK_LIMIT, DEFAULT_PEEK_TIMEOUT, PeekBody, PeekFuture, PeekLayer, PeekService,
};
#[doc(no_inline)]
pub use replay::{
    DEFAULT_REPLAY_LIMIT, ReplayBody, ReplayFuture, ReplayLayer, ReplayService, replay_request,
};
