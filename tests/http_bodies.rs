//! Request replay and response peeking, in process (`service_fn` inner
//! services) and over real loopback HTTP/1 (a hyper server on 127.0.0.1 and
//! the hyper-util legacy client).

#![cfg(feature = "http")]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_ollama_retry::http::{
    DEFAULT_PEEK_LIMIT, DEFAULT_REPLAY_LIMIT, PeekBody, PeekFuture, PeekLayer, PeekService,
    ReplayBody, ReplayFuture, ReplayLayer, ReplayService, replay_request,
};
use tower_ollama_retry::{
    Attempt, BoxError, Class, Decision, Failure, Finished, Policy, RetryLayer,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The request body type the tests send: any body, boxed.
type ReqBody = BoxBody<Bytes, BoxError>;
/// The response body type the test servers send.
type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// A guard so that a broken test fails instead of hanging. Never a wait.
const GUARD: Duration = Duration::from_secs(10);

async fn guard<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("test timed out")
}

/// `len` bytes of a recognisable, non-repeating-per-KiB pattern.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body of these frames, with no size hint (a streaming body).
fn frames(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> ReqBody {
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// `total` bytes of `pattern` as a streaming body of `chunk`-byte frames.
fn chunked(total: usize, chunk: usize) -> (Bytes, ReqBody) {
    let data = pattern(total);
    let parts = (0..total)
        .step_by(chunk)
        .map(|at| Ok(Frame::data(data.slice(at..(at + chunk).min(total)))))
        .collect();
    (data, frames(parts))
}

fn res_body(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn res_frames(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> ResBody {
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// Reads a body frame by frame, keeping data, trailers and the first error
/// apart.
#[derive(Debug, Default)]
struct Drained {
    data: Vec<u8>,
    data_frames: usize,
    trailers: Option<HeaderMap>,
    error: Option<String>,
}

async fn drain<B>(mut body: B) -> Drained
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Drained::default();
    while let Some(frame) = guard(body.frame()).await {
        match frame {
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    out.data.extend_from_slice(&data);
                    out.data_frames += 1;
                }
                Err(frame) => out.trailers = frame.into_trailers().ok(),
            },
        }
    }
    out
}

fn client<B>() -> Client<HttpConnector, B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// Serves HTTP/1 on 127.0.0.1 with `handler`, until the test ends.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ResBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let reply = handler(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// What a recording server saw of one request.
#[derive(Debug)]
struct Seen {
    headers: HeaderMap,
    body: Result<Bytes, String>,
    trailers: Option<HeaderMap>,
}

/// A server that records every request and answers `200 ok`.
async fn recording_server() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let seen = match body.collect().await {
                Ok(collected) => Seen {
                    headers: parts.headers,
                    trailers: collected.trailers().cloned(),
                    body: Ok(collected.to_bytes()),
                },
                Err(e) => Seen {
                    headers: parts.headers,
                    trailers: None,
                    body: Err(e.to_string()),
                },
            };
            let _ = tx.send(seen);
            Response::new(res_body("ok"))
        }
    })
    .await;
    (addr, rx)
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A body that counts how often it is polled, to prove it was not read.
struct CountingBody {
    frames: VecDeque<Bytes>,
    polls: Arc<AtomicUsize>,
    hint: SizeHint,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(self.frames.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

// ---------------------------------------------------------------------------
// Static guarantees
// ---------------------------------------------------------------------------

fn assert_send<T: Send>() {}
fn assert_layer<T: Clone + Send + Sync + 'static>() {}

#[test]
fn layers_services_and_futures_are_send() {
    type C = Client<HttpConnector, ReplayBody<ReqBody>>;
    assert_layer::<ReplayLayer>();
    assert_layer::<PeekLayer>();
    assert_send::<ReplayService<C>>();
    assert_send::<ReplayFuture<C, ReqBody>>();
    assert_send::<ReplayBody<ReqBody>>();
    assert_send::<PeekService<C>>();
    assert_send::<PeekFuture<<C as Service<Request<ReplayBody<ReqBody>>>>::Future, Incoming>>();
    assert_send::<PeekBody<Incoming>>();
    assert_eq!(DEFAULT_REPLAY_LIMIT, 16 * 1024 * 1024);
    assert_eq!(DEFAULT_PEEK_LIMIT, 64 * 1024);
    assert_eq!(ReplayLayer::default().limit(), DEFAULT_REPLAY_LIMIT);
    assert_eq!(PeekLayer::default().with_limit(7).limit(), 7);
}

// ---------------------------------------------------------------------------
// Replay: in process
// ---------------------------------------------------------------------------

#[tokio::test]
async fn full_body_is_buffered_without_a_copy_and_replays() {
    let payload = pattern(4096);
    let expected = payload.clone();
    let svc = ReplayLayer::new().layer(service_fn(move |req: Request<ReplayBody<ReqBody>>| {
        let expected = expected.clone();
        async move {
            assert!(req.body().is_replayable());
            // The exact size hint carries the length (hyper writes the
            // header from it, as the loopback test below sees): no header
            // is added, and none allocated.
            assert_eq!(req.body().size_hint().exact(), Some(4096));
            assert!(!req.headers().contains_key("content-length"));
            for _ in 0..3 {
                let copy = replay_request(&req).unwrap();
                let got = drain(copy.into_body()).await;
                assert_eq!(got.data, expected);
                assert_eq!(got.data_frames, 1);
            }
            Ok::<_, BoxError>(())
        }
    }));
    let req = Request::post("/").body(full(payload)).unwrap();
    svc.oneshot(req).await.unwrap();
}

/// Records the requests it is called with, and counts its clones.
struct Counted {
    clones: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Bytes>>>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            clones: self.clones.clone(),
            seen: self.seen.clone(),
        }
    }
}

impl Service<Request<ReplayBody<ReqBody>>> for Counted {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody<ReqBody>>) -> Self::Future {
        let bytes = req.body().buffered_bytes().cloned().unwrap_or_default();
        self.seen.lock().unwrap().push(bytes);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_body_in_memory_is_read_in_call_and_sent_by_the_ready_instance() {
    // In a task, as a server's or a client's requests are.
    let tasks = tokio::task::LocalSet::new();
    tasks
        .run_until(async { tokio::task::spawn_local(read_in_call_in_a_task()).await })
        .await
        .unwrap();
}

async fn read_in_call_in_a_task() {
    let clones = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut svc = ReplayLayer::new().layer(Counted {
        clones: clones.clone(),
        seen: seen.clone(),
    });

    // `Full`: read to its end inside `call`, which calls the ready instance
    // at once. No clone of it, and the request is sent before the future
    // is even polled.
    svc.ready().await.unwrap();
    let future = svc.call(Request::post("/").body(full(pattern(4096))).unwrap());
    assert_eq!(seen.lock().unwrap().as_slice(), &[pattern(4096)]);
    future.await.unwrap();
    assert_eq!(clones.load(Ordering::SeqCst), 0);

    // A body whose frames are not ready yet: the future reads it, with the
    // ready instance it took along (one clone left behind), and sends it
    // only once the whole body is in.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
    svc.ready().await.unwrap();
    let future = svc.call(Request::post("/").body(body).unwrap());
    assert_eq!(clones.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "nothing sent before the body is in"
    );
    let sender = async move {
        tx.send(Ok(Frame::data(Bytes::from_static(b"late "))))
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"frames"))))
            .await
            .unwrap();
    };
    let ((), out) = guard(async { tokio::join!(sender, future) }).await;
    out.unwrap();
    assert_eq!(seen.lock().unwrap()[1], Bytes::from_static(b"late frames"));
}

/// A body that needs a tokio runtime to be polled, as a file's or a
/// socket's does.
struct NeedsRuntime(bool);

impl Body for NeedsRuntime {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Panics outside a runtime, as tokio's IO does.
        let _ = tokio::runtime::Handle::current();
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"from a file")))))
    }
}

#[test]
fn call_outside_a_runtime_leaves_the_body_to_the_future() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut svc = ReplayLayer::new().layer(service_fn(
        |req: Request<ReplayBody<NeedsRuntime>>| async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(body)
        },
    ));
    rt.block_on(svc.ready()).unwrap();
    // `call` here runs on a thread with no runtime: it must not poll the
    // body (which would panic); the future, awaited in the runtime, does.
    let future = svc.call(Request::post("/").body(NeedsRuntime(false)).unwrap());
    assert_eq!(rt.block_on(future).unwrap(), "from a file");
}

/// An `mpsc` receiver as a stream of frames.
fn tokio_stream_from<T>(mut rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn streaming_body_is_buffered_with_a_length() {
    let (data, body) = chunked(10_000, 1000);
    let svc =
        ReplayLayer::new().layer(service_fn(|req: Request<ReplayBody<ReqBody>>| async move {
            Ok::<_, BoxError>(req)
        }));
    let req = Request::post("/").body(body).unwrap();
    let req = svc.oneshot(req).await.unwrap();

    assert!(req.body().is_replayable());
    assert_eq!(req.headers()["content-length"], "10000");
    assert_eq!(req.body().size_hint().exact(), Some(10_000));
    assert!(!req.body().is_end_stream());
    let copy = replay_request(&req).unwrap();
    assert_eq!(copy.headers(), req.headers());
    let a = drain(req.into_body()).await;
    let b = drain(copy.into_body()).await;
    assert_eq!(a.data, data);
    assert_eq!(b.data, data);
    // Ten frames were joined into one.
    assert_eq!(a.data_frames, 1);
}

#[tokio::test]
async fn replay_copies_the_whole_head() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tag(u32);

    let svc =
        ReplayLayer::new().layer(service_fn(|req: Request<ReplayBody<ReqBody>>| async move {
            Ok::<_, BoxError>(req)
        }));
    let mut req = Request::put("http://127.0.0.1:1/x?y=z")
        .version(http::Version::HTTP_10)
        .header("x-one", "1")
        .header("x-one", "2")
        .body(full("abc"))
        .unwrap();
    req.extensions_mut().insert(Tag(7));
    let req = svc.oneshot(req).await.unwrap();
    let copy = replay_request(&req).unwrap();
    assert_eq!(copy.method(), http::Method::PUT);
    assert_eq!(copy.uri(), "http://127.0.0.1:1/x?y=z");
    assert_eq!(copy.version(), http::Version::HTTP_10);
    assert_eq!(copy.headers(), req.headers());
    assert_eq!(copy.headers().get_all("x-one").iter().count(), 2);
    assert_eq!(copy.extensions().get::<Tag>(), Some(&Tag(7)));
}

#[tokio::test]
async fn empty_body_is_not_read_and_gets_no_length() {
    let svc = ReplayLayer::new().layer(service_fn(
        |req: Request<ReplayBody<Empty<Bytes>>>| async move { Ok::<_, BoxError>(req) },
    ));
    let req = svc
        .oneshot(Request::get("/").body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert!(req.body().is_replayable());
    assert!(req.body().is_end_stream());
    assert!(!req.headers().contains_key("content-length"));
    assert!(drain(req.into_body()).await.data.is_empty());
}

#[tokio::test]
async fn a_wrong_declared_length_fails_the_request_clearly() {
    let svc =
        ReplayLayer::new().layer(service_fn(|req: Request<ReplayBody<ReqBody>>| async move {
            Ok::<_, BoxError>(req)
        }));
    let req = Request::post("/")
        .header("content-length", "10")
        .body(frames(vec![Ok(Frame::data(Bytes::from_static(b"12345")))]))
        .unwrap();
    let req = svc.oneshot(req).await.unwrap();
    // Sent as it came, once, and the body says what is wrong with it.
    assert_eq!(req.headers()["content-length"], "10");
    assert!(!req.body().is_replayable());
    let got = drain(req.into_body()).await;
    assert_eq!(got.data, b"12345");
    let error = got.error.expect("the body fails");
    assert_eq!(
        error.to_string(),
        "the request's content-length is 10 but its body has 5 bytes"
    );
}

#[tokio::test]
async fn one_byte_over_the_limit_streams_once_in_order() {
    let (data, body) = chunked(1025, 100);
    let svc = ReplayLayer::new().with_limit(1024).layer(service_fn(
        |req: Request<ReplayBody<ReqBody>>| async move { Ok::<_, BoxError>(req) },
    ));
    let captured = Captured::default();
    let req = {
        let _guard = captured.install();
        svc.oneshot(Request::post("/").body(body).unwrap())
            .await
            .unwrap()
    };
    assert!(!req.body().is_replayable());
    assert!(req.body().try_clone().is_none());
    assert!(replay_request(&req).is_none());
    assert!(!req.headers().contains_key("content-length"));
    // The 1100 bytes read so far are known to come first.
    assert!(req.body().size_hint().lower() >= 1025);
    let got = drain(req.into_body()).await;
    assert_eq!(got.data, data);
    assert!(got.error.is_none());

    let log = captured.text();
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("exceeded the replay limit of 1024 bytes"),
        "{log}"
    );
    assert!(log.contains("will not be retried"), "{log}");
}

#[tokio::test]
async fn a_body_known_to_be_too_large_is_never_read() {
    for (hint, header) in [
        (SizeHint::with_exact(2048), None),
        (SizeHint::new(), Some("5000")),
    ] {
        let polls = Arc::new(AtomicUsize::new(0));
        let body = CountingBody {
            frames: VecDeque::from([pattern(1500), pattern(548)]),
            polls: polls.clone(),
            hint,
        };
        let seen = polls.clone();
        let svc = ReplayLayer::new().with_limit(1024).layer(service_fn(
            move |req: Request<ReplayBody<CountingBody>>| {
                // Not a single frame was read before the inner call.
                assert_eq!(seen.load(Ordering::SeqCst), 0);
                async move { Ok::<_, BoxError>(req) }
            },
        ));
        let mut req = Request::post("/").body(body).unwrap();
        if let Some(len) = header {
            req.headers_mut()
                .insert("content-length", HeaderValue::from_static(len));
        }
        let req = svc.oneshot(req).await.unwrap();
        assert!(!req.body().is_replayable());
        assert_eq!(polls.load(Ordering::SeqCst), 0);
        let got = drain(req.into_body()).await;
        assert_eq!(got.data.len(), 2048);
    }
}

#[tokio::test]
async fn a_body_error_while_buffering_reaches_the_inner_service() {
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"abc"))),
        Ok(Frame::data(Bytes::from_static(b"def"))),
        Err("disk on fire".into()),
        Ok(Frame::data(Bytes::from_static(b"never"))),
    ]);
    let svc =
        ReplayLayer::new().layer(service_fn(|req: Request<ReplayBody<ReqBody>>| async move {
            assert!(!req.body().is_replayable());
            assert!(replay_request(&req).is_none());
            Ok::<_, BoxError>(drain(req.into_body()).await)
        }));
    let got = svc
        .oneshot(Request::post("/").body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(got.data, b"abcdef");
    assert_eq!(got.error.as_deref(), Some("disk on fire"));
}

#[tokio::test]
async fn trailers_are_buffered_and_replayed() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("42"));
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"ab"))),
        Ok(Frame::data(Bytes::from_static(b"cd"))),
        Ok(Frame::trailers(trailers.clone())),
    ]);
    let svc =
        ReplayLayer::new().layer(service_fn(|req: Request<ReplayBody<ReqBody>>| async move {
            Ok::<_, BoxError>(req)
        }));
    let req = svc
        .oneshot(Request::post("/").body(body).unwrap())
        .await
        .unwrap();
    assert!(req.body().is_replayable());
    // HTTP/1 can send trailers only in a chunked body: no length is forced.
    assert!(!req.headers().contains_key("content-length"));
    assert_eq!(req.body().size_hint().exact(), None);
    let copy = replay_request(&req).unwrap();
    for body in [req.into_body(), copy.into_body()] {
        let got = drain(body).await;
        assert_eq!(got.data, b"abcd");
        assert_eq!(got.trailers.as_ref(), Some(&trailers));
    }
}

#[tokio::test]
async fn inner_errors_and_responses_pass_through_untouched() {
    #[derive(Debug, PartialEq)]
    struct Mine(u8);
    impl std::fmt::Display for Mine {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "mine {}", self.0)
        }
    }
    impl std::error::Error for Mine {}

    let replay = ReplayLayer::new().layer(service_fn(|_: Request<ReplayBody<ReqBody>>| async {
        Err::<(), _>(Mine(1))
    }));
    let err = replay.oneshot(Request::new(full("x"))).await.unwrap_err();
    assert_eq!(err, Mine(1));

    let peek = PeekLayer::new().layer(service_fn(|_: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(Mine(2))
    }));
    let err = peek.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err, Mine(2));
}

// ---------------------------------------------------------------------------
// Replay: over loopback
// ---------------------------------------------------------------------------

#[tokio::test]
async fn replayed_post_bodies_are_byte_identical_over_loopback() {
    let (addr, mut seen) = recording_server().await;
    let client = client::<ReplayBody<ReqBody>>();
    let payload = pattern(200 * 1024);

    let svc = ReplayLayer::new().layer(service_fn(move |req: Request<ReplayBody<ReqBody>>| {
        let client = client.clone();
        async move {
            for _ in 0..3 {
                let copy = replay_request(&req).expect("within the limit");
                let res = client.request(copy).await?;
                assert_eq!(res.status(), StatusCode::OK);
                res.into_body().collect().await?;
            }
            Ok::<_, BoxError>(())
        }
    }));
    let req = Request::post(url(addr, "/api/generate"))
        .header("content-type", "application/json")
        .body(full(payload.clone()))
        .unwrap();
    guard(svc.oneshot(req)).await.unwrap();

    let mut lengths = Vec::new();
    for _ in 0..3 {
        let seen = guard(seen.recv()).await.unwrap();
        assert_eq!(seen.body.as_deref().unwrap(), &payload[..]);
        assert_eq!(seen.headers["content-type"], "application/json");
        lengths.push(seen.headers["content-length"].clone());
    }
    assert!(lengths.iter().all(|l| l == "204800"), "{lengths:?}");
}

#[tokio::test]
async fn a_streaming_body_gets_a_length_over_loopback() {
    let (addr, mut seen) = recording_server().await;
    let client = client::<ReplayBody<ReqBody>>();
    let (data, body) = chunked(50_000, 7_000);

    let svc = ReplayLayer::new().layer(service_fn(move |req: Request<ReplayBody<ReqBody>>| {
        let client = client.clone();
        async move {
            assert!(req.body().is_replayable());
            let copy = replay_request(&req).unwrap();
            client.request(copy).await?.into_body().collect().await?;
            client.request(req).await?.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    }));
    let req = Request::post(url(addr, "/")).body(body).unwrap();
    guard(svc.oneshot(req)).await.unwrap();

    for _ in 0..2 {
        let seen = guard(seen.recv()).await.unwrap();
        assert_eq!(seen.body.as_deref().unwrap(), &data[..]);
        assert_eq!(seen.headers["content-length"], "50000");
        assert!(!seen.headers.contains_key("transfer-encoding"));
    }
}

#[tokio::test]
async fn over_the_limit_is_sent_once_with_every_byte_over_loopback() {
    let (addr, mut seen) = recording_server().await;
    let client = client::<ReplayBody<ReqBody>>();
    let limit = 64 * 1024;
    let (data, body) = chunked(limit + 1, 4096);

    let svc = ReplayLayer::new().with_limit(limit).layer(service_fn(
        move |req: Request<ReplayBody<ReqBody>>| {
            let client = client.clone();
            async move {
                assert!(!req.body().is_replayable());
                assert!(replay_request(&req).is_none());
                let res = client.request(req).await?;
                res.into_body().collect().await?;
                Ok::<_, BoxError>(())
            }
        },
    ));
    let req = Request::post(url(addr, "/")).body(body).unwrap();
    guard(svc.oneshot(req)).await.unwrap();

    let got = guard(seen.recv()).await.unwrap();
    assert_eq!(got.body.as_deref().unwrap(), &data[..]);
    // Sent once, chunked: nothing else arrives.
    assert_eq!(got.headers["transfer-encoding"], "chunked");
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_failing_body_fails_the_attempt_over_loopback() {
    let (addr, _seen) = recording_server().await;
    let client = client::<ReplayBody<ReqBody>>();
    let svc = ReplayLayer::new().layer(client);
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"partial"))),
        Err("upload aborted".into()),
    ]);
    let req = Request::post(url(addr, "/")).body(body).unwrap();
    // The error is the client's, reporting the body's: no panic, no hang.
    let err = guard(svc.oneshot(req)).await.unwrap_err();
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    assert!(
        chain.iter().any(|e| e.contains("upload aborted")),
        "{chain:?}"
    );
}

#[tokio::test]
async fn request_trailers_are_replayed_over_loopback() {
    let (addr, mut seen) = recording_server().await;
    let client = client::<ReplayBody<ReqBody>>();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let body = frames(vec![
        Ok(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"trailers"))),
        Ok(Frame::trailers(trailers.clone())),
    ]);
    let svc = ReplayLayer::new().layer(service_fn(move |req: Request<ReplayBody<ReqBody>>| {
        let client = client.clone();
        async move {
            let copy = replay_request(&req).unwrap();
            client.request(copy).await?.into_body().collect().await?;
            client.request(req).await?.into_body().collect().await?;
            Ok::<_, BoxError>(())
        }
    }));
    let req = Request::post(url(addr, "/"))
        .header("trailer", "x-checksum")
        .body(body)
        .unwrap();
    guard(svc.oneshot(req)).await.unwrap();
    for _ in 0..2 {
        let got = guard(seen.recv()).await.unwrap();
        assert_eq!(got.body.as_deref().unwrap(), b"hello trailers");
        assert_eq!(got.trailers.as_ref(), Some(&trailers));
    }
}

// ---------------------------------------------------------------------------
// Peek: in process
// ---------------------------------------------------------------------------

/// A `PeekService` over an inner service that answers every request with
/// `status` and the body `make()` builds.
fn peeking<B, F>(
    status: u16,
    limit: usize,
    make: F,
) -> impl Service<Request<()>, Response = Response<PeekBody<B>>, Error = BoxError>
where
    F: Fn() -> B + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    PeekLayer::new()
        .with_limit(limit)
        .layer(service_fn(move |_: Request<()>| {
            let body = make();
            async move { Ok::<_, BoxError>(Response::builder().status(status).body(body).unwrap()) }
        }))
}

#[tokio::test]
async fn success_is_passed_through() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let svc = peeking(200, 1024, move || CountingBody {
        frames: VecDeque::from([Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
        polls: p.clone(),
        hint: SizeHint::with_exact(2),
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(polls.load(Ordering::SeqCst), 0);
    assert!(res.body().is_passthrough());
    assert!(res.body().prefix().is_empty());
    assert!(!res.body().is_complete());
    assert!(res.body().peek_error().is_none());
    assert_eq!(res.body().size_hint().exact(), Some(2));
    let got = drain(res.into_body()).await;
    assert_eq!(got.data, b"ab");
    assert_eq!(got.data_frames, 2);
}

#[tokio::test]
async fn a_long_error_body_is_peeked_up_to_the_limit() {
    let data = pattern(200 * 1024);
    let d = data.clone();
    let svc = peeking(500, 64 * 1024, move || Full::new(d.clone()));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let body = res.body();
    assert_eq!(body.prefix(), &data[..64 * 1024]);
    assert!(!body.is_complete());
    assert!(!body.is_end_stream());
    // The prefix, the split-off rest of the frame: the hint stays exact.
    assert_eq!(body.size_hint().exact(), Some(200 * 1024));
    let mut body = res.into_body();
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        all.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(body.is_end_stream());
    assert_eq!(all, data);
    // The prefix stays readable after the body was consumed.
    assert_eq!(body.prefix().len(), 64 * 1024);
}

#[tokio::test]
async fn an_error_body_exactly_at_the_limit_is_complete() {
    let svc = peeking(502, 8, || Full::new(Bytes::from_static(b"12345678")));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.body().prefix(), b"12345678");
    assert!(res.body().is_complete());
    assert!(!res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), Some(8));
    assert_eq!(drain(res.into_body()).await.data, b"12345678");
}

#[tokio::test]
async fn an_empty_error_body_is_complete() {
    let svc = peeking(404, 1024, Empty::<Bytes>::new);
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.body().is_complete());
    assert!(res.body().prefix().is_empty());
    assert!(res.body().is_end_stream());
    assert_eq!(res.body().size_hint().exact(), Some(0));
}

#[tokio::test]
async fn a_body_error_during_the_peek_is_kept() {
    let svc = peeking(500, 1024, || {
        res_frames(vec![
            Ok(Frame::data(Bytes::from_static(b"{\"error\":"))),
            Ok(Frame::data(Bytes::from_static(b"\"trunc"))),
            Err("connection reset".into()),
        ])
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let body = res.body();
    assert_eq!(body.prefix(), b"{\"error\":\"trunc");
    assert!(!body.is_complete());
    assert_eq!(
        body.peek_error().map(|e| e.to_string()).as_deref(),
        Some("connection reset")
    );
    assert!(!body.is_end_stream());
    assert_eq!(body.size_hint().lower(), 15);
    assert_eq!(body.size_hint().upper(), None);
    let got = drain(res.into_body()).await;
    assert_eq!(got.data, b"{\"error\":\"trunc");
    assert_eq!(got.error.as_deref(), Some("connection reset"));
}

#[tokio::test]
async fn trailers_survive_the_peek() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("13"));
    let t = trailers.clone();
    let svc = peeking(500, 1024, move || {
        res_frames(vec![
            Ok(Frame::data(Bytes::from_static(b"oops"))),
            Ok(Frame::trailers(t.clone())),
        ])
    });
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(res.body().is_complete());
    assert!(!res.body().is_end_stream());
    let got = drain(res.into_body()).await;
    assert_eq!(got.data, b"oops");
    assert_eq!(got.trailers.as_ref(), Some(&trailers));
}

#[tokio::test]
async fn a_zero_limit_turns_peeking_off() {
    let svc = peeking(500, 0, || Full::new(Bytes::from_static(b"x")));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(res.body().is_passthrough());
    assert_eq!(drain(res.into_body()).await.data, b"x");
}

// ---------------------------------------------------------------------------
// Peek: over loopback
// ---------------------------------------------------------------------------

fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(url(addr, path)).body(Empty::new()).unwrap()
}

#[tokio::test]
async fn a_small_error_body_is_peeked_whole_over_loopback() {
    let json = format!("{{\"error\":\"{}\"}}", "x".repeat(88));
    assert_eq!(json.len(), 100);
    let body = json.clone();
    let addr = serve(move |_| {
        let body = body.clone();
        async move {
            Response::builder()
                .status(500)
                .header("content-type", "application/json")
                .body(res_body(body))
                .unwrap()
        }
    })
    .await;
    let svc = PeekLayer::new().layer(client::<Empty<Bytes>>());
    let res = guard(svc.oneshot(get(addr, "/api/chat"))).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["content-length"], "100");
    assert_eq!(res.body().prefix(), json.as_bytes());
    assert!(res.body().is_complete());
    assert!(res.body().peek_error().is_none());
    assert_eq!(drain(res.into_body()).await.data, json.as_bytes());
}

#[tokio::test]
async fn a_long_error_body_reaches_the_caller_whole_over_loopback() {
    let data = pattern(200 * 1024);
    let d = data.clone();
    let addr = serve(move |_| {
        let d = d.clone();
        async move {
            // Chunked, in frames that do not line up with the limit.
            let parts = (0..d.len())
                .step_by(10_000)
                .map(|at| Ok(Frame::data(d.slice(at..(at + 10_000).min(d.len())))))
                .collect();
            Response::builder()
                .status(500)
                .body(res_frames(parts))
                .unwrap()
        }
    })
    .await;
    let svc = PeekLayer::new()
        .with_limit(64 * 1024)
        .layer(client::<Empty<Bytes>>());
    let res = guard(svc.oneshot(get(addr, "/"))).await.unwrap();
    assert_eq!(res.body().prefix(), &data[..64 * 1024]);
    assert!(!res.body().is_complete());
    let got = drain(res.into_body()).await;
    assert!(got.error.is_none());
    assert_eq!(got.data.len(), data.len());
    assert!(got.data == data);
}

#[tokio::test]
async fn a_streaming_success_is_not_buffered_over_loopback() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let addr = serve(move |_| {
        let release = release.lock().unwrap().take();
        async move {
            let stream =
                futures_util::stream::unfold((0u8, release), |(step, release)| async move {
                    match step {
                        0 => Some((
                            Ok(Frame::data(Bytes::from_static(b"chunk 1"))),
                            (1, release),
                        )),
                        1 => {
                            // Chunk 2 only once the client has chunk 1.
                            release?.await.ok()?;
                            Some((Ok(Frame::data(Bytes::from_static(b"chunk 2"))), (2, None)))
                        }
                        _ => None,
                    }
                });
            let body: ResBody = StreamBody::new(stream).boxed_unsync();
            Response::new(body)
        }
    })
    .await;

    let svc = PeekLayer::new().layer(client::<Empty<Bytes>>());
    // If the peek buffered a success body, this call would wait for chunk 2,
    // which is only sent after the client has chunk 1: the guard would fire.
    let res = guard(svc.oneshot(get(addr, "/api/generate")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.body().is_passthrough());
    let mut body = res.into_body();

    let first = guard(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "chunk 1");
    release_tx.send(()).unwrap();
    let second = guard(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "chunk 2");
    assert!(guard(body.frame()).await.is_none());
}

#[tokio::test]
async fn a_connection_cut_mid_peek_is_a_peek_error_over_loopback() {
    // A raw server: promises 1000 bytes, sends 100, hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = pattern(100);
    let s = sent.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&s).await.unwrap();
        stream.shutdown().await.unwrap();
    });

    let svc = PeekLayer::new().layer(client::<Empty<Bytes>>());
    let res = guard(svc.oneshot(get(addr, "/"))).await.unwrap();
    assert_eq!(res.status(), 500);
    let body = res.body();
    assert!(body.peek_error().is_some());
    assert!(!body.is_complete());
    assert_eq!(body.prefix(), &sent[..]);
    let got = drain(res.into_body()).await;
    assert_eq!(got.data, sent);
    assert!(got.error.is_some());
}

#[tokio::test]
async fn response_trailers_survive_the_peek_over_loopback() {
    let addr = serve(|_| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-error-detail", HeaderValue::from_static("oom"));
        Response::builder()
            .status(500)
            .header("trailer", "x-error-detail")
            .body(res_frames(vec![
                Ok(Frame::data(Bytes::from_static(
                    b"{\"error\":\"out of memory\"}",
                ))),
                Ok(Frame::trailers(trailers)),
            ]))
            .unwrap()
    })
    .await;
    let svc = PeekLayer::new().layer(client::<Empty<Bytes>>());
    let mut req = get(addr, "/");
    req.headers_mut()
        .insert("te", HeaderValue::from_static("trailers"));
    let res = guard(svc.oneshot(req)).await.unwrap();
    assert_eq!(res.body().prefix(), b"{\"error\":\"out of memory\"}");
    assert!(res.body().is_complete());
    let got = drain(res.into_body()).await;
    assert_eq!(got.data, b"{\"error\":\"out of memory\"}");
    assert_eq!(got.trailers.unwrap()["x-error-detail"], "oom");
}

// ---------------------------------------------------------------------------
// The whole stack: ReplayLayer -> RetryLayer -> PeekLayer -> client
// ---------------------------------------------------------------------------

/// A minimal HTTP policy: replay with `replay_request`, retry a response
/// whose peeked body says "busy".
#[derive(Clone)]
struct BusyPolicy;

impl<B, RB, E> Policy<Request<ReplayBody<B>>, Response<PeekBody<RB>>, E> for BusyPolicy
where
    E: Into<BoxError>,
{
    type Error = BoxError;
    type Recover = std::future::Ready<Result<(), BoxError>>;

    fn max_attempts(&self) -> u32 {
        5
    }

    fn replay(&mut self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        replay_request(req)
    }

    fn classify(&mut self, _: &Attempt, result: &Result<Response<PeekBody<RB>>, E>) -> Decision {
        match result {
            Ok(res) if res.status().is_success() => Decision::Success,
            Ok(res) if res.body().prefix().windows(4).any(|w| w == b"busy") => {
                Decision::Retry(Failure::new(Class::Transient))
            }
            Ok(_) => Decision::Fatal(Failure::new(Class::Fatal)),
            Err(_) => Decision::Retry(Failure::new(Class::Connection)),
        }
    }

    fn backoff(&mut self, _: &Attempt, _: &Failure) -> Duration {
        Duration::ZERO
    }

    fn recover(
        &mut self,
        _: &Attempt,
        _: &Failure,
        _: &mut Request<ReplayBody<B>>,
    ) -> Self::Recover {
        std::future::ready(Ok(()))
    }

    fn readiness_error(&mut self, error: E) -> BoxError {
        error.into()
    }

    fn finish(
        &mut self,
        finished: Finished<Response<PeekBody<RB>>, E>,
    ) -> Result<Response<PeekBody<RB>>, BoxError> {
        finished.into_result().map_err(Into::into)
    }
}

#[tokio::test]
async fn the_whole_stack_retries_with_identical_bodies_over_loopback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let c = calls.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        let tx = tx.clone();
        async move {
            let length = req.headers().get("content-length").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let _ = tx.send((length, body));
            if n < 2 {
                Response::builder()
                    .status(503)
                    .body(res_body(r#"{"error":"server busy, please try again"}"#))
                    .unwrap()
            } else {
                Response::new(res_body(r#"{"response":"hi"}"#))
            }
        }
    })
    .await;

    let svc = ServiceBuilder::new()
        .layer(ReplayLayer::new())
        .layer(RetryLayer::new(BusyPolicy))
        .layer(PeekLayer::new())
        .service(client::<ReplayBody<ReqBody>>());
    let (data, body) = chunked(30_000, 1_000);
    let req = Request::post(url(addr, "/api/generate"))
        .body(body)
        .unwrap();
    let res = guard(svc.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(drain(res.into_body()).await.data, br#"{"response":"hi"}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    for _ in 0..3 {
        let (length, body) = guard(seen.recv()).await.unwrap();
        assert_eq!(length.unwrap(), "30000");
        assert_eq!(body, data);
    }
}
