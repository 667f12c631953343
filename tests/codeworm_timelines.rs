//! Every worked timeline of CodeWorm's spec, through the engine, with
//! `tower_test::mock` and a paused clock: the attempts, the virtual start of
//! each, the recoveries and the exact final result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_ollama_retry::ollama::Mode;
use tower_ollama_retry::{
    Attempt, BoxError, Failure, OllamaError, OllamaPolicy, Reason, RetryError, RetryLayer,
    recover_fn,
};
use tower_test::mock;

#[derive(Clone, Debug)]
enum Answer {
    Ok(&'static str),
    Timeout,
    Refused,
    Oom,
    Status(u16, &'static str),
}

impl Answer {
    fn result(&self) -> Result<String, BoxError> {
        match self {
            Answer::Ok(s) => Ok(s.to_string()),
            Answer::Timeout => Err(OllamaError::timeout("timed out").into()),
            Answer::Refused => Err(OllamaError::connection("connection refused").into()),
            Answer::Oom => Err(OllamaError::model(
                r#"{"error":"llama runner process has terminated: CUDA error: out of memory"}"#,
            )
            .into()),
            Answer::Status(s, body) => Err(OllamaError::status(*s, *body).into()),
        }
    }
}

struct Run {
    /// Virtual time at which each attempt reached the server.
    starts: Vec<Duration>,
    recoveries: u32,
    /// Virtual time at which the caller got its result.
    ended: Duration,
    result: Result<String, RetryError>,
}

async fn run(mode: Mode, answers: Vec<Answer>) -> Run {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let recoveries = Arc::new(AtomicU32::new(0));
    let counted = recoveries.clone();
    let policy = OllamaPolicy::plain().mode(mode).with_recovery(recover_fn(
        move |_: &Attempt, _: &Failure| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    ));
    let t0 = Instant::now();
    let call = tokio::spawn(RetryLayer::new(policy).layer(svc).oneshot("prompt"));
    let mut starts = Vec::new();
    for answer in &answers {
        let Some((req, send)) = handle.next_request().await else {
            break;
        };
        assert_eq!(req, "prompt");
        starts.push(t0.elapsed());
        match answer.result() {
            Ok(s) => send.send_response(s),
            Err(e) => send.send_error(e),
        }
        // Let the loop classify before the next answer is offered.
        tokio::task::yield_now().await;
        if call.is_finished() {
            break;
        }
    }
    let result = call.await.unwrap();
    let ended = t0.elapsed();
    // Nothing else reaches the server after the loop ends.
    assert!(
        tokio_test::task::spawn(handle.next_request())
            .poll()
            .is_ready()
    );
    Run {
        starts,
        recoveries: recoveries.load(Ordering::SeqCst),
        ended,
        result,
    }
}

fn secs(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs(*s)).collect()
}

#[tokio::test(start_paused = true)]
async fn timeout_timeout_success() {
    use Answer::*;
    let r = run(Mode::CodeWorm, vec![Timeout, Timeout, Ok("done")]).await;
    assert_eq!(r.starts, secs(&[0, 2, 6]));
    assert_eq!(r.recoveries, 0);
    assert_eq!(r.result.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn timeout_three_times_returns_the_third_at_6s() {
    use Answer::*;
    let r = run(Mode::CodeWorm, vec![Timeout, Timeout, Timeout]).await;
    assert_eq!(r.starts, secs(&[0, 2, 6]));
    assert_eq!(r.ended, Duration::from_secs(6), "no sleep after the last");
    let err = r.result.unwrap_err();
    assert_eq!(err.reason(), Reason::Exhausted);
    assert_eq!(err.attempts(), 3);
    assert_eq!(
        err.downcast_ref::<OllamaError>().unwrap().message(),
        "timed out"
    );
}

#[tokio::test(start_paused = true)]
async fn oom_then_success() {
    use Answer::*;
    let r = run(Mode::CodeWorm, vec![Oom, Ok("done")]).await;
    assert_eq!(r.starts, secs(&[0, 0]), "no backoff after a recovery");
    assert_eq!(r.recoveries, 1);
    assert_eq!(r.result.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn oom_three_times_recovers_three_times() {
    use Answer::*;
    let r = run(Mode::CodeWorm, vec![Oom, Oom, Oom]).await;
    assert_eq!(r.starts, secs(&[0, 0, 0]));
    assert_eq!(r.recoveries, 3, "the last recovery runs after attempt 3");
    let err = r.result.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.reason(), Reason::Exhausted);
    assert_eq!(
        err.last_error().unwrap().to_string(),
        "Model OOM after recovery attempt"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_then_oom_then_success() {
    use Answer::*;
    let r = run(Mode::CodeWorm, vec![Refused, Oom, Ok("done")]).await;
    assert_eq!(r.starts, secs(&[0, 2, 2]));
    assert_eq!(r.recoveries, 1);
    assert_eq!(r.result.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn busy_503_is_fatal_at_once() {
    use Answer::*;
    let busy = r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
    let r = run(Mode::CodeWorm, vec![Status(503, busy)]).await;
    assert_eq!(r.starts, secs(&[0]));
    assert_eq!(r.ended, Duration::ZERO);
    let err = r.result.unwrap_err();
    assert_eq!(err.reason(), Reason::Fatal);
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.last_error().unwrap().to_string(),
        format!("Generation failed: {busy}")
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_then_404_returns_the_404() {
    use Answer::*;
    let missing = r#"{"error":"model 'llama9' not found"}"#;
    let r = run(Mode::CodeWorm, vec![Timeout, Status(404, missing)]).await;
    assert_eq!(r.starts, secs(&[0, 2]));
    let err = r.result.unwrap_err();
    assert_eq!(err.reason(), Reason::Fatal);
    assert_eq!(err.attempts(), 2);
    assert_eq!(
        err.downcast_ref::<OllamaError>().unwrap().to_string(),
        format!("Generation failed: {missing}")
    );
}

#[tokio::test(start_paused = true)]
async fn zero_attempts_makes_no_call() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let policy = OllamaPolicy::codeworm().into_plain().with_max_attempts(0);
    let err = RetryLayer::new(policy)
        .layer(svc)
        .oneshot("prompt")
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Reason::NoAttempts);
    assert_eq!(err.attempts(), 0);
    assert_eq!(
        err.to_string(),
        "no attempts allowed: the policy allows 0 attempts"
    );
    assert_eq!(
        err.last_error().unwrap().to_string(),
        "Generation failed after retries"
    );
    assert!(
        tokio_test::task::spawn(handle.next_request())
            .poll()
            .is_ready(),
        "the mock saw no request and is now closed"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_recovery_ends_the_request_at_once() {
    let (svc, mut handle) = mock::pair::<&'static str, String>();
    handle.allow(u64::MAX);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let policy = OllamaPolicy::codeworm()
        .into_plain()
        .with_recovery(recover_fn(move |_: &Attempt, _: &Failure| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err::<(), BoxError>("unload failed: connection refused".into())
            }
        }));
    let call = tokio::spawn(RetryLayer::new(policy).layer(svc).oneshot("prompt"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(Answer::Oom.result().unwrap_err());
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(err.reason(), Reason::RecoveryFailed);
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.last_error().unwrap().to_string(),
        "OOM recovery failed: unload failed: connection refused"
    );
    assert!(
        tokio_test::task::spawn(handle.next_request())
            .poll()
            .is_ready()
    );
}

#[tokio::test(start_paused = true)]
async fn default_mode_retries_busy_with_backoff() {
    use Answer::*;
    let busy = r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
    let r = run(Mode::Default, vec![Status(503, busy), Ok("done")]).await;
    assert_eq!(r.starts, secs(&[0, 2]));
    assert_eq!(r.result.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn default_mode_does_not_recover_after_the_last_attempt() {
    use Answer::*;
    let r = run(Mode::Default, vec![Oom, Oom, Oom]).await;
    assert_eq!(r.starts, secs(&[0, 0, 0]));
    assert_eq!(r.recoveries, 2);
    let err = r.result.unwrap_err();
    assert_eq!(err.reason(), Reason::Exhausted);
    // Default mode keeps the server's own message.
    assert!(
        err.to_string().contains("CUDA error: out of memory"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn default_mode_cuda_without_memory_text_is_not_recovered() {
    let body = r#"{"error":"llama runner process has terminated: CUDA error: CUDA driver version is insufficient for CUDA runtime version"}"#;
    let r = run(
        Mode::Default,
        vec![Answer::Status(500, body), Answer::Ok("done")],
    )
    .await;
    assert_eq!(r.recoveries, 0);
    assert_eq!(r.starts, secs(&[0, 2]));
    let r = run(
        Mode::CodeWorm,
        vec![Answer::Status(500, body), Answer::Ok("done")],
    )
    .await;
    assert_eq!(r.recoveries, 1, "CodeWorm's substring rule sees `cuda`");
}
