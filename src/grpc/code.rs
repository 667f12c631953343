//! Where a gRPC status code comes from, and what it means for a retry.
//!
//! A gRPC call can fail in three places, and each gives a [`Code`]:
//!
//! - a **trailers-only response**: HTTP 200 whose headers already carry
//!   `grpc-status` (what a tonic server sends for a unary `Err(Status)`);
//! - a **non-200 HTTP response** without `grpc-status` (a proxy's 503, say),
//!   mapped as in gRPC's `http-grpc-status-mapping.md`;
//! - an **error**: a [`Status`] somewhere in its `source()` chain, or else a
//!   transport failure, classified by [`classify_error`].

use crate::Class;
use crate::classify::chain;
use crate::ollama::{Mode, classify_error};
use http::{HeaderMap, StatusCode};
use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use tonic::{Code, Status};

/// The header of a trailers-only response's code.
const GRPC_STATUS: &str = "grpc-status";
/// The header of its message, percent-encoded.
const GRPC_MESSAGE: &str = "grpc-message";

/// Every gRPC status code, in numeric order.
const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A set of gRPC status codes, as a bitset (`Copy`, no allocation).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CodeSet(u32);

impl CodeSet {
    /// No code.
    pub(crate) const fn empty() -> Self {
        Self(0)
    }

    /// Just `code`.
    pub(crate) const fn of(code: Code) -> Self {
        Self(1 << code as u32)
    }

    /// Whether `code` is in the set.
    pub(crate) const fn contains(self, code: Code) -> bool {
        self.0 & (1 << code as u32) != 0
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .fold(0, |bits, code| bits | 1 << code as u32),
        )
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(ALL.iter().filter(|c| self.contains(**c)))
            .finish()
    }
}

/// The class of a failed call's `code`. `retried` says whether the policy
/// retries that code, so that a code a user opted into (`ABORTED`, say)
/// counts as transient rather than fatal in reports and statistics.
pub(crate) fn code_class(code: Code, retried: bool) -> Class {
    match code {
        Code::Ok => Class::Success,
        Code::DeadlineExceeded => Class::Timeout,
        Code::Unavailable | Code::ResourceExhausted => Class::Transient,
        _ if retried => Class::Transient,
        _ => Class::Fatal,
    }
}

/// The code a response carries before its body: `grpc-status` in its
/// headers (a trailers-only response; an unknown value is `UNKNOWN`), else
/// the gRPC mapping of a non-200 HTTP status. `None` for a 200 without
/// `grpc-status`: the status comes in the trailers, and the call is
/// committed.
pub(crate) fn response_code(status: StatusCode, headers: &HeaderMap) -> Option<Code> {
    if let Some(v) = headers.get(GRPC_STATUS) {
        return Some(Code::from_bytes(v.as_bytes()));
    }
    (status != StatusCode::OK).then(|| http_status_code(status))
}

/// gRPC's mapping of an HTTP status to a code, for responses that carry no
/// `grpc-status` (from `doc/http-grpc-status-mapping.md`).
fn http_status_code(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The first [`Status`] in `err`'s `source()` chain.
pub(crate) fn status_in_chain<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Status> {
    chain(err).find_map(|e| e.downcast_ref::<Status>())
}

/// The class of a transport failure, and the code gRPC gives it: a request
/// that never left (refused connection, HTTP/2 `REFUSED_STREAM`) or a
/// broken connection is `UNAVAILABLE`, a timeout `DEADLINE_EXCEEDED`,
/// anything else `UNKNOWN`.
pub(crate) fn transport_failure(err: &(dyn StdError + 'static)) -> (Class, Code) {
    // A request that never left is a connection failure already.
    let class = classify_error(Mode::Default, err);
    let code = match class {
        Class::Connection | Class::Transient => Code::Unavailable,
        Class::Timeout => Code::DeadlineExceeded,
        _ => Code::Unknown,
    };
    (class, code)
}

/// A failure message for `code`: `grpc-status 14 Unavailable`, then the
/// server's message, if any.
pub(crate) fn message(code: Code, detail: Option<&str>) -> Cow<'static, str> {
    let head = format!("grpc-status {} {code:?}", code as i32);
    match detail {
        Some(d) if !d.is_empty() => Cow::Owned(format!("{head}: {d}")),
        _ => Cow::Owned(head),
    }
}

/// The `grpc-message` header, percent-decoded (bytes that are not UTF-8
/// are replaced).
pub(crate) fn grpc_message(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(GRPC_MESSAGE)?.as_bytes();
    Some(percent_decode(raw))
}

fn percent_decode(raw: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let decoded = match raw[i..] {
            [b'%', h, l, ..] => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_set() {
        let set: CodeSet = [Code::Unavailable, Code::Aborted].into_iter().collect();
        assert!(set.contains(Code::Unavailable) && set.contains(Code::Aborted));
        assert!(!set.contains(Code::Ok) && !set.contains(Code::Unauthenticated));
        assert_eq!(format!("{set:?}"), "{Aborted, Unavailable}");
        assert!(CodeSet::of(Code::Unauthenticated).contains(Code::Unauthenticated));
        assert_eq!(CodeSet::empty(), CodeSet::default());
    }

    #[test]
    fn response_codes() {
        let mut h = HeaderMap::new();
        assert_eq!(response_code(StatusCode::OK, &h), None);
        assert_eq!(
            response_code(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Code::Unavailable)
        );
        assert_eq!(
            response_code(StatusCode::NOT_FOUND, &h),
            Some(Code::Unimplemented)
        );
        assert_eq!(
            response_code(StatusCode::IM_A_TEAPOT, &h),
            Some(Code::Unknown)
        );
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(
            response_code(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Code::NotFound)
        );
        h.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(response_code(StatusCode::OK, &h), Some(Code::Unknown));
    }

    #[test]
    fn messages() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_message(&h), None);
        h.insert("grpc-message", "try%20again%2Ebad%zz%".parse().unwrap());
        assert_eq!(grpc_message(&h).unwrap(), "try again.bad%zz%");
        assert_eq!(
            message(Code::Unavailable, None),
            "grpc-status 14 Unavailable"
        );
        assert_eq!(
            message(Code::NotFound, Some("gone")),
            "grpc-status 5 NotFound: gone"
        );
    }

    #[test]
    fn classes() {
        assert_eq!(code_class(Code::DeadlineExceeded, false), Class::Timeout);
        assert_eq!(code_class(Code::Unavailable, true), Class::Transient);
        assert_eq!(code_class(Code::ResourceExhausted, false), Class::Transient);
        assert_eq!(code_class(Code::Aborted, false), Class::Fatal);
        assert_eq!(code_class(Code::Aborted, true), Class::Transient);
    }

    #[test]
    fn transport() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            transport_failure(&refused),
            (Class::Connection, Code::Unavailable)
        );
        let other = std::io::Error::other("odd");
        assert_eq!(transport_failure(&other), (Class::Fatal, Code::Unknown));
    }
}
