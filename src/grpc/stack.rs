//! [`GrpcRetryLayer`]: replay and retry for services of `tonic::body::Body`.

use crate::http::{ReplayBody, ReplayLayer, ReplayService};
use crate::{Retry, RetryLayer};
use http::Request;
use tonic::body::Body;
use tower::util::{MapRequest, MapRequestLayer};
use tower_layer::Layer;

/// The default most request-body bytes buffered for replay: 4 MiB and
/// 5 bytes, one message of the largest size a tonic server accepts by
/// default (`max_decoding_message_size`) with its 5-byte gRPC frame
/// header. Any unary request such a server would take is replayable.
pub const DEFAULT_GRPC_REPLAY_LIMIT: usize = 4 * 1024 * 1024 + 5;

/// What [`GrpcRetryLayer`] puts below the retry layer: it hands the replayed
/// request on as a `tonic::body::Body` again.
pub type IntoTonicRequest = fn(Request<ReplayBody<Body>>) -> Request<Body>;

/// The service [`GrpcRetryLayer`] makes of `S`: a [`ReplayService`] around a
/// [`Retry`] around a [`MapRequest`] back to `tonic::body::Body` around `S`.
///
/// Name it to store a client: `HealthClient<GrpcRetry<Channel, GrpcPolicy>>`.
pub type GrpcRetry<S, P> = ReplayService<Retry<MapRequest<S, IntoTonicRequest>, P>>;

fn into_tonic_request(req: Request<ReplayBody<Body>>) -> Request<Body> {
    req.map(Body::new)
}

/// The gRPC retry stack as one layer, for a tonic
/// [`Channel`](tonic::transport::Channel) or tonic's `Server::layer`:
///
/// ```text
///  ReplayLayer              buffers the request body (the encoded messages), once per call
///   └─ RetryLayer(policy)   replays Request<ReplayBody<Body>>, classifies each attempt
///       └─ MapRequest       Request<ReplayBody<Body>> → Request<tonic::body::Body>
///           └─ your service (a Channel, tonic's routes)
/// ```
///
/// `tonic::body::Body` is a stream that is not `Clone`, so the
/// [`ReplayLayer`] above the retry layer reads it into memory first, up to
/// [`DEFAULT_GRPC_REPLAY_LIMIT`] (see
/// [`with_replay_limit`](Self::with_replay_limit)); the retry loop then
/// copies the request by a reference-count bump, and each attempt wraps its
/// copy in a fresh `Body` for the service below. Unary calls and
/// client-streaming calls whose stream ends within the limit are replayed;
/// a bigger request is sent once and its first result comes back
/// ([`Reason::NotReplayable`](crate::Reason::NotReplayable)).
///
/// The layer is `Clone + Send + Sync` when the policy is. Its error type is
/// [`RetryError`](crate::RetryError); a tonic client turns it into a
/// [`Status`](tonic::Status) by the error it wraps (a refused connection
/// becomes `UNAVAILABLE`).
///
/// **Streams that wait for the server** (a bidirectional call that sends
/// its next message only after a reply, or a long-lived client stream) must
/// not go through this layer: the body is read until it ends or passes the
/// limit before the first attempt is sent, so such a call would stall. Give
/// them a clone of the plain `Channel` (clones are cheap and share the
/// connection).
///
/// # Example
///
/// An in-process stand-in for a `Channel` that fails once:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_ollama_retry::{BoxError, Report, backoff::Constant};
/// use tower_ollama_retry::grpc::{GrpcPolicy, GrpcRetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let channel = service_fn(move |req: http::Request<tonic::body::Body>| {
///     let n = seen.fetch_add(1, Ordering::SeqCst);
///     async move {
///         // Every attempt sends the same encoded message.
///         let body = req.into_body().collect().await?.to_bytes();
///         assert_eq!(&body[..], b"\0\0\0\0\x02hi");
///         let status = if n == 0 { "14" } else { "0" };
///         let res = http::Response::builder()
///             .header("content-type", "application/grpc")
///             .header("grpc-status", status)
///             .body(tonic::body::Body::empty())?;
///         Ok::<_, BoxError>(res)
///     }
/// });
/// let svc = ServiceBuilder::new()
///     .layer(GrpcRetryLayer::new(
///         GrpcPolicy::new().with_backoff(Constant::new(Duration::from_millis(1))),
///     ))
///     .service(channel);
///
/// let message = Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"));
/// let req = http::Request::post("http://127.0.0.1:50051/echo.Echo/Say")
///     .body(tonic::body::Body::new(message))
///     .unwrap();
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.headers()["grpc-status"], "0");
/// assert_eq!(res.extensions().get::<Report>().unwrap().attempts(), 2);
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GrpcRetryLayer<P> {
    replay: ReplayLayer,
    retry: RetryLayer<P>,
}

impl<P> GrpcRetryLayer<P> {
    /// The stack with `policy`, buffering up to
    /// [`DEFAULT_GRPC_REPLAY_LIMIT`] bytes per call.
    pub fn new(policy: P) -> Self {
        Self {
            replay: ReplayLayer::new().with_limit(DEFAULT_GRPC_REPLAY_LIMIT),
            retry: RetryLayer::new(policy),
        }
    }

    /// The most request-body bytes (encoded messages with their 5-byte
    /// frame headers) buffered for replay. A larger request is sent once.
    pub fn with_replay_limit(mut self, limit: usize) -> Self {
        self.replay = self.replay.with_limit(limit);
        self
    }

    /// The most request-body bytes buffered for replay.
    pub fn replay_limit(&self) -> usize {
        self.replay.limit()
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        self.retry.policy()
    }
}

impl<S, P: Clone> Layer<S> for GrpcRetryLayer<P> {
    type Service = GrpcRetry<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        let unwrap = MapRequestLayer::new(into_tonic_request as IntoTonicRequest);
        self.replay.layer(self.retry.layer(unwrap.layer(inner)))
    }
}
