//! [`ReplayService`]: buffers each request body so that it can be replayed.

use super::future::{Start, start};
use super::{DEFAULT_REPLAY_LIMIT, ReplayBody, ReplayFuture};
use crate::BoxError;
use bytes::Bytes;
use http::Request;
use http_body::Body;
use std::mem;
use std::task::{Context, Poll};
use tower_service::Service;

/// Reads each request body into memory, up to a limit, and calls the inner
/// service with a [`ReplayBody`].
///
/// A body within the limit becomes replayable: a retry layer below this one
/// copies the request with [`replay_request`](super::replay_request) for
/// every attempt. A larger body is still sent, once, without losing a byte.
/// See the [module docs](super) for the rules.
///
/// Responses and errors are the inner service's, untouched.
///
/// # Readiness
///
/// `poll_ready` is the inner service's, and the instance that became ready
/// is the one that sends the request.
///
/// When `call` runs inside a tokio task (as in any hyper, axum or tonic
/// server or client task), it polls the body once, without a waker of its
/// own, and reads the frames that are ready. A body already in memory
/// (`Full`, `ReplayBody::full`, a body that has arrived) ends there, and the
/// ready instance is called at once. Otherwise (a body still arriving, or
/// `call` outside a task) the response future reads the body, and takes
/// the ready instance along, leaving a clone behind: the inner service is
/// `Clone` for this reason.
#[derive(Clone, Debug)]
pub struct ReplayService<S> {
    inner: S,
    limit: usize,
}

impl<S> ReplayService<S> {
    /// Wraps `inner`, buffering bodies of up to [`DEFAULT_REPLAY_LIMIT`]
    /// bytes.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// Buffers bodies of up to `limit` bytes instead.
    pub const fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The most bytes a body may have and still be replayed.
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for ReplayService<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ReplayFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match start(req, self.limit) {
            Start::Ready(req) => ReplayFuture::calling(self.inner.call(req)),
            Start::Pending(buffer) => {
                // The ready instance goes with this request; a clone stays
                // behind for the next `poll_ready`.
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                ReplayFuture::buffering(ready, buffer)
            }
        }
    }
}
