//! [`ReplayBody`]: a request body that is either buffered (and so can be
//! sent again) or streamed once.

use crate::BoxError;
use crate::http::frames::{Frames, add_hint, at_least, queued_len};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The request body that [`ReplayService`](super::ReplayService) hands to
    /// the service it wraps.
    ///
    /// It is one of two things:
    ///
    /// - **Buffered**: the whole body (and its trailers, if any) is held as
    ///   one [`Bytes`]. It is [replayable](Self::is_replayable):
    ///   [`try_clone`](Self::try_clone) is a reference-count bump, and every
    ///   copy yields byte-identical frames with an exact
    ///   [`size_hint`](Body::size_hint) (left open-ended when there are
    ///   trailers, so that HTTP/1 sends the body chunked, the only framing
    ///   that carries them).
    /// - **Streamed once**: the body was too large to buffer, or failed while
    ///   being read. It yields the bytes already read, then the rest of the
    ///   original body (or the error it failed with), in order and without
    ///   losing a byte. It is not replayable.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_ollama_retry::http::ReplayBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ReplayBody::<Full<Bytes>>::full(Bytes::from_static(b"{\"prompt\":\"hi\"}"));
    /// assert!(body.is_replayable());
    ///
    /// // Each copy sends the same bytes, however many times.
    /// let copy = body.try_clone().unwrap();
    /// let first = body.collect().await.unwrap().to_bytes();
    /// let second = copy.collect().await.unwrap().to_bytes();
    /// assert_eq!(first, second);
    /// assert_eq!(&first[..], b"{\"prompt\":\"hi\"}");
    /// # }
    /// ```
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        // The whole body, buffered: replayable.
        Full {
            data: Bytes,
            // Boxed: request trailers are rare, and every request (and its
            // replay copy) carries this body inline.
            trailers: Option<Box<HeaderMap>>,
            next: Next,
        },
        // Known to be too large before any byte was read: sent as it is.
        Stream {
            #[pin]
            body: B,
        },
        // Went over the limit while being read: the frames read, then the rest.
        // The body is boxed because it was polled (pinned) while being read.
        Resumed {
            read: VecDeque<Bytes>,
            body: Pin<Box<B>>,
        },
        // Failed while being read: the frames read, then the error. Boxed,
        // as the rarest state, so that it does not widen the others.
        Failed { failed: Box<Failed> },
    }
}

/// A body that failed while being read for replay.
struct Failed {
    read: VecDeque<Bytes>,
    error: Option<BoxError>,
}

/// Where a buffered body is in its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Data,
    Trailers,
    End,
}

impl<B> ReplayBody<B> {
    /// A replayable body of `bytes`.
    pub fn full(bytes: Bytes) -> Self {
        Self::buffered(bytes, None)
    }

    /// A replayable empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A replayable body of `data` followed by `trailers`.
    pub(super) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data,
                trailers: trailers.map(Box::new),
                next: Next::Data,
            },
        }
    }

    /// `body`, sent as it is, once.
    pub(super) fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    /// The frames already read from `body`, then the rest of it, once.
    pub(super) fn resumed(read: Frames, body: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Resumed {
                read: read.into_iter().collect(),
                body,
            },
        }
    }

    /// The frames read before a body failed, then its error, once.
    pub(super) fn failed(read: Frames, error: BoxError) -> Self {
        Self {
            kind: Kind::Failed {
                failed: Box::new(Failed {
                    read: read.into_iter().collect(),
                    error: Some(error),
                }),
            },
        }
    }

    /// Whether this body is buffered, so that [`try_clone`](Self::try_clone)
    /// returns a copy.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }

    /// The buffered bytes, or `None` when the body is streamed once. A
    /// recovery hook reads the request's JSON from here.
    pub fn buffered_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full { data, .. } => Some(data),
            _ => None,
        }
    }

    /// A copy of the whole buffered body, from its first byte, or `None` when
    /// the body is streamed once.
    ///
    /// Cheap: the data is shared, not copied (trailers, if any, are cloned).
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Full { data, trailers, .. } => Some(Self {
                kind: Kind::Full {
                    data: data.clone(),
                    trailers: trailers.clone(),
                    next: Next::Data,
                },
            }),
            _ => None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full {
                data,
                trailers,
                next,
            } => {
                if *next == Next::Data {
                    *next = Next::Trailers;
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                    }
                }
                if *next == Next::Trailers {
                    *next = Next::End;
                    if let Some(trailers) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(HeaderMap::clone(trailers)))));
                    }
                }
                Poll::Ready(None)
            }
            KindProj::Stream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Resumed { read, body } => match read.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => body.as_mut().poll_frame(cx).map_err(Into::into),
            },
            KindProj::Failed { failed } => match failed.read.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None => Poll::Ready(failed.error.take().map(Err)),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full {
                data,
                trailers,
                next,
            } => match next {
                Next::Data => data.is_empty() && trailers.is_none(),
                Next::Trailers => trailers.is_none(),
                Next::End => true,
            },
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Resumed { read, body } => read.is_empty() && body.is_end_stream(),
            Kind::Failed { failed } => failed.read.is_empty() && failed.error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full {
                data,
                trailers,
                next,
            } => match next {
                // With trailers the hint is left open: HTTP/1 sends trailers
                // only in a chunked body, and hyper picks `content-length`
                // framing for a body of exact size.
                Next::Data if trailers.is_some() => at_least(data.len() as u64),
                Next::Data => SizeHint::with_exact(data.len() as u64),
                Next::Trailers | Next::End => SizeHint::with_exact(0),
            },
            Kind::Stream { body } => body.size_hint(),
            Kind::Resumed { read, body } => add_hint(body.size_hint(), queued_len(read)),
            // The error ends the body early: how early is unknown.
            Kind::Failed { failed } => match failed.error {
                Some(_) => at_least(queued_len(&failed.read)),
                None => SizeHint::with_exact(queued_len(&failed.read)),
            },
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        match &self.kind {
            Kind::Full { data, trailers, .. } => d
                .field("kind", &"buffered")
                .field("len", &data.len())
                .field("trailers", &trailers.is_some()),
            Kind::Stream { .. } => d.field("kind", &"stream"),
            Kind::Resumed { read, .. } => d
                .field("kind", &"resumed")
                .field("pending", &queued_len(read)),
            Kind::Failed { failed } => d
                .field("kind", &"failed")
                .field("pending", &queued_len(&failed.read)),
        };
        d.finish()
    }
}

impl<B> Default for ReplayBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}
