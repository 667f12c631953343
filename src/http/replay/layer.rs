//! [`ReplayLayer`]: wraps services in [`ReplayService`].

use super::{DEFAULT_REPLAY_LIMIT, ReplayService};
use tower_layer::Layer;

/// Wraps services in [`ReplayService`], which buffers request bodies so
/// that they can be sent again.
///
/// Put it *outside* the retry layer, so that a body is read once per
/// request, not once per attempt. `Clone + Send + Sync`.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, StreamBody};
/// use http_body::Frame;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_ollama_retry::BoxError;
/// use tower_ollama_retry::http::{ReplayBody, ReplayLayer, replay_request};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// type Chunks = StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;
///
/// let svc = ServiceBuilder::new()
///     .layer(ReplayLayer::new().with_limit(1024))
///     .service(service_fn(|req: http::Request<ReplayBody<Chunks>>| async move {
///         // The body arrives buffered: a retry could send it again.
///         let again = replay_request(&req).expect("within the limit");
///         let length = req.headers()["content-length"].clone();
///         let first = req.into_body().collect().await?.to_bytes();
///         let second = again.into_body().collect().await?.to_bytes();
///         assert_eq!(first, second);
///         Ok::<_, BoxError>((length, first))
///     }));
///
/// // A streaming body of two chunks and no length.
/// let chunks: Vec<Result<_, BoxError>> =
///     vec![Ok(Frame::data(Bytes::from("hello, "))), Ok(Frame::data(Bytes::from("world")))];
/// let req = http::Request::post("http://127.0.0.1:11434/api/generate")
///     .body(StreamBody::new(futures_util::stream::iter(chunks)))
///     .unwrap();
///
/// let (length, body) = svc.oneshot(req).await.unwrap();
/// assert_eq!(length, "12");
/// assert_eq!(body, "hello, world");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ReplayLayer {
    limit: usize,
}

impl ReplayLayer {
    /// A layer that buffers bodies of up to [`DEFAULT_REPLAY_LIMIT`] bytes.
    pub const fn new() -> Self {
        Self {
            limit: DEFAULT_REPLAY_LIMIT,
        }
    }

    /// Buffers bodies of up to `limit` bytes instead. A larger body is sent
    /// once and not retried.
    pub const fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The most bytes a body may have and still be replayed.
    pub const fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for ReplayLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ReplayLayer {
    type Service = ReplayService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayService::new(inner).with_limit(self.limit)
    }
}
