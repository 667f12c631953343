//! [`PeekFuture`]: call the inner service, then read the first bytes of a
//! non-success response.
//!
//! ```text
//!  Calling ──(error, or 2xx)───────────────────────────────► done (passthrough)
//!     └────(non-success)──► Peeking ──(limit, end or error)──► done (peeked)
//! ```

use super::PeekBody;
use super::body::Rest;
use crate::BoxError;
use crate::http::frames::{Frames, concat};
use bytes::Bytes;
use http::{HeaderMap, Response, response::Parts};
use http_body::Body;
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

pin_project! {
    /// The response future of [`PeekService`](super::PeekService).
    ///
    /// It awaits the inner call; a success (2xx) response comes back at once
    /// with a passthrough body. For any other status it reads body frames
    /// until the limit is reached, the body ends or it fails, and then
    /// returns the response with a [`PeekBody`] that gives those bytes back
    /// first. The inner service's error comes back untouched.
    ///
    /// A named state machine, `Send` when the inner future and the body are.
    /// Dropping it while peeking drops the response.
    pub struct PeekFuture<F, B> {
        #[pin]
        state: State<F, B>,
        limit: usize,
        timeout: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<F, B> {
        Calling { #[pin] future: F },
        // Boxed: only a failed response is peeked, and every request's
        // future would otherwise carry room for one (about 200 bytes).
        Peeking { peek: Box<Peek<B>> },
        Done,
    }
}

/// A non-success response whose body is being read.
struct Peek<B> {
    parts: Parts,
    // Boxed so that it can be polled here and still be moved into the
    // `PeekBody` afterwards.
    body: Pin<Box<B>>,
    frames: Frames,
    len: usize,
    limit: usize,
    // The peek's own bound: it runs above any per-attempt timeout, so a
    // stalled error body must not hang the request. `None` outside tokio.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

/// How the peek ended.
enum Outcome {
    /// The body ended (with these trailers, if any).
    End(Option<HeaderMap>),
    /// The limit was reached; the part of the last frame beyond it.
    Limit(Option<Bytes>),
    Error(BoxError),
}

impl<F, B> PeekFuture<F, B> {
    pub(super) fn new(future: F, limit: usize, timeout: Duration) -> Self {
        Self {
            state: State::Calling { future },
            limit,
            timeout,
        }
    }
}

impl<B> Peek<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Reads frames until the limit is reached, or the body ends or fails.
    /// `len < limit` on entry.
    fn poll_peek(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            let frame = match self.body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if let Some(timer) = &mut self.timer {
                        ready!(timer.as_mut().poll(cx));
                        return Poll::Ready(Outcome::Error(
                            format!(
                                "the response body stalled: {} bytes read in {:?}",
                                self.len, self.timeout
                            )
                            .into(),
                        ));
                    }
                    return Poll::Pending;
                }
            };
            let frame = match frame {
                None => return Poll::Ready(Outcome::End(None)),
                Some(Err(e)) => return Poll::Ready(Outcome::Error(e.into())),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let room = self.limit.saturating_sub(self.len);
                    if data.len() >= room {
                        // Split the frame at the limit: no copy, and the
                        // prefix is exactly `limit` bytes.
                        let beyond = data.split_off(room);
                        self.push(data);
                        if beyond.is_empty() && self.body.is_end_stream() {
                            return Poll::Ready(Outcome::End(None));
                        }
                        return Poll::Ready(Outcome::Limit((!beyond.is_empty()).then_some(beyond)));
                    }
                    self.push(data);
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers are a body's last frame.
                        return Poll::Ready(Outcome::End(Some(trailers)));
                    }
                }
            }
            if self.body.is_end_stream() {
                return Poll::Ready(Outcome::End(None));
            }
        }
    }

    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if !data.is_empty() {
            self.frames.push(data);
        }
    }

    /// The response, with a body that gives back what was read.
    fn finish(self, outcome: Outcome) -> Response<PeekBody<B>> {
        let prefix = concat(self.frames, self.len);
        let body = match outcome {
            Outcome::End(trailers) => {
                let rest = trailers.map_or(Rest::Done, Rest::Trailers);
                PeekBody::peeked(prefix, None, true, rest)
            }
            Outcome::Limit(pending) => {
                PeekBody::peeked(prefix, pending, false, Rest::Body(self.body))
            }
            Outcome::Error(error) => {
                tracing::debug!(
                    status = self.parts.status.as_u16(),
                    read = prefix.len(),
                    error = %error,
                    "response body failed while being peeked"
                );
                PeekBody::peeked(prefix, None, false, Rest::Error(error))
            }
        };
        Response::from_parts(self.parts, body)
    }
}

impl<F, B, E> Future for PeekFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<PeekBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let res = ready!(future.poll(cx));
                    this.state.set(State::Done);
                    let res = match res {
                        Err(e) => return Poll::Ready(Err(e)),
                        Ok(res) => res,
                    };
                    if res.status().is_success() || *this.limit == 0 {
                        return Poll::Ready(Ok(res.map(PeekBody::passthrough)));
                    }
                    let (parts, body) = res.into_parts();
                    if body.is_end_stream() {
                        let body = PeekBody::peeked(Bytes::new(), None, true, Rest::Done);
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    let timer = tokio::runtime::Handle::try_current()
                        .is_ok()
                        .then(|| Box::pin(tokio::time::sleep(*this.timeout)));
                    let peek = Peek {
                        parts,
                        body: Box::pin(body),
                        frames: Frames::new(),
                        len: 0,
                        limit: *this.limit,
                        timer,
                        timeout: *this.timeout,
                    };
                    this.state.set(State::Peeking {
                        peek: Box::new(peek),
                    });
                }
                StateProj::Peeking { peek } => {
                    let outcome = ready!(peek.poll_peek(cx));
                    if let StateReplace::Peeking { peek } =
                        this.state.as_mut().project_replace(State::Done)
                    {
                        return Poll::Ready(Ok(peek.finish(outcome)));
                    }
                }
                StateProj::Done => panic!("tower_ollama_retry::PeekFuture polled after completion"),
            }
        }
    }
}

impl<F, B> fmt::Debug for PeekFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PeekFuture");
        match &self.state {
            State::Calling { .. } => d.field("state", &"calling"),
            State::Peeking { peek } => d
                .field("state", &"peeking")
                .field("status", &peek.parts.status)
                .field("read", &peek.len),
            State::Done => d.field("state", &"done"),
        };
        d.field("limit", &self.limit).finish()
    }
}
