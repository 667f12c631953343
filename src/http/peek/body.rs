//! [`PeekBody`]: a response body whose first bytes may already have been
//! read, and which gives them back.

use crate::BoxError;
use crate::http::frames::{add_hint, at_least};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::error::Error as StdError;
use std::fmt;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The response body that [`PeekService`](super::PeekService) returns.
    ///
    /// Either a **passthrough** (a success response: the inner body, frame by
    /// frame, nothing buffered) or a **peeked** body (a non-success response:
    /// its first bytes were read so that a retry policy could classify them).
    /// A peeked body yields its [`prefix`](Self::prefix) first, then the rest
    /// of the original body, then its trailers, so the caller receives every
    /// byte. An error met during the peek is kept: it is visible through
    /// [`peek_error`](Self::peek_error) and the caller receives it after the
    /// prefix.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Layer, ServiceExt, service_fn};
    /// use tower_ollama_retry::BoxError;
    /// use tower_ollama_retry::http::PeekLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ollama = service_fn(|_req: http::Request<()>| async {
    ///     let body = Full::new(Bytes::from_static(br#"{"error":"model requires more system memory"}"#));
    ///     Ok::<_, BoxError>(http::Response::builder().status(500).body(body).unwrap())
    /// });
    /// let res = PeekLayer::new().layer(ollama).oneshot(http::Request::new(())).await.unwrap();
    ///
    /// // A classifier can read the error text without consuming the body...
    /// let body = res.body();
    /// assert!(body.is_complete());
    /// assert!(body.prefix().starts_with(br#"{"error":"#));
    ///
    /// // ...and the caller still receives all of it.
    /// let all = res.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(all, br#"{"error":"model requires more system memory"}"#.as_slice());
    /// # }
    /// ```
    pub struct PeekBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough {
            #[pin]
            body: B,
        },
        // Boxed: only a failed response is peeked, and every response
        // through the layer (most of them successes) carries this body
        // inline, so a large variant would widen each one.
        Peeked { peeked: Box<Peeked<B>> },
    }
}

/// The state of a body that was peeked.
struct Peeked<B> {
    // The bytes read during the peek, kept whole for `prefix()`.
    prefix: Bytes,
    prefix_sent: bool,
    // The part of the last frame read that did not fit the limit.
    pending: Option<Bytes>,
    complete: bool,
    rest: Rest<B>,
}

impl<B> Peeked<B> {
    /// The bytes still queued before the rest of the body.
    fn queued(&self) -> u64 {
        let prefix = if self.prefix_sent {
            0
        } else {
            self.prefix.len()
        };
        (prefix as u64).saturating_add(self.pending.as_ref().map_or(0, |p| p.len() as u64))
    }
}

/// What follows the prefix of a peeked body.
pub(super) enum Rest<B> {
    /// The unread part of the original body. Boxed because it was polled
    /// (pinned) during the peek.
    Body(Pin<Box<B>>),
    /// The trailers read during the peek.
    Trailers(HeaderMap),
    /// The error met during the peek.
    Error(BoxError),
    Done,
}

impl<B> PeekBody<B> {
    /// `body`, passed through as it is.
    pub fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    /// A peeked body: `prefix`, then `pending`, then `rest`.
    pub(super) fn peeked(
        prefix: Bytes,
        pending: Option<Bytes>,
        complete: bool,
        rest: Rest<B>,
    ) -> Self {
        Self {
            kind: Kind::Peeked {
                peeked: Box::new(Peeked {
                    prefix,
                    prefix_sent: false,
                    pending,
                    complete,
                    rest,
                }),
            },
        }
    }

    /// The bytes read during the peek, in one slice: empty for a passthrough
    /// body. At most the peek limit long. It stays available after the body
    /// has been read.
    pub fn prefix(&self) -> &[u8] {
        match &self.kind {
            Kind::Passthrough { .. } => &[],
            Kind::Peeked { peeked } => &peeked.prefix,
        }
    }

    /// Whether the whole body was read during the peek: it ended (or ran
    /// out at exactly the limit) without error, so [`prefix`](Self::prefix)
    /// is all of its data. `false` for a passthrough body.
    pub fn is_complete(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { .. } => false,
            Kind::Peeked { peeked } => peeked.complete,
        }
    }

    /// Whether this is a passthrough body, which was not peeked.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.kind, Kind::Passthrough { .. })
    }

    /// The error the body failed with during the peek, if it did: a
    /// classifier can treat it as a transport error. It is handed to the
    /// caller after the prefix, so this returns `None` once the caller has
    /// read that far.
    pub fn peek_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.kind {
            Kind::Peeked { peeked } => match &peeked.rest {
                Rest::Error(e) => Some(&**e),
                _ => None,
            },
            Kind::Passthrough { .. } => None,
        }
    }
}

impl<B> Body for PeekBody<B>
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
            KindProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Peeked { peeked } => {
                let peeked = &mut **peeked;
                if !peeked.prefix_sent {
                    peeked.prefix_sent = true;
                    if !peeked.prefix.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(peeked.prefix.clone()))));
                    }
                }
                if let Some(data) = peeked.pending.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match mem::replace(&mut peeked.rest, Rest::Done) {
                    Rest::Body(mut body) => {
                        let polled = body.as_mut().poll_frame(cx).map_err(Into::into);
                        peeked.rest = Rest::Body(body);
                        polled
                    }
                    Rest::Trailers(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Rest::Error(error) => Poll::Ready(Some(Err(error))),
                    Rest::Done => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Peeked { peeked } => {
                peeked.queued() == 0
                    && match &peeked.rest {
                        Rest::Body(body) => body.is_end_stream(),
                        Rest::Trailers(_) | Rest::Error(_) => false,
                        Rest::Done => true,
                    }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Peeked { peeked } => match &peeked.rest {
                Rest::Body(body) => add_hint(body.size_hint(), peeked.queued()),
                Rest::Trailers(_) | Rest::Done => SizeHint::with_exact(peeked.queued()),
                // The error ends the body early: how early is unknown.
                Rest::Error(_) => at_least(peeked.queued()),
            },
        }
    }
}

/// A body built from bytes is a pass-through body: what
/// [`RespondOnError`](crate::http::RespondOnError) answers with under a
/// [`PeekLayer`](super::PeekLayer).
impl<B: From<Bytes>> From<Bytes> for PeekBody<B> {
    fn from(bytes: Bytes) -> Self {
        Self::passthrough(B::from(bytes))
    }
}

impl<B> fmt::Debug for PeekBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Passthrough { .. } => f
                .debug_struct("PeekBody")
                .field("kind", &"passthrough")
                .finish(),
            Kind::Peeked { peeked } => f
                .debug_struct("PeekBody")
                .field("kind", &"peeked")
                .field("prefix_len", &peeked.prefix.len())
                .field("complete", &peeked.complete)
                .field("errored", &matches!(peeked.rest, Rest::Error(_)))
                .finish(),
        }
    }
}
