//! A real HTTP/2 server refuses a stream with `REFUSED_STREAM`: the request
//! was provably never processed, so `HttpPolicy` retries it even for a POST.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_ollama_retry::backoff::Constant;
use tower_ollama_retry::http::HttpPolicy;
use tower_ollama_retry::{Reason, Report, RetryLayer};

/// An h2 server whose first stream is refused and whose later ones answer
/// 200 "ok". Returns its address and the count of streams it saw.
async fn refusing_server() -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicU32::new(0));
    let seen = streams.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(sock).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let res = http::Response::new(());
                    if let Ok(mut send) = respond.send_response(res, false) {
                        let _ = send.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, streams)
}

#[tokio::test]
async fn a_refused_stream_is_retried_even_for_a_post() {
    let (addr, streams) = refusing_server().await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let policy = HttpPolicy::new().with_backoff(Constant::new(Duration::from_millis(5)));
    let svc = RetryLayer::new(policy).layer(client);
    let req = http::Request::post(format!("http://{addr}/jobs"))
        .body(Full::new(Bytes::from_static(b"{\"job\":1}")))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("no hang")
        .expect("the retry succeeds");
    assert_eq!(res.status(), 200);
    let report = res.extensions().get::<Report>().cloned().unwrap();
    assert_eq!(report.attempts(), 2);
    assert_eq!(report.reason(), Reason::Success);
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
}
