//! The retry layers inside an axum app: `Router::layer` and
//! `Router::route_layer` accept them, and they retry the routes they wrap.
//!
//! # What replays and what does not
//!
//! An axum route takes `Request<axum::body::Body>`. That body is a stream:
//! once the first attempt has read it, it is gone. With the `axum` feature,
//! `axum::body::Body` is [`ReplayableBody`] **only when it is empty** (a
//! `GET`, a `DELETE` with no body), so a plain `RetryLayer` in front of a
//! route retries body-less requests and sends any request with a body
//! exactly once, whatever its method.
//!
//! To replay bodies, put [`ReplayLayer`] in front: it buffers each body once
//! and hands the retry layer a `Request<ReplayBody<Body>>`, which a
//! `map_request` turns back into the `Request<Body>` the route expects (see
//! [`replaying_layer`]).
//!
//! [`HttpRetryLayer`](tower_ollama_retry::http::HttpRetryLayer) (replay +
//! retry + peek) does **not** fit here with `RespondOnError`: its peek layer
//! makes the response `Response<PeekBody<Body>>`, and `RespondOnError` needs
//! a response body that is `From<Bytes>` to build its error response, which
//! `PeekBody` is not. `HttpPolicy` does not read response bodies, so
//! `ReplayLayer` + `RetryLayer` is the whole stack it needs.

#![cfg(feature = "axum")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_ollama_retry::http::{
    HttpPolicy, ReplayBody, ReplayLayer, ReplayableBody, RespondOnError,
};
use tower_ollama_retry::{Reason, Report, RetryLayer};

/// What the handlers saw: how many times they ran and with which bodies.
#[derive(Clone, Default)]
struct Seen {
    runs: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// 503 on the first run, 200 (echoing the body) after.
async fn flaky(State(seen): State<Seen>, body: String) -> Response<Body> {
    let n = seen.runs.fetch_add(1, Ordering::SeqCst);
    seen.bodies.lock().unwrap().push(body.clone());
    if n == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "busy, try again").into_response()
    } else {
        (StatusCode::OK, format!("ok: {body}")).into_response()
    }
}

/// 503 every time, with the run number in the body.
async fn down(State(seen): State<Seen>) -> Response<Body> {
    let n = seen.runs.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::SERVICE_UNAVAILABLE, format!("down #{n}")).into_response()
}

/// The routes every test uses, without a layer.
fn routes(seen: &Seen) -> Router {
    Router::new()
        .route("/flaky", get(flaky).post(flaky).put(flaky))
        .route("/down", get(down))
        .with_state(seen.clone())
}

/// The plain layer: `RetryLayer` + `RespondOnError` + `HttpPolicy`. The
/// route's error is `Infallible`, and `RespondOnError` keeps it so.
fn plain_layer() -> RetryLayer<RespondOnError<HttpPolicy>> {
    RetryLayer::new(RespondOnError::new(HttpPolicy::new()))
}

/// The replaying layer: `ReplayLayer` buffers each body, the retry layer
/// replays it (also for `POST`), and `map_request` gives the route the
/// `Request<Body>` it expects.
fn replaying_layer() -> impl Layer<
    axum::routing::Route,
    Service: Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
                 + Send
                 + Sync
                 + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    ServiceBuilder::new()
        .layer(ReplayLayer::new())
        .layer(RetryLayer::new(RespondOnError::new(
            HttpPolicy::new().retry_non_idempotent(true),
        )))
        .map_request(|r: Request<ReplayBody<Body>>| r.map(Body::new))
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn body_req(method: &str, path: &str, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body))
        .unwrap()
}

async fn text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn reason(res: &Response<Body>) -> Option<(Reason, u32)> {
    res.extensions()
        .get::<Report>()
        .map(|r| (r.reason(), r.attempts()))
}

// ----- (c) compile time -----------------------------------------------------------

fn clone_send_sync<T: Clone + Send + Sync + 'static>(_: &T) {}

#[test]
fn layers_are_clone_send_sync_and_routers_serve() {
    clone_send_sync(&plain_layer());
    clone_send_sync(&replaying_layer());
    clone_send_sync(&RespondOnError::new(HttpPolicy::new()));
    // The body rule the plain layer relies on.
    assert!(Body::empty().try_clone_body().is_some());
    assert!(Body::from("x").try_clone_body().is_none());

    // Each router still is something `axum::serve` takes.
    fn servable(router: Router) {
        let _ = || async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            axum::serve(listener, router).await.unwrap();
        };
    }
    let seen = Seen::default();
    servable(routes(&seen).layer(plain_layer()));
    servable(routes(&seen).route_layer(plain_layer()));
    servable(routes(&seen).layer(replaying_layer()));
    servable(routes(&seen).route_layer(replaying_layer()));
}

// ----- (a) the plain layer ----------------------------------------------------------

/// The routes under the plain layer, attached with `Router::layer` or
/// `Router::route_layer`: every test of (a) runs with both.
fn plain_app(how: &str, seen: &Seen) -> Router {
    match how {
        "layer" => routes(seen).layer(plain_layer()),
        "route_layer" => routes(seen).route_layer(plain_layer()),
        _ => unreachable!(),
    }
}

const HOW: [&str; 2] = ["layer", "route_layer"];

#[tokio::test]
async fn get_is_retried_after_a_503() {
    for how in HOW {
        let seen = Seen::default();
        let app = plain_app(how, &seen);
        let res = app.oneshot(get_req("/flaky")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{how}");
        assert_eq!(reason(&res), Some((Reason::Success, 2)), "{how}");
        assert_eq!(text(res).await, "ok: ", "{how}");
        assert_eq!(seen.runs(), 2, "{how}: the handler ran twice");
    }
}

#[tokio::test]
async fn a_request_with_a_body_is_sent_once() {
    for how in HOW {
        // POST: HttpPolicy does not retry a non-idempotent method...
        let seen = Seen::default();
        let app = plain_app(how, &seen);
        let res = app
            .oneshot(body_req("POST", "/flaky", "prompt"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{how}");
        assert_eq!(
            text(res).await,
            "busy, try again",
            "{how}: the 503 unchanged"
        );
        assert_eq!(seen.runs(), 1, "{how}");

        // ...and even an idempotent PUT, or a POST the policy would retry,
        // is sent once: a non-empty axum body cannot be replayed.
        let seen = Seen::default();
        let app = plain_app(how, &seen);
        let res = app
            .oneshot(body_req("PUT", "/flaky", "prompt"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{how}");
        assert_eq!(reason(&res), Some((Reason::NotReplayable, 1)), "{how}");
        assert_eq!(seen.runs(), 1, "{how}");
    }

    let seen = Seen::default();
    let eager = RetryLayer::new(RespondOnError::new(
        HttpPolicy::new().retry_non_idempotent(true),
    ));
    let app = routes(&seen).layer(eager);
    let res = app
        .oneshot(body_req("POST", "/flaky", "prompt"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&res), Some((Reason::NotReplayable, 1)));
    assert_eq!(seen.bodies(), ["prompt"]);
}

#[tokio::test]
async fn always_503_returns_the_last_503_after_3_runs() {
    for how in HOW {
        let seen = Seen::default();
        let app = plain_app(how, &seen);
        let res = app.oneshot(get_req("/down")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{how}");
        assert_eq!(reason(&res), Some((Reason::Exhausted, 3)), "{how}");
        assert_eq!(text(res).await, "down #3", "{how}: the last response");
        assert_eq!(seen.runs(), 3, "{how}");
    }
}

// ----- (b) the replaying layer -----------------------------------------------------

#[tokio::test]
async fn replay_layer_makes_post_bodies_retryable() {
    for how in HOW {
        let seen = Seen::default();
        let app = match how {
            "layer" => routes(&seen).layer(replaying_layer()),
            _ => routes(&seen).route_layer(replaying_layer()),
        };
        let res = app
            .oneshot(body_req("POST", "/flaky", r#"{"prompt":"hi"}"#))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{how}");
        assert_eq!(text(res).await, r#"ok: {"prompt":"hi"}"#, "{how}");
        assert_eq!(seen.runs(), 2, "{how}");
        assert_eq!(
            seen.bodies(),
            [r#"{"prompt":"hi"}"#; 2],
            "{how}: the same body twice"
        );
    }
}

#[tokio::test]
async fn replay_layer_still_gives_up_after_3_runs() {
    let seen = Seen::default();
    let app = routes(&seen).layer(replaying_layer());
    let res = app.oneshot(get_req("/down")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(res).await, "down #3");
    assert_eq!(seen.runs(), 3);
}

// ----- a real socket -----------------------------------------------------------------

#[tokio::test]
async fn served_routers_retry_over_real_sockets() {
    let seen_plain = Seen::default();
    let seen_replay = Seen::default();
    let app = Router::new()
        .nest("/plain", routes(&seen_plain).layer(plain_layer()))
        .nest(
            "/replay",
            routes(&seen_replay).route_layer(replaying_layer()),
        )
        .route("/health", put(|| async { "up" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = |method: &str, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let res = client.request(req);
        async move {
            let res = tokio::time::timeout(Duration::from_secs(5), res)
                .await
                .unwrap()
                .unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };

    // A GET over the wire: retried by the plain layer.
    assert_eq!(
        call("GET", "/plain/flaky", "").await,
        (StatusCode::OK, "ok: ".into())
    );
    assert_eq!(seen_plain.runs(), 2);
    // A POST with a body over the wire: replayed by the replaying layer.
    assert_eq!(
        call("POST", "/replay/flaky", "over the wire").await,
        (StatusCode::OK, "ok: over the wire".into())
    );
    assert_eq!(seen_replay.bodies(), ["over the wire"; 2]);
    assert_eq!(
        call("PUT", "/health", "").await,
        (StatusCode::OK, "up".into())
    );

    server.abort();
}
