//! Peak heap while 1000 requests are buffered for replay at once.
//!
//! 1000 concurrent requests go through `ReplayLayer::new().with_limit(CAP)`
//! into a service that holds each request until all 1000 are in flight (a
//! `tokio::sync::Barrier`), then drops it unread. A counting global
//! allocator tracks the bytes currently allocated and their peak; each case
//! reports the peak above what was allocated before it started.
//!
//! The request bodies are streams of 4 KiB chunks with no length known in
//! advance (the case that must be buffered to find out), each chunk a fresh
//! heap allocation made when it is polled, as a network body's would be.
//!
//! | case | body | expected |
//! |---|---|---|
//! | `baseline` | 1 byte | the fixed cost: task, request head, body box, barrier |
//! | `at_cap` | exactly `CAP` bytes | one buffered copy per request: ≈ `CAP × N` |
//! | `over_cap_declared` | `2 × CAP`, exact size hint | never read: ≈ baseline |
//! | `over_cap_discovered` | `2 × CAP`, no size hint | the frames read before the limit was crossed are handed on, not copied: ≈ `(CAP + chunk) × N` |
//! | `over_cap_discovered_static` | the same, chunks of static memory | what the layer itself allocates for it: ≈ baseline |
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo bench --bench memory
//! ```

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::Barrier;
use tower::{Layer, ServiceExt, service_fn};
use tower_ollama_retry::http::{ReplayBody, ReplayLayer};

// ---- the counting allocator ------------------------------------------------

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(by: usize) {
    CURRENT.fetch_sub(by, Ordering::Relaxed);
}

/// `System`, tracking the bytes allocated now and their peak.
struct Tracking;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the bookkeeping only touches two
// atomics and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees about `layout` are passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout` (every allocation
        // here does); the caller's guarantees are passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---- the request body --------------------------------------------------------

const CHUNK: usize = 4 * 1024;
static STATIC_CHUNK: [u8; CHUNK] = [b'x'; CHUNK];

/// `len` bytes in chunks of [`CHUNK`], each made when it is polled.
struct Chunks {
    left: usize,
    heap: bool,
    exact_hint: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        self.left -= n;
        let data = if self.heap {
            // Exactly `n` bytes: `Bytes::from(Vec)` then adds nothing.
            Bytes::from(vec![b'x'; n])
        } else {
            Bytes::from_static(&STATIC_CHUNK[..n])
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_hint {
            SizeHint::with_exact(self.left as u64)
        } else {
            SizeHint::default()
        }
    }
}

// ---- the run ---------------------------------------------------------------

const CAP: usize = 64 * 1024;
const CONCURRENCY: usize = 1000;

/// Sends [`CONCURRENCY`] requests at once; returns the peak heap bytes above
/// the level before the first was made.
fn peak_of(rt: &tokio::runtime::Runtime, len: usize, heap: bool, exact_hint: bool) -> usize {
    let barrier = Arc::new(Barrier::new(CONCURRENCY));
    let inner = service_fn(move |req: Request<ReplayBody<Chunks>>| {
        let barrier = barrier.clone();
        async move {
            barrier.wait().await;
            drop(req);
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let svc = ReplayLayer::new().with_limit(CAP).layer(inner);

    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let req = Request::post("http://127.0.0.1:11434/api/generate")
                .body(Chunks {
                    left: len,
                    heap,
                    exact_hint,
                })
                .expect("a request");
            tasks.spawn(svc.clone().oneshot(req));
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("no panic").expect("no error");
        }
    });
    PEAK.load(Ordering::Relaxed) - before
}

fn main() {
    // One thread: the runtime is polled only by this one, so requests are
    // buffered one at a time and nothing else allocates meanwhile.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    peak_of(&rt, 1, true, false); // warm-up: runtime and tracing lazies

    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let n = CONCURRENCY;
    let budget = CAP * n;
    println!(
        "{n} concurrent requests, replay limit CAP = {} KiB, chunks of {} KiB",
        CAP / 1024,
        CHUNK / 1024
    );
    println!("CAP x {n} = {budget} bytes ({:.2} MiB)", mib(budget));

    let mut peaks = Vec::new();
    for (name, len, heap, exact) in [
        ("baseline", 1, true, false),
        ("at_cap", CAP, true, false),
        ("at_cap_exact_hint", CAP, true, true),
        ("over_cap_declared", 2 * CAP, true, true),
        ("over_cap_discovered", 2 * CAP, true, false),
        ("over_cap_discovered_static", 2 * CAP, false, false),
    ] {
        let peak = peak_of(&rt, len, heap, exact);
        println!(
            "{name:28} body {len:>6} B  peak {peak:>10} B ({:>6.2} MiB) = {:>7} B/request = {:.3} x CAP x {n}",
            mib(peak),
            peak / n,
            peak as f64 / budget as f64,
        );
        peaks.push((name, peak));
    }
    let peak = |name: &str| peaks.iter().find(|(n, _)| *n == name).map(|p| p.1).unwrap();
    let baseline = peak("baseline");

    // Buffered bodies: one copy each, plus the fixed per-request cost.
    let allowed = budget + budget / 10 + baseline;
    for name in ["at_cap", "at_cap_exact_hint"] {
        let p = peak(name);
        assert!(
            p <= allowed,
            "{name}: peak {p} B > 1.1 x CAP x {n} + baseline = {allowed} B"
        );
        println!("{name}: peak {p} B <= 1.1 x CAP x {n} + baseline ({allowed} B): ok");
    }
    // Declared too large: never read, so nothing but the fixed cost.
    let p = peak("over_cap_declared");
    assert!(
        p < budget / 10,
        "over_cap_declared: peak {p} B is not far below CAP x {n}"
    );
    // Discovered too large: the layer keeps no copy of its own...
    let p = peak("over_cap_discovered_static");
    assert!(
        p < budget / 10,
        "over_cap_discovered_static: peak {p} B is not far below CAP x {n}"
    );
    // ...but the frames read up to the limit are the request's bytes, and
    // are sent on: held until the inner service reads or drops them.
    let p = peak("over_cap_discovered");
    let held = (CAP + CHUNK) * n;
    assert!(
        p <= held + held / 10 + baseline,
        "over_cap_discovered: peak {p} B > 1.1 x (CAP + CHUNK) x {n} + baseline"
    );
    println!("over-cap checks: ok");
}
