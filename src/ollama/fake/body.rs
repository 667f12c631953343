//! The response body: a list of chunks sent with an optional gap between
//! them, that either ends cleanly or breaks the connection.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// How long a breaking body waits after its last chunk, so that hyper
/// flushes the chunk to the socket before the connection is torn down.
const FLUSH_PAUSE: Duration = Duration::from_millis(10);

/// The error a breaking body yields; hyper then closes the connection.
#[derive(Debug)]
pub(crate) struct ClosedMidBody;

impl fmt::Display for ClosedMidBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake Ollama closed the connection mid-body")
    }
}

impl std::error::Error for ClosedMidBody {}

/// The body of every answer the fake sends.
pub(crate) struct FakeBody {
    chunks: VecDeque<Bytes>,
    gap: Duration,
    /// A timer to wait out before the next frame.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether the next chunk must wait for `gap` first.
    wait_before_next: bool,
    /// End with an error (after a short pause) instead of cleanly.
    break_at_end: bool,
    paused: bool,
    /// Report an exact size, so that hyper sends `content-length`.
    exact: bool,
}

impl FakeBody {
    /// A body sent in one piece, with a `content-length`.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let mut body = Self::chunks(vec![bytes], Duration::ZERO);
        body.exact = true;
        body
    }

    /// A streamed body (chunked transfer encoding), `gap` between chunks.
    pub(crate) fn chunks(chunks: Vec<Bytes>, gap: Duration) -> Self {
        FakeBody {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            gap,
            sleep: None,
            wait_before_next: false,
            break_at_end: false,
            paused: false,
            exact: false,
        }
    }

    /// A body that sends `chunks` and then breaks the connection.
    pub(crate) fn breaking(chunks: Vec<Bytes>) -> Self {
        let mut body = Self::chunks(chunks, Duration::ZERO);
        body.break_at_end = true;
        body
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = ClosedMidBody;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClosedMidBody>>> {
        let this = &mut *self;
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            if this.wait_before_next && !this.chunks.is_empty() {
                this.wait_before_next = false;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.gap)));
                continue;
            }
            if let Some(chunk) = this.chunks.pop_front() {
                this.wait_before_next = !this.gap.is_zero();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if !this.break_at_end {
                return Poll::Ready(None);
            }
            if !this.paused {
                this.paused = true;
                this.sleep = Some(Box::pin(tokio::time::sleep(FLUSH_PAUSE)));
                continue;
            }
            return Poll::Ready(Some(Err(ClosedMidBody)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.break_at_end
    }

    fn size_hint(&self) -> SizeHint {
        let len: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        if self.exact {
            SizeHint::with_exact(len)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        }
    }
}

impl fmt::Debug for FakeBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeBody")
            .field("chunks", &self.chunks.len())
            .field("gap", &self.gap)
            .field("break_at_end", &self.break_at_end)
            .finish()
    }
}
