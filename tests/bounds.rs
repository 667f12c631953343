//! Compile-time proof that the layer, the service and its future fit where
//! tower users put them: `ServiceBuilder`, `Buffer`, `BoxCloneService`,
//! and anything that needs `Clone + Send + Sync` layers and `Send` futures.

use std::time::Duration;
use tower::Layer;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ollama_retry::backoff::{Constant, Exponential, Jitter, Linear};
use tower_ollama_retry::{
    BoxError, OllamaError, OllamaPolicy, Retry, RetryError, RetryLayer, future::ResponseFuture,
};

fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn layers_policies_and_backoffs_are_clone_send_sync() {
    clone_send_sync::<RetryLayer<OllamaPolicy>>();
    clone_send_sync::<RetryLayer<OllamaPolicy<tower_ollama_retry::ollama::Plain>>>();
    clone_send_sync::<OllamaPolicy>();
    clone_send_sync::<Linear>();
    clone_send_sync::<Constant>();
    clone_send_sync::<Exponential>();
    clone_send_sync::<Jitter<Exponential>>();
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<RetryError>();
}

type Inner = BoxCloneService<String, String, OllamaError>;
type Plain = OllamaPolicy<tower_ollama_retry::ollama::Plain>;

#[test]
fn the_response_future_is_send() {
    fn future_is_send<F: Send>() {}
    future_is_send::<ResponseFuture<Inner, Plain, String>>();
    clone_send_sync::<Retry<tower::util::BoxCloneSyncService<String, String, OllamaError>, Plain>>(
    );
}

#[tokio::test(start_paused = true)]
async fn inside_service_builder_buffer_and_box_clone_service() {
    let inner = tower::service_fn(|p: String| async move { Ok::<_, OllamaError>(p + "!") });
    let svc = ServiceBuilder::new()
        .buffer(8)
        .layer(RetryLayer::new(OllamaPolicy::plain()))
        .timeout(Duration::from_secs(600))
        .service(inner);
    let mut boxed: BoxCloneService<String, String, BoxError> = BoxCloneService::new(svc);
    let fut = boxed.ready().await.unwrap().call("hi".into());
    send(&fut);
    assert_eq!(fut.await.unwrap(), "hi!");

    // And the other way round: a Buffer of a Retry, spawned on another task.
    let retry =
        RetryLayer::new(OllamaPolicy::plain()).layer(tower::service_fn(|p: String| async move {
            Ok::<_, OllamaError>(p.len())
        }));
    let buffered = tower::buffer::Buffer::new(retry, 4);
    let handle = tokio::spawn(buffered.clone().oneshot("four".into()));
    assert_eq!(handle.await.unwrap().unwrap(), 4);
}

/// A request may borrow from a local that is dropped before the response
/// future is (the future has no `Drop` of its own to forbid it).
#[test]
// Declared before the local on purpose: locals drop in reverse order.
#[allow(clippy::needless_late_init)]
fn a_request_may_borrow_a_local_dropped_before_the_future() {
    let mut svc = RetryLayer::new(OllamaPolicy::plain()).layer(tower::service_fn(|x: &str| {
        std::future::ready(Ok::<usize, tower_ollama_retry::BoxError>(x.len()))
    }));
    let future;
    let local = String::from("hi");
    future = svc.call(local.as_str());
    let _ = &future;
}

/// Every response through the peek layer carries a `PeekBody`, so a
/// pass-through one must be no wider than the body it wraps: the peeked
/// state of a failed response lives behind a box.
#[cfg(feature = "http")]
#[test]
fn a_pass_through_peek_body_is_as_small_as_its_body() {
    use tower_ollama_retry::http::PeekBody;
    type Full = http_body_util::Full<bytes::Bytes>;
    assert_eq!(
        size_of::<http::Response<PeekBody<hyper::body::Incoming>>>(),
        size_of::<http::Response<hyper::body::Incoming>>()
    );
    assert!(size_of::<PeekBody<Full>>() <= size_of::<Full>() + 8);
}

/// Every request through the replay layer, and its replay copy, carries a
/// `ReplayBody`: its rare states are boxed, so it is a buffer and a word or
/// two.
#[cfg(feature = "http")]
#[test]
fn a_replay_body_is_a_buffer_and_a_word_or_two() {
    use tower_ollama_retry::http::ReplayBody;
    type Full = http_body_util::Full<bytes::Bytes>;
    assert!(size_of::<ReplayBody<Full>>() <= size_of::<bytes::Bytes>() + 16);
    assert!(size_of::<ReplayBody<hyper::body::Incoming>>() <= size_of::<bytes::Bytes>() + 16);
}
