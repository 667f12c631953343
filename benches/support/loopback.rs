//! What the loopback benchmarks share: a hyper 1 HTTP/1 server on
//! `127.0.0.1:0` answering like Ollama's `/api/generate`, the client's
//! request, `tower::retry`'s equivalent policy, and the driver that keeps
//! [`IN_FLIGHT`] requests going.

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_service::Service;

/// Requests the client keeps in flight.
pub const IN_FLIGHT: usize = 64;

/// Connections the server has accepted: each variant should reuse its
/// pool's, not open new ones.
pub static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

const PROMPT: &[u8] =
    br#"{"model":"llama3","prompt":"Why is the sky blue? Answer in one sentence.","stream":false}"#;

const ANSWER: &[u8] = br#"{"model":"llama3","created_at":"2024-05-01T12:00:00.000000Z","response":"The sky is blue because air molecules scatter short blue wavelengths of sunlight more than red ones.","done":true,"done_reason":"stop","total_duration":512345678,"load_duration":1234567,"prompt_eval_count":18,"eval_count":21,"eval_duration":401234567}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the request body, as Ollama does, so the connection is reused.
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    debug_assert_eq!(body.ok().as_deref(), Some(PROMPT));
    let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(res)
}

/// Starts the server on the current runtime; returns its address.
pub async fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

/// The client's connector: no Nagle delay, as the server's side.
pub fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

/// `tower::retry`'s policy for the comparison: 3 attempts in all, a retry
/// on an error or a 5xx, the request copied (head and body) as
/// `replay_request` copies it.
#[derive(Clone, Copy)]
pub struct TowerAttempts(pub u32);

impl<B, E> tower::retry::Policy<Request<Full<Bytes>>, Response<B>, E> for TowerAttempts {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<Full<Bytes>>,
        result: &mut Result<Response<B>, E>,
    ) -> Option<Self::Future> {
        let failed = result
            .as_ref()
            .map_or(true, |r| r.status().is_server_error());
        (failed && self.0 > 0).then(|| {
            self.0 -= 1;
            std::future::ready(())
        })
    }

    fn clone_request(&mut self, req: &Request<Full<Bytes>>) -> Option<Request<Full<Bytes>>> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// An Ollama-shaped `POST /api/generate` with a JSON body.
pub fn request(uri: &Uri) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from_static(PROMPT)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.clone();
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    req
}

/// Sends `n` requests through clones of `svc`, [`IN_FLIGHT`] at a time,
/// each response read to its end.
pub async fn run<S, B>(svc: S, uri: Uri, n: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    stream::iter(0..n)
        .map(|_| {
            let call = svc.clone().oneshot(request(&uri));
            async move {
                let res = call.await.expect("the request succeeds");
                assert_eq!(res.status(), 200);
                let body = res.into_body().collect().await.expect("the body arrives");
                black_box(body.to_bytes().len());
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .for_each(|()| async {})
        .await;
}
