//! `OllamaRecovery` through the real HTTP stack against the embedded fake
//! Ollama server: CodeWorm's strict unload / settle / reload sequence, the
//! default mode's unload-and-poll, failed recoveries, and single-flight
//! recovery shared by concurrent requests.
//!
//! Real time with millisecond-scale delays; orderings and minimum gaps are
//! asserted, upper bounds only generously.

#![cfg(feature = "test-util")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower::util::BoxCloneService;
use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody};
use tower_ollama_retry::ollama::fake::{FakeOllama, Reply, RequestKind};
use tower_ollama_retry::ollama::{Mode, OllamaRecovery};
use tower_ollama_retry::{Attempt, BoxError, Class, Failure, OllamaPolicy, Reason, recover_fn};

use common::*;

const PROMPT: &str = "Document this module.";
const SLACK: Duration = ms(2);
const LONG: Duration = Duration::from_secs(2);

/// CodeWorm's own out-of-memory reply (corpus row G01): an OOM in both modes.
fn oom() -> Reply {
    Reply::error(
        500,
        "llama runner process has terminated: CUDA error: out of memory",
    )
}

fn unload() -> RequestKind {
    RequestKind::Unload {
        model: MODEL.into(),
    }
}

fn load(num_ctx: u64) -> RequestKind {
    RequestKind::Load {
        model: MODEL.into(),
        num_ctx: Some(num_ctx),
    }
}

// ----- 1. CodeWorm's strict sequence ------------------------------------------------

#[tokio::test]
async fn strict_recovery_unloads_settles_and_reloads_at_8192() {
    let settle = ms(30);
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([oom(), Reply::Ok]);
    let policy = OllamaPolicy::codeworm()
        .with_retry_delay(ms(300))
        .with_recovery(OllamaRecovery::codeworm().with_settle(settle));
    let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
    let body = codeworm_body(PROMPT);
    let got = call(&svc, generate(&fake.url(), body.clone()))
        .await
        .unwrap();
    assert_eq!(got.status, 200);

    let log = fake.log();
    assert_eq!(
        log.iter().map(|r| r.kind.clone()).collect::<Vec<_>>(),
        [
            RequestKind::Generate,
            unload(),
            load(8192),
            RequestKind::Generate
        ],
        "exactly: generate, unload, reload, generate (no /api/ps polling)"
    );
    let (first, unloaded, reloaded, retried) = (&log[0], &log[1], &log[2], &log[3]);
    assert_eq!(unloaded.path, "/api/generate");
    assert_eq!(
        unloaded.json().unwrap(),
        json!({"model": MODEL, "keep_alive": 0})
    );
    assert_eq!(reloaded.path, "/api/generate");
    assert_eq!(
        reloaded.json().unwrap(),
        json!({"model": MODEL, "prompt": "", "keep_alive": -1, "options": {"num_ctx": 8192}})
    );
    assert!(
        reloaded.json().unwrap()["keep_alive"].is_i64(),
        "keep_alive stays a JSON number"
    );
    assert!(
        gap(unloaded.at, reloaded.at) >= settle,
        "the reload waits the settle time after the unload: {:?}",
        gap(unloaded.at, reloaded.at)
    );
    assert!(gap(first.at, unloaded.at) < ms(300), "no backoff before it");
    assert!(gap(reloaded.at, retried.at) < ms(300), "nor after it");

    // CodeWorm's flaw, reproduced: the retry sends the original context, so
    // the fake reloads the model at 16384 again.
    assert_eq!(first.body, body.as_bytes());
    assert_eq!(retried.body, body.as_bytes());
    assert_eq!(fake.context_length(MODEL), Some(16384));
}

#[tokio::test]
async fn strict_reload_takes_keep_alive_and_a_smaller_context_from_the_request() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([oom(), Reply::Ok]);
    let policy = OllamaPolicy::codeworm()
        .with_retry_delay(ms(20))
        .with_recovery(OllamaRecovery::codeworm().with_settle(ms(5)));
    let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
    let mut body = codeworm_json(PROMPT, false);
    body["keep_alive"] = json!(600);
    body["options"]["num_ctx"] = json!(4096);
    let got = call(&svc, generate(&fake.url(), body.to_string()))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let log = fake.log();
    assert_eq!(log[2].kind, load(4096), "min(C, 8192) with C = 4096");
    assert_eq!(log[2].json().unwrap()["keep_alive"], json!(600));
}

#[tokio::test]
async fn strict_recovery_ignores_the_reduced_context_opt_in() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([oom(), Reply::Ok]);
    let recovery = OllamaRecovery::codeworm()
        .with_settle(ms(5))
        .with_reduced_ctx(8192);
    let policy = OllamaPolicy::codeworm()
        .with_retry_delay(ms(20))
        .with_recovery(recovery);
    let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
    let body = codeworm_body(PROMPT);
    call(&svc, generate(&fake.url(), body.clone()))
        .await
        .unwrap();
    let g = generations(&fake);
    assert_eq!(g.len(), 2);
    assert_eq!(
        g[1].body,
        body.as_bytes(),
        "CodeWorm resends the original body"
    );
}

// ----- 2. the default recovery: unload, poll /api/ps, no reload ----------------------

async fn default_recovery(recovery: OllamaRecovery) -> (FakeOllama, String) {
    let fake = FakeOllama::start().await.unwrap();
    fake.set_unload_delay(ms(50));
    fake.push_many([oom(), Reply::Ok]);
    let policy = OllamaPolicy::default()
        .with_retry_delay(ms(300))
        .with_recovery(recovery);
    let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
    let body = codeworm_body(PROMPT);
    let got = call(&svc, generate(&fake.url(), body.clone()))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let report = got.report.expect("a report");
    assert_eq!(report.classes().collect::<Vec<_>>(), [Class::Oom]);
    assert_eq!(report.recoveries(), 1);
    (fake, body)
}

fn recovery_polling(settle: Duration) -> OllamaRecovery {
    OllamaRecovery::new()
        .with_settle(settle)
        .with_poll_interval(ms(5))
}

#[tokio::test]
async fn default_recovery_polls_ps_until_the_model_is_gone() {
    let settle = ms(2000);
    let (fake, body) = default_recovery(recovery_polling(settle)).await;
    let log = fake.log();
    let k: Vec<_> = log.iter().map(|r| r.kind.clone()).collect();
    let n = k.len();
    assert!(n >= 4, "{k:?}");
    assert_eq!(k[0], RequestKind::Generate);
    assert_eq!(k[1], unload());
    assert!(
        k[2..n - 1].iter().all(|x| *x == RequestKind::Ps),
        "only /api/ps polls between the unload and the retry: {k:?}"
    );
    assert!(
        n - 3 >= 2,
        "polled more than once while the model was stopping: {k:?}"
    );
    assert_eq!(k[n - 1], RequestKind::Generate);
    assert!(
        !k.iter().any(|x| matches!(x, RequestKind::Load { .. })),
        "no reload: {k:?}"
    );

    let (unloaded, last_poll, retried) = (&log[1], &log[n - 2], &log[n - 1]);
    assert!(
        gap(unloaded.at, last_poll.at) + SLACK >= ms(50),
        "the last poll, the one that found the model gone, came after the unload delay"
    );
    assert_between(
        "unload → retry",
        gap(unloaded.at, retried.at),
        ms(50),
        settle - ms(500),
    );
    for pair in log[2..n - 1].windows(2) {
        assert!(
            gap(pair[0].at, pair[1].at) >= ms(5) - SLACK,
            "polled every 5 ms"
        );
    }
    // Without the opt-in, the retry is the original request.
    assert_eq!(retried.body, body.as_bytes());
    assert_eq!(retried.json().unwrap()["options"]["num_ctx"], 16384);
    assert_eq!(fake.context_length(MODEL), Some(16384));
}

#[tokio::test]
async fn default_recovery_with_reduced_ctx_rewrites_the_retried_request() {
    let (fake, body) = default_recovery(recovery_polling(ms(2000)).with_reduced_ctx(8192)).await;
    let g = generations(&fake);
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].body, body.as_bytes());
    let retried = g[1].json().unwrap();
    assert_eq!(retried["options"]["num_ctx"], 8192);
    assert_eq!(
        content_length(&g[1]).as_deref(),
        Some(g[1].body.len().to_string().as_str()),
        "content-length matches the rewritten body"
    );
    assert_ne!(g[1].body.len(), g[0].body.len());
    // Everything else is the original request.
    let mut expected: Value = serde_json::from_str(&body).unwrap();
    expected["options"]["num_ctx"] = json!(8192);
    assert_eq!(retried, expected);
    assert_eq!(
        fake.context_length(MODEL),
        Some(8192),
        "the model now runs at 8192"
    );
    assert!(
        !fake
            .log()
            .iter()
            .any(|r| matches!(r.kind, RequestKind::Load { .. }))
    );
}

#[tokio::test]
async fn default_recovery_gives_up_waiting_after_the_settle_time() {
    // The model takes far longer to stop than the settle time allows.
    let fake = FakeOllama::start().await.unwrap();
    fake.set_unload_delay(Duration::from_secs(30));
    fake.push_many([oom(), Reply::Ok]);
    let settle = ms(60);
    let policy = OllamaPolicy::default()
        .with_retry_delay(ms(300))
        .with_recovery(recovery_polling(settle));
    let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
    let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
        .await
        .unwrap();
    assert_eq!(got.status, 200, "it retries anyway");
    let log = fake.log();
    let (unloaded, retried) = (&log[1], log.last().unwrap());
    assert_eq!(retried.kind, RequestKind::Generate);
    assert_between(
        "unload → retry",
        gap(unloaded.at, retried.at),
        settle - ms(10),
        settle + LONG,
    );
}

// ----- 3. a failed recovery ends the request --------------------------------------------

#[tokio::test]
async fn a_failing_hook_ends_the_request_with_recovery_failed() {
    for mode in [Mode::CodeWorm, Mode::Default] {
        let fake = FakeOllama::start().await.unwrap();
        fake.push_many([oom(), Reply::Ok]);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let hook = recover_fn(move |_: &Attempt, _: &Failure| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err::<(), BoxError>(
                "unload failed: connection refused".into(),
            ))
        });
        let policy = OllamaPolicy::default()
            .mode(mode)
            .with_retry_delay(ms(20))
            .with_recovery(hook);
        let svc = stack(HttpRetryLayer::new(policy), ms(2000), client());
        let err = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Reason::RecoveryFailed, "{mode:?}");
        assert_eq!(err.attempts(), 1, "{mode:?}");
        assert_eq!(
            err.last_error().unwrap().to_string(),
            "OOM recovery failed: unload failed: connection refused",
            "{mode:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(fake.generation_count(), 1, "{mode:?}: no further attempt");
        assert_eq!(fake.pending_replies(), 1);
    }
}

/// A port on loopback where nothing listens.
async fn dead_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

#[tokio::test]
async fn an_unreachable_ollama_fails_the_real_recovery() {
    // The request names a dead Ollama address; a layer below the retry layer
    // sends its attempts to the fake instead. The recovery, which talks to
    // the address the request names, cannot connect.
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([oom(), Reply::Ok]);
    let dead = format!("127.0.0.1:{}", dead_port().await);
    let real = fake.addr().to_string();
    let policy = OllamaPolicy::codeworm()
        .with_retry_delay(ms(20))
        .with_recovery(OllamaRecovery::codeworm().with_settle(ms(5)));
    let redirected = ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy))
        .timeout(ms(2000))
        .map_request(move |mut req: Request<ReplayBody<Full<Bytes>>>| {
            let path = req.uri().path().to_owned();
            *req.uri_mut() = format!("http://{real}{path}").parse().unwrap();
            req
        })
        .service(client());
    let svc: Svc = BoxCloneService::new(redirected);
    let err = call(
        &svc,
        generate(&format!("http://{dead}"), codeworm_body(PROMPT)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), Reason::RecoveryFailed, "{err:?}");
    assert_eq!(err.attempts(), 1);
    let message = err.last_error().unwrap().to_string();
    assert!(message.starts_with("OOM recovery failed: "), "{message}");
    assert_eq!(fake.generation_count(), 1);
    assert_eq!(fake.log().len(), 1, "the recovery never reached the fake");
}

// ----- 4. single-flight: concurrent OOMs share one recovery -------------------------------

async fn single_flight_round(round: usize) {
    const N: usize = 8;
    let fake = FakeOllama::start().await.unwrap();
    // Delayed so that all N first attempts are in flight together.
    fake.push_many((0..N).map(|_| oom().delayed(ms(50))));
    fake.push_many((0..N).map(|_| Reply::Ok));
    let policy = OllamaPolicy::default()
        .with_retry_delay(ms(300))
        .with_recovery(OllamaRecovery::new());
    let svc = stack(HttpRetryLayer::new(policy), ms(5000), client());
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let svc = svc.clone();
            let req = generate(&fake.url(), codeworm_body(&format!("prompt {i}")));
            tokio::spawn(async move { call(&svc, req).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}, request {i}: {e}"));
        assert_eq!(got.status, 200, "round {round}, request {i}");
        let report = got.report.expect("a report");
        assert_eq!(report.classes().collect::<Vec<_>>(), [Class::Oom]);
        assert_eq!(report.attempts(), 2);
    }
    let k = kinds(&fake);
    assert_eq!(
        unload_count(&fake),
        1,
        "round {round}: one shared recovery: {k:?}"
    );
    assert_eq!(fake.generation_count(), 2 * N, "round {round}");
    assert!(
        k[..N].iter().all(|x| *x == RequestKind::Generate),
        "round {round}: all first attempts arrived before the unload: {k:?}"
    );
    assert_eq!(k[N], unload(), "round {round}: {k:?}");
    // Each request was retried once, with its own body.
    let g = generations(&fake);
    for i in 0..N {
        let prompt = format!("prompt {i}");
        let sent = g
            .iter()
            .filter(|r| r.json().unwrap()["prompt"] == prompt.as_str())
            .count();
        assert_eq!(sent, 2, "round {round}: {prompt}");
    }
    assert_eq!(fake.pending_replies(), 0);
}

#[tokio::test]
async fn concurrent_ooms_share_one_recovery() {
    for round in 0..5 {
        single_flight_round(round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ooms_share_one_recovery_on_many_threads() {
    for round in 0..5 {
        single_flight_round(round).await;
    }
}

// ----- 5. an attempt sent before the latest finished recovery skips a new one --------------

#[tokio::test]
async fn an_attempt_sent_before_a_finished_recovery_retries_without_another() {
    let slow = ms(200);
    let fake = FakeOllama::start().await.unwrap();
    // The first request to arrive fails fast and recovers; the second was
    // sent at the same time, but its OOM comes back only after that
    // recovery has finished.
    fake.push_many([oom(), oom().delayed(slow), Reply::Ok, Reply::Ok]);
    let policy = OllamaPolicy::default()
        .with_retry_delay(ms(300))
        .with_recovery(OllamaRecovery::new().with_poll_interval(ms(5)));
    let svc = stack(HttpRetryLayer::new(policy), ms(5000), client());
    let tasks: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|name| {
            let svc = svc.clone();
            let req = generate(&fake.url(), codeworm_body(name));
            tokio::spawn(async move { call(&svc, req).await })
        })
        .collect();
    for task in tasks {
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.report.unwrap().attempts(), 2);
    }
    let log = fake.log();
    let k: Vec<_> = log.iter().map(|r| r.kind.clone()).collect();
    assert_eq!(unload_count(&fake), 1, "{k:?}");
    assert_eq!(fake.generation_count(), 4);

    let g = generations(&fake);
    let fast = g[0].json().unwrap()["prompt"].as_str().unwrap().to_owned();
    let of = |who: &str| -> Vec<_> {
        g.iter()
            .filter(|r| r.json().unwrap()["prompt"] == who)
            .cloned()
            .collect()
    };
    let slow_name = if fast == "A" { "B" } else { "A" };
    let (fast_reqs, slow_reqs) = (of(&fast), of(slow_name));
    assert_eq!((fast_reqs.len(), slow_reqs.len()), (2, 2));
    // The fast request's recovery had finished (its retry was sent) before
    // the slow request's OOM came back...
    assert!(
        gap(slow_reqs[0].at, fast_reqs[1].at) < slow,
        "the recovery finished while the slow attempt was still out"
    );
    // ...and the slow request then retried at once, with no second unload.
    let unload_at = log
        .iter()
        .find(|r| matches!(r.kind, RequestKind::Unload { .. }))
        .unwrap()
        .at;
    assert!(unload_at < slow_reqs[0].at + slow);
    assert_between(
        "slow attempt → its retry",
        gap(slow_reqs[0].at, slow_reqs[1].at),
        slow,
        slow + ms(250),
    );
    assert_eq!(k.last().unwrap(), &RequestKind::Generate);
}

#[tokio::test]
async fn an_attempt_sent_after_a_finished_recovery_gets_its_own() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([oom(), Reply::Ok, oom(), Reply::Ok]);
    let policy = OllamaPolicy::default()
        .with_retry_delay(ms(300))
        .with_recovery(OllamaRecovery::new().with_poll_interval(ms(5)));
    let svc = stack(HttpRetryLayer::new(policy), ms(5000), client());
    for _ in 0..2 {
        let got = call(&svc, generate(&fake.url(), codeworm_body(PROMPT)))
            .await
            .unwrap();
        assert_eq!(got.status, 200);
    }
    assert_eq!(unload_count(&fake), 2, "{:?}", kinds(&fake));
    assert_eq!(fake.generation_count(), 4);
}

#[tokio::test]
async fn huge_settle_and_poll_settings_do_not_panic() {
    let fake = FakeOllama::start().await.unwrap();
    fake.push_many([Reply::error(500, "CUDA error: out of memory"), Reply::Ok]);
    let recovery = OllamaRecovery::new()
        .with_settle(Duration::MAX)
        .with_poll_interval(Duration::MAX);
    let layer = HttpRetryLayer::new(
        OllamaPolicy::default()
            .with_retry_delay(Duration::from_millis(5))
            .with_recovery(recovery),
    );
    let svc = common::stack(layer, Duration::from_secs(5), common::client());
    let got = common::call(
        &svc,
        common::generate(&fake.url(), common::codeworm_body("p")),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(common::unload_count(&fake), 1);
}
