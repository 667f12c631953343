//! The JSON that a real Ollama server sends, built by hand so that the keys
//! keep Ollama's order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `application/json; charset=utf-8`, what Ollama's JSON answers carry.
pub(crate) const JSON: &str = "application/json; charset=utf-8";
/// `application/x-ndjson`, what Ollama's streaming answers carry.
pub(crate) const NDJSON: &str = "application/x-ndjson";
/// `text/plain; charset=utf-8`.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

/// What `expires_at` says for a model kept forever (Ollama saturates).
const FOREVER: &str = "2318-03-04T12:00:00.000000Z";

/// A JSON string literal.
pub(crate) fn js(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// `{"error":"<message>"}`.
pub(crate) fn error_body(message: &str) -> String {
    format!(r#"{{"error":{}}}"#, js(message))
}

/// RFC 3339 in UTC with microseconds, like `2026-01-01T00:00:00.000000Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// The current time, as `created_at` shows it.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}

/// `expires_at` for a model that unloads after `left`, or never.
pub(crate) fn expires_at(left: Option<Duration>) -> String {
    match left.and_then(|d| SystemTime::now().checked_add(d)) {
        Some(t)
            if t.duration_since(UNIX_EPOCH)
                .is_ok_and(|d| d.as_secs() < 10_000_000_000) =>
        {
            rfc3339(t)
        }
        _ => FOREVER.to_owned(),
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Splits a text into stream tokens: each word with the whitespace after it.
/// The tokens concatenate back to the text.
pub(crate) fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The content part of a generate (`"response":..`) or chat
/// (`"message":{..}`) object.
fn content(chat: bool, text: &str) -> String {
    if chat {
        format!(r#""message":{{"role":"assistant","content":{}}}"#, js(text))
    } else {
        format!(r#""response":{}"#, js(text))
    }
}

/// The timing and count fields of a finished generation.
fn stats(chat: bool, eval_count: usize) -> String {
    let context = if chat { "" } else { r#""context":[1,2,3],"# };
    format!(
        concat!(
            "{}",
            r#""total_duration":5043500667,"load_duration":5025959,"#,
            r#""prompt_eval_count":26,"prompt_eval_duration":325953000,"#,
            r#""eval_count":{},"eval_duration":4709213000"#
        ),
        context, eval_count
    )
}

/// A whole non-streaming success body.
pub(crate) fn done(model: &str, chat: bool, text: &str) -> String {
    format!(
        r#"{{"model":{},"created_at":{},{},"done":true,"done_reason":"stop",{}}}"#,
        js(model),
        js(&now()),
        content(chat, text),
        stats(chat, tokens(text).len().max(1))
    )
}

/// The answer to a load or an unload: `done_reason` is `load` or `unload`.
pub(crate) fn admin(model: &str, chat: bool, reason: &str) -> String {
    format!(
        r#"{{"model":{},"created_at":{},{},"done":true,"done_reason":{}}}"#,
        js(model),
        js(&now()),
        content(chat, ""),
        js(reason)
    )
}

/// One streaming line (with its newline) that carries a token.
pub(crate) fn chunk_line(model: &str, chat: bool, token: &str) -> String {
    format!(
        "{{\"model\":{},\"created_at\":{},{},\"done\":false}}\n",
        js(model),
        js(&now()),
        content(chat, token)
    )
}

/// The last streaming line (with its newline) of a successful stream.
pub(crate) fn done_line(model: &str, chat: bool, eval_count: usize) -> String {
    format!(
        "{{\"model\":{},\"created_at\":{},{},\"done\":true,\"done_reason\":\"stop\",{}}}\n",
        js(model),
        js(&now()),
        content(chat, ""),
        stats(chat, eval_count.max(1))
    )
}

/// All the lines of a successful stream of `text`.
pub(crate) fn stream_lines(model: &str, chat: bool, text: &str) -> Vec<String> {
    let toks = tokens(text);
    let mut lines: Vec<String> = toks.iter().map(|t| chunk_line(model, chat, t)).collect();
    lines.push(done_line(model, chat, toks.len()));
    lines
}

/// A 64-hex-digit digest derived from the name, stable across runs.
pub(crate) fn digest(name: &str) -> String {
    (0u64..4)
        .map(|seed| {
            // FNV-1a, seeded.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in name.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("{h:016x}")
        })
        .collect()
}

/// The size that `/api/ps` and `/api/tags` report for every model.
pub(crate) const MODEL_SIZE: u64 = 4_683_087_332;

/// The `details` object of a model.
pub(crate) fn details() -> serde_json::Value {
    serde_json::json!({
        "parent_model": "",
        "format": "gguf",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": "7.6B",
        "quantization_level": "Q4_K_M"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_767_225_600_000_001);
        assert_eq!(rfc3339(t), "2026-01-01T00:00:00.000001Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn token_split() {
        assert_eq!(tokens("a b  c\n"), vec!["a ", "b  ", "c\n"]);
        assert_eq!(tokens(""), Vec::<&str>::new());
        assert_eq!(tokens("  x"), vec!["  ", "x"]);
        assert_eq!(tokens("héllo wörld").concat(), "héllo wörld");
    }

    #[test]
    fn bodies_are_json() {
        for body in [
            done("m", false, "hi \"there\""),
            done("m", true, "hi"),
            admin("m", true, "unload"),
            chunk_line("m", false, "x"),
            done_line("m", true, 3),
            error_body("a\nb"),
        ] {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v.is_object(), "{body}");
        }
        assert_eq!(digest("m").len(), 64);
    }
}
