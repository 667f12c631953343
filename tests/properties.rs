//! Property tests: backoffs and jitter over their whole input space, the
//! server-hint parsers and the Ollama classifiers over arbitrary bytes, the
//! hint cap through a policy, and random outcome scripts through the engine
//! against an independent model of CodeWorm's loop.

#![cfg(all(feature = "http", feature = "ollama"))]

use proptest::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};
use tower::{Layer, ServiceExt};
use tower_ollama_retry::backoff::{Constant, Exponential, Jitter, JitterKind, Linear};
use tower_ollama_retry::hint::{Hint, grpc_pushback, retry_after};
use tower_ollama_retry::ollama::{Mode, classify_status, error_message};
use tower_ollama_retry::{
    Attempt, Backoff, BoxError, Class, Decision, Failure, OllamaError, OllamaPolicy, Policy,
    Reason, RetryError, RetryLayer, RetryPolicy, recover_fn,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Any `Duration`, weighted towards the edges (zero, one nanosecond,
/// `u64::MAX` seconds, `Duration::MAX`) and towards everyday sizes.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        3 => (0u64..100_000, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        1 => (0u64..=u64::MAX).prop_map(Duration::from_nanos),
        1 => prop::sample::select(vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(100),
            Duration::from_secs(2),
            Duration::from_secs(u64::MAX),
            Duration::new(u64::MAX, 999_999_998),
            Duration::MAX,
        ]),
    ]
}

/// Any attempt number, weighted towards the shift and overflow edges.
fn attempt_number() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => any::<u32>(),
        2 => 0u32..70,
        1 => prop::sample::select(vec![0, 1, 2, 31, 32, 33, 63, 64, 65, u32::MAX - 1, u32::MAX]),
    ]
}

/// Any `f64`, NaN, infinities, negatives and subnormals included.
fn any_ratio() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => prop::num::f64::ANY,
        1 => -2.0f64..3.0,
        1 => prop::sample::select(vec![
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            -0.0,
            0.0,
            0.5,
            1.0,
            1.0 + f64::EPSILON,
            -1.0,
        ]),
    ]
}

#[derive(Clone, Debug)]
enum Inner {
    Linear(Duration, Duration),
    Constant(Duration),
    Exponential(Duration, Duration),
}

fn inner() -> impl Strategy<Value = Inner> {
    prop_oneof![
        (duration(), duration()).prop_map(|(b, m)| Inner::Linear(b, m)),
        duration().prop_map(Inner::Constant),
        (duration(), duration()).prop_map(|(b, m)| Inner::Exponential(b, m)),
    ]
}

/// A backoff behind one concrete type, so that jitter can wrap any of them.
#[derive(Clone, Debug)]
enum AnyBackoff {
    Linear(Linear),
    Constant(Constant),
    Exponential(Exponential),
}

impl Inner {
    fn build(&self) -> AnyBackoff {
        match *self {
            Inner::Linear(b, m) => AnyBackoff::Linear(Linear::new(b).with_max(m)),
            Inner::Constant(d) => AnyBackoff::Constant(Constant::new(d)),
            Inner::Exponential(b, m) => AnyBackoff::Exponential(Exponential::new(b).with_max(m)),
        }
    }
}

impl Backoff for AnyBackoff {
    fn delay(&mut self, attempt: &Attempt) -> Duration {
        match self {
            AnyBackoff::Linear(b) => b.delay(attempt),
            AnyBackoff::Constant(b) => b.delay(attempt),
            AnyBackoff::Exponential(b) => b.delay(attempt),
        }
    }
}

fn kind() -> impl Strategy<Value = JitterKind> {
    prop_oneof![
        Just(JitterKind::Full),
        Just(JitterKind::Equal),
        duration().prop_map(|base| JitterKind::Decorrelated { base }),
        any_ratio().prop_map(JitterKind::Proportional),
    ]
}

#[derive(Clone, Debug)]
struct JitterSpec {
    inner: Inner,
    kind: JitterKind,
    floor: Option<Duration>,
    cap: Option<Duration>,
    seed: u64,
}

fn jitter_spec() -> impl Strategy<Value = JitterSpec> {
    (
        inner(),
        kind(),
        prop::option::weighted(0.8, duration()),
        prop::option::weighted(0.8, duration()),
        any::<u64>(),
    )
        .prop_map(|(inner, kind, floor, cap, seed)| JitterSpec {
            inner,
            kind,
            floor,
            cap,
            seed,
        })
}

impl JitterSpec {
    fn build(&self) -> Jitter<AnyBackoff> {
        let mut j = Jitter::new(self.inner.build(), self.kind);
        if let Some(f) = self.floor {
            j = j.with_floor(f);
        }
        if let Some(c) = self.cap {
            j = j.with_cap(c);
        }
        j.with_seed(self.seed)
    }

    fn floor(&self) -> Duration {
        self.floor.unwrap_or(Duration::ZERO)
    }

    fn cap(&self) -> Duration {
        self.cap.unwrap_or(Duration::MAX)
    }
}

// ---------------------------------------------------------------------------
// Independent arithmetic for the expected delays: whole nanoseconds in u128
// (Duration::MAX × u32::MAX still fits), saturating at Duration::MAX.
// ---------------------------------------------------------------------------

fn ns(d: Duration) -> u128 {
    u128::from(d.as_secs()) * 1_000_000_000 + u128::from(d.subsec_nanos())
}

fn from_ns(n: u128) -> Duration {
    let max = ns(Duration::MAX);
    let n = n.min(max);
    Duration::new(
        u64::try_from(n / 1_000_000_000).unwrap(),
        (n % 1_000_000_000) as u32,
    )
}

fn expected_linear(base: Duration, max: Duration, n: u32) -> Duration {
    from_ns(ns(base) * u128::from(n.max(1))).min(max)
}

fn expected_exponential(base: Duration, max: Duration, n: u32) -> Duration {
    let shift = n.max(1) - 1;
    let b = ns(base);
    let product = if b == 0 {
        0
    } else if shift >= 100 {
        // b ≥ 1 and 2^100 ns is far past Duration::MAX.
        u128::MAX
    } else {
        b.saturating_mul(1u128 << shift)
    };
    from_ns(product).min(max)
}

// ---------------------------------------------------------------------------
// 1. Backoffs and jitter
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn linear_is_base_times_attempt_capped(base in duration(), max in duration(), n in attempt_number(), m in any::<u32>()) {
        let a = Attempt::new(n, m);
        let d = Linear::new(base).with_max(max).delay(&a);
        prop_assert!(d <= max);
        prop_assert_eq!(d, expected_linear(base, max, n));
        // Uncapped: saturates at Duration::MAX instead of panicking.
        prop_assert_eq!(Linear::new(base).delay(&a), expected_linear(base, Duration::MAX, n));
    }

    #[test]
    fn constant_is_constant(delay in duration(), n in attempt_number(), m in any::<u32>()) {
        prop_assert_eq!(Constant::new(delay).delay(&Attempt::new(n, m)), delay);
    }

    #[test]
    fn exponential_never_exceeds_its_cap(base in duration(), max in duration(), n in attempt_number(), m in any::<u32>()) {
        let d = Exponential::new(base).with_max(max).delay(&Attempt::new(n, m));
        prop_assert!(d <= max, "{base:?} {max:?} {n} -> {d:?}");
        // Never below the first step (unless capped), and zero stays zero.
        prop_assert!(d >= base.min(max));
        if base.is_zero() {
            prop_assert_eq!(d, Duration::ZERO);
        }
        // Monotone in the attempt number.
        let next = Exponential::new(base).with_max(max).delay(&Attempt::new(n.saturating_add(1), m));
        prop_assert!(next >= d);
    }

    /// The documented value, `min(base × 2^(attempt − 1), max)`, exactly.
    /// (It once returned the cap for every attempt past 32, whatever the
    /// base: base 1 ns, attempt 33 gave the cap instead of 2^32 ns.)
    #[test]
    fn exponential_is_base_times_power_of_two_capped(base in duration(), max in duration(), n in attempt_number(), m in any::<u32>()) {
        let d = Exponential::new(base).with_max(max).delay(&Attempt::new(n, m));
        prop_assert_eq!(d, expected_exponential(base, max, n), "{:?} {:?} {}", base, max, n);
        let d = Exponential::new(base).delay(&Attempt::new(n, m));
        prop_assert_eq!(d, expected_exponential(base, Duration::MAX, n), "{:?} uncapped {}", base, n);
    }

    #[test]
    fn jitter_stays_within_floor_and_cap(spec in jitter_spec(), attempts in prop::collection::vec(attempt_number(), 1..8), m in any::<u32>()) {
        let (floor, cap) = (spec.floor(), spec.cap());
        let lo = floor.min(cap);
        let mut j = spec.build();
        for n in attempts {
            let d = j.delay(&Attempt::new(n, m));
            prop_assert!(lo <= d && d <= cap, "{spec:?} attempt {n}: {d:?} outside [{lo:?}, {cap:?}]");
        }
    }

    #[test]
    fn a_seed_makes_jitter_reproducible(spec in jitter_spec(), attempts in prop::collection::vec(attempt_number(), 1..8)) {
        let template = spec.build();
        let (mut a, mut b, mut c) = (spec.build(), spec.build(), template.clone());
        let mut first = Vec::new();
        for n in &attempts {
            let att = Attempt::new(*n, u32::MAX);
            let d = a.delay(&att);
            prop_assert_eq!(d, b.delay(&att));
            prop_assert_eq!(d, c.delay(&att));
            first.push(d);
        }
        // A clone of a fresh template replays the same sequence again.
        let mut again = template.clone();
        let replay: Vec<_> = attempts.iter().map(|n| again.delay(&Attempt::new(*n, u32::MAX))).collect();
        prop_assert_eq!(first, replay);
    }

    #[test]
    fn full_and_equal_jitter_stay_under_the_inner_delay(inner in inner(), full in any::<bool>(), cap in duration(), seed in any::<u64>(), n in attempt_number()) {
        let a = Attempt::new(n, u32::MAX);
        let d = inner.build().delay(&a).min(cap);
        let kind = if full { JitterKind::Full } else { JitterKind::Equal };
        let got = Jitter::new(inner.build(), kind).with_cap(cap).with_seed(seed).delay(&a);
        prop_assert!(got <= d);
        if !full {
            prop_assert!(got >= d / 2, "equal jitter {got:?} below half of {d:?}");
        }
    }

    #[test]
    fn proportional_jitter_stays_within_its_ratio(inner in inner(), r in any_ratio(), cap in duration(), seed in any::<u64>(), n in attempt_number()) {
        let a = Attempt::new(n, u32::MAX);
        let d = inner.build().delay(&a).min(cap);
        let got = Jitter::new(inner.build(), JitterKind::Proportional(r)).with_cap(cap).with_seed(seed).delay(&a);
        prop_assert!(got <= cap);
        let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
        // Float arithmetic: allow a relative error of 1e-12 and 1 ns.
        let (x, g) = (ns(d) as f64, ns(got) as f64);
        let slack = x * 1e-12 + 1.0;
        prop_assert!(g >= x * (1.0 - r) - slack, "{got:?} below {d:?} × (1 − {r})");
        prop_assert!(g <= x * (1.0 + r) + slack, "{got:?} above {d:?} × (1 + {r})");
    }

    #[test]
    fn decorrelated_jitter_grows_at_most_threefold(base in duration(), cap in duration(), seed in any::<u64>(), steps in 1usize..10) {
        let mut j = Jitter::new(Constant::new(Duration::ZERO), JitterKind::Decorrelated { base })
            .with_cap(cap)
            .with_seed(seed);
        let lo = base.min(cap);
        let mut prev = lo;
        for k in 1..=steps {
            let d = j.delay(&Attempt::new(k as u32, u32::MAX));
            let hi = prev.saturating_mul(3).min(cap).max(lo);
            prop_assert!(lo <= d && d <= hi, "step {k}: {d:?} outside [{lo:?}, {hi:?}]");
            prev = d;
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Server hints
// ---------------------------------------------------------------------------

/// `Some(Some(n))` for an all-digit value (ASCII whitespace around it
/// allowed) that fits in u64, `Some(None)` for one that overflows, `None`
/// for anything else. Written without `str::parse`.
fn digit_value(bytes: &[u8]) -> Option<Option<u64>> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    let core = &bytes[start..end];
    if !core.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u128 = 0;
    for b in core {
        n = n * 10 + u128::from(b - b'0');
        if n > u128::from(u64::MAX) {
            return Some(None);
        }
    }
    Some(Some(n as u64))
}

fn now() -> impl Strategy<Value = SystemTime> {
    (0u64..253_402_300_800, 0..1_000_000_000u32)
        .prop_map(|(s, n)| SystemTime::UNIX_EPOCH + Duration::new(s, n))
}

fn whitespace() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b" \t\r\n\x0c".to_vec()), 0..3)
}

/// Values made of digits, with whitespace around them, long enough to
/// overflow u64 sometimes.
fn digit_string() -> impl Strategy<Value = Vec<u8>> {
    (
        whitespace(),
        prop::collection::vec(b'0'..=b'9', 1..25),
        whitespace(),
    )
        .prop_map(|(a, d, b)| [a, d, b].concat())
}

/// Bytes that look a little like header values: digits, signs, dots,
/// letters of dates and numbers, whitespace, and anything else.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(
            prop::sample::select(b"0123456789 \t-+.eEnaNinfGMTWed,:x\x0b\xa0".to_vec()),
            0..30
        ),
        digit_string(),
    ]
}

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// (year, month 1..=12, day 1..=31) of a count of days since 1970-01-01.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// An HTTP-date for `secs` since the epoch: IMF-fixdate or asctime.
fn http_date(secs: u64, asctime: bool) -> String {
    let days = secs / 86_400;
    let (y, mo, d) = civil(days);
    let wd = DAYS[((days + 4) % 7) as usize];
    let mon = MONTHS[(mo - 1) as usize];
    let (h, mi, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    if asctime {
        format!("{wd} {mon} {d:>2} {h:02}:{mi:02}:{s:02} {y}")
    } else {
        format!("{wd}, {d:02} {mon} {y} {h:02}:{mi:02}:{s:02} GMT")
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hint_parsers_are_total(bytes in header_like(), now in now()) {
        let got = retry_after(&bytes, now);
        let push = grpc_pushback(&bytes);
        match digit_value(&bytes) {
            Some(Some(n)) => {
                prop_assert_eq!(got, Some(Duration::from_secs(n)));
                prop_assert_eq!(push, Hint::After(Duration::from_millis(n)));
            }
            Some(None) => {
                prop_assert_eq!(got, None);
                prop_assert_eq!(push, Hint::Stop);
            }
            None => {
                prop_assert_eq!(push, Hint::Stop);
                if let Some(d) = got {
                    // Only a valid HTTP-date gets here.
                    let text = std::str::from_utf8(&bytes);
                    prop_assert!(text.is_ok(), "{bytes:?} -> {d:?}");
                    let date = httpdate::parse_http_date(text.unwrap().trim());
                    prop_assert!(date.is_ok(), "{bytes:?} -> {d:?}, not an HTTP-date");
                    let at = date.unwrap();
                    prop_assert_eq!(d, at.duration_since(now).unwrap_or(Duration::ZERO));
                }
            }
        }
    }

    #[test]
    fn digit_values_are_seconds(bytes in digit_string(), now in now()) {
        let expected = digit_value(&bytes).unwrap();
        prop_assert_eq!(retry_after(&bytes, now), expected.map(Duration::from_secs));
        prop_assert_eq!(
            grpc_pushback(&bytes),
            expected.map_or(Hint::Stop, |n| Hint::After(Duration::from_millis(n)))
        );
    }

    #[test]
    fn numbers_in_other_shapes_are_never_a_delay(
        n in any::<u64>(),
        shape in 0usize..8,
        now in now(),
    ) {
        let text = match shape {
            0 => format!("-{n}"),
            1 => format!("+{n}"),
            2 => format!("{n}.5"),
            3 => format!("{n}e3"),
            4 => format!("{}", u128::from(n) + u128::from(u64::MAX) + 1),
            5 => format!("0x{n:x}"),
            6 => format!("{n} s"),
            _ => format!("1_{n}"),
        };
        prop_assert_eq!(retry_after(text.as_bytes(), now), None, "{}", text);
        prop_assert_eq!(grpc_pushback(text.as_bytes()), Hint::Stop, "{}", text);
    }

    #[test]
    fn http_dates_give_the_time_until_then(at in 0u64..253_402_300_800, now in now(), asctime in any::<bool>(), pad in whitespace()) {
        let mut value = pad.clone();
        value.extend_from_slice(http_date(at, asctime).as_bytes());
        value.extend_from_slice(&pad);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(at);
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        prop_assert_eq!(retry_after(&value, now), Some(expected), "{:?}", String::from_utf8_lossy(&value));
        prop_assert_eq!(grpc_pushback(&value), Hint::Stop);
    }
}

#[test]
fn fixed_invalid_hints() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400);
    for bad in [
        &b"-1"[..],
        b"1.5",
        b"nan",
        b"NaN",
        b"inf",
        b"1e999",
        b"18446744073709551616",
        b"+5",
        b"",
        b"   ",
        b"\x0b120",
        b"1 2",
        b"\xff\xfe",
        b"Wed, 32 Oct 2015 07:28:00 GMT",
    ] {
        assert_eq!(
            retry_after(bad, now),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(grpc_pushback(bad), Hint::Stop, "{bad:?}");
    }
    assert_eq!(
        retry_after(b" 18446744073709551615\t", now),
        Some(Duration::from_secs(u64::MAX))
    );
}

// ---------------------------------------------------------------------------
// 3. The hint cap through policies
// ---------------------------------------------------------------------------

type Classifier = fn(&Attempt, &Result<u32, BoxError>) -> Decision;

fn never_retry(_: &Attempt, _: &Result<u32, BoxError>) -> Decision {
    Decision::Success
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(Class::ALL.to_vec())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_hint_is_capped_by_max_delay(
        hint in duration(),
        cap in duration(),
        n in attempt_number(),
        m in any::<u32>(),
        class in class(),
        step in duration(),
    ) {
        let attempt = Attempt::new(n, m);
        let hinted = Failure::new(class).with_hint(hint);
        let plain = Failure::new(class);

        let mut composed = RetryPolicy::new(never_retry as Classifier).with_max_delay(cap);
        let d = <_ as Policy<u32, u32, BoxError>>::backoff(&mut composed, &attempt, &hinted);
        prop_assert_eq!(d, hint.min(cap));
        let d = <_ as Policy<u32, u32, BoxError>>::backoff(&mut composed, &attempt, &plain);
        prop_assert!(d <= cap);

        let mut ollama = OllamaPolicy::plain().with_retry_delay(step).with_max_delay(cap);
        let d = <_ as Policy<u32, u32, BoxError>>::backoff(&mut ollama, &attempt, &hinted);
        prop_assert_eq!(d, hint.min(cap));
        let d = <_ as Policy<u32, u32, BoxError>>::backoff(&mut ollama, &attempt, &plain);
        prop_assert_eq!(d, expected_linear(step, cap, n));

        let mut codeworm = OllamaPolicy::codeworm().into_plain().with_max_delay(cap);
        let d = <_ as Policy<u32, u32, BoxError>>::backoff(&mut codeworm, &attempt, &hinted);
        prop_assert_eq!(d, hint.min(cap));
    }
}

// ---------------------------------------------------------------------------
// 4. The classifiers
// ---------------------------------------------------------------------------

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        2 => any::<u16>(),
        2 => 100u16..600,
        1 => prop::sample::select(vec![
            200, 201, 204, 299, 300, 400, 401, 403, 404, 405, 408, 429, 499, 500, 502, 503, 504,
            599, 600, 0, u16::MAX,
        ]),
    ]
}

const SNIPPETS: &[&str] = &[
    "out of memory",
    "OUT OF MEMORY",
    "Out Of Memory",
    "cuda",
    "CUDA",
    "CuDa",
    "out of device memory",
    "requires more system memory",
    "unable to allocate",
    "server busy",
    "request canceled",
    "context canceled",
    "llama runner process has terminated",
    "out of  memory",
    "cud a",
    "\u{212a}",
    "\u{130}",
    "error",
    "\"",
    "{\"error\":\"",
    "\"}",
    "\\u0063uda",
    "\u{fffd}",
];

/// Bodies built from Ollama-ish snippets, JSON shapes and raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(SNIPPETS.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..4),
                "[a-zA-Z :]{0,8}".prop_map(String::into_bytes),
            ],
            0..6
        )
        .prop_map(|parts| parts.concat()),
        ".{0,40}".prop_map(|s| serde_json::to_vec(&serde_json::json!({ "error": s })).unwrap()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn classifiers_are_total(status in status(), body in body()) {
        let cw = classify_status(Mode::CodeWorm, status, &body);
        let df = classify_status(Mode::Default, status, &body);
        let _ = error_message(&body);
        if (200..300).contains(&status) {
            prop_assert_eq!(cw, Class::Success);
            prop_assert_eq!(df, Class::Success);
            return Ok(());
        }
        // CodeWorm: the two substrings of the whole lower-cased body.
        let text = String::from_utf8_lossy(&body).to_lowercase();
        let oom = text.contains("out of memory") || text.contains("cuda");
        prop_assert_eq!(cw, if oom { Class::Oom } else { Class::Fatal });
        // Default: permanent statuses fail at once, whatever the body.
        if [400, 401, 403, 404, 405, 499].contains(&status) {
            prop_assert_eq!(df, Class::Fatal);
        }
        // Default: only a 5xx can be an OOM, only a 5xx or 429 is retried,
        // and no non-success is ever a success.
        prop_assert_ne!(df, Class::Success);
        prop_assert!(matches!(df, Class::Oom | Class::Transient | Class::Fatal), "{df:?}");
        if df == Class::Oom {
            prop_assert!((500..600).contains(&status));
        }
        if df == Class::Transient {
            prop_assert!(status == 429 || (500..600).contains(&status));
        }
    }

    #[test]
    fn error_message_reads_the_error_field(message in ".{0,40}", extra in ".{0,10}") {
        let body = serde_json::to_vec(&serde_json::json!({ "error": message, "x": extra })).unwrap();
        prop_assert_eq!(error_message(&body), message);
    }

    #[test]
    fn error_message_falls_back_to_the_text(body in prop::collection::vec(any::<u8>(), 0..64)) {
        let m = error_message(&body);
        let is_error_object = matches!(
            serde_json::from_slice::<serde_json::Value>(&body),
            Ok(serde_json::Value::Object(map)) if matches!(map.get("error"), Some(serde_json::Value::String(_)))
        );
        if !is_error_object {
            prop_assert_eq!(m, String::from_utf8_lossy(&body).into_owned());
        }
    }
}

// ---------------------------------------------------------------------------
// 5. Random outcome scripts through the engine, against a plain model
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Timeout,
    Refused,
    Oom,
    Busy503,
    NotFound404,
}

const OOM_BODY: &str =
    r#"{"error":"llama runner process has terminated: CUDA error: out of memory"}"#;
const BUSY_BODY: &str =
    r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
const MISSING_BODY: &str = r#"{"error":"model 'llama9' not found"}"#;

impl Outcome {
    /// The server's answer to attempt `number` (1-based).
    fn answer(self, number: usize) -> Result<String, BoxError> {
        match self {
            Outcome::Ok => Ok(format!("answer {number}")),
            Outcome::Timeout => Err(OllamaError::timeout("timed out").into()),
            Outcome::Refused => Err(OllamaError::connection("connection refused").into()),
            Outcome::Oom => Err(OllamaError::model(OOM_BODY).into()),
            Outcome::Busy503 => Err(OllamaError::status(503, BUSY_BODY).into()),
            Outcome::NotFound404 => Err(OllamaError::status(404, MISSING_BODY).into()),
        }
    }

    /// How the caller sees this attempt's error.
    fn shown(self) -> String {
        match self {
            Outcome::Ok => unreachable!(),
            Outcome::Timeout => "timed out".into(),
            Outcome::Refused => "connection refused".into(),
            Outcome::Oom => OOM_BODY.into(),
            Outcome::Busy503 => format!("Generation failed: {BUSY_BODY}"),
            Outcome::NotFound404 => format!("Generation failed: {MISSING_BODY}"),
        }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(vec![
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Refused,
        Outcome::Oom,
        Outcome::Busy503,
        Outcome::NotFound404,
    ])
}

/// The answer to attempt `number`; past the script the server answers Ok.
fn scripted(script: &[Outcome], number: usize) -> Outcome {
    script.get(number - 1).copied().unwrap_or(Outcome::Ok)
}

#[derive(Clone, Debug)]
struct Case {
    mode: Mode,
    script: Vec<Outcome>,
    max_attempts: u32,
    retry_delay: Duration,
    /// How long each recovery takes.
    recovery_time: Duration,
    /// The recovery run (1-based) that fails, if any.
    failing_recovery: Option<u32>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![Mode::CodeWorm, Mode::Default]),
        prop::collection::vec(outcome(), 1..8),
        0u32..6,
        0u64..5000,
        prop_oneof![3 => Just(0u64), 1 => 1u64..3000],
        prop::option::weighted(0.2, 1u32..4),
    )
        .prop_map(|(mode, script, n, d, r, f)| Case {
            mode,
            script,
            max_attempts: n,
            retry_delay: Duration::from_millis(d),
            recovery_time: Duration::from_millis(r),
            failing_recovery: f,
        })
}

/// What a run looks like from outside.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// Virtual time at which each attempt reached the server.
    starts: Vec<Duration>,
    /// Virtual time at which the caller got its result.
    ended: Duration,
    recoveries: u32,
    /// `Ok(response)` or `Err((reason, attempts, last error's text,
    /// the report's failed attempts))`.
    result: Result<String, (Reason, u32, Option<String>, Vec<Failed>)>,
}

/// A failed attempt as the report records it: its number, the delay slept
/// after it, whether a recovery ran after it.
type Failed = (u32, Duration, bool);

/// CodeWorm's loop (codeworm-semantics.md, section 2), written out plainly,
/// with default mode's two differences: a 503 busy is retried like a
/// timeout, and no recovery runs after an OOM on the last attempt.
fn model(case: &Case) -> Seen {
    let codeworm = case.mode == Mode::CodeWorm;
    let max = case.max_attempts as usize;
    let mut t = Duration::ZERO;
    let mut starts = Vec::new();
    let mut recoveries = 0u32;
    let mut failed: Vec<Failed> = Vec::new();
    let end = |starts: Vec<Duration>, t, recoveries, result| Seen {
        starts,
        ended: t,
        recoveries,
        result,
    };
    if max == 0 {
        let last = codeworm.then(|| "Generation failed after retries".to_string());
        return end(starts, t, 0, Err((Reason::NoAttempts, 0, last, failed)));
    }
    for i in 1..=max {
        starts.push(t);
        let o = scripted(&case.script, i);
        let n = i as u32;
        match o {
            Outcome::Ok => return end(starts, t, recoveries, Ok(format!("answer {i}"))),
            Outcome::NotFound404 => {
                failed.push((n, Duration::ZERO, false));
                return end(
                    starts,
                    t,
                    recoveries,
                    Err((Reason::Fatal, n, Some(o.shown()), failed)),
                );
            }
            Outcome::Busy503 if codeworm => {
                failed.push((n, Duration::ZERO, false));
                return end(
                    starts,
                    t,
                    recoveries,
                    Err((Reason::Fatal, n, Some(o.shown()), failed)),
                );
            }
            Outcome::Timeout | Outcome::Refused | Outcome::Busy503 => {
                if i == max {
                    failed.push((n, Duration::ZERO, false));
                    return end(
                        starts,
                        t,
                        recoveries,
                        Err((Reason::Exhausted, n, Some(o.shown()), failed)),
                    );
                }
                // retry_delay × (attempt index + 1), never after the last.
                failed.push((n, case.retry_delay * n, false));
                t += case.retry_delay * n;
            }
            Outcome::Oom => {
                failed.push((n, Duration::ZERO, codeworm || i < max));
                if codeworm || i < max {
                    recoveries += 1;
                    t += case.recovery_time;
                    if case.failing_recovery == Some(recoveries) {
                        let msg = "OOM recovery failed: unload failed".to_string();
                        return end(
                            starts,
                            t,
                            recoveries,
                            Err((Reason::RecoveryFailed, n, Some(msg), failed)),
                        );
                    }
                }
                if i == max {
                    let msg = if codeworm {
                        "Model OOM after recovery attempt".to_string()
                    } else {
                        o.shown()
                    };
                    return end(
                        starts,
                        t,
                        recoveries,
                        Err((Reason::Exhausted, n, Some(msg), failed)),
                    );
                }
                // No backoff after a recovery.
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Runs `case` through `RetryLayer` over `tower_test::mock` on a paused clock.
fn engine(case: &Case) -> Seen {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let case = case.clone();
    rt.block_on(async move {
        let (svc, mut handle) = tower_test::mock::pair::<&'static str, String>();
        handle.allow(u64::MAX);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let (recovery_time, failing) = (case.recovery_time, case.failing_recovery);
        let hook = recover_fn(move |_: &Attempt, _: &Failure| {
            let k = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if !recovery_time.is_zero() {
                    tokio::time::sleep(recovery_time).await;
                }
                if failing == Some(k) {
                    Err::<(), BoxError>("unload failed".into())
                } else {
                    Ok(())
                }
            }
        });
        let policy = OllamaPolicy::plain()
            .mode(case.mode)
            .with_max_attempts(case.max_attempts)
            .with_retry_delay(case.retry_delay)
            .with_recovery(hook);
        let t0 = tokio::time::Instant::now();
        let call = tokio::spawn(RetryLayer::new(policy).layer(svc).oneshot("prompt"));
        let mut starts = Vec::new();
        // Answers until the engine drops the service, i.e. has finished.
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!(req, "prompt");
            starts.push(t0.elapsed());
            assert!(starts.len() <= 16, "runaway loop: {case:?}");
            match scripted(&case.script, starts.len()).answer(starts.len()) {
                Ok(s) => send.send_response(s),
                Err(e) => send.send_error(e),
            }
        }
        let result: Result<String, RetryError> = call.await.unwrap();
        Seen {
            ended: t0.elapsed(),
            starts,
            recoveries: runs.load(Ordering::SeqCst),
            result: result.map_err(|e| {
                (
                    e.reason(),
                    e.attempts(),
                    e.last_error().map(|s| s.to_string()),
                    e.report()
                        .failures()
                        .iter()
                        .map(|f| (f.number, f.delay, f.recovered))
                        .collect(),
                )
            }),
        }
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_engine_follows_codeworms_loop(case in case()) {
        let expected = model(&case);
        let seen = engine(&case);
        prop_assert_eq!(seen, expected, "{:?}", case);
    }
}

/// The model itself reproduces the spec's worked timelines (defaults: 3
/// attempts, 2 s), so that it is not merely agreeing with the engine.
#[test]
fn the_model_matches_the_worked_timelines() {
    use Outcome::*;
    let secs = |v: &[u64]| {
        v.iter()
            .map(|s| Duration::from_secs(*s))
            .collect::<Vec<_>>()
    };
    let case = |mode, script: &[Outcome]| Case {
        mode,
        script: script.to_vec(),
        max_attempts: 3,
        retry_delay: Duration::from_secs(2),
        recovery_time: Duration::ZERO,
        failing_recovery: None,
    };
    let cw = Mode::CodeWorm;
    let m = model(&case(cw, &[Timeout, Timeout, Ok]));
    assert_eq!((m.starts, m.recoveries), (secs(&[0, 2, 6]), 0));
    assert_eq!(m.result, Result::Ok("answer 3".into()));
    let m = model(&case(cw, &[Timeout, Timeout, Timeout]));
    assert_eq!(
        (m.starts, m.ended),
        (secs(&[0, 2, 6]), Duration::from_secs(6))
    );
    assert_eq!(m.result.unwrap_err().0, Reason::Exhausted);
    let m = model(&case(cw, &[Oom, Oom, Oom]));
    assert_eq!((m.starts, m.recoveries), (secs(&[0, 0, 0]), 3));
    let m = model(&case(Mode::Default, &[Oom, Oom, Oom]));
    assert_eq!(m.recoveries, 2);
    let m = model(&case(cw, &[Refused, Oom, Ok]));
    assert_eq!((m.starts, m.recoveries), (secs(&[0, 2, 2]), 1));
    let m = model(&case(cw, &[Busy503]));
    assert_eq!(m.result.unwrap_err().0, Reason::Fatal);
    let m = model(&case(Mode::Default, &[Busy503, Ok]));
    assert_eq!(m.starts, secs(&[0, 2]));
    let m = model(&case(cw, &[Timeout, NotFound404]));
    assert_eq!(
        (m.starts, m.result.unwrap_err().0),
        (secs(&[0, 2]), Reason::Fatal)
    );
    // And the engine agrees on these too.
    for script in [
        &[Timeout, Timeout, Ok][..],
        &[Oom, Oom, Oom],
        &[Refused, Oom, Ok],
        &[Busy503, Ok],
    ] {
        for mode in [Mode::CodeWorm, Mode::Default] {
            let c = case(mode, script);
            assert_eq!(engine(&c), model(&c), "{c:?}");
        }
    }
}
