//! Reading a generation request the way Ollama does: which model, streaming
//! or not, `keep_alive`, `options.num_ctx`, and whether it is a load or an
//! unload rather than a real generation.

use std::time::Duration;

use serde_json::Value;

/// How long a model stays loaded after a request, from `keep_alive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// A negative number or duration: never unload.
    Forever,
    /// Unload this long after the request.
    For(Duration),
}

/// What a `POST /api/generate` or `/api/chat` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// No input and `keep_alive` 0: stop the model.
    Unload,
    /// No input: load the model and answer at once.
    Load,
    /// A real generation, answered by the script.
    Generate,
}

/// The fields of a generation request that the fake acts on.
#[derive(Clone, Debug)]
pub(crate) struct GenRequest {
    /// `model`, as the client spelled it.
    pub(crate) model: String,
    /// `stream`, default `true`.
    pub(crate) stream: bool,
    /// `keep_alive`, if present.
    pub(crate) keep_alive: Option<KeepAlive>,
    /// `options.num_ctx`, if present and a non-negative number.
    pub(crate) num_ctx: Option<u64>,
    /// Whether `prompt` (generate) or `messages` (chat) is absent or empty.
    pub(crate) no_input: bool,
}

impl GenRequest {
    /// Ollama's rule: no input with `keep_alive` 0 unloads, no input loads.
    pub(crate) fn action(&self) -> Action {
        match (self.no_input, self.keep_alive) {
            (true, Some(KeepAlive::For(d))) if d.is_zero() => Action::Unload,
            (true, _) => Action::Load,
            (false, _) => Action::Generate,
        }
    }
}

/// Parses a generation body. The error is the message of the 400 that Ollama
/// would send.
pub(crate) fn parse(body: &[u8], chat: bool) -> Result<GenRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing request body".to_owned());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type api.{}Request",
            go_type(&value),
            if chat { "Chat" } else { "Generate" }
        ));
    };
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err("model is required".to_owned());
        }
        Some(other) => return Err(unmarshal_error("model", other, "string")),
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(unmarshal_error("stream", other, "bool")),
    };
    let keep_alive = match obj.get("keep_alive") {
        None | Some(Value::Null) => None,
        Some(v) => Some(keep_alive(v)?),
    };
    let num_ctx = obj
        .get("options")
        .and_then(Value::as_object)
        .and_then(|o| o.get("num_ctx"))
        .and_then(as_count);
    let no_input = if chat {
        match obj.get("messages") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(other) => return Err(unmarshal_error("messages", other, "[]api.Message")),
        }
    } else {
        match obj.get("prompt") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(other) => return Err(unmarshal_error("prompt", other, "string")),
        }
    };
    Ok(GenRequest {
        model,
        stream,
        keep_alive,
        num_ctx,
        no_input,
    })
}

fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    })
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn unmarshal_error(field: &str, v: &Value, want: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field .{field} of type {want}",
        go_type(v)
    )
}

/// `keep_alive` as Ollama reads it: a number of seconds, or a Go duration
/// string; negative means forever.
fn keep_alive(v: &Value) -> Result<KeepAlive, String> {
    match v {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::MAX);
            if secs < 0.0 {
                Ok(KeepAlive::Forever)
            } else {
                Ok(Duration::try_from_secs_f64(secs).map_or(KeepAlive::Forever, KeepAlive::For))
            }
        }
        Value::String(s) => match parse_go_duration(s)? {
            GoDuration::Negative => Ok(KeepAlive::Forever),
            GoDuration::Positive(d) => Ok(KeepAlive::For(d)),
        },
        other => Err(format!("Unsupported type: '{}'", go_type(other))),
    }
}

/// The sign-aware result of Go's `time.ParseDuration`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GoDuration {
    /// Zero or more.
    Positive(Duration),
    /// Less than zero.
    Negative,
}

/// Go's `time.ParseDuration`, with its error messages: `"5m"`, `"1h30m"`,
/// `"0"`, `"-1s"`, `"1.5s"`; `"-1"` fails with `missing unit`.
pub(crate) fn parse_go_duration(orig: &str) -> Result<GoDuration, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(orig));
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(GoDuration::Positive(Duration::ZERO));
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: f64 = 0.0;
    while !s.is_empty() {
        // The number: digits, optionally a fraction; at least one digit.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let frac_len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(frac_len)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let number: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .map_err(|_| invalid())?;
        // The unit: everything up to the next digit or dot.
        let unit_len = rest
            .char_indices()
            .find(|&(_, c)| c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", go_quote(orig)));
        }
        let scale: f64 = match unit {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    go_quote(unit),
                    go_quote(orig)
                ));
            }
        };
        total_nanos += number * scale;
        // Go's limit: an int64 of nanoseconds.
        if total_nanos > i64::MAX as f64 {
            return Err(invalid());
        }
        s = rest;
    }
    if negative && total_nanos > 0.0 {
        return Ok(GoDuration::Negative);
    }
    Ok(GoDuration::Positive(Duration::from_nanos(
        total_nanos as u64,
    )))
}

/// A string in double quotes, escaped the way Go's `strconv.Quote` does for
/// the common cases.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The name Ollama shows in `/api/ps` and `/api/tags`: the default registry
/// and `library/` namespace dropped, and `:latest` added when there is no tag.
pub(crate) fn display_name(model: &str) -> String {
    let short = model.strip_prefix("registry.ollama.ai/").unwrap_or(model);
    let short = short.strip_prefix("library/").unwrap_or(short);
    let last = short.rsplit('/').next().unwrap_or(short);
    if last.contains(':') {
        short.to_owned()
    } else {
        format!("{short}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let pos = |s| parse_go_duration(s).unwrap();
        assert_eq!(pos("0"), GoDuration::Positive(Duration::ZERO));
        assert_eq!(pos("0s"), GoDuration::Positive(Duration::ZERO));
        assert_eq!(pos("5m"), GoDuration::Positive(Duration::from_secs(300)));
        assert_eq!(
            pos("1h30m"),
            GoDuration::Positive(Duration::from_secs(5400))
        );
        assert_eq!(
            pos("1.5s"),
            GoDuration::Positive(Duration::from_millis(1500))
        );
        assert_eq!(pos("-1s"), GoDuration::Negative);
        assert_eq!(
            parse_go_duration("-1").unwrap_err(),
            r#"time: missing unit in duration "-1""#
        );
        assert_eq!(
            parse_go_duration("3x").unwrap_err(),
            r#"time: unknown unit "x" in duration "3x""#
        );
        assert_eq!(
            parse_go_duration("").unwrap_err(),
            r#"time: invalid duration """#
        );
        assert!(parse_go_duration(".s").is_err());
    }

    #[test]
    fn actions() {
        let action = |body: &str, chat| parse(body.as_bytes(), chat).unwrap().action();
        assert_eq!(
            action(r#"{"model":"m","keep_alive":0}"#, false),
            Action::Unload
        );
        assert_eq!(
            action(r#"{"model":"m","keep_alive":"0s"}"#, false),
            Action::Unload
        );
        assert_eq!(
            action(r#"{"model":"m","messages":[],"keep_alive":0}"#, true),
            Action::Unload
        );
        assert_eq!(action(r#"{"model":"m","prompt":""}"#, false), Action::Load);
        assert_eq!(
            action(r#"{"model":"m","keep_alive":-1}"#, false),
            Action::Load
        );
        assert_eq!(
            action(r#"{"model":"m","prompt":"hi","keep_alive":0}"#, false),
            Action::Generate
        );
        assert_eq!(
            action(
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                true
            ),
            Action::Generate
        );
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(parse(b"", false).unwrap_err(), "missing request body");
        assert_eq!(
            parse(br#"{"prompt":"x"}"#, false).unwrap_err(),
            "model is required"
        );
        assert!(parse(b"{not json", false).is_err());
        assert!(parse(b"[1]", true).is_err());
        assert_eq!(
            parse(br#"{"model":"m","keep_alive":"-1"}"#, false).unwrap_err(),
            r#"time: missing unit in duration "-1""#
        );
    }

    #[test]
    fn names() {
        assert_eq!(display_name("llama3"), "llama3:latest");
        assert_eq!(display_name("qwen2.5:7b"), "qwen2.5:7b");
        assert_eq!(display_name("library/llama3"), "llama3:latest");
        assert_eq!(display_name("me/model"), "me/model:latest");
        assert_eq!(
            display_name("host:5000/me/model"),
            "host:5000/me/model:latest"
        );
    }
}
