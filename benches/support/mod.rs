//! What the overhead benchmark and the allocation test share: in-memory
//! services that answer at once, and `tower::retry` policies equivalent to
//! ours, so that both measure the same calls.

#![allow(dead_code)]

use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use tower_ollama_retry::OllamaError;
use tower_service::Service;

/// Calls `svc` once: `poll_ready`, `call`, one poll of the future. Panics if
/// anything would need a runtime.
#[inline(always)]
pub fn call_now<S: Service<Req>, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("poll_ready was not ready"),
    }
    let mut future = pin!(svc.call(req));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the call needs a runtime"),
    }
}

/// Answers `req + 1` at once.
#[derive(Clone, Copy, Debug)]
pub struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req.wrapping_add(1)))
    }
}

/// Counts a service's calls since the last reset, shared by its clones: the
/// services below answer their first call differently.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicU32>);

impl Calls {
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Counts a call; whether it is the first since the last reset.
    pub fn first(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) == 0
    }

    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Fails its first call (since the last reset) with a timeout, then
/// answers `req + 1`.
#[derive(Clone, Debug, Default)]
pub struct FailOnce {
    pub calls: Calls,
}

impl Service<u64> for FailOnce {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        if self.calls.first() {
            ready(Err(OllamaError::timeout("read timed out")))
        } else {
            ready(Ok(req.wrapping_add(1)))
        }
    }
}

/// `tower::retry` doing what `OllamaPolicy::plain()` does here: 3 attempts
/// in total, a retry on any error, no delay.
#[derive(Clone, Copy, Debug)]
pub struct TowerAttempts {
    retries_left: u32,
}

impl TowerAttempts {
    pub const fn three() -> Self {
        Self { retries_left: 2 }
    }
}

impl<Res, E> tower::retry::Policy<u64, Res, E> for TowerAttempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<Res, E>) -> Option<Ready<()>> {
        match result {
            Err(_) if self.retries_left > 0 => {
                self.retries_left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

/// Our engine under `TowerAttempts`'s policy: 3 attempts, a retry on any
/// error at once, the request copied, nothing else looked at. Next to
/// `tower::retry` it shows what the engine itself costs, apart from what
/// `OllamaPolicy` classifies and records.
#[derive(Clone, Copy, Debug)]
pub struct EngineOnly;

impl<Req: Copy, Res, E> tower_ollama_retry::Policy<Req, Res, E> for EngineOnly {
    type Error = E;
    type Recover = tower_ollama_retry::Recovered;

    fn max_attempts(&self) -> u32 {
        3
    }

    fn replay(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }

    fn classify(
        &mut self,
        _: &tower_ollama_retry::Attempt,
        result: &Result<Res, E>,
    ) -> tower_ollama_retry::Decision {
        use tower_ollama_retry::{Class, Decision, Failure};
        match result {
            Ok(_) => Decision::Success,
            Err(_) => Decision::Retry(Failure::new(Class::Transient)),
        }
    }

    fn backoff(
        &mut self,
        _: &tower_ollama_retry::Attempt,
        _: &tower_ollama_retry::Failure,
    ) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    fn recover(
        &mut self,
        _: &tower_ollama_retry::Attempt,
        _: &tower_ollama_retry::Failure,
        _: &mut Req,
    ) -> tower_ollama_retry::Recovered {
        tower_ollama_retry::Recovered
    }

    fn readiness_error(&mut self, error: E) -> E {
        error
    }

    fn finish(&mut self, finished: tower_ollama_retry::Finished<Res, E>) -> Result<Res, E> {
        let (last, _, _) = finished.into_parts();
        last.expect("with no recovery hook, every ending has a last result")
    }
}

pub mod http {
    //! The same over `http::Request<Full<Bytes>>`: an Ollama-shaped `POST`
    //! with a JSON body and a `content-type` header, answered `200`.

    use bytes::Bytes;
    use http::header::CONTENT_TYPE;
    use http::{HeaderValue, Method, Request, Response, Uri};
    use http_body_util::Full;
    use std::future::{Ready, ready};
    use std::task::{Context, Poll};
    use std::time::Duration;
    use tower_ollama_retry::BoxError;
    use tower_ollama_retry::backoff::Constant;
    use tower_ollama_retry::http::HttpPolicy;
    use tower_service::Service;

    const PROMPT: &[u8] = br#"{"model":"llama3","prompt":"Why is the sky blue?","stream":false}"#;
    const ANSWER: &[u8] = br#"{"model":"llama3","response":"Rayleigh scattering.","done":true}"#;

    pub type Req = Request<Full<Bytes>>;
    pub type Res = Response<Full<Bytes>>;

    /// The request every iteration sends (built outside the timed region).
    /// Never inlined, so that building it costs the same on every side of
    /// a comparison whatever the compiler does with the caller.
    #[inline(never)]
    pub fn request(method: Method) -> Req {
        let mut req = Request::new(Full::new(Bytes::from_static(PROMPT)));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("http://127.0.0.1:11434/api/generate");
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req
    }

    #[inline(never)]
    fn response(status: u16) -> Res {
        let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
        *res.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
        res
    }

    /// Answers 200 at once.
    #[derive(Clone, Copy, Debug)]
    pub struct Ok200;

    // Any body: the whole Ollama stack hands it `ReplayBody<Full<Bytes>>`.
    impl<B> Service<Request<B>> for Ok200 {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<B>) -> Self::Future {
            ready(Ok(response(200)))
        }
    }

    /// Answers 503 to its first call since the last reset, then 200.
    #[derive(Clone, Debug, Default)]
    pub struct Busy503Once {
        pub calls: super::Calls,
    }

    impl Service<Req> for Busy503Once {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            ready(Ok(response(if self.calls.first() { 503 } else { 200 })))
        }
    }

    /// `tower::retry` doing what `HttpPolicy` does here: 3 attempts, a retry
    /// on an error or a 5xx, no delay, and the request copied the way
    /// `replay_request` copies it (method, URI, version, headers,
    /// extensions, body).
    #[derive(Clone, Copy, Debug)]
    pub struct TowerHttp {
        retries_left: u32,
    }

    impl TowerHttp {
        pub const fn three() -> Self {
            Self { retries_left: 2 }
        }
    }

    impl<E> tower::retry::Policy<Req, Res, E> for TowerHttp {
        type Future = Ready<()>;

        fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Ready<()>> {
            let failed = match result {
                Ok(res) => res.status().is_server_error(),
                Err(_) => true,
            };
            if failed && self.retries_left > 0 {
                self.retries_left -= 1;
                Some(ready(()))
            } else {
                None
            }
        }

        fn clone_request(&mut self, req: &Req) -> Option<Req> {
            let mut copy = Request::new(req.body().clone());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            *copy.extensions_mut() = req.extensions().clone();
            Some(copy)
        }
    }

    /// `HttpPolicy` with no delay between attempts.
    pub fn http_policy_no_delay() -> HttpPolicy<Constant> {
        HttpPolicy::new().with_backoff(Constant::new(Duration::ZERO))
    }
}

#[cfg(feature = "ollama")]
pub mod loopback;
