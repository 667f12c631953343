//! gRPC support for tonic: [`GrpcPolicy`] and [`GrpcRetryLayer`].
//!
//! A gRPC call is an HTTP/2 `POST` whose body is a stream of
//! length-prefixed messages, and whose outcome is a status code
//! (`grpc-status`) sent at the end, in the trailers. Retrying one takes
//! three things this module supplies:
//!
//! 1. **A copy of the request for each attempt.** tonic's request body is a
//!    stream (`tonic::body::Body`), not `Clone`. [`GrpcRetryLayer`] reads it
//!    into memory once per call with the crate's
//!    [`ReplayLayer`](crate::http::ReplayLayer), lets the retry loop copy it
//!    by a reference-count bump, and hands each attempt a fresh `Body`.
//! 2. **A status to classify before the body is read.** A server that fails
//!    a call at once answers *trailers-only*: HTTP 200 whose headers already
//!    hold `grpc-status` (what tonic does for a unary `Err(Status)`). That
//!    is what [`GrpcPolicy`] reads. A response whose headers hold no status
//!    has started to stream its reply: the call is *committed*, and gRPC's
//!    retry design (A6) does not retry it, nor does this module.
//! 3. **gRPC's retry rules** (A6): which codes to retry (`UNAVAILABLE` by
//!    default), how many attempts in all (3), exponential backoff with
//!    jitter, and the server's `grpc-retry-pushback-ms`, which sets the next
//!    delay or, when negative, forbids a retry.
//!
//! # Assembling the stack
//!
//! On a client, around the `Channel`:
//!
//! ```text
//!  HealthClient::new(svc)           encodes messages into a tonic Body
//!   └─ GrpcRetryLayer(GrpcPolicy)   ReplayLayer → RetryLayer → MapRequest
//!       └─ Channel                  HTTP/2 to the server
//! ```
//!
//! ```no_run
//! use std::time::Duration;
//! use tonic::transport::Endpoint;
//! use tower::ServiceBuilder;
//! use tower_ollama_retry::grpc::{GrpcPolicy, GrpcRetryLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
//! let svc = ServiceBuilder::new()
//!     .layer(GrpcRetryLayer::new(GrpcPolicy::new().with_max_attempts(4)))
//!     .service(channel);
//! // let mut client = tonic_health::pb::health_client::HealthClient::new(svc);
//! # let _ = svc; Ok(()) }
//! ```
//!
//! On a server, `Server::builder().layer(GrpcRetryLayer::new(policy))`
//! retries the server's own handlers: a handler that answers `UNAVAILABLE`
//! is called again before the client sees anything.
//!
//! # What the caller sees
//!
//! - A retried call that succeeds carries the attempt
//!   [`Report`](crate::Report) in `tonic::Response::extensions()` and
//!   [`PREVIOUS_RPC_ATTEMPTS`] in its metadata.
//! - A call that still fails with a trailers-only status reaches the tonic
//!   client as that [`Status`](tonic::Status), with
//!   [`PREVIOUS_RPC_ATTEMPTS`] in its metadata (a `Status` has no
//!   extensions, so the `Report` does not reach it; use
//!   [`GrpcPolicy::with_stats`] or [`GrpcPolicy::on_retry`] to watch).
//! - A call that fails with a transport error gets a
//!   [`RetryError`](crate::RetryError), which the tonic client turns into a
//!   `Status` by the error inside (a refused connection is `UNAVAILABLE`).
//!
//! # Limits
//!
//! - The request is buffered before its first attempt. A bidirectional or
//!   client stream that waits for the server before it ends would stall:
//!   send such calls through a plain clone of the `Channel`.
//! - A status that only comes in the trailers is not seen: such a call is
//!   committed (as in A6).
//! - A retry resends `grpc-timeout` unchanged, so each attempt gets the
//!   whole per-call timeout again; [`GrpcPolicy::with_deadline`] stops
//!   retrying once an overall budget is spent.

mod code;
mod policy;
mod stack;

pub use policy::{GrpcPolicy, PREVIOUS_RPC_ATTEMPTS};
pub use stack::{DEFAULT_GRPC_REPLAY_LIMIT, GrpcRetry, GrpcRetryLayer, IntoTonicRequest};

#[doc(no_inline)]
pub use tonic::Code;
