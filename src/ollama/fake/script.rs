//! The script: what the fake answers to each generation request.

use std::time::Duration;

use serde_json::Value;

use super::wire;

/// The corpus of real Ollama error responses, one JSON object a line, as
/// shipped in `tests/data/corpus.jsonl`. [`Reply::corpus`] parses it.
///
/// Each line has `id`, `status`, `content_type` and `body` (the exact body
/// text), plus `codeworm` and `default`: the class that CodeWorm's substring
/// rule and a sensible policy give the response.
pub const CORPUS_JSONL: &str = include_str!("../../../tests/data/corpus.jsonl");

/// One scripted answer to a generation request (`POST /api/generate` or
/// `POST /api/chat` that is neither a load nor an unload).
///
/// Queue replies with [`FakeOllama::push`](super::FakeOllama::push); each
/// generation request takes the next one, and an empty queue answers
/// [`Reply::Ok`].
///
/// | variant | status | what the client sees |
/// |---|---|---|
/// | [`Ok`](Reply::Ok), [`Text`](Reply::Text) | 200 | a success, streamed or not as the request asks |
/// | [`Status`](Reply::Status) | any | exactly these bytes |
/// | [`Hang`](Reply::Hang) | none | nothing, until the client gives up |
/// | [`CloseMidBody`](Reply::CloseMidBody) | 200 | a body cut short, then a closed connection |
/// | [`StreamError`](Reply::StreamError) | 200 | NDJSON lines, then `{"error":..}` and no `done: true` |
/// | [`Delay`](Reply::Delay) | inner | the inner reply, late |
/// | [`Chunked`](Reply::Chunked) | 200 | exactly these chunks, spaced out |
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// A normal success whose text is [`DEFAULT_RESPONSE`](super::DEFAULT_RESPONSE).
    ///
    /// With `"stream": false` the body is one JSON object with `response`
    /// (or `message` for chat), `done: true`, `done_reason: "stop"` and the
    /// timing fields. Otherwise (`"stream": true` or no `stream` field, as
    /// in Ollama) it is `application/x-ndjson`: one `"done": false` line a
    /// token, then a `"done": true` line.
    Ok,
    /// A success, like [`Reply::Ok`], whose response text is this string.
    Text(String),
    /// Any status and body, byte-exact. An empty `content_type` sends no
    /// `Content-Type` header. A status outside `100..=999` or a content type
    /// that is not a valid header value answers 500 with an error body that
    /// says so.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Content-Type` header, sent as is.
        content_type: String,
        /// The body, sent as is.
        body: Vec<u8>,
    },
    /// Read the request and never answer. The connection stays open until
    /// the client closes it (a client timeout is the only way out).
    Hang,
    /// Send 200 headers with a `Content-Length` of the whole success body,
    /// then the first half of that body, then close the connection. The
    /// client's body read fails.
    CloseMidBody,
    /// A 200 NDJSON stream with `chunks` normal `"done": false` lines and
    /// then a final `{"error":"<error>"}` line; no `"done": true` line
    /// follows. This is how Ollama reports an error after output started.
    StreamError {
        /// How many normal lines come before the error line.
        chunks: usize,
        /// The message of the error line.
        error: String,
    },
    /// Wait this long (`tokio::time::sleep`, so paused time applies), then
    /// answer as the inner reply. The request is logged before the wait.
    Delay(Duration, Box<Reply>),
    /// A 200 `application/x-ndjson` response (chunked transfer encoding)
    /// made of exactly these chunks, with `gap` between one chunk and the
    /// next. Empty chunks are skipped.
    Chunked {
        /// The body, chunk by chunk.
        chunks: Vec<Vec<u8>>,
        /// The pause between two chunks.
        gap: Duration,
    },
}

impl Reply {
    /// A success whose response text is `text`: [`Reply::Text`].
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Text(text.into())
    }

    /// An Ollama error: `status` with the body `{"error":"<message>"}` and
    /// `Content-Type: application/json; charset=utf-8`.
    ///
    /// ```
    /// use tower_ollama_retry::ollama::fake::Reply;
    ///
    /// let busy = Reply::error(503, "server busy, please try again.  maximum pending requests exceeded");
    /// let Reply::Status { status, body, .. } = busy else { unreachable!() };
    /// assert_eq!(status, 503);
    /// assert!(body.starts_with(br#"{"error":"server busy"#));
    /// ```
    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, wire::error_body(message))
    }

    /// `status` with this body and `Content-Type: application/json;
    /// charset=utf-8`.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Status {
            status,
            content_type: wire::JSON.to_owned(),
            body: body.into(),
        }
    }

    /// This reply after a wait: [`Reply::Delay`].
    pub fn delayed(self, wait: Duration) -> Reply {
        Reply::Delay(wait, Box::new(self))
    }

    /// Parses one line of the corpus format into its `id` and a
    /// [`Reply::Status`] with the line's `status`, `content_type` and `body`.
    ///
    /// A missing `content_type` means `application/json; charset=utf-8`.
    /// The error says what is wrong with the line.
    ///
    /// ```
    /// use tower_ollama_retry::ollama::fake::Reply;
    ///
    /// let line = r#"{"id":"X1","status":499,"content_type":"application/json; charset=utf-8","body":"{\"error\":\"request canceled\"}"}"#;
    /// let (id, reply) = Reply::from_corpus_line(line).unwrap();
    /// assert_eq!(id, "X1");
    /// assert_eq!(reply, Reply::error(499, "request canceled"));
    /// assert!(Reply::from_corpus_line("{}").is_err());
    /// ```
    pub fn from_corpus_line(line: &str) -> Result<(String, Reply), String> {
        let value: Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not a JSON line: {e}"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| "a corpus line must be a JSON object".to_owned())?;
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| "missing string field `id`".to_owned())?;
        let status = obj
            .get("status")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{id}: missing numeric field `status`"))?;
        let status = u16::try_from(status)
            .ok()
            .filter(|s| (100..=999).contains(s))
            .ok_or_else(|| format!("{id}: `status` {status} is not an HTTP status"))?;
        let content_type = match obj.get("content_type") {
            None => wire::JSON.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(format!("{id}: `content_type` must be a string")),
        };
        let body = obj
            .get("body")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{id}: missing string field `body`"))?;
        Ok((
            id.to_owned(),
            Reply::Status {
                status,
                content_type,
                body: body.as_bytes().to_vec(),
            },
        ))
    }

    /// Every row of the embedded corpus ([`CORPUS_JSONL`]) as `(id, reply)`,
    /// in file order. Blank lines are skipped, and so is any line that does
    /// not parse (none does; the crate's tests check that).
    ///
    /// ```
    /// use tower_ollama_retry::ollama::fake::Reply;
    ///
    /// let corpus = Reply::corpus();
    /// assert!(corpus.iter().any(|(id, reply)| id == "G03"
    ///     && matches!(reply, Reply::Status { status: 503, .. })));
    /// ```
    pub fn corpus() -> Vec<(String, Reply)> {
        CORPUS_JSONL
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| Reply::from_corpus_line(l).ok())
            .collect()
    }
}
