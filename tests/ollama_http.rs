//! `OllamaPolicy` through the real HTTP stack: hyper-util's legacy client on
//! loopback, a per-attempt `tower::timeout`, and `HttpRetryLayer`, against
//! the embedded fake Ollama server (and, for a body cut mid-peek, a raw TCP
//! server written here).
//!
//! Real sockets and a paused clock do not mix, so these tests run on real
//! time with millisecond-scale delays, and assert orderings and minimum gaps
//! with generous upper bounds.

#![cfg(feature = "test-util")]

mod common;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_ollama_retry::http::HttpRetryLayer;
use tower_ollama_retry::ollama::fake::{DEFAULT_RESPONSE, FakeOllama, Reply, RequestKind};
use tower_ollama_retry::ollama::{Mode, OllamaRecovery};
use tower_ollama_retry::{Class, OllamaPolicy, Reason, RetryError};

use common::*;

const PROMPT: &str = "Document this function: fn add(a: i32, b: i32) -> i32 { a + b }";
/// Timer and scheduling slack for minimum gaps.
const SLACK: Duration = ms(10);
/// The generous upper bound added to every expected gap.
const LONG: Duration = Duration::from_secs(2);

fn codeworm(delay: Duration) -> OllamaPolicy {
    OllamaPolicy::codeworm().with_retry_delay(delay)
}

fn default_mode(delay: Duration) -> OllamaPolicy {
    OllamaPolicy::default().with_retry_delay(delay)
}

fn policy_in(mode: Mode, delay: Duration) -> OllamaPolicy {
    OllamaPolicy::default().mode(mode).with_retry_delay(delay)
}

/// The corpus row `id` as a scripted reply.
fn corpus_reply(id: &str) -> Reply {
    Reply::corpus()
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no corpus row {id}"))
        .1
}

/// The exact body bytes of a `Reply::Status`.
fn reply_body(reply: &Reply) -> Vec<u8> {
    match reply {
        Reply::Status { body, .. } => body.clone(),
        other => panic!("not a status reply: {other:?}"),
    }
}

fn report_of(got: &Got) -> &tower_ollama_retry::Report {
    got.report
        .as_ref()
        .expect("the response carries a Report extension")
}

fn classes(report: &tower_ollama_retry::Report) -> Vec<Class> {
    report.classes().collect()
}

fn delays(report: &tower_ollama_retry::Report) -> Vec<Duration> {
    report.failures().iter().map(|f| f.delay).collect()
}

/// Whether `err`'s `source()` chain holds a hyper-util connect error.
fn chain_has_connect_error(err: &RetryError) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>()
            && h.is_connect()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether `err`'s `source()` chain holds an `io::Error` of `kind`.
fn chain_has_io(err: &RetryError, kind: std::io::ErrorKind) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

// ----- 1. every corpus row, in both modes -------------------------------------

#[derive(Debug)]
struct Row {
    id: String,
    status: u16,
    content_type: String,
    body: String,
    codeworm: String,
    default: String,
}

fn corpus_rows() -> Vec<Row> {
    include_str!("data/corpus.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a corpus line is JSON");
            let s = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| panic!("corpus field {k} in {l}"))
                    .to_owned()
            };
            Row {
                id: s("id"),
                status: u16::try_from(v["status"].as_u64().unwrap()).unwrap(),
                content_type: s("content_type"),
                body: s("body"),
                codeworm: s("codeworm"),
                default: s("default"),
            }
        })
        .collect()
}

#[tokio::test]
async fn every_corpus_row_in_both_modes() {
    let rows = corpus_rows();
    let replies: HashMap<String, Reply> = Reply::corpus().into_iter().collect();
    assert!(rows.len() >= 13, "the corpus has {} rows", rows.len());
    assert_eq!(
        rows.len(),
        replies.len(),
        "Reply::corpus() parses every row"
    );
    let mut seen = HashMap::<String, usize>::new();
    for row in &rows {
        for mode in [Mode::CodeWorm, Mode::Default] {
            let expected = match mode {
                Mode::CodeWorm => row.codeworm.as_str(),
                Mode::Default => row.default.as_str(),
            };
            *seen.entry(expected.to_owned()).or_default() += 1;
            let ctx = format!("{} in {mode:?} mode, expected {expected}", row.id);

            let fake = FakeOllama::start().await.unwrap();
            fake.push_many([replies[&row.id].clone(), Reply::Ok, Reply::Ok]);
            let (runs, hook) = counting_hook();
            let svc = stack(
                HttpRetryLayer::new(policy_in(mode, ms(20)).with_recovery(hook)),
                ms(2000),
                client(),
            );
            let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let runs = runs.load(Ordering::SeqCst);
            let gens = fake.generation_count();
            match expected {
                "oom" => {
                    assert_eq!(runs, 1, "{ctx}: one recovery");
                    assert_eq!(gens, 2, "{ctx}: the second attempt");
                    assert_eq!(got.status, 200, "{ctx}");
                    assert_eq!(got.json()["response"], DEFAULT_RESPONSE, "{ctx}");
                    let report = report_of(&got);
                    assert_eq!(classes(report), [Class::Oom], "{ctx}");
                    assert_eq!(report.recoveries(), 1, "{ctx}");
                    assert_eq!(report.reason(), Reason::Success, "{ctx}");
                }
                "fatal" | "permanent" => {
                    assert_eq!(runs, 0, "{ctx}: no recovery");
                    assert_eq!(gens, 1, "{ctx}: never retried");
                    assert_eq!(got.status.as_u16(), row.status, "{ctx}");
                    assert_eq!(got.body, row.body.as_bytes(), "{ctx}: exact body bytes");
                    assert_eq!(got.content_type(), row.content_type, "{ctx}");
                    let report = report_of(&got);
                    assert_eq!(report.attempts(), 1, "{ctx}");
                    assert_eq!(report.reason(), Reason::Fatal, "{ctx}");
                    assert_eq!(classes(report), [Class::Fatal], "{ctx}");
                }
                "transient" => {
                    assert_eq!(runs, 0, "{ctx}: no recovery");
                    assert_eq!(gens, 2, "{ctx}: retried once");
                    assert_eq!(got.status, 200, "{ctx}");
                    let report = report_of(&got);
                    assert_eq!(classes(report), [Class::Transient], "{ctx}");
                    assert_eq!(delays(report), [ms(20)], "{ctx}: backed off");
                }
                "not-oom" => {
                    assert_eq!(runs, 0, "{ctx}: never a recovery");
                    assert!(
                        !report_of(&got).failures().iter().any(|f| f.recovered),
                        "{ctx}"
                    );
                }
                other => panic!("{ctx}: unknown expectation {other:?}"),
            }
            // Nothing but generations reached the server (the hook is a
            // counter, not an unloader).
            assert!(
                fake.log().iter().all(|r| r.kind.is_generation()),
                "{ctx}: {:?}",
                kinds(&fake)
            );
        }
    }
    for class in ["oom", "fatal", "permanent", "transient", "not-oom"] {
        assert!(
            seen.contains_key(class),
            "the corpus covers {class}: {seen:?}"
        );
    }
}

// ----- 2. the spec's worked timelines (section 2), CodeWorm mode --------------

/// Per-attempt timeout of the timeline tests.
const T: Duration = ms(100);
/// `retry_delay` of the timeline tests: long enough that "no backoff" and
/// "no sleep after the last attempt" are told apart with room to spare.
const D: Duration = ms(150);

#[tokio::test]
async fn timeline_timeout_timeout_success() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, Reply::Hang, Reply::Ok]);
    let (runs, hook) = counting_hook();
    let svc = stack(
        HttpRetryLayer::new(codeworm(D).with_recovery(hook)),
        T,
        client(),
    );
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["response"], DEFAULT_RESPONSE);

    let g = generations(&fake);
    assert_eq!(g.len(), 3);
    // attempt 1 times out after T, then a sleep of D; attempt 2 after T, then 2D.
    assert_between(
        "1st → 2nd attempt",
        gap(g[0].at, g[1].at),
        T + D - SLACK,
        T + D + LONG,
    );
    assert_between(
        "2nd → 3rd attempt",
        gap(g[1].at, g[2].at),
        T + D * 2 - SLACK,
        T + D * 2 + LONG,
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let report = report_of(&got);
    assert_eq!(report.attempts(), 3);
    assert_eq!(report.reason(), Reason::Success);
    assert_eq!(classes(report), [Class::Timeout, Class::Timeout]);
    assert_eq!(delays(report), [D, D * 2], "linear, not exponential");
    assert_eq!(report.recoveries(), 0);
}

#[tokio::test]
async fn timeline_timeout_three_times_returns_the_third_timeout_at_once() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, Reply::Hang, Reply::Hang]);
    let svc = stack(HttpRetryLayer::new(codeworm(D)), T, client());
    let started = Instant::now();
    let err = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap_err();
    let ended = Instant::now();

    assert_eq!(err.reason(), Reason::Exhausted);
    assert_eq!(err.attempts(), 3);
    assert!(
        err.is::<tower::timeout::error::Elapsed>(),
        "the last error is tower's Elapsed: {err:?}"
    );
    assert_eq!(classes(err.report()), [Class::Timeout; 3]);
    assert_eq!(delays(err.report()), [D, D * 2, Duration::ZERO]);

    let g = generations(&fake);
    assert_eq!(g.len(), 3);
    assert_between(
        "1st → 2nd attempt",
        gap(g[0].at, g[1].at),
        T + D - SLACK,
        T + D + LONG,
    );
    assert_between(
        "2nd → 3rd attempt",
        gap(g[1].at, g[2].at),
        T + D * 2 - SLACK,
        T + D * 2 + LONG,
    );
    // The result follows the third timeout; a sleep after the last attempt
    // (3D) would push it past T + 3D.
    assert_between(
        "3rd attempt → result",
        gap(g[2].at, ended),
        T - SLACK,
        T + D * 2,
    );
    assert!(gap(started, ended) >= T * 3 + D * 3 - SLACK);
    assert_eq!(fake.pending_replies(), 0);
}

#[tokio::test]
async fn timeline_oom_then_success_runs_one_strict_recovery() {
    let fake = FakeOllama::start().await.unwrap();
    let oom = corpus_reply("G01");
    fake.push_many([oom, Reply::Ok]);
    let recovery = OllamaRecovery::codeworm().with_settle(ms(30));
    let svc = stack(
        HttpRetryLayer::new(codeworm(D).with_recovery(recovery)),
        ms(2000),
        client(),
    );
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);

    let log = fake.log();
    let k: Vec<_> = log.iter().map(|r| r.kind.clone()).collect();
    assert_eq!(
        k,
        [
            RequestKind::Generate,
            RequestKind::Unload {
                model: MODEL.into()
            },
            RequestKind::Load {
                model: MODEL.into(),
                num_ctx: Some(8192)
            },
            RequestKind::Generate,
        ]
    );
    assert!(gap(log[1].at, log[2].at) >= ms(30), "the settle sleep");
    // No backoff after a recovery: the retry follows the reload at once.
    assert_between(
        "reload → retry",
        gap(log[2].at, log[3].at),
        Duration::ZERO,
        D,
    );
    let report = report_of(&got);
    assert_eq!(report.attempts(), 2);
    assert_eq!(classes(report), [Class::Oom]);
    assert_eq!(report.recoveries(), 1);
    assert!(report.failures()[0].recovered);
    assert_eq!(report.total_delay(), Duration::ZERO);
}

#[tokio::test]
async fn timeline_oom_three_times_returns_the_last_500_after_three_recoveries() {
    let fake = FakeOllama::start().await.unwrap();
    let oom = corpus_reply("G01");
    let oom_body = reply_body(&oom);
    fake.push_many([oom.clone(), oom.clone(), oom, Reply::Ok]);
    let recovery = OllamaRecovery::codeworm().with_settle(ms(30));
    let svc = stack(
        HttpRetryLayer::new(codeworm(D).with_recovery(recovery)),
        ms(2000),
        client(),
    );
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    // The HTTP form hands back the last response, unchanged.
    assert_eq!(got.status, 500);
    assert_eq!(got.body, oom_body);
    assert_eq!(got.content_type(), "application/json; charset=utf-8");
    let report = report_of(&got);
    assert_eq!(report.attempts(), 3);
    assert_eq!(report.reason(), Reason::Exhausted);
    assert_eq!(
        report.recoveries(),
        3,
        "the last recovery runs after attempt 3"
    );
    assert_eq!(classes(report), [Class::Oom; 3]);
    assert!(report.failures().iter().all(|f| f.recovered));

    let log = fake.log();
    let unload = RequestKind::Unload {
        model: MODEL.into(),
    };
    let load = RequestKind::Load {
        model: MODEL.into(),
        num_ctx: Some(8192),
    };
    let expected: Vec<RequestKind> = (0..3)
        .flat_map(|_| [RequestKind::Generate, unload.clone(), load.clone()])
        .collect();
    assert_eq!(
        log.iter().map(|r| r.kind.clone()).collect::<Vec<_>>(),
        expected
    );
    for i in [2, 5] {
        assert_between(
            "reload → retry",
            gap(log[i].at, log[i + 1].at),
            Duration::ZERO,
            D,
        );
    }
    assert_eq!(fake.pending_replies(), 1, "no fourth attempt");
}

#[tokio::test]
async fn timeline_refused_then_oom_then_success() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([corpus_reply("G01"), Reply::Ok]);
    let recovery = OllamaRecovery::codeworm().with_settle(ms(30));
    let svc = stack(
        HttpRetryLayer::new(codeworm(D).with_recovery(recovery)),
        ms(2000),
        fresh_client(),
    );
    // Refused for less than the first delay: attempt 2 finds it listening.
    fake.refuse_connections_for(ms(40));
    let started = Instant::now();
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let report = report_of(&got);
    assert_eq!(report.attempts(), 3);
    assert_eq!(classes(report), [Class::Connection, Class::Oom]);
    assert_eq!(delays(report), [D, Duration::ZERO]);
    assert_eq!(report.recoveries(), 1);

    let log = fake.log();
    let k: Vec<_> = log.iter().map(|r| r.kind.clone()).collect();
    assert_eq!(
        k,
        [
            RequestKind::Generate,
            RequestKind::Unload {
                model: MODEL.into()
            },
            RequestKind::Load {
                model: MODEL.into(),
                num_ctx: Some(8192)
            },
            RequestKind::Generate,
        ],
        "the refused attempt never reached the server"
    );
    assert_between("start → attempt 2", gap(started, log[0].at), D, D + LONG);
    assert_between(
        "reload → attempt 3",
        gap(log[2].at, log[3].at),
        Duration::ZERO,
        D,
    );
}

#[tokio::test]
async fn timeline_busy_503_is_returned_at_once() {
    let fake = FakeOllama::start().await.unwrap();
    let busy = corpus_reply("G03");
    let busy_body = reply_body(&busy);
    fake.push_many([busy, Reply::Ok]);
    let (runs, hook) = counting_hook();
    let svc = stack(
        HttpRetryLayer::new(codeworm(D).with_recovery(hook)),
        ms(2000),
        client(),
    );
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    let ended = Instant::now();
    assert_eq!(got.status, 503);
    assert_eq!(got.body, busy_body);
    assert_eq!(fake.generation_count(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let report = report_of(&got);
    assert_eq!(report.attempts(), 1);
    assert_eq!(report.reason(), Reason::Fatal);
    assert_between(
        "503 → result",
        gap(fake.log()[0].at, ended),
        Duration::ZERO,
        D,
    );
}

#[tokio::test]
async fn timeline_timeout_then_404_returns_the_404() {
    let fake = FakeOllama::start().await.unwrap();
    let missing = corpus_reply("G04");
    let missing_body = reply_body(&missing);
    fake.push_many([Reply::Hang, missing, Reply::Ok]);
    let svc = stack(HttpRetryLayer::new(codeworm(D)), T, client());
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 404);
    assert_eq!(got.body, missing_body);
    let g = generations(&fake);
    assert_eq!(g.len(), 2);
    assert_between(
        "1st → 2nd attempt",
        gap(g[0].at, g[1].at),
        T + D - SLACK,
        T + D + LONG,
    );
    let report = report_of(&got);
    assert_eq!(report.attempts(), 2);
    assert_eq!(report.reason(), Reason::Fatal);
    assert_eq!(classes(report), [Class::Timeout, Class::Fatal]);
    assert_eq!(fake.pending_replies(), 1);
}

// ----- 3. transport faults -------------------------------------------------------

/// What the caller sees for a 200 whose body is cut: the head, then a body
/// error, from a single attempt.
async fn close_mid_body(mode: Mode) -> (usize, Result<Bytes, tower_ollama_retry::BoxError>) {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::CloseMidBody, Reply::Ok]);
    let svc = stack(
        HttpRetryLayer::new(policy_in(mode, ms(20))),
        ms(2000),
        client(),
    );
    let res = svc
        .oneshot(generate(&fake.url(), codeworm_body(PROMPT)))
        .await;
    let body = match res {
        Ok(res) => {
            assert_eq!(res.status(), 200);
            res.into_body().collect().await.map(|c| c.to_bytes())
        }
        Err(e) => Err(e.into()),
    };
    (fake.generation_count(), body)
}

#[tokio::test]
async fn close_mid_body_is_fatal_in_codeworm_mode() {
    let (gens, body) = close_mid_body(Mode::CodeWorm).await;
    assert_eq!(gens, 1, "never retried");
    assert!(body.is_err(), "the caller sees the broken body: {body:?}");
}

/// A 200 cut mid-body in default mode: the caller gets the head and then the
/// body error, from one attempt. Success bodies stream and are never
/// buffered, so a cut after a 2xx head is the caller's to see (the mode
/// table says so).
#[tokio::test]
async fn close_mid_body_in_default_mode_reaches_the_caller() {
    let (gens, body) = close_mid_body(Mode::Default).await;
    assert_eq!(gens, 1);
    assert!(body.is_err());
}

/// A raw HTTP/1.1 server on loopback whose first connection answers a 500
/// head and part of an Ollama OOM body, then closes; later connections answer
/// a 200. Returns its URL and the count of requests it read.
async fn cut_500_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_request(&mut sock).await.is_none() {
                    return;
                }
                if n == 0 {
                    let partial =
                        br#"{"error":"llama runner process has terminated: CUDA error: out of"#;
                    let head = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
                        partial.len() + 40
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(partial).await;
                    let _ = sock.flush().await;
                    // Closing here cuts the body short of its length.
                } else {
                    let body = format!(
                        r#"{{"model":"{MODEL}","response":"{DEFAULT_RESPONSE}","done":true}}"#
                    );
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                    let _ = sock.flush().await;
                }
            });
        }
    });
    (url, served)
}

/// Reads one request (head and a `content-length` body) off `sock`.
async fn read_request(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[head_end..head_end + len].to_vec())
}

#[tokio::test]
async fn a_500_body_cut_mid_peek_is_fatal_in_codeworm_mode() {
    let (url, served) = cut_500_server().await;
    let (runs, hook) = counting_hook();
    let svc = stack(
        HttpRetryLayer::new(codeworm(ms(20)).with_recovery(hook)),
        ms(2000),
        fresh_client(),
    );
    // A response whose body broke cannot be handed on (a proxy would send
    // its head and then nothing): the loop ends with that failure.
    let err = svc
        .oneshot(generate(&url, codeworm_body(PROMPT)))
        .await
        .expect_err("a broken body ends the request as an error");
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.reason(), Reason::Fatal);
    assert!(
        err.to_string()
            .contains("500 Internal Server Error: the response body failed"),
        "{err}"
    );
    // Even though the prefix says "out of", the broken body is a transport
    // failure, which CodeWorm never retries (and never recovers from).
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_500_body_cut_mid_peek_is_retried_in_default_mode() {
    let (url, served) = cut_500_server().await;
    let (runs, hook) = counting_hook();
    let svc = stack(
        HttpRetryLayer::new(default_mode(ms(20)).with_recovery(hook)),
        ms(2000),
        fresh_client(),
    );
    let got = call(&svc, generate(&url, codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["response"], DEFAULT_RESPONSE);
    let report = report_of(&got);
    assert_eq!(classes(report), [Class::Transient]);
    assert_eq!(delays(report), [ms(20)]);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a broken body is not an OOM"
    );
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

/// A loopback port where nothing listens.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

#[tokio::test]
async fn refused_on_every_attempt_exhausts_with_a_connect_error() {
    for mode in [Mode::CodeWorm, Mode::Default] {
        let url = format!("http://127.0.0.1:{}", dead_port().await);
        let svc = stack(
            HttpRetryLayer::new(policy_in(mode, ms(20))),
            ms(2000),
            client(),
        );
        let started = Instant::now();
        let err = call(&svc, generate(&url, codeworm_body(PROMPT)))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Reason::Exhausted, "{mode:?}");
        assert_eq!(err.attempts(), 3, "{mode:?}");
        assert_eq!(classes(err.report()), [Class::Connection; 3], "{mode:?}");
        assert_eq!(delays(err.report()), [ms(20), ms(40), Duration::ZERO]);
        assert!(chain_has_connect_error(&err), "{mode:?}: {err:?}");
        assert!(
            chain_has_io(&err, std::io::ErrorKind::ConnectionRefused),
            "{mode:?}: {err:?}"
        );
        assert!(started.elapsed() >= ms(60), "slept 20 ms then 40 ms");
    }
}

/// A listener whose accept queue is full, so that a new connect hangs (the
/// kernel drops its SYN) until the connector's connect timeout fires.
/// `None` if the queue could not be filled on this system.
async fn blackhole() -> Option<(TcpListener, Vec<TcpStream>, u16)> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind("127.0.0.1:0".parse().unwrap()).ok()?;
    let listener = socket.listen(0).ok()?;
    let addr = listener.local_addr().ok()?;
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(ms(100), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(_)) => return None,
            Err(_) => return Some((listener, held, addr.port())),
        }
    }
    None
}

#[tokio::test]
async fn a_connect_timeout_counts_as_a_timeout() {
    let Some((_listener, _held, port)) = blackhole().await else {
        eprintln!("skipped: could not fill a loopback accept queue here");
        return;
    };
    let url = format!("http://127.0.0.1:{port}");
    let svc = stack(
        HttpRetryLayer::new(codeworm(ms(20))),
        ms(2000),
        client_with_connect_timeout(ms(50), |b| {
            b.pool_max_idle_per_host(0);
        }),
    );
    let err = call(&svc, generate(&url, codeworm_body(PROMPT)))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::Exhausted);
    assert_eq!(err.attempts(), 3);
    // CodeWorm's rule: a connect timeout is a timeout, not a connection error.
    assert_eq!(classes(err.report()), [Class::Timeout; 3]);
    assert!(chain_has_connect_error(&err), "{err:?}");
    assert!(chain_has_io(&err, std::io::ErrorKind::TimedOut), "{err:?}");
}

#[tokio::test]
async fn bad_uris_are_fatal_after_one_attempt() {
    for mode in [Mode::CodeWorm, Mode::Default] {
        for uri in ["ftp://127.0.0.1/api/generate", "/api/generate"] {
            let svc = stack(
                HttpRetryLayer::new(policy_in(mode, ms(20))),
                ms(2000),
                client(),
            );
            let req = Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(codeworm_body(PROMPT))))
                .unwrap();
            let err = svc.oneshot(req).await.unwrap_err();
            assert_eq!(err.reason(), Reason::Fatal, "{mode:?} {uri}: {err:?}");
            assert_eq!(err.attempts(), 1, "{mode:?} {uri}");
            assert_eq!(classes(err.report()), [Class::Fatal]);
            assert!(err.last_error().is_some());
        }
    }
}

// ----- 4. streaming passthrough ----------------------------------------------------

fn ndjson_line(token: &str, done: bool) -> Vec<u8> {
    let mut v = serde_json::json!({"model": MODEL, "response": token, "done": done});
    if done {
        v["done_reason"] = "stop".into();
    }
    format!("{v}\n").into_bytes()
}

#[tokio::test]
async fn a_stream_reaches_the_caller_chunk_by_chunk() {
    let gap_between = ms(300);
    let chunks = vec![
        ndjson_line("The", false),
        ndjson_line(" sky", false),
        ndjson_line("", true),
    ];
    let fake = FakeOllama::start().await.unwrap();
    fake.push(Reply::Chunked {
        chunks: chunks.clone(),
        gap: gap_between,
    });
    let svc = stack(
        HttpRetryLayer::new(default_mode(ms(20))),
        ms(2000),
        client(),
    );
    let body = codeworm_json(PROMPT, true).to_string();
    let res = svc.oneshot(generate(&fake.url(), body)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.body().is_passthrough(), "a 2xx is never peeked");
    let mut body = res.into_body();

    // The first chunk, whole, before the second one is due.
    let mut first = Vec::new();
    while first.len() < chunks[0].len() {
        let frame = body.frame().await.expect("a frame").expect("no error");
        first.extend_from_slice(frame.data_ref().expect("data"));
    }
    let first_at = Instant::now();
    assert_eq!(first, chunks[0], "only the first chunk so far");
    let logged = fake.log()[0].at;
    assert!(
        gap(logged, first_at) < gap_between * 2 / 3,
        "the first chunk arrived {:?} after the request, before the second was due at {gap_between:?}",
        gap(logged, first_at)
    );

    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.extend_from_slice(&data);
        }
    }
    let ended = Instant::now();
    assert_eq!(rest, [chunks[1].clone(), chunks[2].clone()].concat());
    assert!(
        gap(logged, ended) >= gap_between * 2,
        "the caller waited for each chunk"
    );
    assert_eq!(fake.generation_count(), 1);
}

#[tokio::test]
async fn an_error_after_output_started_is_passed_through_unretried() {
    for mode in [Mode::CodeWorm, Mode::Default] {
        let fake = FakeOllama::start().await.unwrap();
        let error = "an error was encountered while running the model: CUDA error: out of memory";
        fake.push_many([
            Reply::StreamError {
                chunks: 3,
                error: error.into(),
            },
            Reply::Ok,
        ]);
        let (runs, hook) = counting_hook();
        let svc = stack(
            HttpRetryLayer::new(policy_in(mode, ms(20)).with_recovery(hook)),
            ms(2000),
            client(),
        );
        let body = codeworm_json(PROMPT, true).to_string();
        let got = call(&svc, generate(&fake.url(), body)).await.unwrap();
        assert_eq!(got.status, 200, "{mode:?}");
        assert_eq!(got.content_type(), "application/x-ndjson");
        let lines: Vec<Value> = std::str::from_utf8(&got.body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{mode:?}: {lines:?}");
        assert!(lines[..3].iter().all(|l| l["done"] == false), "{lines:?}");
        assert_eq!(lines[3], serde_json::json!({ "error": error }));
        assert_eq!(fake.generation_count(), 1, "{mode:?}: unretried");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert!(
            got.report.is_none(),
            "a first-attempt success has no report"
        );
    }
}

// ----- 5. replay identity ------------------------------------------------------------

/// A deterministic base64-looking string of `len` characters.
fn base64ish(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

#[tokio::test]
async fn a_one_mib_body_is_replayed_byte_for_byte() {
    let prompt = format!("Describe this image: {}", base64ish(1 << 20));
    let body = Bytes::from(codeworm_body(&prompt));
    assert!(body.len() > 1 << 20);
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, Reply::Hang, Reply::Ok]);
    let svc = stack(HttpRetryLayer::new(codeworm(ms(20))), ms(400), client());
    let got = call(&svc, generate(&fake.url(), body.clone()))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(classes(report_of(&got)), [Class::Timeout, Class::Timeout]);

    let g = generations(&fake);
    assert_eq!(g.len(), 3);
    for (i, r) in g.iter().enumerate() {
        assert!(
            r.body == body,
            "attempt {} sent other bytes ({} vs {})",
            i + 1,
            r.body.len(),
            body.len()
        );
        assert_eq!(
            content_length(r).as_deref(),
            Some(body.len().to_string().as_str()),
            "attempt {}",
            i + 1
        );
        assert_eq!(
            r.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "attempt {}",
            i + 1
        );
    }
}

// ----- 6. a body over the replay cap --------------------------------------------------

/// A CodeWorm body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let base = codeworm_body("").len();
    let body = codeworm_body(&"x".repeat(len - base));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn a_body_over_the_replay_cap_is_sent_once() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, Reply::Ok]);
    let layer = HttpRetryLayer::new(codeworm(ms(20))).with_replay_limit(1024);
    let svc = stack(layer, ms(150), client());
    let err = call(&svc, generate(&fake.url(), body_of_len(1025)))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::NotReplayable);
    assert_eq!(err.attempts(), 1);
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err:?}");
    assert_eq!(fake.generation_count(), 1);
    assert_eq!(fake.log()[0].body.len(), 1025, "the whole body was sent");
    assert_eq!(fake.pending_replies(), 1, "the Ok was never asked for");
}

#[tokio::test]
async fn a_body_at_the_replay_cap_is_replayed() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, Reply::Ok]);
    let layer = HttpRetryLayer::new(codeworm(ms(20))).with_replay_limit(1024);
    let svc = stack(layer, ms(150), client());
    let body = body_of_len(1024);
    let got = call(&svc, generate(&fake.url(), body.clone()))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let g = generations(&fake);
    assert_eq!(g.len(), 2);
    assert!(g.iter().all(|r| r.body == body.as_bytes()));
}

// ----- 7. the Report extension ----------------------------------------------------------

#[tokio::test]
async fn a_success_after_retries_carries_the_report() {
    // Default mode: a timeout, a busy 503 (transient), then success.
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, corpus_reply("G03"), Reply::Ok]);
    let svc = stack(HttpRetryLayer::new(default_mode(ms(20))), ms(150), client());
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let report = report_of(&got);
    assert_eq!(report.attempts(), 3);
    assert_eq!(report.reason(), Reason::Success);
    assert_eq!(classes(report), [Class::Timeout, Class::Transient]);
    assert_eq!(delays(report), [ms(20), ms(40)]);
    assert_eq!(report.total_delay(), ms(60));
    assert_eq!(report.recoveries(), 0);
    assert_eq!(
        report
            .failures()
            .iter()
            .map(|f| f.number)
            .collect::<Vec<_>>(),
        [1, 2]
    );

    // CodeWorm mode: a timeout, an OOM (recovered), then success.
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::Hang, corpus_reply("G01"), Reply::Ok]);
    let (runs, hook) = counting_hook();
    let svc = stack(
        HttpRetryLayer::new(codeworm(ms(20)).with_recovery(hook)),
        ms(150),
        client(),
    );
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let report = report_of(&got);
    assert_eq!(report.attempts(), 3);
    assert_eq!(classes(report), [Class::Timeout, Class::Oom]);
    assert_eq!(
        report
            .failures()
            .iter()
            .map(|f| f.recovered)
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(delays(report), [ms(20), Duration::ZERO]);
    assert_eq!(report.recoveries(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A first-attempt success allocates no report.
    let fake = FakeOllama::start().await.unwrap();
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(got.report.is_none());
}

/// A raw server that sends a 500 head and the start of an error body, then
/// stalls with the connection open.
async fn stalled_500_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            if read_request(&mut sock).await.is_none() {
                continue;
            }
            let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"error\":";
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.flush().await;
            open.push(sock);
        }
    });
    url
}

#[tokio::test]
async fn a_stalled_error_body_times_out_instead_of_hanging() {
    let url = stalled_500_server().await;
    let svc = stack(
        HttpRetryLayer::new(default_mode(ms(10)).with_deadline(Duration::from_secs(20)))
            .with_peek_timeout(ms(100)),
        ms(5000),
        fresh_client(),
    );
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        svc.oneshot(generate(&url, codeworm_body(PROMPT))),
    )
    .await
    .expect("no hang")
    .expect_err("every attempt stalls");
    assert_eq!(err.attempts(), 3, "a stalled body is a transient failure");
    assert_eq!(err.reason(), Reason::Exhausted);
    assert!(err.to_string().contains("stalled"), "{err}");
    assert!(started.elapsed() >= ms(300));
}
