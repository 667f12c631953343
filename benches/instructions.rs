//! A fixed number of calls, for counting instructions with callgrind: the
//! deterministic view of the overhead benchmark (timings vary with load;
//! instruction counts do not).
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-<hash> <tower|ours> <success|retry|http|http-retry>
//! valgrind --tool=callgrind target/release/deps/instructions-<hash> engine <success|retry>
//! valgrind --tool=callgrind target/release/deps/instructions-<hash> <bare|tower|ours> loopback
//! ```
//!
//! `http` is the success path over an Ollama-shaped `POST`
//! `http::Request<Full<Bytes>>` answered `200`: `tower::retry` with an
//! equivalent policy against `HttpPolicy::new()`. Building each request is
//! counted on both sides alike. `http-retry` is a `GET` answered 503, then
//! 200, with no delay between.
//!
//! `engine` is our engine under `tower::retry`'s policy (`EngineOnly`: 3
//! attempts, any error retried, nothing classified), to tell the loop's cost
//! from `OllamaPolicy`'s.
//!
//! Each service goes through `black_box`, as in the overhead benchmark, so
//! that its policy is not folded into constants.
//!
//! Divide the total by the calls (1,000,000) for instructions per call; the
//! program's start-up adds well under one instruction per call.
//!
//! `loopback` is the loopback benchmark's request, counted: real HTTP/1
//! over `127.0.0.1`, a hyper server and a hyper-util client in one
//! single-threaded runtime, 64 warm-up requests and then 10,000, 64 in
//! flight. `bare` is the client alone, `tower` the client under
//! `tower::retry`, `ours` under `HttpRetryLayer::new(OllamaPolicy::default())`.
//! Divide by 10,064 for instructions per request, start-up included (the
//! same for all three). A `memcpy` of a moved future counts one instruction
//! per few bytes, so the counts weigh moves more than time does.

mod support;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::hint::black_box;
use std::time::Duration;
use support::http::{Busy503Once, Ok200, TowerHttp, http_policy_no_delay, request};
use support::{Echo, EngineOnly, FailOnce, TowerAttempts, call_now};
use tower_ollama_retry::http::HttpPolicy;
use tower_ollama_retry::{OllamaPolicy, Retry};

const CALLS: u64 = 1_000_000;

const USAGE: &str = "usage: instructions <tower|ours> <success|retry|http|http-retry>, engine <success|retry>, or <bare|tower|ours> loopback";

/// Requests the `loopback` case sends, after [`support::loopback::IN_FLIGHT`]
/// to warm up.
const LOOPBACK_REQUESTS: u64 = 10_000;

/// Warms `svc` up, then sends [`LOOPBACK_REQUESTS`], from a spawned task
/// as a server's handlers run (a `block_on`'s own future is not a task).
async fn in_task<S, B>(svc: S, uri: http::Uri)
where
    S: tower_service::Service<http::Request<Full<Bytes>>, Response = http::Response<B>>
        + Clone
        + 'static,
    S::Error: std::fmt::Debug,
    B: http_body::Body + 'static,
    B::Error: std::fmt::Debug,
{
    use support::loopback::{IN_FLIGHT, run};
    let task = tokio::task::spawn_local(async move {
        run(svc.clone(), uri.clone(), IN_FLIGHT as u64).await;
        run(svc, uri, LOOPBACK_REQUESTS).await;
    });
    task.await.expect("the requests succeed");
}

/// Real HTTP/1 over `127.0.0.1` on a single-threaded runtime, so that the
/// count does not depend on how two threads interleave: the hyper-util
/// client alone (`bare`), under `tower::retry`, or under the whole Ollama
/// stack (`ours`), with the server in the same process.
fn loopback(which: &str) {
    use support::loopback::{TowerAttempts, connector, start_server};
    use tower::ServiceBuilder;
    use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&rt, async {
        let addr = start_server().await;
        let uri: http::Uri = format!("http://{addr}/api/generate")
            .parse()
            .expect("a URI");
        let builder = Client::builder(TokioExecutor::new());
        match which {
            "bare" => {
                let client = black_box(builder.build::<_, Full<Bytes>>(connector()));
                in_task(client, uri).await;
            }
            "tower" => {
                let svc = black_box(tower::retry::Retry::new(
                    TowerAttempts(2),
                    builder.build::<_, Full<Bytes>>(connector()),
                ));
                in_task(svc, uri).await;
            }
            "ours" => {
                let svc = black_box(
                    ServiceBuilder::new()
                        .layer(HttpRetryLayer::new(OllamaPolicy::default()))
                        .service(builder.build::<_, ReplayBody<Full<Bytes>>>(connector())),
                );
                in_task(svc, uri).await;
            }
            _ => eprintln!("{USAGE}"),
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (which, path) = (args.next(), args.next());
    let (Some(which), Some(path)) = (which, path) else {
        // `cargo bench` runs every bench binary with `--bench`: nothing to
        // count then.
        eprintln!("{USAGE}");
        return;
    };
    let ours = || OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    match (which.as_str(), path.as_str()) {
        ("tower", "success") => {
            let mut svc = black_box(tower::retry::Retry::new(TowerAttempts::three(), Echo));
            for i in 0..CALLS {
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("ours", "success") => {
            let mut svc = black_box(Retry::new(Echo, ours()));
            for i in 0..CALLS {
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("tower", "retry") => {
            let inner = FailOnce::default();
            let mut svc = black_box(tower::retry::Retry::new(
                TowerAttempts::three(),
                inner.clone(),
            ));
            for i in 0..CALLS {
                inner.calls.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("ours", "retry") => {
            let inner = FailOnce::default();
            let mut svc = black_box(Retry::new(inner.clone(), ours()));
            for i in 0..CALLS {
                inner.calls.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("engine", "success") => {
            let mut svc = black_box(Retry::new(Echo, EngineOnly));
            for i in 0..CALLS {
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("engine", "retry") => {
            let inner = FailOnce::default();
            let mut svc = black_box(Retry::new(inner.clone(), EngineOnly));
            for i in 0..CALLS {
                inner.calls.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("tower", "http") => {
            let mut svc = black_box(tower::retry::Retry::new(TowerHttp::three(), Ok200));
            for _ in 0..CALLS {
                black_box(call_now(&mut svc, black_box(request(Method::POST)))).unwrap();
            }
        }
        ("ours", "http") => {
            let mut svc = black_box(Retry::new(Ok200, HttpPolicy::new()));
            for _ in 0..CALLS {
                black_box(call_now(&mut svc, black_box(request(Method::POST)))).unwrap();
            }
        }
        ("tower", "http-retry") => {
            let inner = Busy503Once::default();
            let mut svc = black_box(tower::retry::Retry::new(TowerHttp::three(), inner.clone()));
            for _ in 0..CALLS {
                inner.calls.reset();
                black_box(call_now(&mut svc, black_box(request(Method::GET)))).unwrap();
            }
        }
        ("ours", "http-retry") => {
            let inner = Busy503Once::default();
            let mut svc = black_box(Retry::new(inner.clone(), http_policy_no_delay()));
            for _ in 0..CALLS {
                inner.calls.reset();
                black_box(call_now(&mut svc, black_box(request(Method::GET)))).unwrap();
            }
        }
        (which, "loopback") => loopback(which),
        _ => eprintln!("{USAGE}"),
    }
}
