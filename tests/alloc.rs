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
use std::time::Duration;
use tower_ollama_retry::{OllamaPolicy, Retry};
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

// ---- the services and tower policies, shared with benches/overhead.rs -----

#[path = "../benches/support/mod.rs"]
mod support;

use support::{Echo, FailOnce, TowerAttempts, call_now};

const TOWER_THREE: TowerAttempts = TowerAttempts::three();

fn ok_8<E: std::fmt::Debug>(answer: Result<u64, E>) {
    assert_eq!(answer.unwrap(), 8);
}

// ---- http services and the tower policy ------------------------------------

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
    let reset = || inner.calls.reset();
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
    assert!(
        ours_retry <= tower_retry,
        "ours {ours_retry} > tower {tower_retry} allocations per call with one immediate retry"
    );
}

#[cfg(feature = "http")]
fn http_cases() {
    use http::Method;
    use support::http::{Busy503Once, Ok200, Res, TowerHttp, request};
    const TOWER_HTTP_THREE: TowerHttp = TowerHttp::three();
    use tower::Layer;
    use tower_ollama_retry::backoff::Constant;
    use tower_ollama_retry::http::{HttpPolicy, HttpRetryLayer};

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

    // The whole Ollama stack: replay (the body is read in `call`: boxing it
    // to poll it costs 1, its single frame none), retry (the HeaderMap copy,
    // 2) and peek (nothing for a 200).
    // Inside a tokio task, as a server's requests are: `ReplayService` reads
    // a body in memory inside `call` there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let stack = tokio::task::LocalSet::new()
        .block_on(&rt, async {
            tokio::task::spawn_local(async {
                per_call(
                    &mut HttpRetryLayer::new(OllamaPolicy::default()).layer(Ok200),
                    || request(Method::POST),
                    || {},
                    |answer: Result<http::Response<_>, _>| {
                        assert_eq!(answer.unwrap().status(), 200)
                    },
                )
            })
            .await
        })
        .expect("the task does not panic");
    eprintln!("  ollama_stack_http    {stack:.3}  (HttpRetryLayer: replay, retry, peek)");

    // One retry: 503 then 200, a GET (HttpPolicy retries idempotent methods).
    let inner = Busy503Once::default();
    let reset = || inner.calls.reset();
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
        stack <= tower + 1.0,
        "the Ollama stack allocates {stack} per call: more than the HeaderMap copy and the body box"
    );
    assert!(
        ours <= tower,
        "ours_http {ours} > tower_retry_http {tower} allocations per call"
    );
}
