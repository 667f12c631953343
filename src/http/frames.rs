//! Small helpers shared by the replay and peek bodies.

use bytes::{Bytes, BytesMut};
use http_body::SizeHint;

/// The data frames read from a body. Most bodies in memory are one frame,
/// which this holds without an allocation.
pub(super) type Frames = smallvec::SmallVec<[Bytes; 1]>;

/// Joins the data frames read from a body into one `Bytes`.
///
/// No copy when there is at most one frame; otherwise exactly one copy into
/// a buffer of the right size.
pub(super) fn concat(mut frames: Frames, len: usize) -> Bytes {
    if frames.len() <= 1 {
        return frames.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(len);
    for frame in frames {
        buf.extend_from_slice(&frame);
    }
    buf.freeze()
}

/// `hint` grown by `extra` bytes that come first, saturating.
pub(super) fn add_hint(hint: SizeHint, extra: u64) -> SizeHint {
    let mut out = SizeHint::new();
    let lower = hint.lower().saturating_add(extra);
    out.set_lower(lower);
    if let Some(upper) = hint.upper() {
        // `max` keeps `set_upper` from asserting, even for a bogus hint.
        out.set_upper(upper.saturating_add(extra).max(lower));
    }
    out
}

/// A hint of at least `lower` bytes and no known upper bound.
pub(super) fn at_least(lower: u64) -> SizeHint {
    let mut out = SizeHint::new();
    out.set_lower(lower);
    out
}

/// The length of the queued frames, as a hint's unit.
pub(super) fn queued_len<'a>(frames: impl IntoIterator<Item = &'a Bytes>) -> u64 {
    frames
        .into_iter()
        .fold(0u64, |n, f| n.saturating_add(f.len() as u64))
}
