//! The cost of the retry middleware itself, next to `tower::retry`.
//!
//! Every inner service here answers at once (`poll_ready` is always
//! `Ready`, the future is `std::future::Ready`), and each call is driven by
//! polling it once with a no-op waker, without a runtime: what is measured is
//! the middleware, not an executor. Both `tower::retry::Retry` and ours clone
//! the inner service (and the policy) once per call; the services here are
//! zero-sized or one `Arc`, so that costs the same for both.
//!
//! - `success_path`: the first attempt succeeds. Over `u64` (`bare`,
//!   `tower_retry`, `ours_ollama` with `OllamaPolicy::plain()`) and over an
//!   Ollama-shaped `POST` `http::Request<Full<Bytes>>` answered `200`
//!   (`bare_http`, `tower_retry_http`, `ours_http` with `HttpPolicy::new()`,
//!   and `ollama_stack_http`: the whole
//!   `HttpRetryLayer::new(OllamaPolicy::default())`). HTTP requests are built
//!   outside the timed region (`iter_batched`).
//! - `one_retry`: the first attempt fails with a retryable error (a timeout;
//!   a 503 for a `GET` over HTTP), the second succeeds, with no delay (our
//!   engine skips the timer for a zero delay, so this still completes in one
//!   poll; `main` checks it does).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench overhead
//! ```

use criterion::{BatchSize, Criterion};
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower_ollama_retry::{OllamaError, OllamaPolicy, Retry};
use tower_service::Service;

/// Calls `svc` once: `poll_ready`, `call`, one poll of the future. Panics if
/// anything would need a runtime.
#[inline(always)]
fn call_now<S: Service<Req>, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("poll_ready was not ready"),
    }
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the call needs a runtime"),
    }
}

/// Answers `req + 1` at once.
#[derive(Clone, Copy, Debug)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req.wrapping_add(1)))
    }
}

/// Fails its first call (since the last reset) with a timeout, then
/// answers `req + 1`.
#[derive(Clone, Debug, Default)]
struct FailOnce {
    calls: Arc<AtomicU32>,
}

impl FailOnce {
    fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
    }
}

impl Service<u64> for FailOnce {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            ready(Err(OllamaError::timeout("read timed out")))
        } else {
            ready(Ok(req.wrapping_add(1)))
        }
    }
}

/// `tower::retry` doing what `OllamaPolicy::plain()` does here: 3 attempts
/// in total, a retry on any error, no delay.
#[derive(Clone, Copy, Debug)]
struct TowerAttempts {
    retries_left: u32,
}

impl TowerAttempts {
    const fn three() -> Self {
        Self { retries_left: 2 }
    }
}

impl<Res, E> tower::retry::Policy<u64, Res, E> for TowerAttempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<Res, E>) -> Option<Ready<()>> {
        match result {
            Err(_) if self.retries_left > 0 => {
                self.retries_left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_millis(2500))
        .sample_size(20)
}

fn success_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("success_path");

    let mut bare = Echo;
    g.bench_function("bare", |b| b.iter(|| call_now(&mut bare, black_box(7))));

    let mut tower = tower::retry::Retry::new(TowerAttempts::three(), Echo);
    g.bench_function("tower_retry", |b| {
        b.iter(|| call_now(&mut tower, black_box(7)))
    });

    let mut ours = Retry::new(Echo, OllamaPolicy::plain());
    assert_eq!(call_now(&mut tower, 7).unwrap(), 8);
    assert_eq!(call_now(&mut ours, 7).unwrap(), 8);
    g.bench_function("ours_ollama", |b| {
        b.iter(|| call_now(&mut ours, black_box(7)))
    });

    #[cfg(feature = "http")]
    http::success(&mut g);

    g.finish();
}

fn one_retry(c: &mut Criterion) {
    let mut g = c.benchmark_group("one_retry");

    let inner = FailOnce::default();
    let mut tower = tower::retry::Retry::new(TowerAttempts::three(), inner.clone());
    let policy = OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    let mut ours = Retry::new(inner.clone(), policy);

    // Both retry once and succeed, without a runtime.
    inner.reset();
    assert_eq!(call_now(&mut tower, 7).map_err(|e| e.to_string()), Ok(8));
    assert_eq!(
        inner.calls.load(Ordering::Relaxed),
        2,
        "one failure, one success"
    );
    inner.reset();
    assert_eq!(call_now(&mut ours, 7).map_err(|e| e.to_string()), Ok(8));
    assert_eq!(
        inner.calls.load(Ordering::Relaxed),
        2,
        "one failure, one success"
    );

    g.bench_function("tower_retry", |b| {
        b.iter(|| {
            inner.reset();
            call_now(&mut tower, black_box(7)).unwrap()
        })
    });
    g.bench_function("ours_ollama", |b| {
        b.iter(|| {
            inner.reset();
            call_now(&mut ours, black_box(7)).unwrap()
        })
    });

    #[cfg(feature = "http")]
    http::one_retry(&mut g);

    g.finish();
}

#[cfg(feature = "http")]
mod http {
    //! The same over `http::Request<Full<Bytes>>`: an Ollama-shaped `POST`
    //! with a JSON body and a `content-type` header, answered `200`.

    use super::{BatchSize, Ready, call_now, ready};
    use bytes::Bytes;
    use criterion::BenchmarkGroup;
    use criterion::measurement::WallTime;
    use http::header::CONTENT_TYPE;
    use http::{HeaderValue, Method, Request, Response, Uri};
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tower::Layer;
    use tower_ollama_retry::backoff::Constant;
    use tower_ollama_retry::http::{HttpPolicy, HttpRetryLayer};
    use tower_ollama_retry::{BoxError, OllamaPolicy, Retry};
    use tower_service::Service;

    const PROMPT: &[u8] = br#"{"model":"llama3","prompt":"Why is the sky blue?","stream":false}"#;
    const ANSWER: &[u8] = br#"{"model":"llama3","response":"Rayleigh scattering.","done":true}"#;

    pub(super) type Req = Request<Full<Bytes>>;
    pub(super) type Res = Response<Full<Bytes>>;

    /// The request every iteration sends (built outside the timed region).
    pub(super) fn request(method: Method) -> Req {
        let mut req = Request::new(Full::new(Bytes::from_static(PROMPT)));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("http://127.0.0.1:11434/api/generate");
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req
    }

    fn response(status: u16) -> Res {
        let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
        *res.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
        res
    }

    /// Answers 200 at once.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Ok200;

    // Any body: the whole Ollama stack hands it `ReplayBody<Full<Bytes>>`.
    impl<B> Service<Request<B>> for Ok200 {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<B>) -> Self::Future {
            ready(Ok(response(200)))
        }
    }

    /// Answers 503 to its first call since the last reset, then 200.
    #[derive(Clone, Debug, Default)]
    pub(super) struct Busy503Once {
        pub(super) calls: Arc<AtomicU32>,
    }

    impl Busy503Once {
        pub(super) fn reset(&self) {
            self.calls.store(0, Ordering::Relaxed);
        }
    }

    impl Service<Req> for Busy503Once {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            let first = self.calls.fetch_add(1, Ordering::Relaxed) == 0;
            ready(Ok(response(if first { 503 } else { 200 })))
        }
    }

    /// `tower::retry` doing what `HttpPolicy` does here: 3 attempts, a retry
    /// on an error or a 5xx, no delay, and the request copied the way
    /// `replay_request` copies it (method, URI, version, headers,
    /// extensions, body).
    #[derive(Clone, Copy, Debug)]
    pub(super) struct TowerHttp {
        retries_left: u32,
    }

    impl TowerHttp {
        pub(super) const fn three() -> Self {
            Self { retries_left: 2 }
        }
    }

    impl<E> tower::retry::Policy<Req, Res, E> for TowerHttp {
        type Future = Ready<()>;

        fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Ready<()>> {
            let failed = match result {
                Ok(res) => res.status().is_server_error(),
                Err(_) => true,
            };
            if failed && self.retries_left > 0 {
                self.retries_left -= 1;
                Some(ready(()))
            } else {
                None
            }
        }

        fn clone_request(&mut self, req: &Req) -> Option<Req> {
            let mut copy = Request::new(req.body().clone());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            *copy.extensions_mut() = req.extensions().clone();
            Some(copy)
        }
    }

    /// `HttpPolicy` with no delay between attempts.
    pub(super) fn http_policy_no_delay() -> HttpPolicy<Constant> {
        HttpPolicy::new().with_backoff(Constant::new(Duration::ZERO))
    }

    fn bench<S>(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, svc: &mut S, method: &Method)
    where
        S: Service<Req>,
        S::Error: std::fmt::Debug,
    {
        g.bench_function(name, |b| {
            b.iter_batched(
                || request(method.clone()),
                |req| call_now(svc, req).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }

    pub(super) fn success(g: &mut BenchmarkGroup<'_, WallTime>) {
        let post = Method::POST;
        bench(g, "bare_http", &mut Ok200, &post);
        bench(
            g,
            "tower_retry_http",
            &mut tower::retry::Retry::new(TowerHttp::three(), Ok200),
            &post,
        );
        bench(
            g,
            "ours_http",
            &mut Retry::new(Ok200, HttpPolicy::new()),
            &post,
        );
        // The whole Ollama stack (replay, retry, peek) in front of the
        // same in-memory service, as `http_loopback` runs it.
        let mut stack = HttpRetryLayer::new(OllamaPolicy::default()).layer(Ok200);
        assert_eq!(
            call_now(&mut stack, request(post.clone()))
                .unwrap()
                .status(),
            200
        );
        bench(g, "ollama_stack_http", &mut stack, &post);
    }

    pub(super) fn one_retry(g: &mut BenchmarkGroup<'_, WallTime>) {
        // A GET: `HttpPolicy` retries only idempotent methods by default.
        let get = Method::GET;
        let inner = Busy503Once::default();
        let mut tower = tower::retry::Retry::new(TowerHttp::three(), inner.clone());
        let mut ours = Retry::new(inner.clone(), http_policy_no_delay());

        // Both retry once and answer 200, without a runtime.
        assert_eq!(
            call_now(&mut tower, request(get.clone())).unwrap().status(),
            200
        );
        assert_eq!(inner.calls.load(Ordering::Relaxed), 2);
        inner.reset();
        assert_eq!(
            call_now(&mut ours, request(get.clone())).unwrap().status(),
            200
        );
        assert_eq!(inner.calls.load(Ordering::Relaxed), 2);
        inner.reset();
        g.bench_function("tower_retry_http", |b| {
            b.iter_batched(
                || request(get.clone()),
                // The reset goes in the routine: `iter_batched` runs the
                // setup for a whole batch first.
                |req| {
                    inner.reset();
                    call_now(&mut tower, req).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("ours_http", |b| {
            b.iter_batched(
                || request(get.clone()),
                |req| {
                    inner.reset();
                    call_now(&mut ours, req).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
}

fn main() {
    let mut c = config().configure_from_args();
    success_path(&mut c);
    one_retry(&mut c);
    c.final_summary();
}
