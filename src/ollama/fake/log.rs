//! The request log: every request the fake received, in arrival order.

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::time::Instant;

/// What a logged request was, by its method, path and body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// `POST /api/generate` that is a real generation (it has a prompt), or
    /// whose body could not be read as a generate request.
    Generate,
    /// `POST /api/chat` that is a real generation (it has messages), or
    /// whose body could not be read as a chat request.
    Chat,
    /// An unload: `POST /api/generate {"model":M,"keep_alive":0}` with no
    /// prompt, or `POST /api/chat` with no messages and `keep_alive` 0.
    Unload {
        /// The model, as the client spelled it.
        model: String,
    },
    /// A load: a generate with an empty or absent prompt (a chat with no
    /// messages) and a `keep_alive` other than 0.
    Load {
        /// The model, as the client spelled it.
        model: String,
        /// `options.num_ctx`, if the request set it.
        num_ctx: Option<u64>,
    },
    /// `GET /api/ps`.
    Ps,
    /// `GET /api/tags` (or `HEAD`).
    Tags,
    /// `GET /api/version` (or `HEAD`).
    Version,
    /// `GET /` (or `HEAD`).
    Root,
    /// Anything else; the fake answers 404.
    Other,
}

impl RequestKind {
    /// Whether this is a generation that takes a scripted reply:
    /// [`Generate`](RequestKind::Generate) or [`Chat`](RequestKind::Chat).
    pub fn is_generation(&self) -> bool {
        matches!(self, RequestKind::Generate | RequestKind::Chat)
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// The request method.
    pub method: Method,
    /// The request path, without the query.
    pub path: String,
    /// The whole request body (empty if it could not be read).
    pub body: Bytes,
    /// The request headers.
    pub headers: HeaderMap,
    /// When the request arrived (its head was read), by the Tokio clock.
    pub at: Instant,
    /// What the request was.
    pub kind: RequestKind,
}

impl LoggedRequest {
    /// The body parsed as JSON, or `None` if it is not JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body's `model` field, if the body is a JSON object that has one.
    pub fn model(&self) -> Option<String> {
        self.json()?.get("model")?.as_str().map(str::to_owned)
    }
}
