//! [`ReplayFuture`]: read the request body, then call the inner service.
//!
//! ```text
//!  Buffering ──(end, within the limit)──► rebuild as buffered ──┐
//!      │    ──(over the limit)──────────► rebuild as resumed ───┼──► Calling
//!      │    ──(body error)──────────────► rebuild as failed ────┘
//!      └── skipped when the body is empty, known to be too large, or
//!          already in memory (read to its end in `call`)
//! ```

use super::ReplayBody;
use crate::BoxError;
use crate::http::frames::{Frames, concat};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, request::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tower_service::Service;

pin_project! {
    /// The response future of [`ReplayService`](super::ReplayService).
    ///
    /// It first reads the request body into memory, up to the service's
    /// limit, then calls the inner service with the rebuilt request and
    /// becomes that call's future. Its output is the inner service's, errors
    /// included: buffering itself never fails (a body error is handed on
    /// inside the body, see [`ReplayBody`]).
    ///
    /// A named state machine, `Send` when the service, its future and the
    /// body are. Dropping it while buffering drops the body and never calls
    /// the inner service.
    pub struct ReplayFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S, B, F> {
        // `service` is the ready instance that will send the request.
        Buffering { service: S, buffer: Buffer<B> },
        Calling { #[pin] future: F },
        // Only while moving from `Buffering` to `Calling`.
        Swapping,
    }
}

/// What [`start`] found: a request ready to send, or a body still to read.
pub(super) enum Start<B> {
    Ready(Request<ReplayBody<B>>),
    Pending(Buffer<B>),
}

/// The request being read.
pub(super) struct Buffer<B> {
    parts: Parts,
    // Boxed so that it can be polled here and still be moved into the
    // `ReplayBody` if it turns out to be too large.
    body: Pin<Box<B>>,
    frames: Frames,
    len: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    // The head's `content-length`, read once in `start`.
    declared: Option<u64>,
    set_length: bool,
}

/// How reading the body ended.
enum Filled {
    End,
    Over,
    Failed(BoxError),
}

/// Starts replaying `req`: as far as it gets without waiting.
///
/// An empty body, or one known to be over `limit`, needs no reading. Inside
/// a tokio task, any other body is read at once for as long as its frames
/// are ready (polled with a no-op waker, as `now_or_never` does): a body
/// already in memory, such as `Full`, ends here, and the request is sent
/// from `call` on the ready service itself, with no clone of it and no
/// buffering state. A body that is not ready is polled again, with the
/// task's waker, by the [`ReplayFuture`].
pub(super) fn start<B>(req: Request<B>, limit: usize) -> Start<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();

    // Nothing to read: no allocation, no wait.
    if body.is_end_stream() {
        return Start::Ready(Request::from_parts(parts, ReplayBody::empty()));
    }

    let hint = body.size_hint();
    let declared = declared_length(&parts.headers);
    let known = hint.lower().max(declared.unwrap_or(0));
    if known > limit as u64 {
        // Known to be too large: never buffered.
        warn_over_limit(limit);
        return Start::Ready(Request::from_parts(parts, ReplayBody::stream(body)));
    }

    // A body of unknown length gets the `content-length` it turns out to
    // have, so that every attempt has the same head. One that knew its
    // exact length keeps saying so through its size hint, from which hyper
    // writes the same header on every attempt: adding it here would only
    // allocate. The size hint is checked first: it costs no header lookup.
    let set_length = hint.exact().is_none()
        && !parts.headers.contains_key(CONTENT_LENGTH)
        && !parts.headers.contains_key(TRANSFER_ENCODING);
    let mut buffer = Buffer {
        parts,
        body: Box::pin(body),
        frames: Frames::new(),
        len: 0,
        trailers: None,
        limit,
        declared,
        set_length,
    };
    // Only inside a tokio task: a body may need the runtime to be polled
    // (a file, a socket), and tower lets `call` run anywhere. Outside one
    // (and in a `block_on`'s own future) the response future reads it.
    if tokio::task::try_id().is_none() {
        return Start::Pending(buffer);
    }
    match buffer.poll_fill(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(filled) => Start::Ready(buffer.into_request(filled)),
        Poll::Pending => Start::Pending(buffer),
    }
}

impl<S, B> ReplayFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// The future of a request sent at once.
    pub(super) fn calling(future: S::Future) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    /// The future of a request whose body is still being read; `service`
    /// is the ready instance that will send it.
    pub(super) fn buffering(service: S, buffer: Buffer<B>) -> Self {
        Self {
            state: State::Buffering { service, buffer },
        }
    }
}

impl<B> Buffer<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Reads frames until the body ends, fails or goes over the limit.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Filled> {
        loop {
            let frame = match ready!(self.body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(Filled::End),
                Some(Err(e)) => return Poll::Ready(Filled::Failed(e.into())),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    self.len = self.len.saturating_add(data.len());
                    if !data.is_empty() {
                        self.frames.push(data);
                    }
                    if self.len > self.limit {
                        return Poll::Ready(Filled::Over);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        match &mut self.trailers {
                            Some(all) => all.extend(trailers),
                            None => self.trailers = Some(trailers),
                        }
                    }
                    // Trailers are a body's last frame.
                    return Poll::Ready(Filled::End);
                }
            }
            if self.body.is_end_stream() {
                return Poll::Ready(Filled::End);
            }
        }
    }

    /// Rebuilds the request around what was read.
    fn into_request(mut self, filled: Filled) -> Request<ReplayBody<B>> {
        let body = match filled {
            // A declared length that is not the body's would be sent as is
            // and cut or stall the message on the wire: fail the request
            // with a clear error instead.
            Filled::End if self.declared.is_some_and(|n| n != self.len as u64) => {
                let declared = self.declared.unwrap_or_default();
                let error = format!(
                    "the request's content-length is {declared} but its body has {} bytes",
                    self.len
                );
                tracing::warn!("{error}");
                ReplayBody::failed(self.frames, error.into())
            }
            Filled::End => {
                // Every attempt then carries the same framing. Not with
                // trailers: HTTP/1 sends those only in a chunked body.
                if self.set_length && self.trailers.is_none() {
                    self.parts
                        .headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(self.len));
                }
                ReplayBody::buffered(concat(self.frames, self.len), self.trailers)
            }
            Filled::Over => {
                warn_over_limit(self.limit);
                ReplayBody::resumed(self.frames, self.body)
            }
            Filled::Failed(error) => {
                tracing::debug!(
                    read = self.len,
                    error = %error,
                    "request body failed while being buffered for replay"
                );
                ReplayBody::failed(self.frames, error)
            }
        };
        Request::from_parts(self.parts, body)
    }
}

impl<S, B> Future for ReplayFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let filled = match this.state.as_mut().project() {
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Buffering { buffer, .. } => ready!(buffer.poll_fill(cx)),
                StateProj::Swapping => {
                    panic!("tower_ollama_retry::ReplayFuture polled after its inner call panicked")
                }
            };
            if let StateReplace::Buffering {
                mut service,
                buffer,
            } = this.state.as_mut().project_replace(State::Swapping)
            {
                let future = service.call(buffer.into_request(filled));
                this.state.set(State::Calling { future });
            }
        }
    }
}

impl<S, B> fmt::Debug for ReplayFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Buffering { buffer, .. } => {
                return f
                    .debug_struct("ReplayFuture")
                    .field("state", &"buffering")
                    .field("read", &buffer.len)
                    .field("limit", &buffer.limit)
                    .finish();
            }
            State::Calling { .. } => "calling",
            State::Swapping => "swapping",
        };
        f.debug_struct("ReplayFuture")
            .field("state", &state)
            .finish()
    }
}

/// The `content-length` a request declares, if it is one valid number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

fn warn_over_limit(limit: usize) {
    tracing::warn!(
        limit,
        "request body exceeded the replay limit of {limit} bytes; it is sent once and will not be retried"
    );
}
