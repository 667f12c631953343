//! `tower_ollama_retry::grpc` against a real tonic server and client on
//! 127.0.0.1.

#![cfg(feature = "tonic")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::{Layer, Service, ServiceBuilder};
use tower_ollama_retry::backoff::Constant;
use tower_ollama_retry::grpc::{GrpcPolicy, GrpcRetry, GrpcRetryLayer, PREVIOUS_RPC_ATTEMPTS};
use tower_ollama_retry::http::ReplayBody;
use tower_ollama_retry::{
    Attempt, BoxError, Class, Failure, Policy, Reason, Recover, Report, RetryError,
};

/// What the retry loop sees: a request whose body is buffered.
type GrpcRequest = http::Request<ReplayBody<tonic::body::Body>>;

type Answer = dyn Fn(u32, &MetadataMap) -> Result<(), Status> + Send + Sync;

/// A health service that answers each check by a script: call `n`
/// (1-based) gets `answer(n, metadata)`, `Ok` meaning `SERVING`. It counts
/// calls and notes each call's `grpc-previous-rpc-attempts`.
#[derive(Clone)]
struct Scripted {
    calls: Arc<AtomicU32>,
    previous: Arc<Mutex<Vec<Option<String>>>>,
    answer: Arc<Answer>,
}

impl Scripted {
    fn new(
        answer: impl Fn(u32, &MetadataMap) -> Result<(), Status> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            previous: Arc::default(),
            answer: Arc::new(answer),
        }
    }

    /// `UNAVAILABLE` for the first `n` calls, then `SERVING`.
    fn failing(n: u32) -> Self {
        Self::new(move |call, _| {
            if call <= n {
                Err(Status::unavailable("warming up"))
            } else {
                Ok(())
            }
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn previous(&self) -> Vec<Option<String>> {
        self.previous.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl Health for Scripted {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let previous = req
            .metadata()
            .get(PREVIOUS_RPC_ATTEMPTS)
            .map(|v| v.to_str().unwrap().to_owned());
        self.previous.lock().unwrap().push(previous);
        (self.answer)(n, req.metadata())?;
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

fn bind() -> (TcpIncoming, SocketAddr) {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    (incoming, addr)
}

/// Serves `health` on a free loopback port.
fn serve(health: Scripted) -> SocketAddr {
    let (incoming, addr) = bind();
    tokio::spawn(
        Server::builder()
            .add_service(HealthServer::new(health))
            .serve_with_incoming(incoming),
    );
    addr
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn fast() -> GrpcPolicy<Constant> {
    GrpcPolicy::new().with_backoff(Constant::new(Duration::from_millis(5)))
}

/// A health client whose channel retries by `policy`.
fn retrying<P>(channel: Channel, policy: P) -> HealthClient<GrpcRetry<Channel, P>>
where
    P: Policy<
            GrpcRequest,
            http::Response<tonic::body::Body>,
            tonic::transport::Error,
            Error = RetryError,
        > + Clone,
{
    HealthClient::new(GrpcRetryLayer::new(policy).layer(channel))
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test]
async fn unavailable_twice_then_serving_takes_three_calls() {
    let health = Scripted::failing(2);
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    let res = client
        .check(check())
        .await
        .expect("the third call succeeds");
    assert_eq!(res.get_ref().status(), ServingStatus::Serving);
    assert_eq!(health.calls(), 3);

    // The tonic client hands the http extensions on.
    let report = res
        .extensions()
        .get::<Report>()
        .expect("a retried call carries its report");
    assert_eq!(report.attempts(), 3);
    assert_eq!(report.reason(), Reason::Success);
    assert_eq!(
        report.classes().collect::<Vec<_>>(),
        [Class::Transient, Class::Transient]
    );
    assert_eq!(report.total_delay(), Duration::from_millis(10));

    // A6's retry metadata, on each retry and on the final response.
    assert_eq!(
        health.previous(),
        [None, Some("1".into()), Some("2".into())]
    );
    assert_eq!(res.metadata().get(PREVIOUS_RPC_ATTEMPTS).unwrap(), "2");
}

#[tokio::test]
async fn a_first_attempt_success_carries_nothing() {
    let health = Scripted::failing(0);
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    let res = client.check(check()).await.unwrap();
    assert_eq!(health.calls(), 1);
    assert!(res.extensions().get::<Report>().is_none());
    assert!(res.metadata().get(PREVIOUS_RPC_ATTEMPTS).is_none());
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let health = Scripted::new(|_, _| Err(Status::not_found("no such service")));
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such service");
    assert_eq!(health.calls(), 1);
    assert!(status.metadata().get(PREVIOUS_RPC_ATTEMPTS).is_none());
}

#[tokio::test]
async fn unavailable_three_times_exhausts_and_the_client_sees_unavailable() {
    let health = Scripted::failing(u32::MAX);
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    // The retry layer hands back the last trailers-only response, and the
    // tonic client turns it into that status.
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "warming up");
    assert_eq!(health.calls(), 3);
    assert_eq!(status.metadata().get(PREVIOUS_RPC_ATTEMPTS).unwrap(), "2");
}

#[tokio::test]
async fn the_codes_to_retry_are_configurable() {
    let health = Scripted::new(|n, _| {
        if n == 1 {
            Err(Status::aborted("conflict"))
        } else {
            Ok(())
        }
    });
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast().with_codes([Code::Aborted]));

    let res = client.check(check()).await.unwrap();
    assert_eq!(health.calls(), 2);
    assert_eq!(res.extensions().get::<Report>().unwrap().attempts(), 2);

    // ... and UNAVAILABLE is then no longer among them.
    let health = Scripted::failing(1);
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast().with_codes([Code::Aborted]));
    assert_eq!(
        client.check(check()).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(health.calls(), 1);
}

fn pushback(ms: &'static str) -> Status {
    let mut meta = MetadataMap::new();
    meta.insert("grpc-retry-pushback-ms", MetadataValue::from_static(ms));
    Status::with_metadata(Code::Unavailable, "pushed back", meta)
}

#[tokio::test]
async fn a_negative_pushback_forbids_the_retry() {
    let health = Scripted::new(|_, _| Err(pushback("-1")));
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(health.calls(), 1);
}

#[tokio::test]
async fn a_pushback_in_ms_sets_the_next_delay() {
    let health = Scripted::new(|n, _| if n == 1 { Err(pushback("10")) } else { Ok(()) });
    let addr = serve(health.clone());
    let mut client = retrying(channel(addr).await, fast());

    let res = client.check(check()).await.unwrap();
    assert_eq!(health.calls(), 2);
    let report = res.extensions().get::<Report>().unwrap();
    // The server's 10 ms, not the backoff's 5 ms.
    assert_eq!(report.failures()[0].delay, Duration::from_millis(10));

    // The cap applies to a pushback too.
    let health = Scripted::new(|n, _| {
        if n == 1 {
            Err(pushback("60000"))
        } else {
            Ok(())
        }
    });
    let addr = serve(health.clone());
    let policy = fast().with_max_delay(Duration::from_millis(3));
    let mut client = retrying(channel(addr).await, policy);
    let res = client.check(check()).await.unwrap();
    let report = res.extensions().get::<Report>().unwrap();
    assert_eq!(report.failures()[0].delay, Duration::from_millis(3));
}

#[tokio::test]
async fn the_layer_retries_on_the_server_side() {
    let health = Scripted::failing(1);
    let (incoming, addr) = bind();
    tokio::spawn(
        Server::builder()
            .layer(GrpcRetryLayer::new(fast()))
            .add_service(HealthServer::new(health.clone()))
            .serve_with_incoming(incoming),
    );

    // A plain client, without retries, that counts what it sends.
    let sent = Arc::new(AtomicU32::new(0));
    let counted = sent.clone();
    let svc = ServiceBuilder::new()
        .map_request(move |req: http::Request<tonic::body::Body>| {
            counted.fetch_add(1, Ordering::SeqCst);
            req
        })
        .service(channel(addr).await);
    let mut client = HealthClient::new(svc);

    let res = client
        .check(check())
        .await
        .expect("the server retried its handler");
    assert_eq!(res.get_ref().status(), ServingStatus::Serving);
    assert_eq!(sent.load(Ordering::SeqCst), 1, "one call from the client");
    assert_eq!(health.calls(), 2, "two calls of the handler");
    // The server's retry layer says so in the response metadata.
    assert_eq!(res.metadata().get(PREVIOUS_RPC_ATTEMPTS).unwrap(), "1");
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_surfaces_as_unavailable() {
    // A port that nothing listens on any more.
    let addr = bind().1;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let retries = Arc::new(AtomicU32::new(0));
    let seen = retries.clone();
    let policy = fast().on_retry(move |e| {
        assert_eq!(e.failure.class(), Class::Connection);
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let mut client = retrying(channel, policy);

    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(retries.load(Ordering::SeqCst), 2);
    // tonic keeps the retry layer's error as the status's source.
    let err = std::error::Error::source(&status)
        .and_then(|e| e.downcast_ref::<RetryError>())
        .expect("the RetryError behind the status");
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.reason(), Reason::Exhausted);
}

#[tokio::test]
async fn a_request_over_the_replay_limit_is_sent_once() {
    let health = Scripted::failing(1);
    let addr = serve(health.clone());
    let layer = GrpcRetryLayer::new(fast()).with_replay_limit(4);
    assert_eq!(layer.replay_limit(), 4);
    let mut client = HealthClient::new(layer.layer(channel(addr).await));

    // 5 bytes of frame header and 3 of message: over the limit.
    let req = HealthCheckRequest {
        service: "x".into(),
    };
    assert_eq!(
        client.check(req).await.unwrap_err().code(),
        Code::Unavailable
    );
    assert_eq!(health.calls(), 1);
}

/// A recovery hook that puts a fresh token on the next attempt.
#[derive(Clone)]
struct Refresh(Arc<AtomicU32>);

impl Recover<GrpcRequest> for Refresh {
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn recover(&mut self, _: &Attempt, failure: &Failure, next: &mut GrpcRequest) -> Self::Future {
        assert!(failure.message().unwrap().contains("Unauthenticated"));
        self.0.fetch_add(1, Ordering::SeqCst);
        next.headers_mut()
            .insert("authorization", "Bearer fresh".parse().unwrap());
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_recovery_hook_rewrites_the_retry() {
    let health = Scripted::new(|_, meta| match meta.get("authorization") {
        Some(v) if v == "Bearer fresh" => Ok(()),
        _ => Err(Status::unauthenticated("token expired")),
    });
    let addr = serve(health.clone());
    let refreshed = Arc::new(AtomicU32::new(0));
    let policy = fast().with_recover([Code::Unauthenticated], Refresh(refreshed.clone()));
    let mut client = retrying(channel(addr).await, policy);

    let mut req = Request::new(check());
    req.metadata_mut()
        .insert("authorization", MetadataValue::from_static("Bearer stale"));
    let res = client.check(req).await.unwrap();
    assert_eq!(health.calls(), 2);
    assert_eq!(refreshed.load(Ordering::SeqCst), 1);
    let report = res.extensions().get::<Report>().unwrap();
    assert_eq!(report.recoveries(), 1);
    assert_eq!(report.total_delay(), Duration::ZERO);
}

#[test]
fn the_layer_and_the_service_are_thread_safe() {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>() {}
    fn future_is_send<S, R>()
    where
        S: Service<R> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
    }
    fn send<T: Send>(_: &T) {}

    clone_send_sync::<GrpcRetryLayer<GrpcPolicy>>();
    clone_send_sync::<GrpcPolicy>();
    future_is_send::<GrpcRetry<Channel, GrpcPolicy>, http::Request<tonic::body::Body>>();

    // And the generated client's call future, which tokio::spawn needs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let mut client = retrying(channel, GrpcPolicy::new());
    let call = client.check(check());
    send(&call);
}
