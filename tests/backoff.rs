//! Backoff and jitter edge cases: overflow, huge bases, caps below the base.

use std::time::Duration;
use tower_ollama_retry::backoff::{Constant, Exponential, Jitter, JitterKind, Linear};
use tower_ollama_retry::{Attempt, Backoff};

const EDGE_ATTEMPTS: [u32; 6] = [0, 1, 2, 31, 32, u32::MAX];
const EDGE_BASES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_secs(2),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

#[test]
fn linear_saturates() {
    for base in EDGE_BASES {
        for n in EDGE_ATTEMPTS {
            let d = Linear::new(base).delay(&Attempt::new(n, u32::MAX));
            assert!(d >= base.min(d));
        }
    }
    assert_eq!(
        Linear::new(Duration::MAX).delay(&Attempt::new(u32::MAX, u32::MAX)),
        Duration::MAX
    );
    assert_eq!(
        Linear::new(Duration::from_secs(2)).delay(&Attempt::new(u32::MAX, u32::MAX)),
        Duration::from_secs(2 * u64::from(u32::MAX))
    );
}

#[test]
fn exponential_caps_before_overflow() {
    let cap = Duration::from_secs(30);
    for base in EDGE_BASES {
        for n in EDGE_ATTEMPTS {
            let d = Exponential::new(base)
                .with_max(cap)
                .delay(&Attempt::new(n, u32::MAX));
            assert!(d <= cap, "{base:?} {n} -> {d:?}");
        }
    }
    assert_eq!(
        Exponential::new(Duration::MAX).delay(&Attempt::new(u32::MAX, u32::MAX)),
        Duration::MAX
    );
    assert_eq!(
        Exponential::new(Duration::ZERO).delay(&Attempt::new(u32::MAX, u32::MAX)),
        Duration::ZERO
    );
}

#[test]
fn a_cap_smaller_than_the_base_wins() {
    let base = Duration::from_secs(10);
    let cap = Duration::from_secs(1);
    assert_eq!(
        Linear::new(base).with_max(cap).delay(&Attempt::new(1, 3)),
        cap
    );
    assert_eq!(
        Exponential::new(base)
            .with_max(cap)
            .delay(&Attempt::new(1, 3)),
        cap
    );
    for kind in [
        JitterKind::Full,
        JitterKind::Equal,
        JitterKind::Decorrelated { base },
        JitterKind::Proportional(0.5),
    ] {
        let mut j = Jitter::new(Constant::new(base), kind)
            .with_cap(cap)
            .with_floor(Duration::from_secs(5))
            .with_seed(1);
        for n in 1..20 {
            assert!(j.delay(&Attempt::new(n, 20)) <= cap);
        }
    }
}

#[test]
fn jitter_stays_within_floor_and_cap_and_is_reproducible() {
    let floor = Duration::from_millis(50);
    let cap = Duration::from_secs(3);
    for kind in [
        JitterKind::Full,
        JitterKind::Equal,
        JitterKind::Decorrelated {
            base: Duration::from_millis(100),
        },
        JitterKind::Proportional(0.25),
        JitterKind::Proportional(f64::NAN),
        JitterKind::Proportional(f64::INFINITY),
        JitterKind::Proportional(-3.0),
    ] {
        let make = || {
            Jitter::new(Exponential::new(Duration::from_millis(100)), kind)
                .with_floor(floor)
                .with_cap(cap)
                .with_seed(42)
        };
        let (mut a, mut b) = (make(), make());
        for n in EDGE_ATTEMPTS.into_iter().chain(1..40) {
            let at = Attempt::new(n, u32::MAX);
            let d = a.delay(&at);
            assert!(d >= floor && d <= cap, "{kind:?} {n} -> {d:?}");
            assert_eq!(d, b.delay(&at), "a seed fixes the sequence");
        }
    }
}

#[test]
fn jitter_over_duration_max_does_not_panic() {
    for kind in [
        JitterKind::Full,
        JitterKind::Equal,
        JitterKind::Decorrelated {
            base: Duration::MAX,
        },
        JitterKind::Proportional(1.0),
    ] {
        let mut j = Jitter::new(Constant::new(Duration::MAX), kind).with_seed(3);
        for n in EDGE_ATTEMPTS {
            let _ = j.delay(&Attempt::new(n, u32::MAX));
        }
    }
}

#[test]
fn full_jitter_spreads_delays() {
    let mut j = Jitter::new(Constant::new(Duration::from_secs(1)), JitterKind::Full).with_seed(9);
    let delays: std::collections::BTreeSet<_> =
        (1..50).map(|n| j.delay(&Attempt::new(n, 50))).collect();
    assert!(delays.len() > 40, "jitter should vary: {}", delays.len());
}

#[test]
fn exponential_past_attempt_32_with_a_tiny_base() {
    let mut b = Exponential::new(Duration::from_nanos(1)).with_max(Duration::from_secs(10));
    assert_eq!(
        b.delay(&Attempt::new(33, 40)),
        Duration::from_nanos(1 << 32)
    );
    let mut uncapped = Exponential::new(Duration::from_nanos(1));
    assert_eq!(
        uncapped.delay(&Attempt::new(33, 40)),
        Duration::from_nanos(1 << 32)
    );
    assert_eq!(
        uncapped.delay(&Attempt::new(u32::MAX, u32::MAX)),
        Duration::MAX
    );
}
