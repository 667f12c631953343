//! Tower middleware that retries calls by a pluggable policy, with CodeWorm's
//! Ollama retry semantics as the first policy.
//!
//! # The model
//!
//! [`RetryLayer`] wraps a service in [`Retry`]. After each attempt, its
//! [`Policy`] answers three questions, kept apart:
//!
//! 1. **Classify**: what was this outcome? A [`Decision`]: success, fail now,
//!    retry after a backoff, or recover and then retry.
//! 2. **Schedule**: how long to wait? A [`Backoff`] maps the [`Attempt`]
//!    context to a delay; a server hint (`Retry-After`) can replace it.
//! 3. **Recover**: an async [`Recover`] hook that runs before the next attempt;
//!    its error ends the request at once.
//!
//! Every attempt waits for `poll_ready`; the request is replayed by the
//! policy, and one that cannot be replayed comes back unchanged after its
//! first attempt. The final error, a [`RetryError`], says what failed last,
//! how many attempts were made and why the loop stopped.
//!
//! `tower::retry`'s single `retry` hook mixes classification, scheduling and
//! any async work, has no recovery step whose failure ends the request, and
//! sees a response only by reference, so it cannot read the body where Ollama
//! says why it failed. This crate keeps the three questions apart and reads a
//! bounded prefix of failed bodies while still streaming every byte on.
//!
//! # Example
//!
//! CodeWorm's loop over any service whose errors are [`OllamaError`]s:
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ollama_retry::{OllamaError, OllamaPolicy, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(OllamaPolicy::plain().with_retry_delay(Duration::from_millis(1))))
//!     .service(service_fn(|prompt: String| async move {
//!         Ok::<_, OllamaError>(format!("answer to {prompt}"))
//!     }));
//! assert_eq!(svc.oneshot("why".to_string()).await.unwrap(), "answer to why");
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `http` | yes | request replay and response peeking for `http` services, `HttpPolicy`, `Retry-After` |
//! | `ollama` | yes | `OllamaPolicy` over HTTP, `OllamaRecovery` |
//! | `test-util` | no | an embedded fake Ollama server for tests |
//! | `axum` | no | empty `axum::body::Body` requests replay without `ReplayLayer` |
//! | `tonic` | no | `GrpcPolicy` and replay for `tonic::body::Body` |

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod attempt;
pub mod backoff;
mod budget;
mod class;
mod classify;
mod common;
mod compose;
mod error;
pub mod future;
#[cfg(feature = "tonic")]
pub mod grpc;
pub mod hint;
#[cfg(feature = "http")]
pub mod http;
mod layer;
pub mod ollama;
mod policy;
mod recover;
mod report;
mod service;
mod settings;
mod stats;

pub use attempt::Attempt;
pub use backoff::Backoff;
pub use budget::{BudgetError, RetryBudget};
pub use class::{Class, ClassLimits, Decision, Failure};
pub use classify::{AsStdError, Classify, classify_fn};
pub use common::RetryEvent;
pub use compose::RetryPolicy;
pub use error::{Reason, RetryError};
pub use layer::RetryLayer;
pub use ollama::{OllamaError, OllamaErrorKind, OllamaPolicy};
pub use policy::{Finished, Policy};
pub use recover::{Recover, Recovered, recover_fn};
pub use report::{FailedAttempt, MAX_RECORDED_FAILURES, Report};
pub use service::Retry;
pub use stats::{Stats, StatsSnapshot};

// The README's Rust examples compile and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The boxed error type used across tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
