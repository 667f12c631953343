//! Heap allocations per call, ours next to `tower::retry`.
//!
//! A counting global allocator counts, per thread, every `alloc`,
//! `alloc_zeroed` and `realloc`. Every inner service answers at once and
//! each call is driven by one poll with a no-op waker, so nothing but the
//! service stack under test allocates on the measuring thread. Requests are
//! built before the counted loop and responses dropped inside it (a free is
//! not counted).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo test --test alloc -- --nocapture
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tower_ollama_retry::{OllamaError, OllamaPolicy, Retry};
use tower_service::Service;

// ---- the counting allocator ----------------------------------------------

thread_local! {
    // `const`-initialised and without a destructor: reading it never
    // allocates, so it is safe to touch from inside the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // `try_with`: the slot may already be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// `System`, counting allocations on the calling thread.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counting touches no allocated
// memory and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's guarantees about `layout` are passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` was allocated by `System` (every allocation here
        // is), with `layout`; the caller's guarantees are passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---- driving calls ---------------------------------------------------------

const WARM_UP: usize = 100;
const CALLS: usize = 1000;

/// Calls `svc` once: `poll_ready`, `call`, one poll of the future.
fn call_now<S: Service<Req>, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error> {
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

/// Mean allocations per call of `svc` over [`CALLS`] calls, after
/// [`WARM_UP`]. `make` builds each request (outside the count), `before`
/// runs before each call (inside it; it must not allocate), `check`
/// validates each answer.
fn per_call<S, Req>(
    svc: &mut S,
    mut make: impl FnMut() -> Req,
    mut before: impl FnMut(),
    mut check: impl FnMut(Result<S::Response, S::Error>),
) -> f64
where
    S: Service<Req>,
{
    for _ in 0..WARM_UP {
        before();
        check(call_now(svc, make()));
    }
    let requests: Vec<Req> = (0..CALLS).map(|_| make()).collect();
    let start = allocations();
    for req in requests {
        before();
        let answer = call_now(svc, req);
        // `check` may allocate (an assertion message): not counted.
        let paused = allocations();
        check(answer);
        ALLOCATIONS.with(|n| n.set(paused));
    }
    (allocations() - start) as f64 / CALLS as f64
}

// ---- u64 services and the tower policy ------------------------------------

#[derive(Clone, Copy, Debug)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req + 1))
    }
}

/// Fails its first call since the last reset with a timeout.
#[derive(Clone, Debug, Default)]
struct FailOnce {
    calls: Arc<AtomicU32>,
}

impl FailOnce {
    fn reset(&self) {
        self.calls.store(0, Ordering::Relaxed);
    }
}

impl Service<u64> for FailOnce {
    type Response = u64;
    type Error = OllamaError;
    type Future = Ready<Result<u64, OllamaError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), OllamaError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        if self.calls.fetch_add(1, Ordering::Relaxed) == 0 {
            ready(Err(OllamaError::timeout("read timed out")))
        } else {
            ready(Ok(req + 1))
        }
    }
}

/// 3 attempts, a retry on any error, no delay.
#[derive(Clone, Copy, Debug)]
struct TowerAttempts {
    retries_left: u32,
}

const TOWER_THREE: TowerAttempts = TowerAttempts { retries_left: 2 };

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

fn ok_8<E: std::fmt::Debug>(answer: Result<u64, E>) {
    assert_eq!(answer.unwrap(), 8);
}

// ---- http services and the tower policy ------------------------------------

#[cfg(feature = "http")]
mod http_svc {
    use super::{Ready, ready};
    use bytes::Bytes;
    use http::header::CONTENT_TYPE;
    use http::{HeaderValue, Method, Request, Response, Uri};
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::task::{Context, Poll};
    use tower_ollama_retry::BoxError;
    use tower_service::Service;

    pub type Req = Request<Full<Bytes>>;
    pub type Res = Response<Full<Bytes>>;

    const PROMPT: &[u8] = br#"{"model":"llama3","prompt":"Why is the sky blue?","stream":false}"#;
    const ANSWER: &[u8] = br#"{"model":"llama3","response":"Rayleigh scattering.","done":true}"#;

    /// An Ollama-shaped request: `content-type` header, JSON body.
    pub fn request(method: Method) -> Req {
        let mut req = Request::new(Full::new(Bytes::from_static(PROMPT)));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("http://127.0.0.1:11434/api/generate");
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        req
    }

    fn response(status: u16) -> Res {
        let mut res = Response::new(Full::new(Bytes::from_static(ANSWER)));
        *res.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
        res
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Ok200;

    impl Service<Req> for Ok200 {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            ready(Ok(response(200)))
        }
    }

    /// 503 on its first call since the last reset, then 200.
    #[derive(Clone, Debug, Default)]
    pub struct Busy503Once {
        pub calls: Arc<AtomicU32>,
    }

    impl Busy503Once {
        pub fn reset(&self) {
            self.calls.store(0, Ordering::Relaxed);
        }
    }

    impl Service<Req> for Busy503Once {
        type Response = Res;
        type Error = BoxError;
        type Future = Ready<Result<Res, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Req) -> Self::Future {
            let first = self.calls.fetch_add(1, Ordering::Relaxed) == 0;
            ready(Ok(response(if first { 503 } else { 200 })))
        }
    }

    /// 3 attempts, a retry on an error or a 5xx, the request copied as
    /// `replay_request` copies it.
    #[derive(Clone, Copy, Debug)]
    pub struct TowerHttp {
        retries_left: u32,
    }

    pub const TOWER_HTTP_THREE: TowerHttp = TowerHttp { retries_left: 2 };

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
}

// ---- the measurements --------------------------------------------------------

/// One test, so that the measurements run one after another on one thread.
#[test]
fn allocations_per_call() {
    let nothing = || {};

    // Success path, u64.
    let bare = per_call(&mut Echo, || 7, nothing, ok_8);
    let tower = per_call(
        &mut tower::retry::Retry::new(TOWER_THREE, Echo),
        || 7,
        nothing,
        ok_8,
    );
    let ours = per_call(
        &mut Retry::new(Echo, OllamaPolicy::plain()),
        || 7,
        nothing,
        ok_8,
    );
    eprintln!("allocations per call, success path, u64:");
    eprintln!("  bare                 {bare:.3}");
    eprintln!("  tower_retry          {tower:.3}");
    eprintln!("  ours_ollama (plain)  {ours:.3}");

    // One retry, u64.
    let inner = FailOnce::default();
    let reset = || inner.reset();
    let tower_retry = per_call(
        &mut tower::retry::Retry::new(TOWER_THREE, inner.clone()),
        || 7,
        reset,
        ok_8,
    );
    let policy = OllamaPolicy::plain().with_retry_delay(Duration::ZERO);
    let ours_retry = per_call(&mut Retry::new(inner.clone(), policy), || 7, reset, ok_8);
    eprintln!("allocations per call, one retry, u64 (the inner error itself allocates 1):");
    eprintln!("  tower_retry          {tower_retry:.3}");
    eprintln!("  ours_ollama (plain)  {ours_retry:.3}");

    // The response futures' sizes: each call builds one and moves it.
    let ours_size = size_of_val(&Retry::new(Echo, OllamaPolicy::plain()).call(7));
    let tower_size = size_of_val(&tower::retry::Retry::new(TOWER_THREE, Echo).call(7));
    eprintln!("response future size, u64: tower_retry {tower_size} B, ours_ollama {ours_size} B");

    #[cfg(feature = "http")]
    http_cases();

    assert_eq!(bare, 0.0, "the bare service allocates nothing");
    assert!(
        ours <= tower,
        "ours {ours} > tower {tower} allocations per call"
    );
    assert_eq!(ours, 0.0, "the u64 success path allocates nothing");
}

#[cfg(feature = "http")]
fn http_cases() {
    use http::Method;
    use http_svc::{Busy503Once, Ok200, Res, TOWER_HTTP_THREE, request};
    use tower_ollama_retry::backoff::Constant;
    use tower_ollama_retry::http::HttpPolicy;

    fn status<E: std::fmt::Debug>(want: u16) -> impl FnMut(Result<Res, E>) {
        move |answer| assert_eq!(answer.unwrap().status(), want)
    }
    let nothing = || {};
    let post = || request(Method::POST);

    let bare = per_call(&mut Ok200, post, nothing, status(200));
    let tower = per_call(
        &mut tower::retry::Retry::new(TOWER_HTTP_THREE, Ok200),
        post,
        nothing,
        status(200),
    );
    let ours = per_call(
        &mut Retry::new(Ok200, HttpPolicy::new()),
        post,
        nothing,
        status(200),
    );
    eprintln!(
        "allocations per call, success path, POST Request<Full<Bytes>> with one header \
         (copying its HeaderMap costs 2):"
    );
    eprintln!("  bare_http            {bare:.3}");
    eprintln!("  tower_retry_http     {tower:.3}");
    eprintln!("  ours_http            {ours:.3}");

    // One retry: 503 then 200, a GET (HttpPolicy retries idempotent methods).
    let inner = Busy503Once::default();
    let reset = || inner.reset();
    let get = || request(Method::GET);
    let tower_retry = per_call(
        &mut tower::retry::Retry::new(TOWER_HTTP_THREE, inner.clone()),
        get,
        reset,
        status(200),
    );
    let policy = HttpPolicy::new().with_backoff(Constant::new(Duration::ZERO));
    let ours_retry = per_call(
        &mut Retry::new(inner.clone(), policy),
        get,
        reset,
        status(200),
    );
    eprintln!("allocations per call, one retry (503 then 200), GET Request<Full<Bytes>>:");
    eprintln!("  tower_retry_http     {tower_retry:.3}");
    eprintln!("  ours_http            {ours_retry:.3}");

    let ours_size = size_of_val(&Retry::new(Ok200, HttpPolicy::new()).call(post()));
    let tower_size = size_of_val(&tower::retry::Retry::new(TOWER_HTTP_THREE, Ok200).call(post()));
    eprintln!(
        "response future size, http: tower_retry_http {tower_size} B, ours_http {ours_size} B"
    );

    assert_eq!(bare, 0.0, "the bare http service allocates nothing");
    assert!(
        ours <= tower,
        "ours_http {ours} > tower_retry_http {tower} allocations per call"
    );
}
