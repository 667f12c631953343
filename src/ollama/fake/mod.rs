//! An embedded fake Ollama server, for testing your own stacks against real
//! HTTP on loopback (feature `test-util`).
//!
//! A retry policy is only as good as the failures it was tested against.
//! [`FakeOllama`] listens on `127.0.0.1`, speaks HTTP/1.1 like Ollama's
//! server does, and answers each generation from a script that you write:
//! a success, one of the real error bodies of the [corpus](Reply::corpus),
//! a hang, a connection cut mid-body, an error in the middle of a stream, or
//! any of these after a delay. It records every request it receives, so a
//! test can check what its client sent and when.
//!
//! # The model
//!
//! 1. **Script.** [`FakeOllama::push`] queues a [`Reply`]. Each *generation*
//!    request (`POST /api/generate` or `POST /api/chat` that is neither a load
//!    nor an unload) takes the next one; an empty queue answers
//!    [`Reply::Ok`].
//! 2. **Models.** The fake keeps a table of loaded models, like a real
//!    server, and `GET /api/ps` shows it:
//!    - a generation loads its model (with `options.num_ctx`, default
//!      [`DEFAULT_CONTEXT_LENGTH`]), whatever the script answers, so a
//!      recovery hook always has something to unload;
//!    - a *load*, `{"model":M,"prompt":""}`, loads M and answers
//!      `"done_reason":"load"` at once;
//!    - an *unload*, `{"model":M,"keep_alive":0}` with no prompt (for chat,
//!      no messages), answers `"done_reason":"unload"` at once, and M leaves
//!      `/api/ps` after [`set_unload_delay`](FakeOllama::set_unload_delay)
//!      (default 0), as a real runner takes a while to stop;
//!    - a model also leaves once its `keep_alive` runs out (default 5
//!      minutes; a negative value is forever).
//!
//!    Loads and unloads never take a scripted reply. Names are shown the way
//!    Ollama shows them: `llama3` is listed as `llama3:latest`.
//! 3. **Log.** Every request, whatever its path, is appended to
//!    [`FakeOllama::log`] when it arrives, before any scripted delay, with
//!    its method, path, body, headers, arrival time on the Tokio clock, and
//!    [`RequestKind`].
//! 4. **Network faults.** [`FakeOllama::refuse_connections_for`] closes the
//!    listener (connects are refused) and binds the same port again later.
//!
//! # What it answers
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | `Ollama is running` |
//! | `GET /api/version` | `{"version":"0.15.0"}` |
//! | `GET /api/tags` | the default model and every model seen so far |
//! | `GET /api/ps` | `{"models":[..]}`, the loaded models |
//! | `POST /api/generate`, `POST /api/chat` | an unload, a load, or the next scripted [`Reply`] |
//! | a body that is not a valid request | 400 `{"error":"..."}`, as Ollama does |
//! | anything else | 404 `404 page not found` |
//!
//! Success bodies have Ollama's shape. `"stream": false` gets one JSON
//! object; `"stream": true`, or no `stream` field (Ollama's default), gets
//! `application/x-ndjson` lines with `"done": false`, then a `"done": true`
//! line. Error bodies carry `Content-Type: application/json; charset=utf-8`
//! unless the script says otherwise.
//!
//! The fake does not model a catalog of models: every name exists, so it
//! never answers 404 for a model unless the script does.
//!
//! # Lifetime
//!
//! [`FakeOllama`] is a cheap handle; clones share one server. The server
//! runs on the Tokio runtime that started it, and stops when the last handle
//! is dropped or on [`shutdown`](FakeOllama::shutdown): the listener and
//! every connection are closed at once and their tasks are aborted.
//! [`open_connections`](FakeOllama::open_connections) counts the TCP
//! connections that are open, so a soak test can check that nothing leaks.

mod body;
mod log;
mod request;
mod script;
mod server;
mod wire;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

pub use log::{LoggedRequest, RequestKind};
pub use script::{CORPUS_JSONL, Reply};

use server::Shared;

/// The version that `GET /api/version` reports.
pub const VERSION: &str = "0.15.0";

/// The model that `GET /api/tags` always lists: CodeWorm's default.
pub const DEFAULT_MODEL: &str = "qwen2.5:7b";

/// The response text of [`Reply::Ok`].
pub const DEFAULT_RESPONSE: &str = "The quick brown fox jumps over the lazy dog.";

/// The `context_length` of a model loaded without `options.num_ctx`.
pub const DEFAULT_CONTEXT_LENGTH: u64 = 4096;

/// How long a model stays loaded when a request sets no `keep_alive`.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// A fake Ollama server on loopback, driven by a script.
///
/// Start it with [`start`](FakeOllama::start), point your client at
/// [`url`](FakeOllama::url), [`push`](FakeOllama::push) the replies that the
/// next generation requests get, then look at [`log`](FakeOllama::log). See
/// the [module documentation](self) for what it answers.
///
/// # Example
///
/// An out-of-memory error, then the default success:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_ollama_retry::ollama::fake::{FakeOllama, Reply, RequestKind};
///
/// # #[tokio::main] async fn main() {
/// let ollama = FakeOllama::start().await.unwrap();
/// ollama.push(Reply::error(500, "llama runner process has terminated: CUDA error: out of memory"));
///
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let generate = || {
///     http::Request::post(format!("{}/api/generate", ollama.url()))
///         .body(Full::from(r#"{"model":"qwen2.5:7b","prompt":"why?","stream":false}"#))
///         .unwrap()
/// };
///
/// let first = client.request(generate()).await.unwrap();
/// assert_eq!(first.status(), 500);
/// let body = first.into_body().collect().await.unwrap().to_bytes();
/// assert!(body.starts_with(br#"{"error":"llama runner process has terminated"#));
///
/// // The script is empty now: a normal success.
/// let second = client.request(generate()).await.unwrap();
/// assert_eq!(second.status(), 200);
/// let body = second.into_body().collect().await.unwrap().to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["done_reason"], "stop");
///
/// assert_eq!(ollama.generation_count(), 2);
/// assert_eq!(ollama.log()[0].kind, RequestKind::Generate);
/// assert_eq!(ollama.loaded_models(), ["qwen2.5:7b"]);
/// # }
/// ```
#[derive(Clone)]
pub struct FakeOllama {
    inner: Arc<Inner>,
}

/// Owns the server; dropping it (with the last handle) stops the server.
struct Inner {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop();
        self.task.abort();
    }
}

impl FakeOllama {
    /// Starts a server on `127.0.0.1` on a free port.
    ///
    /// It must be called from within a Tokio runtime (with the I/O and time
    /// drivers enabled); otherwise it returns an error.
    pub async fn start() -> std::io::Result<FakeOllama> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on `addr` (port 0 picks a free port), for example
    /// Ollama's default `127.0.0.1:11434`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeOllama> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("FakeOllama needs a Tokio runtime: {e}")))?;
        let shared = Shared::bind(addr).await?;
        let task = runtime.spawn(server::run(Arc::clone(&shared)));
        Ok(FakeOllama {
            inner: Arc::new(Inner { shared, task }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared().addr()
    }

    /// The base URL, `http://127.0.0.1:PORT`, with no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Queues a reply for the next generation request that has none.
    pub fn push(&self, reply: Reply) {
        self.shared().push_many([reply]);
    }

    /// Queues several replies, in order.
    pub fn push_many(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared().push_many(replies);
    }

    /// How many queued replies no request has taken yet.
    pub fn pending_replies(&self) -> usize {
        self.shared().pending_replies()
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.shared().log()
    }

    /// Empties the log (the model table and the script stay as they are).
    pub fn clear_log(&self) {
        self.shared().clear_log();
    }

    /// How many generation requests were received: logged requests of kind
    /// [`Generate`](RequestKind::Generate) or [`Chat`](RequestKind::Chat).
    /// Loads and unloads do not count; a generation rejected with 400 does.
    pub fn generation_count(&self) -> usize {
        self.shared().generation_count()
    }

    /// The models that `GET /api/ps` lists now, sorted by name, as Ollama
    /// names them (`llama3` is `llama3:latest`).
    pub fn loaded_models(&self) -> Vec<String> {
        self.shared().loaded_models()
    }

    /// The context length `model` is loaded with, or `None` if it is not
    /// loaded. The name may be spelled as a client would (`llama3`).
    pub fn context_length(&self, model: &str) -> Option<u64> {
        self.shared().context_length(model)
    }

    /// Sets how long a model stays in `GET /api/ps` after an unload request
    /// (default 0: it is gone at once). The unload request itself is always
    /// answered at once.
    pub fn set_unload_delay(&self, delay: Duration) {
        self.shared().set_unload_delay(delay);
    }

    /// Closes the listener now, so that connects get `ECONNREFUSED`, and
    /// binds the same port again after `duration`.
    ///
    /// Open connections are shut down too, as when a real server restarts;
    /// a request in flight on one of them fails. A client that picks an idle
    /// pooled connection at that very moment can see a closed connection
    /// rather than a refused connect. The re-bind is retried for about a
    /// second if the port is busy. Calling this again moves the end of the
    /// window; after [`shutdown`](Self::shutdown) it does nothing.
    pub fn refuse_connections_for(&self, duration: Duration) {
        self.shared().refuse_for(duration);
    }

    /// Whether the server accepts connections now (false while refusing and
    /// after shutdown).
    pub fn is_listening(&self) -> bool {
        self.shared().is_listening()
    }

    /// How many TCP connections are open now.
    ///
    /// A connection is counted from its accept until its task ends: when
    /// the client closes it, after hyper's idle handling, or at shutdown.
    pub fn open_connections(&self) -> usize {
        self.shared().open_connections()
    }

    /// Stops the server: closes the listener and every connection now, and
    /// aborts their tasks. Every handle sees it; the log stays readable.
    pub fn shutdown(&self) {
        self.shared().stop();
        self.inner.task.abort();
    }
}

impl fmt::Debug for FakeOllama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOllama")
            .field("addr", &self.addr())
            .field("listening", &self.is_listening())
            .field("open_connections", &self.open_connections())
            .finish()
    }
}
