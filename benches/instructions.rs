//! A fixed number of calls, for counting instructions with callgrind: the
//! deterministic view of the overhead benchmark (timings vary with load;
//! instruction counts do not).
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-<hash> <tower|ours> <success|retry|http|http-retry>
//! ```
//!
//! `http` is the success path over an Ollama-shaped `POST`
//! `http::Request<Full<Bytes>>` answered `200`: `tower::retry` with an
//! equivalent policy against `HttpPolicy::new()`. Building each request is
//! counted on both sides alike. `http-retry` is a `GET` answered 503, then
//! 200, with no delay between.
//!
//! Each service goes through `black_box`, as in the overhead benchmark, so
//! that its policy is not folded into constants.
//!
//! Divide the total by the calls (1,000,000) for instructions per call; the
//! program's start-up adds well under one instruction per call.

mod support;

use http::Method;
use std::hint::black_box;
use std::time::Duration;
use support::http::{Busy503Once, Ok200, TowerHttp, http_policy_no_delay, request};
use support::{Echo, FailOnce, TowerAttempts, call_now};
use tower_ollama_retry::http::HttpPolicy;
use tower_ollama_retry::{OllamaPolicy, Retry};

const CALLS: u64 = 1_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let (which, path) = (args.next(), args.next());
    let (Some(which), Some(path)) = (which, path) else {
        // `cargo bench` runs every bench binary with `--bench`: nothing to
        // count then.
        eprintln!("usage: instructions <tower|ours> <success|retry|http|http-retry>");
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
                inner.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("ours", "retry") => {
            let inner = FailOnce::default();
            let mut svc = black_box(Retry::new(inner.clone(), ours()));
            for i in 0..CALLS {
                inner.reset();
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
                inner.reset();
                black_box(call_now(&mut svc, black_box(request(Method::GET)))).unwrap();
            }
        }
        ("ours", "http-retry") => {
            let inner = Busy503Once::default();
            let mut svc = black_box(Retry::new(inner.clone(), http_policy_no_delay()));
            for _ in 0..CALLS {
                inner.reset();
                black_box(call_now(&mut svc, black_box(request(Method::GET)))).unwrap();
            }
        }
        _ => eprintln!("usage: instructions <tower|ours> <success|retry|http|http-retry>"),
    }
}
