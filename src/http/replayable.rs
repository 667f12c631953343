//! [`ReplayableBody`]: request bodies that can be copied for another attempt.

use super::ReplayBody;
use bytes::Bytes;
use http_body_util::{Empty, Full};

/// A request body that can be copied for another attempt.
///
/// [`replay_request`](super::replay_request) copies any `http::Request<B>`
/// whose body is one of these. [`ReplayBody`] (what [`ReplayLayer`](super::ReplayLayer)
/// produces) is the general one; bodies that are already in memory
/// (`Full`, `Empty`, `Bytes`, `String`, `Vec<u8>`) replay without it.
pub trait ReplayableBody: Sized {
    /// A copy of this body, or `None` when it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

impl<B> ReplayableBody for ReplayBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        self.try_clone()
    }
}

impl<D: Clone> ReplayableBody for Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayableBody for Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

macro_rules! cloned {
    ($($t:ty),*) => {$(
        impl ReplayableBody for $t {
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

cloned!(Bytes, String, Vec<u8>, ());

/// An axum body replays when it is empty (a `GET`, say); a body with content
/// needs [`ReplayLayer`](super::ReplayLayer) in front to be replayable.
#[cfg(feature = "axum")]
impl ReplayableBody for axum_core::body::Body {
    fn try_clone_body(&self) -> Option<Self> {
        http_body::Body::is_end_stream(self).then(axum_core::body::Body::empty)
    }
}
