//! The engine's contract: readiness before every attempt, the ready instance
//! is the one called, replay, cancellation, deadlines and budgets.

use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, Service, ServiceExt};
use tower_ollama_retry::backoff::Constant;
use tower_ollama_retry::{
    Attempt, BoxError, Class, Decision, Failure, Finished, OllamaError, OllamaPolicy, Policy,
    Reason, RetryError, RetryLayer, RetryPolicy, recover_fn,
};
use tower_test::mock;

fn transient(_: &Attempt, r: &Result<u32, BoxError>) -> Decision {
    match r {
        Ok(_) => Decision::Success,
        Err(_) => Decision::Retry(Failure::new(Class::Transient)),
    }
}

/// A service that panics when `call` comes without a fresh `Ready(Ok)` on
/// the same instance. A clone starts unready, as a real one might.
struct Strict {
    ready: bool,
    calls: Arc<AtomicU32>,
    fail_first: u32,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            calls: self.calls.clone(),
            fail_first: self.fail_first,
        }
    }
}

impl Service<u32> for Strict {
    type Response = u32;
    type Error = BoxError;
    type Future = Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        assert!(
            self.ready,
            "call without a fresh poll_ready on this instance"
        );
        self.ready = false;
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            ready(Err("flaky".into()))
        } else {
            ready(Ok(req + 1))
        }
    }
}

type Classifier = fn(&Attempt, &Result<u32, BoxError>) -> Decision;

fn zero_delay_policy() -> RetryPolicy<Classifier, Constant> {
    RetryPolicy::new(transient as Classifier).with_backoff(Constant::new(Duration::ZERO))
}

#[tokio::test]
async fn every_attempt_calls_the_instance_that_was_readied() {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = Strict {
        ready: false,
        calls: calls.clone(),
        fail_first: 2,
    };
    let svc = RetryLayer::new(zero_delay_policy()).layer(inner);
    assert_eq!(svc.oneshot(1).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn pending_readiness_before_a_retry_sends_nothing_until_ready() {
    let (svc, mut handle) = mock::pair::<u32, u32>();
    handle.allow(1);
    let mut call =
        tokio_test::task::spawn(RetryLayer::new(zero_delay_policy()).layer(svc).oneshot(7));
    assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("first fails");
    // The retry waits for readiness: nothing is sent.
    assert_pending!(call.poll());
    assert_pending!(handle.poll_request());
    assert_pending!(call.poll());
    handle.allow(1);
    assert_pending!(call.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 7);
    send.send_response(8);
    assert_eq!(assert_ready!(call.poll()).unwrap(), 8);
}

#[tokio::test(start_paused = true)]
async fn readiness_error_before_a_retry_comes_back_and_stops() {
    let (svc, mut handle) = mock::pair::<u32, u32>();
    handle.allow(1);
    let mut call =
        tokio_test::task::spawn(RetryLayer::new(zero_delay_policy()).layer(svc).oneshot(7));
    assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("first fails");
    assert_pending!(call.poll());
    handle.send_error(OllamaError::other("inner service is gone"));
    let err = assert_ready!(call.poll()).unwrap_err();
    assert_eq!(err.reason(), Reason::Readiness);
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.last_error().unwrap().to_string(),
        "inner service is gone"
    );
    assert_pending!(handle.poll_request());
}

#[tokio::test]
async fn readiness_error_before_the_first_attempt() {
    let (svc, mut handle) = mock::pair::<u32, u32>();
    handle.send_error(OllamaError::other("broken"));
    let mut retry = RetryLayer::new(zero_delay_policy()).layer(svc);
    let err = retry.ready().await.unwrap_err();
    assert_eq!(err.reason(), Reason::Readiness);
    assert_eq!(err.attempts(), 0);
    assert!(err.to_string().contains("broken"), "{err}");
}

#[tokio::test]
async fn over_a_concurrency_limit_of_one() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |n: u32| {
        let k = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::task::yield_now().await;
            if k == 0 {
                Err::<u32, BoxError>("once".into())
            } else {
                Ok(n)
            }
        }
    });
    let limited = tower::limit::ConcurrencyLimit::new(inner, 1);
    let svc = RetryLayer::new(zero_delay_policy()).layer(limited);
    let out = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(3))
        .await
        .expect("no deadlock");
    assert_eq!(out.unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A policy over a request that cannot be copied.
#[derive(Clone)]
struct NoReplay;

impl Policy<u32, u32, BoxError> for NoReplay {
    type Error = RetryError;
    type Recover = Ready<Result<(), BoxError>>;
    fn max_attempts(&self) -> u32 {
        5
    }
    fn replay(&mut self, _: &u32) -> Option<u32> {
        None
    }
    fn classify(&mut self, a: &Attempt, r: &Result<u32, BoxError>) -> Decision {
        transient(a, r)
    }
    fn backoff(&mut self, _: &Attempt, _: &Failure) -> Duration {
        Duration::ZERO
    }
    fn recover(&mut self, _: &Attempt, _: &Failure, _: &mut u32) -> Self::Recover {
        ready(Ok(()))
    }
    fn readiness_error(&mut self, e: BoxError) -> RetryError {
        RetryError::new(Default::default(), Some(e))
    }
    fn finish(&mut self, f: Finished<u32, BoxError>) -> Result<u32, RetryError> {
        f.into_result()
    }
}

#[tokio::test]
async fn a_request_that_cannot_be_replayed_is_sent_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>(OllamaError::timeout("slow").into()) }
    });
    let err = RetryLayer::new(NoReplay)
        .layer(inner)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(err.reason(), Reason::NotReplayable);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.downcast_ref::<OllamaError>().unwrap().message(), "slow");
}

#[tokio::test(start_paused = true)]
async fn dropping_during_a_delay_sends_nothing_more() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let policy = OllamaPolicy::plain();
    let mut call = tokio_test::task::spawn(RetryLayer::new(policy).layer(svc).oneshot("p"));
    assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(OllamaError::timeout("t"));
    assert_pending!(call.poll()); // now sleeping 2 s
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_pending!(call.poll());
    drop(call);
    tokio::time::advance(Duration::from_secs(60)).await;
    // Every clone of the mock is gone: the handle sees the end, not a request.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_during_a_recovery_runs_no_more_hook() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let started = Arc::new(AtomicU32::new(0));
    let finished = Arc::new(AtomicU32::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let policy = OllamaPolicy::codeworm()
        .into_plain()
        .with_recovery(recover_fn(move |_: &Attempt, _: &Failure| {
            s.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }));
    let mut call = tokio_test::task::spawn(RetryLayer::new(policy).layer(svc).oneshot("p"));
    assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(OllamaError::model("out of memory"));
    assert_pending!(call.poll()); // recovering
    assert_eq!(started.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(call);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_delay_past_the_deadline_is_not_started() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    // 2 s after attempt 1 fits in 5 s; 4 s after attempt 2 (at t=2) does not.
    let policy = OllamaPolicy::plain().with_deadline(Duration::from_secs(5));
    let t0 = Instant::now();
    let call = tokio::spawn(RetryLayer::new(policy).layer(svc).oneshot("p"));
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(OllamaError::timeout("t"));
    }
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_secs(2), "came back at once");
    assert_eq!(err.reason(), Reason::Deadline);
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.report().total_delay(), Duration::from_secs(2));
}

/// A wrapper policy whose `permit_retry` denies every retry, recording the
/// attempts it was asked about.
#[derive(Clone)]
struct Deny<P>(P, Arc<Mutex<Vec<u32>>>);

impl<P: Policy<u32, u32, BoxError>> Policy<u32, u32, BoxError> for Deny<P> {
    type Error = P::Error;
    type Recover = P::Recover;
    fn max_attempts(&self) -> u32 {
        self.0.max_attempts()
    }
    fn replay(&mut self, r: &u32) -> Option<u32> {
        self.0.replay(r)
    }
    fn classify(&mut self, a: &Attempt, r: &Result<u32, BoxError>) -> Decision {
        self.0.classify(a, r)
    }
    fn backoff(&mut self, a: &Attempt, f: &Failure) -> Duration {
        self.0.backoff(a, f)
    }
    fn recover(&mut self, a: &Attempt, f: &Failure, n: &mut u32) -> Self::Recover {
        self.0.recover(a, f, n)
    }
    fn permit_retry(&mut self, a: &Attempt, _: &Failure) -> Result<(), Reason> {
        self.1.lock().unwrap().push(a.number());
        Err(Reason::Budget)
    }
    fn readiness_error(&mut self, e: BoxError) -> Self::Error {
        self.0.readiness_error(e)
    }
    fn finish(&mut self, f: Finished<u32, BoxError>) -> Result<u32, Self::Error> {
        self.0.finish(f)
    }
}

#[tokio::test]
async fn permit_retry_is_asked_before_the_retry_and_can_stop_it() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>("no".into()) }
    });
    let policy = Deny(zero_delay_policy(), asked.clone());
    let err = RetryLayer::new(policy)
        .layer(inner)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(*asked.lock().unwrap(), vec![2]);
    assert_eq!(err.reason(), Reason::Budget);
    assert_eq!(
        err.to_string(),
        "request failed after 1 attempt: the retry budget is spent: no"
    );
}

#[tokio::test(start_paused = true)]
async fn the_report_records_every_failure() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let call = tokio::spawn(
        RetryLayer::new(OllamaPolicy::plain())
            .layer(svc)
            .oneshot("p"),
    );
    let answers: Vec<BoxError> = vec![
        OllamaError::connection("refused").into(),
        OllamaError::model("out of memory").into(),
        OllamaError::timeout("slow").into(),
    ];
    for e in answers {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(e);
    }
    let err = call.await.unwrap().unwrap_err();
    let report = err.report();
    assert_eq!(report.attempts(), 3);
    assert_eq!(
        report.classes().collect::<Vec<_>>(),
        [Class::Connection, Class::Oom, Class::Timeout]
    );
    let delays: Vec<_> = report.failures().iter().map(|f| f.delay).collect();
    assert_eq!(
        delays,
        [Duration::from_secs(2), Duration::ZERO, Duration::ZERO]
    );
    assert_eq!(report.recoveries(), 1);
    assert!(report.failures()[1].recovered);
    assert_eq!(report.total_delay(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_per_class_limit_ends_the_loop() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let policy = OllamaPolicy::plain()
        .with_max_attempts(5)
        .with_class_limit(Class::Oom, 1);
    let call = tokio::spawn(RetryLayer::new(policy).layer(svc).oneshot("p"));
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(OllamaError::model("out of memory"));
    }
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.reason(), Reason::Fatal);
    assert_eq!(err.report().recoveries(), 1);
}

#[tokio::test]
async fn an_inner_retry_error_is_not_retried_again() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: &'static str| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Err::<String, _>(OllamaError::timeout("slow")) }
    });
    let fast = OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    let inner_retry = RetryLayer::new(fast.clone()).layer(inner);
    let outer = RetryLayer::new(fast).layer(inner_retry);
    let err = outer.oneshot("p").await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "3, not 9");
    assert_eq!(err.attempts(), 1);
    let inner_err = RetryError::find(err.last_error().unwrap()).unwrap();
    assert_eq!(inner_err.attempts(), 3);
}

#[tokio::test]
async fn success_on_the_first_attempt_comes_back_untouched() {
    let svc = RetryLayer::new(zero_delay_policy()).layer(tower::service_fn(|n: u32| async move {
        Ok::<_, BoxError>(n * 10)
    }));
    let fut = svc.oneshot(4);
    let pinned: Pin<Box<_>> = Box::pin(fut);
    assert_eq!(pinned.await.unwrap(), 40);
}

#[tokio::test(flavor = "current_thread")]
async fn immediate_retries_yield_to_the_executor() {
    // u32::MAX attempts with no delay against a service that always fails:
    // the loop must let other tasks run, and an outer timeout must fire.
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = RetryLayer::new(
        OllamaPolicy::plain()
            .with_retry_delay(Duration::ZERO)
            .with_max_attempts(u32::MAX),
    )
    .layer(tower::service_fn(move |_: ()| {
        seen.fetch_add(1, Ordering::Relaxed);
        async { Err::<(), _>(OllamaError::timeout("slow")) }
    }));
    let other = tokio::spawn(async { 42 });
    let out = tokio::time::timeout(Duration::from_millis(100), svc.oneshot(())).await;
    assert!(out.is_err(), "the outer timeout fired");
    assert_eq!(other.await.unwrap(), 42, "the other task ran");
    assert!(calls.load(Ordering::Relaxed) > 1000);
}

#[tokio::test(start_paused = true)]
async fn the_failure_record_is_bounded() {
    let svc = RetryLayer::new(
        OllamaPolicy::plain()
            .with_retry_delay(Duration::ZERO)
            .with_max_attempts(5000),
    )
    .layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(OllamaError::timeout("slow"))
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(err.attempts(), 5000);
    assert_eq!(
        err.report().failures().len(),
        tower_ollama_retry::MAX_RECORDED_FAILURES
    );

    // The attempts past the record leave the recorded ones as they were:
    // each keeps the delay slept after it (CodeWorm's `delay × attempt`).
    let svc = RetryLayer::new(
        OllamaPolicy::plain()
            .with_retry_delay(Duration::from_millis(1))
            .with_max_attempts(1500),
    )
    .layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(OllamaError::timeout("slow"))
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    let failures = err.report().failures();
    let max = tower_ollama_retry::MAX_RECORDED_FAILURES;
    assert_eq!(failures.len(), max);
    for (i, failure) in failures.iter().enumerate() {
        assert_eq!(failure.number as usize, i + 1);
        assert_eq!(failure.delay, Duration::from_millis(i as u64 + 1));
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_a_recovery() {
    let policy = OllamaPolicy::plain()
        .with_deadline(Duration::from_secs(1))
        .with_recovery(recover_fn(|_: &Attempt, _: &Failure| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        }));
    let t0 = Instant::now();
    let err = RetryLayer::new(policy)
        .layer(tower::service_fn(|_: ()| async {
            Err::<(), _>(OllamaError::model("out of memory"))
        }))
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!(err.reason(), Reason::Deadline);
    assert_eq!(err.attempts(), 1);
}

/// A hook that says it reads `Attempt::sent_at`, and records whether it got
/// one.
#[derive(Clone, Default)]
struct ClockHook(Arc<Mutex<Vec<bool>>>);

impl<Req> tower_ollama_retry::Recover<Req> for ClockHook {
    type Future = Ready<Result<(), BoxError>>;

    fn recover(&mut self, attempt: &Attempt, _: &Failure, _: &mut Req) -> Self::Future {
        self.0.lock().unwrap().push(attempt.sent_at().is_some());
        ready(Ok(()))
    }

    fn needs_clock(&self) -> bool {
        true
    }
}

#[tokio::test(start_paused = true)]
async fn every_policy_measures_the_clock_for_a_hook_that_needs_it() {
    let seen = ClockHook::default();
    let oom_once = |a: &Attempt, r: &Result<u32, BoxError>| match r {
        Err(_) if a.number() == 1 => Decision::Recover(Failure::new(Class::Oom)),
        Err(_) => Decision::Fatal(Failure::new(Class::Fatal)),
        Ok(_) => Decision::Success,
    };
    let policy = RetryPolicy::new(oom_once).with_recover(seen.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = RetryLayer::new(policy).layer(tower::service_fn(move |_: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        ready(if n == 0 {
            Err::<u32, BoxError>("oom".into())
        } else {
            Ok(7)
        })
    }));
    assert_eq!(svc.oneshot(()).await.unwrap(), 7);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [true],
        "the hook saw when its attempt was sent"
    );
}

/// An OOM classified after the deadline has passed runs no recovery, and
/// the report says so.
#[tokio::test(start_paused = true)]
async fn a_recovery_the_deadline_prevented_is_not_recorded_as_run() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let hook = recover_fn(move |_: &Attempt, _: &Failure| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<(), BoxError>(()) }
    });
    let slow_oom = tower::service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err::<&str, _>(OllamaError::model("CUDA error: out of memory"))
    });
    let policy = OllamaPolicy::plain()
        .with_recovery(hook)
        .with_deadline(Duration::from_millis(100));
    let err = RetryLayer::new(policy)
        .layer(slow_oom)
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::Deadline);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the hook never ran");
    assert_eq!(err.report().recoveries(), 0);
    assert!(!err.report().failures()[0].recovered);
}

/// The recovery hook sees the attempt that failed as it was, including the
/// delay slept before it; the attempt after the recovery had none.
#[tokio::test(start_paused = true)]
async fn the_recovery_hook_sees_the_delay_before_the_failed_attempt() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (by_hook, by_backoff) = (seen.clone(), seen.clone());
    let hook = recover_fn(move |attempt: &Attempt, _: &Failure| {
        by_hook
            .lock()
            .unwrap()
            .push(("recover", attempt.number(), attempt.last_delay()));
        async { Ok::<(), BoxError>(()) }
    });
    let calls = Arc::new(AtomicU32::new(0));
    let svc = tower::service_fn(move |_: ()| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            match n {
                1 | 3 => Err(OllamaError::timeout("timed out")),
                2 => Err(OllamaError::model("CUDA error: out of memory")),
                _ => Ok("done"),
            }
        }
    });
    let policy = RetryPolicy::new(|_: &Attempt, r: &Result<&str, OllamaError>| match r {
        Ok(_) => Decision::Success,
        Err(e) if e.to_string().contains("out of memory") => {
            Decision::Recover(Failure::new(Class::Oom))
        }
        Err(_) => Decision::Retry(Failure::new(Class::Timeout)),
    })
    .with_max_attempts(4)
    .with_backoff(move |attempt: &Attempt| {
        by_backoff
            .lock()
            .unwrap()
            .push(("backoff", attempt.number(), attempt.last_delay()));
        Duration::from_millis(100)
    })
    .with_recover(hook);
    let out = RetryLayer::new(policy).layer(svc).oneshot(()).await;
    assert_eq!(out.unwrap(), "done");
    let ms = Duration::from_millis;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("backoff", 1, ms(0)),
            ("recover", 2, ms(100)),
            ("backoff", 3, ms(0)),
        ]
    );
}
