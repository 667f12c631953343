//! The server: the accept loop, connection tracking, the model table and
//! the request handlers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{pending, poll_fn};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::body::FakeBody;
use super::log::{LoggedRequest, RequestKind};
use super::request::{self, Action, GenRequest, KeepAlive};
use super::script::Reply;
use super::wire;
use super::{DEFAULT_CONTEXT_LENGTH, DEFAULT_KEEP_ALIVE, DEFAULT_MODEL, DEFAULT_RESPONSE, VERSION};

/// The largest request body the fake reads; a larger one gets 413.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How often a failed re-bind is retried, and how long to wait in between.
const REBIND_TRIES: u32 = 50;
const REBIND_RETRY: Duration = Duration::from_millis(20);
/// What `modified_at` says in `/api/tags`.
const MODIFIED_AT: &str = "2026-01-01T00:00:00.000000Z";

/// Locks a mutex, ignoring poisoning: the fake's state stays usable even if
/// a test thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds a listener with `SO_REUSEADDR`, so the same port can be bound again
/// right after it was closed (connections in `TIME_WAIT` keep it busy
/// otherwise).
fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The listening socket and the refusal window.
struct Slot {
    listener: Option<TcpListener>,
    /// While refusing: when to bind again.
    rebind_at: Option<Instant>,
    rebind_failures: u32,
    stopped: bool,
}

/// Open connections, each with a duplicate of its socket so that it can be
/// shut down at once from any thread.
struct Conns {
    next_id: u64,
    open: HashMap<u64, Option<std::net::TcpStream>>,
}

/// A loaded model, as `/api/ps` lists it.
struct Loaded {
    context_length: u64,
    /// When it leaves `/api/ps`; `None` is never.
    expires: Option<Instant>,
}

/// The scripted and observable state.
struct State {
    script: VecDeque<Reply>,
    log: Vec<LoggedRequest>,
    models: BTreeMap<String, Loaded>,
    /// What `/api/tags` lists: the default model and every model seen.
    known: BTreeSet<String>,
    unload_delay: Duration,
}

/// What the fake shares between the handle, the accept loop and the
/// connections.
pub(crate) struct Shared {
    addr: SocketAddr,
    slot: Mutex<Slot>,
    state: Mutex<State>,
    conns: Mutex<Conns>,
    /// Wakes the accept loop after [`Shared::refuse_for`].
    wake: Notify,
}

impl Shared {
    /// Binds `addr` and returns the shared state, ready for [`run`].
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Arc<Shared>> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Arc::new(Shared {
            addr,
            slot: Mutex::new(Slot {
                listener: Some(listener),
                rebind_at: None,
                rebind_failures: 0,
                stopped: false,
            }),
            state: Mutex::new(State {
                script: VecDeque::new(),
                log: Vec::new(),
                models: BTreeMap::new(),
                known: BTreeSet::from([DEFAULT_MODEL.to_owned()]),
                unload_delay: Duration::ZERO,
            }),
            conns: Mutex::new(Conns {
                next_id: 0,
                open: HashMap::new(),
            }),
            wake: Notify::new(),
        }))
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    // ----- the script and the log -------------------------------------

    pub(crate) fn push_many(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state).script.extend(replies);
    }

    pub(crate) fn pending_replies(&self) -> usize {
        lock(&self.state).script.len()
    }

    pub(crate) fn log(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    pub(crate) fn clear_log(&self) {
        lock(&self.state).log.clear();
    }

    pub(crate) fn generation_count(&self) -> usize {
        lock(&self.state)
            .log
            .iter()
            .filter(|r| r.kind.is_generation())
            .count()
    }

    // ----- models ------------------------------------------------------

    pub(crate) fn loaded_models(&self) -> Vec<String> {
        let mut st = lock(&self.state);
        st.prune(Instant::now());
        st.models.keys().cloned().collect()
    }

    pub(crate) fn context_length(&self, model: &str) -> Option<u64> {
        let mut st = lock(&self.state);
        st.prune(Instant::now());
        st.models
            .get(&request::display_name(model))
            .map(|m| m.context_length)
    }

    pub(crate) fn set_unload_delay(&self, d: Duration) {
        lock(&self.state).unload_delay = d;
    }

    // ----- the listener and the connections ------------------------------

    pub(crate) fn is_listening(&self) -> bool {
        lock(&self.slot).listener.is_some()
    }

    pub(crate) fn open_connections(&self) -> usize {
        lock(&self.conns).open.len()
    }

    /// Closes the listener now and schedules the re-bind.
    pub(crate) fn refuse_for(&self, d: Duration) {
        let listener = {
            let mut slot = lock(&self.slot);
            if slot.stopped {
                return;
            }
            slot.rebind_at = Some(Instant::now() + d);
            slot.rebind_failures = 0;
            slot.listener.take()
        };
        drop(listener);
        self.close_connections();
        self.wake.notify_one();
    }

    /// Closes the listener and every connection, for good.
    pub(crate) fn stop(&self) {
        let listener = {
            let mut slot = lock(&self.slot);
            slot.stopped = true;
            slot.rebind_at = None;
            slot.listener.take()
        };
        drop(listener);
        self.close_connections();
    }

    /// Shuts down every open socket; each connection task then sees the end
    /// of its stream and finishes.
    fn close_connections(&self) {
        for sock in lock(&self.conns).open.values().flatten() {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        match &lock(&self.slot).listener {
            Some(listener) => listener.poll_accept(cx).map_ok(|(stream, _)| stream),
            // The loop is woken by `wake` or re-polls after its own re-bind.
            None => Poll::Pending,
        }
    }

    /// Re-binds the address if the refusal window is over.
    fn try_rebind(&self) {
        let mut slot = lock(&self.slot);
        let Some(at) = slot.rebind_at else { return };
        if slot.stopped {
            slot.rebind_at = None;
            return;
        }
        if Instant::now() < at {
            return;
        }
        match rebind(self.addr) {
            Ok(listener) => {
                slot.listener = Some(listener);
                slot.rebind_at = None;
            }
            Err(error) => {
                slot.rebind_failures += 1;
                if slot.rebind_failures >= REBIND_TRIES {
                    tracing::warn!(addr = %self.addr, %error, "fake Ollama could not bind its address again");
                    slot.rebind_at = None;
                } else {
                    slot.rebind_at = Some(Instant::now() + REBIND_RETRY);
                }
            }
        }
    }

    /// Registers a new connection: counts it and keeps a duplicate of its
    /// socket so that [`close_connections`](Self::close_connections) can
    /// shut it down.
    fn track(self: &Arc<Self>, stream: TcpStream) -> Option<(TcpStream, ConnGuard)> {
        let std = stream.into_std().ok()?;
        let dup = std.try_clone().ok();
        let stream = TcpStream::from_std(std).ok()?;
        let _ = stream.set_nodelay(true);
        let mut conns = lock(&self.conns);
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, dup);
        Some((
            stream,
            ConnGuard {
                shared: Arc::clone(self),
                id,
            },
        ))
    }

    fn spawn_connection(self: &Arc<Self>, tasks: &mut JoinSet<()>, stream: TcpStream) {
        let Some((stream, guard)) = self.track(stream) else {
            return;
        };
        let shared = Arc::clone(self);
        tasks.spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            // No header-read timeout: an idle keep-alive connection stays
            // open until its client closes it, even with a paused clock.
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::trace!(%error, "fake Ollama connection ended");
            }
        });
    }
}

/// Removes a connection from the table when its task ends or is aborted.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        lock(&self.shared.conns).open.remove(&self.id);
    }
}

/// The accept loop. It owns the connection tasks: dropping it (by aborting
/// its task) aborts them all.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        let rebind_at = lock(&shared.slot).rebind_at;
        tokio::select! {
            biased;
            () = shared.wake.notified() => tasks.abort_all(),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = sleep_until(rebind_at) => shared.try_rebind(),
            accepted = poll_fn(|cx| shared.poll_accept(cx)) => match accepted {
                Ok(stream) => shared.spawn_connection(&mut tasks, stream),
                Err(error) => {
                    // Out of file descriptors and the like: back off a bit.
                    tracing::debug!(%error, "fake Ollama accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}

// ----- handlers --------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Version,
    Tags,
    Ps,
    Generate,
    Chat,
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        match path {
            "/" if get => Route::Root,
            "/api/version" if get => Route::Version,
            "/api/tags" if get => Route::Tags,
            "/api/ps" if method == Method::GET => Route::Ps,
            "/api/generate" if post => Route::Generate,
            "/api/chat" if post => Route::Chat,
            _ => Route::NotFound,
        }
    }
}

/// What a generation is answered with: the model as the client spelled it,
/// chat or generate, streamed or not.
#[derive(Clone, Debug)]
struct GenCtx {
    model: String,
    chat: bool,
    stream: bool,
}

enum Plan {
    Now(Response<FakeBody>),
    Script(Reply, GenCtx),
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<FakeBody> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let (bytes, read_error) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => (collected.to_bytes(), None),
        Err(e) if e.is::<LengthLimitError>() => (
            Bytes::new(),
            Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large")),
        ),
        Err(_) => (
            Bytes::new(),
            Some((StatusCode::BAD_REQUEST, "could not read the request body")),
        ),
    };
    let route = Route::of(&parts.method, parts.uri.path());
    let generation = match (route, read_error) {
        (Route::Generate | Route::Chat, None) => Some(request::parse(&bytes, route == Route::Chat)),
        _ => None,
    };
    let kind = kind_of(route, generation.as_ref());
    let plan = {
        let mut st = lock(&shared.state);
        st.log.push(LoggedRequest {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            body: bytes,
            headers: parts.headers,
            at,
            kind,
        });
        st.decide(route, generation, read_error, Instant::now())
    };
    match plan {
        Plan::Now(response) => response,
        Plan::Script(reply, ctx) => serve(reply, &ctx).await,
    }
}

fn kind_of(route: Route, generation: Option<&Result<GenRequest, String>>) -> RequestKind {
    let chat = route == Route::Chat;
    match route {
        Route::Root => RequestKind::Root,
        Route::Version => RequestKind::Version,
        Route::Tags => RequestKind::Tags,
        Route::Ps => RequestKind::Ps,
        Route::NotFound => RequestKind::Other,
        Route::Generate | Route::Chat => match generation {
            Some(Ok(req)) => match req.action() {
                Action::Unload => RequestKind::Unload {
                    model: req.model.clone(),
                },
                Action::Load => RequestKind::Load {
                    model: req.model.clone(),
                    num_ctx: req.num_ctx,
                },
                Action::Generate if chat => RequestKind::Chat,
                Action::Generate => RequestKind::Generate,
            },
            _ if chat => RequestKind::Chat,
            _ => RequestKind::Generate,
        },
    }
}

impl State {
    /// Drops the models whose time is up.
    fn prune(&mut self, now: Instant) {
        self.models
            .retain(|_, m| m.expires.is_none_or(|at| at > now));
    }

    fn load(&mut self, req: &GenRequest, now: Instant) {
        let name = request::display_name(&req.model);
        let expires = match req.keep_alive {
            Some(KeepAlive::Forever) => None,
            Some(KeepAlive::For(d)) if d.is_zero() => Some(now + self.unload_delay),
            Some(KeepAlive::For(d)) => now.checked_add(d),
            None => Some(now + DEFAULT_KEEP_ALIVE),
        };
        self.known.insert(name.clone());
        self.models.insert(
            name,
            Loaded {
                context_length: req.num_ctx.unwrap_or(DEFAULT_CONTEXT_LENGTH),
                expires,
            },
        );
    }

    fn unload(&mut self, model: &str, now: Instant) {
        let name = request::display_name(model);
        if self.unload_delay.is_zero() {
            self.models.remove(&name);
        } else if let Some(m) = self.models.get_mut(&name) {
            let at = now + self.unload_delay;
            m.expires = Some(m.expires.map_or(at, |e| e.min(at)));
        }
    }

    fn decide(
        &mut self,
        route: Route,
        generation: Option<Result<GenRequest, String>>,
        read_error: Option<(StatusCode, &str)>,
        now: Instant,
    ) -> Plan {
        let chat = route == Route::Chat;
        let response = match route {
            Route::Root => text(StatusCode::OK, "Ollama is running"),
            Route::Version => json(
                StatusCode::OK,
                serde_json::json!({ "version": VERSION }).to_string(),
            ),
            Route::Tags => json(StatusCode::OK, self.tags()),
            Route::Ps => {
                self.prune(now);
                json(StatusCode::OK, self.ps(now))
            }
            Route::NotFound => text(StatusCode::NOT_FOUND, "404 page not found"),
            Route::Generate | Route::Chat => match (read_error, generation) {
                (Some((status, message)), _) => json(status, wire::error_body(message)),
                (None, None) => json(
                    StatusCode::BAD_REQUEST,
                    wire::error_body("missing request body"),
                ),
                (None, Some(Err(message))) => {
                    json(StatusCode::BAD_REQUEST, wire::error_body(&message))
                }
                (None, Some(Ok(req))) => match req.action() {
                    Action::Unload => {
                        self.unload(&req.model, now);
                        json(StatusCode::OK, wire::admin(&req.model, chat, "unload"))
                    }
                    Action::Load => {
                        self.load(&req, now);
                        json(StatusCode::OK, wire::admin(&req.model, chat, "load"))
                    }
                    Action::Generate => {
                        self.load(&req, now);
                        let reply = self.script.pop_front().unwrap_or(Reply::Ok);
                        let ctx = GenCtx {
                            model: req.model,
                            chat,
                            stream: req.stream,
                        };
                        return Plan::Script(reply, ctx);
                    }
                },
            },
        };
        Plan::Now(response)
    }

    fn tags(&self) -> String {
        let models: Vec<_> = self
            .known
            .iter()
            .map(|name| {
                serde_json::json!({
                    "name": name,
                    "model": name,
                    "modified_at": MODIFIED_AT,
                    "size": wire::MODEL_SIZE,
                    "digest": wire::digest(name),
                    "details": wire::details(),
                })
            })
            .collect();
        serde_json::json!({ "models": models }).to_string()
    }

    fn ps(&self, now: Instant) -> String {
        let models: Vec<_> = self
            .models
            .iter()
            .map(|(name, m)| {
                serde_json::json!({
                    "name": name,
                    "model": name,
                    "size": wire::MODEL_SIZE,
                    "digest": wire::digest(name),
                    "details": wire::details(),
                    "expires_at": wire::expires_at(m.expires.map(|at| at.saturating_duration_since(now))),
                    "size_vram": wire::MODEL_SIZE,
                    "context_length": m.context_length,
                })
            })
            .collect();
        serde_json::json!({ "models": models }).to_string()
    }
}

// ----- answers -----------------------------------------------------------------

fn response(status: StatusCode, content_type: &str, body: FakeBody) -> Response<FakeBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type)
        && !content_type.is_empty()
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn json(status: StatusCode, body: String) -> Response<FakeBody> {
    response(status, wire::JSON, FakeBody::full(body))
}

fn text(status: StatusCode, body: &'static str) -> Response<FakeBody> {
    response(status, wire::TEXT, FakeBody::full(body))
}

/// Answers a scripted reply: waits out delays, hangs forever on `Hang`.
async fn serve(mut reply: Reply, ctx: &GenCtx) -> Response<FakeBody> {
    loop {
        match reply {
            Reply::Delay(wait, inner) => {
                tokio::time::sleep(wait).await;
                reply = *inner;
            }
            // Hyper drops this future when the client closes the connection.
            Reply::Hang => return pending().await,
            other => return answer(other, ctx),
        }
    }
}

fn answer(reply: Reply, ctx: &GenCtx) -> Response<FakeBody> {
    let GenCtx {
        model,
        chat,
        stream,
    } = ctx;
    let (model, chat, stream) = (model.as_str(), *chat, *stream);
    match reply {
        Reply::Ok => success(model, chat, stream, DEFAULT_RESPONSE),
        Reply::Text(text) => success(model, chat, stream, &text),
        Reply::Status {
            status,
            content_type,
            body,
        } => {
            let Ok(status) = StatusCode::from_u16(status) else {
                return json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    wire::error_body(&format!(
                        "fake Ollama: scripted status {status} is not an HTTP status"
                    )),
                );
            };
            if HeaderValue::from_str(&content_type).is_err() {
                return json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    wire::error_body(
                        "fake Ollama: scripted content type is not a valid header value",
                    ),
                );
            }
            response(status, &content_type, FakeBody::full(body))
        }
        Reply::CloseMidBody => {
            let (content_type, whole) = if stream {
                (
                    wire::NDJSON,
                    wire::stream_lines(model, chat, DEFAULT_RESPONSE).concat(),
                )
            } else {
                (wire::JSON, wire::done(model, chat, DEFAULT_RESPONSE))
            };
            let whole = Bytes::from(whole);
            let half = whole.slice(..whole.len() / 2);
            let mut r = response(StatusCode::OK, content_type, FakeBody::breaking(vec![half]));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
            r
        }
        Reply::StreamError { chunks, error } => {
            let toks = wire::tokens(DEFAULT_RESPONSE);
            let mut lines: Vec<Bytes> = toks
                .iter()
                .cycle()
                .take(chunks)
                .map(|t| Bytes::from(wire::chunk_line(model, chat, t)))
                .collect();
            lines.push(Bytes::from(wire::error_body(&error) + "\n"));
            response(
                StatusCode::OK,
                wire::NDJSON,
                FakeBody::chunks(lines, Duration::ZERO),
            )
        }
        Reply::Chunked { chunks, gap } => response(
            StatusCode::OK,
            wire::NDJSON,
            FakeBody::chunks(chunks.into_iter().map(Bytes::from).collect(), gap),
        ),
        // `serve` unwraps these; answer them the same way if they get here.
        Reply::Delay(_, inner) => answer(*inner, ctx),
        Reply::Hang => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            wire::error_body("fake Ollama: hang"),
        ),
    }
}

fn success(model: &str, chat: bool, stream: bool, text: &str) -> Response<FakeBody> {
    if stream {
        let lines = wire::stream_lines(model, chat, text)
            .into_iter()
            .map(Bytes::from)
            .collect();
        response(
            StatusCode::OK,
            wire::NDJSON,
            FakeBody::chunks(lines, Duration::ZERO),
        )
    } else {
        json(StatusCode::OK, wire::done(model, chat, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of(&Method::GET, "/"), Route::Root);
        assert_eq!(Route::of(&Method::HEAD, "/api/version"), Route::Version);
        assert_eq!(Route::of(&Method::GET, "/api/generate"), Route::NotFound);
        assert_eq!(Route::of(&Method::POST, "/api/chat"), Route::Chat);
        assert_eq!(Route::of(&Method::POST, "/api/ps"), Route::NotFound);
    }
}
