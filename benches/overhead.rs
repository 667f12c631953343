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
//!   poll; `main` checks it does). `ours_engine` is our engine under
//!   `tower::retry`'s policy (`EngineOnly`: retry any error, nothing
//!   classified), to tell the loop's cost from `OllamaPolicy`'s.
//!
//! Every service is built through `black_box`, as one read from
//! configuration at run time would be: otherwise the compiler sees the
//! policy's constant fields and folds its per-request clone away, which no
//! real server gets.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench overhead
//! ```

use criterion::{BatchSize, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tower_ollama_retry::{OllamaPolicy, Retry};

mod support;

use support::{Echo, EngineOnly, FailOnce, TowerAttempts, call_now};

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

    let mut tower = black_box(tower::retry::Retry::new(TowerAttempts::three(), Echo));
    g.bench_function("tower_retry", |b| {
        b.iter(|| call_now(&mut tower, black_box(7)))
    });

    let mut ours = black_box(Retry::new(Echo, OllamaPolicy::plain()));
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
    let mut tower = black_box(tower::retry::Retry::new(
        TowerAttempts::three(),
        inner.clone(),
    ));
    let policy = OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    let mut ours = black_box(Retry::new(inner.clone(), policy));

    // Both retry once and succeed, without a runtime.
    inner.calls.reset();
    assert_eq!(call_now(&mut tower, 7).map_err(|e| e.to_string()), Ok(8));
    assert_eq!(inner.calls.count(), 2, "one failure, one success");
    inner.calls.reset();
    assert_eq!(call_now(&mut ours, 7).map_err(|e| e.to_string()), Ok(8));
    assert_eq!(inner.calls.count(), 2, "one failure, one success");

    g.bench_function("tower_retry", |b| {
        b.iter(|| {
            inner.calls.reset();
            call_now(&mut tower, black_box(7)).unwrap()
        })
    });
    g.bench_function("ours_ollama", |b| {
        b.iter(|| {
            inner.calls.reset();
            call_now(&mut ours, black_box(7)).unwrap()
        })
    });
    // The engine under tower's policy: what the loop costs apart from what
    // `OllamaPolicy` classifies.
    let mut engine = black_box(Retry::new(inner.clone(), EngineOnly));
    inner.calls.reset();
    assert_eq!(call_now(&mut engine, 7).map_err(|e| e.to_string()), Ok(8));
    g.bench_function("ours_engine", |b| {
        b.iter(|| {
            inner.calls.reset();
            call_now(&mut engine, black_box(7)).unwrap()
        })
    });

    #[cfg(feature = "http")]
    http::one_retry(&mut g);

    g.finish();
}

#[cfg(feature = "http")]
mod http {
    use super::support::http::*;
    use super::{BatchSize, black_box, call_now};
    use criterion::BenchmarkGroup;
    use criterion::measurement::WallTime;
    use http::Method;
    use std::time::{Duration, Instant};
    use tower::Layer;
    use tower_ollama_retry::http::{HttpPolicy, HttpRetryLayer};
    use tower_ollama_retry::{OllamaPolicy, Retry};
    use tower_service::Service;
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
            &mut black_box(tower::retry::Retry::new(TowerHttp::three(), Ok200)),
            &post,
        );
        bench(
            g,
            "ours_http",
            &mut black_box(Retry::new(Ok200, HttpPolicy::new())),
            &post,
        );
        // The whole Ollama stack (replay, retry, peek) in front of the
        // same in-memory service, as `http_loopback` runs it: inside a
        // tokio task, as a server's or a client's requests are (that is
        // where `ReplayService` reads a body in memory inside `call`).
        g.bench_function("ollama_stack_http", |b| {
            b.iter_custom(|n| in_a_task(move || stack_calls(n)))
        });
    }

    /// `n` calls of the whole stack, timing only the calls.
    fn stack_calls(n: u64) -> Duration {
        const BATCH: u64 = 1024;
        let mut stack = black_box(HttpRetryLayer::new(OllamaPolicy::default()).layer(Ok200));
        let mut took = Duration::ZERO;
        let mut left = n;
        while left > 0 {
            let batch: Vec<Req> = (0..left.min(BATCH))
                .map(|_| request(Method::POST))
                .collect();
            left -= batch.len() as u64;
            let start = Instant::now();
            for req in batch {
                let res = call_now(&mut stack, req).unwrap();
                assert_eq!(black_box(res).status(), 200);
            }
            took += start.elapsed();
        }
        took
    }

    /// Runs `f` inside a task of a current-thread tokio runtime.
    fn in_a_task<T: 'static>(f: impl FnOnce() -> T + 'static) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let tasks = tokio::task::LocalSet::new();
        tasks
            .block_on(&rt, async {
                tokio::task::spawn_local(async move { f() }).await
            })
            .expect("the task does not panic")
    }

    pub(super) fn one_retry(g: &mut BenchmarkGroup<'_, WallTime>) {
        // A GET: `HttpPolicy` retries only idempotent methods by default.
        let get = Method::GET;
        let inner = Busy503Once::default();
        let mut tower = black_box(tower::retry::Retry::new(TowerHttp::three(), inner.clone()));
        let mut ours = black_box(Retry::new(inner.clone(), http_policy_no_delay()));

        // Both retry once and answer 200, without a runtime.
        assert_eq!(
            call_now(&mut tower, request(get.clone())).unwrap().status(),
            200
        );
        assert_eq!(inner.calls.count(), 2);
        inner.calls.reset();
        assert_eq!(
            call_now(&mut ours, request(get.clone())).unwrap().status(),
            200
        );
        assert_eq!(inner.calls.count(), 2);
        inner.calls.reset();
        g.bench_function("tower_retry_http", |b| {
            b.iter_batched(
                || request(get.clone()),
                // The reset goes in the routine: `iter_batched` runs the
                // setup for a whole batch first.
                |req| {
                    inner.calls.reset();
                    call_now(&mut tower, req).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("ours_http", |b| {
            b.iter_batched(
                || request(get.clone()),
                |req| {
                    inner.calls.reset();
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
