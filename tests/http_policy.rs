//! `HttpPolicy`: statuses, idempotency, never-sent errors, `Retry-After`
//! (valid, invalid, huge, past dates), deadlines against hints, nested
//! layers, and the report extension. In-process services, paused clock.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_ollama_retry::backoff::Constant;
use tower_ollama_retry::http::{HttpPolicy, RetryNonIdempotent, StatusSet};
use tower_ollama_retry::{BoxError, Class, OllamaError, Reason, Report, RetryLayer};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// A scripted in-process API: each call takes the next answer and records
/// the virtual time it arrived.
/// One scripted answer: a status with an optional `Retry-After`, or an error.
type Answer = Result<(u16, Option<&'static str>), &'static str>;

#[derive(Clone, Default)]
struct Api {
    answers: Arc<Mutex<Vec<Answer>>>,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Api {
    fn new(answers: Vec<Answer>) -> Self {
        let api = Self::default();
        *api.answers.lock().unwrap() = answers.into_iter().rev().collect();
        api
    }

    fn service(
        &self,
    ) -> impl tower::Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let api = self.clone();
        tower::service_fn(move |_req: Req| {
            api.arrivals.lock().unwrap().push(Instant::now());
            let answer = api.answers.lock().unwrap().pop().unwrap_or(Ok((200, None)));
            async move {
                match answer {
                    Ok((status, retry_after)) => {
                        let mut res = Response::builder().status(status);
                        if let Some(v) = retry_after {
                            res = res.header("retry-after", v);
                        }
                        Ok(res.body(Full::new(Bytes::from_static(b"body"))).unwrap())
                    }
                    Err("refused") => {
                        let io =
                            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
                        Err(OllamaError::connection("connection refused")
                            .with_source(io)
                            .into())
                    }
                    Err(other) => Err(OllamaError::timeout(other).into()),
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let a = self.arrivals.lock().unwrap();
        a.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn req(method: Method) -> Req {
    Request::builder()
        .method(method)
        .uri("http://api.test/thing")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

fn fixed(ms: u64) -> HttpPolicy<Constant> {
    HttpPolicy::new().with_backoff(Constant::new(Duration::from_millis(ms)))
}

#[tokio::test(start_paused = true)]
async fn retries_the_default_statuses_and_not_others() {
    for status in [408, 429, 500, 502, 503, 504] {
        let api = Api::new(vec![Ok((status, None)), Ok((200, None))]);
        let res = RetryLayer::new(fixed(10))
            .layer(api.service())
            .oneshot(req(Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{status}");
        assert_eq!(api.calls(), 2, "{status}");
        let report = res.extensions().get::<Report>().unwrap();
        let expected = if matches!(status, 408 | 504) {
            Class::Timeout
        } else {
            Class::Transient
        };
        assert_eq!(report.classes().collect::<Vec<_>>(), [expected]);
    }
    for status in [400, 401, 404, 501, 505] {
        let api = Api::new(vec![Ok((status, None))]);
        let res = RetryLayer::new(fixed(10))
            .layer(api.service())
            .oneshot(req(Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(api.calls(), 1, "{status} is not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn the_status_set_is_configurable() {
    let api = Api::new(vec![Ok((418, None)), Ok((200, None))]);
    let policy = fixed(1).with_statuses([418].into_iter().collect::<StatusSet>());
    let res = RetryLayer::new(policy)
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(api.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn exhausted_returns_the_last_response_with_its_report() {
    let api = Api::new(vec![Ok((503, None)); 3]);
    let res = RetryLayer::new(fixed(5))
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report = res.extensions().get::<Report>().unwrap();
    assert_eq!(report.attempts(), 3);
    assert_eq!(report.reason(), Reason::Exhausted);
    assert_eq!(api.gaps(), [Duration::from_millis(5); 2]);
}

#[tokio::test(start_paused = true)]
async fn only_idempotent_methods_are_retried_unless_opted_in() {
    for method in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ] {
        let api = Api::new(vec![Ok((503, None)), Ok((200, None))]);
        RetryLayer::new(fixed(1))
            .layer(api.service())
            .oneshot(req(method.clone()))
            .await
            .unwrap();
        assert_eq!(api.calls(), 2, "{method}");
    }
    for method in [Method::POST, Method::PATCH] {
        let api = Api::new(vec![Ok((503, None)), Ok((200, None))]);
        let res = RetryLayer::new(fixed(1))
            .layer(api.service())
            .oneshot(req(method.clone()))
            .await
            .unwrap();
        assert_eq!(res.status(), 503, "{method} is not retried");
        assert_eq!(api.calls(), 1);
        // A timeout on a POST may have been processed: not retried either.
        let api = Api::new(vec![Err("timed out"), Ok((200, None))]);
        let err = RetryLayer::new(fixed(1))
            .layer(api.service())
            .oneshot(req(method.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), Reason::Fatal);
        assert_eq!(api.calls(), 1);
    }
    // The config switch.
    let api = Api::new(vec![Ok((503, None)), Ok((200, None))]);
    let res = RetryLayer::new(fixed(1).retry_non_idempotent(true))
        .layer(api.service())
        .oneshot(req(Method::POST))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The per-request marker.
    let api = Api::new(vec![Ok((503, None)), Ok((200, None))]);
    let mut r = req(Method::POST);
    r.extensions_mut().insert(RetryNonIdempotent);
    let res = RetryLayer::new(fixed(1))
        .layer(api.service())
        .oneshot(r)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(api.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_post_that_was_never_sent_is_retried() {
    let api = Api::new(vec![Err("refused"), Ok((200, None))]);
    let res = RetryLayer::new(fixed(1))
        .layer(api.service())
        .oneshot(req(Method::POST))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(api.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_backoff_and_is_capped() {
    let in_70s = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(70));
    let in_70s: &'static str = Box::leak(in_70s.into_boxed_str());
    let cases: [(&'static str, Duration); 12] = [
        ("3", Duration::from_secs(3)),
        ("0", Duration::ZERO),
        ("999999999", Duration::from_secs(30)), // capped by with_max_delay (30 s)
        ("18446744073709551615", Duration::from_secs(30)),
        (in_70s, Duration::from_secs(30)),
        ("Wed, 21 Oct 2015 07:28:00 GMT", Duration::ZERO), // in the past: no wait
        // Invalid values fall back to the computed backoff (7 ms here).
        ("-1", Duration::from_millis(7)),
        ("1.5", Duration::from_millis(7)),
        ("nan", Duration::from_millis(7)),
        ("1e999", Duration::from_millis(7)),
        ("18446744073709551616", Duration::from_millis(7)),
        ("soon", Duration::from_millis(7)),
    ];
    for (value, expected) in cases {
        let api = Api::new(vec![Ok((503, Some(value))), Ok((200, None))]);
        RetryLayer::new(fixed(7))
            .layer(api.service())
            .oneshot(req(Method::GET))
            .await
            .unwrap();
        let gap = api.gaps()[0];
        // The date is read against the wall clock; allow a second of drift.
        assert!(
            gap >= expected.saturating_sub(Duration::from_secs(1)) && gap <= expected,
            "Retry-After {value:?}: waited {gap:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_retry_after_falls_back_too() {
    let api = Api::new(vec![Ok((503, Some(""))), Ok((200, None))]);
    RetryLayer::new(fixed(7))
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    assert_eq!(api.gaps(), [Duration::from_millis(7)]);
}

#[tokio::test(start_paused = true)]
async fn a_hint_never_sleeps_past_the_deadline() {
    let api = Api::new(vec![Ok((503, Some("20"))), Ok((200, None))]);
    let t0 = Instant::now();
    let res = RetryLayer::new(fixed(1).with_deadline(Duration::from_secs(10)))
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the 20 s hint was not started"
    );
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.extensions().get::<Report>().unwrap().reason(),
        Reason::Deadline
    );
    assert_eq!(api.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn nested_layers_do_not_multiply_attempts() {
    let api = Api::new(vec![Ok((503, None)); 20]);
    let inner = RetryLayer::new(fixed(1)).layer(api.service());
    let outer = RetryLayer::new(fixed(1)).layer(inner);
    let res = outer.oneshot(req(Method::GET)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(api.calls(), 3, "3, not 9");
    assert_eq!(
        res.extensions().get::<Report>().unwrap().reason(),
        Reason::Exhausted
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_success_has_no_report() {
    let api = Api::new(vec![Ok((200, None))]);
    let res = RetryLayer::new(HttpPolicy::new())
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    assert!(res.extensions().get::<Report>().is_none());
}

#[tokio::test(start_paused = true)]
async fn default_backoff_is_jittered_and_bounded() {
    let api = Api::new(vec![Ok((503, None)), Ok((503, None)), Ok((200, None))]);
    RetryLayer::new(HttpPolicy::new())
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap();
    let gaps = api.gaps();
    assert!(gaps[0] <= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] <= Duration::from_millis(200), "{gaps:?}");
}

/// A service whose every call takes 1 s.
fn slow(
    calls: Arc<AtomicU32>,
) -> impl tower::Service<Req, Response = Res, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |_r: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::new())))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn an_inner_per_attempt_timeout_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(fixed(100)))
        .timeout(Duration::from_millis(300))
        .service(slow(calls.clone()));
    let t0 = Instant::now();
    let err = svc.oneshot(req(Method::GET)).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(err.reason(), Reason::Exhausted);
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(t0.elapsed(), Duration::from_millis(300 * 3 + 100 * 2));
}

#[tokio::test(start_paused = true)]
async fn an_outer_overall_timeout_is_never_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let svc = tower::ServiceBuilder::new()
        .timeout(Duration::from_millis(500)) // overall, outside
        .layer(RetryLayer::new(fixed(100)))
        .timeout(Duration::from_millis(300)) // per attempt, inside
        .service(slow(calls.clone()));
    let t0 = Instant::now();
    let err = svc.oneshot(req(Method::GET)).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    // Attempt 1 timed out at 300 ms, attempt 2 began at 400 ms and was cut
    // off by the outer timeout with the whole loop: no third attempt.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn respond_on_error_fits_under_the_whole_http_stack() {
    use http_body_util::BodyExt;
    use tower_ollama_retry::http::{HttpRetryLayer, ReplayBody, RespondOnError};
    let route = tower::service_fn(|_: Request<ReplayBody<Full<Bytes>>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let svc = HttpRetryLayer::new(RespondOnError::new(HttpPolicy::new().with_max_attempts(0)))
        .layer(route);
    let res = svc.oneshot(req(Method::GET)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        br#"{"error":"no attempts allowed: the policy allows 0 attempts"}"#
    );
}

#[tokio::test(start_paused = true)]
async fn the_error_body_carries_the_whole_cause_chain() {
    let api = Api::new(vec![Err("refused"); 3]);
    let err = RetryLayer::new(fixed(1))
        .layer(api.service())
        .oneshot(req(Method::GET))
        .await
        .unwrap_err();
    let body = tower_ollama_retry::http::error_body(&err);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.contains("connection refused: refused"), "{text}");
    assert_eq!(
        tower_ollama_retry::http::error_status(&err),
        StatusCode::BAD_GATEWAY
    );
}
