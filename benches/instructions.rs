//! A fixed number of calls, for counting instructions with callgrind: the
//! deterministic view of the overhead benchmark (timings vary with load;
//! instruction counts do not).
//!
//! ```text
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind target/release/deps/instructions-<hash> <tower|ours> <success|retry>
//! ```
//!
//! Divide the total by the calls (1,000,000) for instructions per call; the
//! program's start-up adds well under one instruction per call.

mod support;

use std::hint::black_box;
use std::time::Duration;
use support::{Echo, FailOnce, TowerAttempts, call_now};
use tower_ollama_retry::{OllamaPolicy, Retry};

const CALLS: u64 = 1_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let (which, path) = (args.next(), args.next());
    let (Some(which), Some(path)) = (which, path) else {
        // `cargo bench` runs every bench binary with `--bench`: nothing to
        // count then.
        eprintln!("usage: instructions <tower|ours> <success|retry>");
        return;
    };
    let ours = || OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    match (which.as_str(), path.as_str()) {
        ("tower", "success") => {
            let mut svc = tower::retry::Retry::new(TowerAttempts::three(), Echo);
            for i in 0..CALLS {
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("ours", "success") => {
            let mut svc = Retry::new(Echo, ours());
            for i in 0..CALLS {
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("tower", "retry") => {
            let inner = FailOnce::default();
            let mut svc = tower::retry::Retry::new(TowerAttempts::three(), inner.clone());
            for i in 0..CALLS {
                inner.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        ("ours", "retry") => {
            let inner = FailOnce::default();
            let mut svc = Retry::new(inner.clone(), ours());
            for i in 0..CALLS {
                inner.reset();
                black_box(call_now(&mut svc, black_box(i))).unwrap();
            }
        }
        _ => eprintln!("usage: instructions <tower|ours> <success|retry>"),
    }
}
