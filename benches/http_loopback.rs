//! Loopback HTTP throughput: a hyper-util legacy `Client` alone, the same
//! client under `tower::retry::Retry` (3 attempts, retrying errors and 5xx,
//! copying each request the way ours does), and under the whole Ollama
//! stack, `HttpRetryLayer::new(OllamaPolicy::default())` (replay, retry,
//! peek). Any tower retry layer clones the inner service for every request
//! (the future must own a ready one); a hyper-util `Client` clone is four
//! reference counts, which `tower_retry` shows on its own.
//!
//! A hyper 1 HTTP/1 server on `127.0.0.1:0` reads each request body and
//! answers `200` with an Ollama-shaped `/api/generate` JSON body of about
//! 300 bytes. The client keeps 64 requests in flight, each an Ollama-shaped
//! `POST` with a JSON body, and reads each response body to its end.
//! Criterion reports the throughput as elements (requests) per second.
//!
//! Under `cargo bench` (which passes `--bench`), an interleaved A/B run
//! follows criterion's: rounds of bare, stack, bare, stack, ... and the
//! median requests per second of each, so that the ratio does not depend on
//! which variant ran while the machine was busier.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench http_loopback
//! ```

mod support;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::loopback::{ACCEPTED, IN_FLIGHT, TowerAttempts, connector, request, run};
use tokio::runtime::Runtime;
use tower::{ServiceBuilder, ServiceExt};
use tower_ollama_retry::OllamaPolicy;
use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody};
use tower_service::Service;

/// [`run`] on one of the runtime's workers, so that the client, its
/// connection tasks and the server share the same two threads.
fn run_on<S, B>(rt: &Runtime, svc: &S, uri: &Uri, n: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Debug,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Debug,
{
    let (svc, uri) = (svc.clone(), uri.clone());
    let driver = rt.spawn(async move {
        let start = Instant::now();
        run(svc, uri, n).await;
        start.elapsed()
    });
    rt.block_on(driver).expect("the driver does not panic")
}

/// CPU time this process's live threads have run, in nanoseconds (Linux
/// `schedstat`), or `None` where that is not available. Less sensitive than
/// wall time to what else the machine runs.
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn rps(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let addr = rt.block_on(support::loopback::start_server());
    let uri: Uri = format!("http://{addr}/api/generate")
        .parse()
        .expect("a URI");

    // Built inside the runtime: the client's pool spawns its idle reaper.
    let (bare, tower_retry, stack) = rt.block_on(async {
        let bare: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector());
        let tower_retry = tower::retry::Retry::new(
            TowerAttempts(2),
            Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector()),
        );
        let client: Client<_, ReplayBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build(connector());
        let stack = ServiceBuilder::new()
            .layer(HttpRetryLayer::new(OllamaPolicy::default()))
            .service(client);
        (bare, tower_retry, stack)
    });

    // What each request's future weighs: it is moved into the task set
    // (here a `FuturesUnordered`), and the layers move it as they build it.
    rt.block_on(async {
        let bare_size = size_of_val(&bare.clone().oneshot(request(&uri)));
        let stack_size = size_of_val(&stack.clone().oneshot(request(&uri)));
        println!("request future size: bare_client {bare_size} B, ollama_stack {stack_size} B");
    });

    // Both work before anything is timed.
    run_on(&rt, &bare, &uri, IN_FLIGHT as u64);
    run_on(&rt, &tower_retry, &uri, IN_FLIGHT as u64);
    run_on(&rt, &stack, &uri, IN_FLIGHT as u64);

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    {
        let mut g = c.benchmark_group("http_loopback");
        g.throughput(Throughput::Elements(1));
        g.bench_function("bare_client", |b| {
            b.iter_custom(|n| run_on(&rt, &bare, &uri, n))
        });
        g.bench_function("tower_retry", |b| {
            b.iter_custom(|n| run_on(&rt, &tower_retry, &uri, n))
        });
        g.bench_function("ollama_stack", |b| {
            b.iter_custom(|n| run_on(&rt, &stack, &uri, n))
        });
        g.finish();
    }
    c.final_summary();

    // Interleaved rounds, only under `cargo bench` (not `--profile-time`):
    // each round runs the three variants, in an order that rotates, so that
    // none always runs while the machine is busier.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--profile-time") {
        const ROUNDS: usize = 9;
        const PER_ROUND: u64 = 8_000;
        const NAMES: [&str; 3] = ["bare_client", "tower_retry", "ollama_stack"];
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut cpus: [Vec<f64>; 3] = Default::default();
        let mut opened = [0; 3];
        let (mut stack_ratios, mut tower_ratios) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let mut rate = [0.0; 3];
            for turn in 0..3 {
                let which = (round + turn) % 3;
                let before = ACCEPTED.load(Ordering::Relaxed);
                let cpu_before = cpu_ns();
                let took = match which {
                    0 => run_on(&rt, &bare, &uri, PER_ROUND),
                    1 => run_on(&rt, &tower_retry, &uri, PER_ROUND),
                    _ => run_on(&rt, &stack, &uri, PER_ROUND),
                };
                let cpu = cpu_before
                    .zip(cpu_ns())
                    .map(|(b, a)| (a - b) as f64 / PER_ROUND as f64);
                opened[which] += ACCEPTED.load(Ordering::Relaxed) - before;
                rate[which] = rps(PER_ROUND, took);
                rates[which].push(rate[which]);
                cpus[which].push(cpu.unwrap_or(f64::NAN));
            }
            tower_ratios.push(rate[1] / rate[0]);
            stack_ratios.push(rate[2] / rate[0]);
        }
        let rate = rates.map(median);
        let cpu = cpus.map(|c| median(c) / 1000.0);
        println!(
            "interleaved rounds, {ROUNDS} of {PER_ROUND} requests each, {IN_FLIGHT} in flight (medians):"
        );
        for i in 0..3 {
            println!(
                "  {:<13} {:>7.0} req/s  {:>6.2} us CPU per request  ({:+.2} us)  {} connections opened",
                NAMES[i],
                rate[i],
                cpu[i],
                cpu[i] - cpu[0],
                opened[i]
            );
        }
        println!(
            "  per-round ratio to bare_client: tower_retry {:.3}, ollama_stack {:.3}",
            median(tower_ratios),
            median(stack_ratios)
        );
        println!(
            "  ({} connections accepted in all)",
            ACCEPTED.load(Ordering::Relaxed)
        );
    }
}
