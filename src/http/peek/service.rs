//! [`PeekService`]: reads the first bytes of each non-success response.

use super::{DEFAULT_PEEK_LIMIT, DEFAULT_PEEK_TIMEOUT, PeekBody, PeekFuture};
use crate::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// Reads up to a limit of each non-success response's body before handing
/// the response on, so that a retry policy above it can classify the error
/// by its text.
///
/// A success (2xx) response passes through untouched, frame by frame, with
/// nothing buffered. Any other response comes back once its
/// [`PeekBody`] holds the body's first bytes (or all of it); the caller still
/// receives every byte. See the [module docs](super).
///
/// Errors are the inner service's, untouched. Unlike
/// [`ReplayService`](crate::http::ReplayService), the inner service need not
/// be `Clone`: it is called at once.
#[derive(Clone, Debug)]
pub struct PeekService<S> {
    inner: S,
    limit: usize,
    timeout: Duration,
}

impl<S> PeekService<S> {
    /// Wraps `inner`, peeking at up to [`DEFAULT_PEEK_LIMIT`] bytes.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            limit: DEFAULT_PEEK_LIMIT,
            timeout: DEFAULT_PEEK_TIMEOUT,
        }
    }

    /// Peeks at up to `limit` bytes instead; `0` turns peeking off.
    pub const fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The most bytes a peek reads.
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// Gives up reading a failed response's body after `timeout` (default
    /// [`DEFAULT_PEEK_TIMEOUT`]): the peek runs above a per-attempt timeout,
    /// so without its own bound a stalled error body would hang the request.
    /// A stalled peek counts as a broken body (a transport failure).
    pub const fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a peek may take.
    pub const fn timeout(&self) -> Duration {
        self.timeout
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

impl<S, ReqB, B> Service<Request<ReqB>> for PeekService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<PeekBody<B>>;
    type Error = S::Error;
    type Future = PeekFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        PeekFuture::new(self.inner.call(req), self.limit, self.timeout)
    }
}
