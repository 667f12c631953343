//! A fault soak: 10,000 requests through the Ollama stack against fake
//! Ollama servers that fail at random from a fixed seed (corpus errors,
//! refused connections, stalls past the attempt timeout, bodies cut mid-way,
//! errors mid-stream).
//!
//! The requests run in 16 lanes; each lane has its own fake server and its
//! own stack, and sends its requests one after another, so every request's
//! script is known and its outcome can be predicted exactly. For every
//! request the test checks that it ends, that its final outcome is the one
//! a plain model of the default policy predicts, and that the fake's log
//! shows exactly the attempts and recoveries that model predicts. At the
//! end no task and no connection is left behind.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};
use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody};
use tower_ollama_retry::ollama::fake::{FakeOllama, Reply, RequestKind};
use tower_ollama_retry::ollama::{Mode, OllamaRecovery, classify_status};
use tower_ollama_retry::{Class, OllamaPolicy, Reason};

const REQUESTS: usize = 10_000;
const LANES: usize = 16;
// Generous, so that a loaded machine never turns a scripted success into a
// timeout; stalls are rare so the soak stays well under a minute.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
const RETRY_DELAY: Duration = Duration::from_millis(3);
const MAX_ATTEMPTS: u32 = 3;

/// One attempt's scripted answer.
#[derive(Clone, Debug)]
enum Fault {
    Ok,
    Corpus(u16, Vec<u8>),
    Hang,
    CloseMidBody,
    StreamError,
}

impl Fault {
    fn reply(&self) -> Reply {
        match self {
            Fault::Ok => Reply::Ok,
            Fault::Corpus(status, body) => Reply::Status {
                status: *status,
                content_type: "application/json; charset=utf-8".into(),
                body: body.clone(),
            },
            Fault::Hang => Reply::Hang,
            Fault::CloseMidBody => Reply::CloseMidBody,
            Fault::StreamError => Reply::StreamError {
                chunks: 2,
                error: "an error was encountered while running the model".into(),
            },
        }
    }

    /// The class the default policy gives this answer.
    fn class(&self) -> Class {
        match self {
            // 200s are successes when the headers arrive; a body that breaks
            // afterwards is the caller's to read.
            Fault::Ok | Fault::CloseMidBody | Fault::StreamError => Class::Success,
            Fault::Corpus(status, body) => classify_status(Mode::Default, *status, body),
            Fault::Hang => Class::Timeout,
        }
    }
}

/// What the caller should see.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// A response: its status, and whether its body read to the end.
    Response(u16, bool),
    /// An error with this stop reason.
    Error(Reason),
}

struct Script {
    refused_first: bool,
    attempts: Vec<Fault>,
}

/// The plain model of `OllamaPolicy::default()`: the answers consumed, the
/// recoveries run and the outcome.
fn model(script: &Script) -> (usize, usize, Outcome) {
    let mut answers = 0;
    let mut recoveries = 0;
    let mut faults = script.attempts.iter();
    for n in 1..=MAX_ATTEMPTS {
        let last = n == MAX_ATTEMPTS;
        let fault = if n == 1 && script.refused_first {
            None
        } else {
            answers += 1;
            faults.next()
        };
        let class = fault.map_or(Class::Connection, Fault::class);
        match class {
            Class::Success => {
                let body_ok = matches!(fault, Some(Fault::Ok | Fault::StreamError));
                return (answers, recoveries, Outcome::Response(200, body_ok));
            }
            Class::Fatal => {
                let Some(Fault::Corpus(status, _)) = fault else {
                    unreachable!()
                };
                return (answers, recoveries, Outcome::Response(*status, true));
            }
            Class::Oom if !last => recoveries += 1,
            _ => {}
        }
        if last {
            let outcome = match fault {
                Some(Fault::Corpus(status, _)) => Outcome::Response(*status, true),
                _ => Outcome::Error(Reason::Exhausted),
            };
            return (answers, recoveries, outcome);
        }
    }
    unreachable!()
}

fn corpus() -> Vec<(u16, Vec<u8>)> {
    include_str!("data/corpus.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let status = v["status"].as_u64().unwrap() as u16;
            (status, v["body"].as_str().unwrap().as_bytes().to_vec())
        })
        .collect()
}

fn scripts(seed: u64, n: usize) -> Vec<Script> {
    let corpus = corpus();
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let attempts = (0..MAX_ATTEMPTS)
                .map(|_| match rng.u32(0..100) {
                    0..58 => Fault::Ok,
                    58..84 => {
                        let (s, b) = &corpus[rng.usize(0..corpus.len())];
                        Fault::Corpus(*s, b.clone())
                    }
                    84..86 => Fault::Hang,
                    86..93 => Fault::CloseMidBody,
                    _ => Fault::StreamError,
                })
                .collect();
            Script {
                refused_first: rng.u32(0..100) < 4,
                attempts,
            }
        })
        .collect()
}

fn body(i: usize) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "model": "qwen2.5:7b", "prompt": format!("request {i}"), "stream": false,
            "keep_alive": -1, "options": {"num_ctx": 16384},
        })
        .to_string(),
    )
}

/// Marks a request whose first attempt goes to a port where nothing
/// listens: a real refused connection, exactly once (the flag is shared by
/// every replayed copy of the request).
#[derive(Clone)]
struct RefuseOnce(std::sync::Arc<std::sync::atomic::AtomicBool>);

async fn lane(lane: usize, scripts: Vec<Script>) -> usize {
    let fake = FakeOllama::start().await.unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let policy = OllamaPolicy::default()
        .with_retry_delay(RETRY_DELAY)
        .with_recovery(
            OllamaRecovery::new()
                .with_settle(Duration::from_millis(200))
                .with_poll_interval(Duration::from_millis(1)),
        );
    let svc = ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy))
        .timeout(ATTEMPT_TIMEOUT)
        .map_request(move |mut req: http::Request<ReplayBody<Full<Bytes>>>| {
            let refuse = req
                .extensions()
                .get::<RefuseOnce>()
                .is_some_and(|f| f.0.swap(false, std::sync::atomic::Ordering::SeqCst));
            if refuse {
                *req.uri_mut() = format!("http://{dead}/api/generate").parse().unwrap();
            }
            req
        })
        .service(client);

    let mut checked = 0;
    for (i, script) in scripts.iter().enumerate() {
        let (answers, recoveries, expected) = model(script);
        for fault in script.attempts.iter().take(answers) {
            fake.push(fault.reply());
        }
        let before = fake.log().len();
        let mut req = http::Request::post(format!("{}/api/generate", fake.url()))
            .header("content-type", "application/json")
            .body(Full::new(body(i)))
            .unwrap();
        if script.refused_first {
            req.extensions_mut()
                .insert(RefuseOnce(std::sync::Arc::new(true.into())));
        }
        let result = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("lane {lane} request {i} hung"));
        let got = match result {
            Ok(res) => {
                let status = res.status().as_u16();

                let body_ok = res.into_body().collect().await.is_ok();
                Outcome::Response(status, body_ok)
            }
            Err(e) => Outcome::Error(e.reason()),
        };
        let log = fake.log();
        let log = &log[before..];
        let generations = log.iter().filter(|e| e.kind.is_generation()).count();
        let unloads = log
            .iter()
            .filter(|e| matches!(e.kind, RequestKind::Unload { .. }))
            .count();
        assert_eq!(
            (generations, unloads, &got),
            (answers, recoveries, &expected),
            "lane {lane} request {i}: refused first {}, script {:?}",
            script.refused_first,
            script.attempts
        );
        assert_eq!(fake.pending_replies(), 0, "lane {lane} request {i}");
        checked += 1;
    }
    drop(svc);
    // Every connection closes once the clients are gone.
    for _ in 0..400 {
        if fake.open_connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.open_connections(), 0, "lane {lane} leaked connections");
    fake.shutdown();
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_through_random_faults() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let per_lane = REQUESTS / LANES;
    let mut lanes = tokio::task::JoinSet::new();
    for l in 0..LANES {
        lanes.spawn(lane(l, scripts(0x5eed + l as u64, per_lane)));
    }
    let total: usize = lanes.join_all().await.into_iter().sum();
    assert_eq!(total, REQUESTS);
    // The servers' and clients' tasks wind down once they are dropped.
    for _ in 0..400 {
        if metrics.num_alive_tasks() <= tasks_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), tasks_before, "tasks leaked");
}

#[test]
fn the_model_agrees_with_the_spec_on_simple_scripts() {
    let s = |refused_first, attempts| Script {
        refused_first,
        attempts,
    };
    let oom = Fault::Corpus(
        500,
        br#"{"error":"llama runner process has terminated: CUDA error: out of memory"}"#.to_vec(),
    );
    assert_eq!(
        model(&s(false, vec![Fault::Ok])),
        (1, 0, Outcome::Response(200, true))
    );
    assert_eq!(
        model(&s(true, vec![oom.clone(), Fault::Ok])),
        (2, 1, Outcome::Response(200, true))
    );
    assert_eq!(
        model(&s(false, vec![Fault::Hang, Fault::Hang, Fault::Hang])),
        (3, 0, Outcome::Error(Reason::Exhausted))
    );
    assert_eq!(
        model(&s(false, vec![oom.clone(), oom.clone(), oom])),
        (3, 2, Outcome::Response(500, true))
    );
}
