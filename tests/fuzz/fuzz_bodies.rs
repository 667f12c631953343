//! The bodies of the fuzz targets, written once and shared: each target in
//! `fuzz_targets/` is a one-line call into this file (through `#[path]`),
//! and `tests/fuzz_seeds.rs` runs every checked-in seed through the same
//! functions with plain `cargo test`.
//!
//! Beyond "never panics", each body asserts the documented invariants, so
//! the fuzzer hunts for wrong answers as well as crashes.

use std::time::{Duration, SystemTime};
use tower_ollama_retry::Class;
use tower_ollama_retry::hint::{self, Hint};
use tower_ollama_retry::ollama::{Mode, classify_status, error_message};

/// `Some(Some(n))` for ASCII digits (ASCII whitespace around them allowed)
/// that fit in u64, `Some(None)` for digits that overflow, `None` otherwise.
fn digit_value(bytes: &[u8]) -> Option<Option<u64>> {
    let core = bytes.trim_ascii();
    if core.is_empty() || !core.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u64 = 0;
    for b in core {
        match n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
        {
            Some(v) => n = v,
            None => return Some(None),
        }
    }
    Some(Some(n))
}

/// `retry_after` (against a fixed and the real clock) and `grpc_pushback`
/// over the raw input.
pub fn retry_after(data: &[u8]) {
    // 2015-10-21 07:26:40 UTC, the `Retry-After` example of hint.rs.
    let fixed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400);
    let got = hint::retry_after(data, fixed);
    let _ = hint::retry_after(data, SystemTime::UNIX_EPOCH);
    let _ = hint::retry_after(data, SystemTime::now());
    let push = hint::grpc_pushback(data);
    match digit_value(data) {
        Some(Some(n)) => {
            assert_eq!(got, Some(Duration::from_secs(n)), "{data:?}");
            assert_eq!(push, Hint::After(Duration::from_millis(n)), "{data:?}");
        }
        Some(None) => {
            assert_eq!(got, None, "overflowing digits became a delay: {data:?}");
            assert_eq!(push, Hint::Stop, "{data:?}");
        }
        None => {
            assert_eq!(push, Hint::Stop, "not digits, yet a pushback: {data:?}");
            if got.is_some() {
                // Only an HTTP-date can get here: UTF-8 with a clock time.
                let text = std::str::from_utf8(data).expect("a date is UTF-8");
                assert!(text.contains(':'), "{text:?} is not an HTTP-date");
            }
        }
    }
}

/// The first two bytes are the status (big-endian), the rest the body.
pub fn ollama_body(data: &[u8]) {
    let (status, body) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        [a] => (u16::from(*a), &[][..]),
        [] => (0, &[][..]),
    };
    let cw = classify_status(Mode::CodeWorm, status, body);
    let df = classify_status(Mode::Default, status, body);
    let message = error_message(body);
    if (200..300).contains(&status) {
        assert_eq!(cw, Class::Success);
        assert_eq!(df, Class::Success);
        return;
    }
    let text = String::from_utf8_lossy(body).to_lowercase();
    let oom = text.contains("out of memory") || text.contains("cuda");
    assert_eq!(
        cw,
        if oom { Class::Oom } else { Class::Fatal },
        "{status} {text:?}"
    );
    if [400, 401, 403, 404, 405, 499].contains(&status) {
        assert_eq!(df, Class::Fatal, "{status} {text:?}");
    }
    match df {
        Class::Oom => assert!((500..600).contains(&status), "{status}"),
        Class::Transient => assert!(status == 429 || (500..600).contains(&status), "{status}"),
        Class::Fatal => {}
        other => panic!("default mode gave {other:?} for {status}"),
    }
    // The message is the body's text unless the body is an error object.
    if !body.trim_ascii_start().starts_with(b"{") {
        assert_eq!(message, String::from_utf8_lossy(body));
    }
}

/// The input as a `grpc-retry-pushback-ms` and a `retry-after` header value,
/// when `http` accepts it as one.
pub fn grpc_headers(data: &[u8]) {
    let empty = http::HeaderMap::new();
    assert_eq!(hint::grpc_pushback_header(&empty), None);
    assert_eq!(hint::retry_after_header(&empty), None);
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("grpc-retry-pushback-ms", value.clone());
    headers.insert(http::header::RETRY_AFTER, value);
    assert_eq!(
        hint::grpc_pushback_header(&headers),
        Some(hint::grpc_pushback(data))
    );
    let after = hint::retry_after_header(&headers);
    match digit_value(data) {
        Some(Some(n)) => assert_eq!(after, Some(Duration::from_secs(n))),
        Some(None) => assert_eq!(after, None),
        None => {}
    }
}
