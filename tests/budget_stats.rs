//! The retry budget (shared by clones, tower #857 fixed, race-free), the
//! stats handle and the on-retry callback, through the engine.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_ollama_retry::{
    Class, OllamaError, OllamaPolicy, Reason, RetryBudget, RetryLayer, Stats,
};

/// 10 requests that succeed, then 10 that always time out, through one
/// layer with a 60 % budget and no floor. Returns the calls that reached the
/// inner service for the failing requests, and the budget denials.
async fn run(concurrent: bool) -> (u32, u64) {
    let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.6).unwrap();
    let stats = Stats::new();
    let policy = OllamaPolicy::plain()
        .with_retry_delay(Duration::ZERO)
        .with_budget(budget)
        .with_stats(stats.clone());
    let layer = RetryLayer::new(policy);
    let failing_calls = Arc::new(AtomicU32::new(0));
    let seen = failing_calls.clone();
    let svc = layer.layer(tower::service_fn(move |ok: bool| {
        let seen = seen.clone();
        async move {
            if ok {
                Ok(())
            } else {
                seen.fetch_add(1, Ordering::SeqCst);
                Err(OllamaError::timeout("slow"))
            }
        }
    }));
    for _ in 0..10 {
        svc.clone().oneshot(true).await.unwrap();
    }
    if concurrent {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let svc = svc.clone();
            tasks.spawn(async move {
                // 16 tasks share 10 failing requests.
                let _ = svc.oneshot(false).await;
            });
        }
        tasks.join_all().await;
        // 16 failing requests: 16 first attempts, at most 6 retries.
        let calls = failing_calls.load(Ordering::SeqCst) - 16;
        (calls, stats.snapshot().budget_denied)
    } else {
        for _ in 0..10 {
            let err = svc.clone().oneshot(false).await.unwrap_err();
            assert!(matches!(err.reason(), Reason::Budget | Reason::Exhausted));
        }
        let calls = failing_calls.load(Ordering::SeqCst) - 10;
        (calls, stats.snapshot().budget_denied)
    }
}

#[tokio::test]
async fn ten_successes_at_60_percent_pay_for_six_retries() {
    let (retries, denied) = run(false).await;
    assert_eq!(retries, 6);
    assert_eq!(
        denied,
        10 - 3,
        "3 requests got 2 retries each; 7 were denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_total_with_16_tasks_at_once() {
    for _ in 0..20 {
        let (retries, _) = run(true).await;
        assert_eq!(retries, 6);
    }
}

#[tokio::test(start_paused = true)]
async fn a_denied_retry_ends_with_the_budget_reason() {
    let budget = RetryBudget::new(Duration::from_secs(1), 0, 0.0).unwrap();
    let policy = OllamaPolicy::plain().with_budget(budget);
    let err = RetryLayer::new(policy)
        .layer(tower::service_fn(|_: ()| async {
            Err::<(), _>(OllamaError::timeout("slow"))
        }))
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::Budget);
    assert_eq!(err.attempts(), 1);
    assert!(err.is::<OllamaError>());
}

#[tokio::test]
async fn invalid_budget_settings_are_errors_not_panics() {
    assert!(RetryBudget::new(Duration::ZERO, 0, 0.2).is_err());
    assert!(RetryBudget::new(Duration::from_secs(61), 0, 0.2).is_err());
    assert!(RetryBudget::new(Duration::from_secs(1), 0, -0.1).is_err());
    assert!(RetryBudget::new(Duration::from_secs(1), 0, f64::NAN).is_err());
    assert!(RetryBudget::new(Duration::from_secs(1), 0, 1001.0).is_err());
    assert!(RetryBudget::new(Duration::from_secs(1), u32::MAX, 0.2).is_err());
    let e = RetryBudget::new(Duration::ZERO, 0, 0.2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "retry budget ttl must be between 1 s and 60 s, got 0ns"
    );
}

#[tokio::test(start_paused = true)]
async fn stats_and_on_retry_see_every_decision() {
    let stats = Stats::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let policy = OllamaPolicy::plain()
        .with_stats(stats.clone())
        .on_retry(move |e| {
            log.lock()
                .unwrap()
                .push((e.attempt.number(), e.failure.class(), e.delay))
        });
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = RetryLayer::new(policy).layer(tower::service_fn(move |_: ()| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                0 => Err(OllamaError::connection("refused")),
                1 => Err(OllamaError::model("out of memory")),
                _ => Ok(()),
            }
        }
    }));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone()
        .oneshot(())
        .await
        .expect("the third call onward succeeds");
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (2, Class::Connection, Duration::from_secs(2)),
            (3, Class::Oom, Duration::ZERO)
        ]
    );
    let s = stats.snapshot();
    assert_eq!(s.requests, 2);
    assert_eq!(s.attempts, 4);
    assert_eq!(s.succeeded, 2);
    assert_eq!(s.retries(Class::Connection), 1);
    assert_eq!(s.retries(Class::Oom), 1);
    assert_eq!(s.total_retries(), 2);
    assert_eq!(s.recoveries, 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_is_never_sent_costs_no_token() {
    use tokio_test::{assert_pending, assert_ready};
    // A floor of 1 retry per second for 1 s: exactly one token.
    let budget = RetryBudget::new(Duration::from_secs(1), 1, 0.0).unwrap();
    let policy = OllamaPolicy::plain()
        .with_retry_delay(Duration::ZERO)
        .with_budget(budget.clone());
    let (svc, mut handle) = tower_test::mock::pair::<(), ()>();
    handle.allow(1);
    let mut call = tokio_test::task::spawn(RetryLayer::new(policy).layer(svc).oneshot(()));
    assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(OllamaError::timeout("slow"));
    assert_pending!(call.poll());
    // The retry's readiness fails: nothing is sent.
    handle.send_error(OllamaError::other("gone"));
    let err = assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.reason(), Reason::Readiness);
    // So the token is still there, once.
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
}
