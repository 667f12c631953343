//! The retrying Ollama proxy: its command line ([`Config`]) and its axum
//! app ([`router`]).
//!
//! This file is shared: the `ollama_proxy` example's `main.rs` uses it, and
//! `tests/proxy.rs` includes it with `#[path]`, so that the tests run exactly
//! the app that the binary serves.
//!
//! Every request, whatever its method and path, goes through one stack:
//!
//! ```text
//! axum fallback handler       rewrites the URI to the upstream, drops hop-by-hop headers
//!  └─ HttpRetryLayer(OllamaPolicy + OllamaRecovery)
//!      └─ tower timeout       bounds one attempt (until the response head)
//!          └─ hyper-util legacy Client, HttpConnector with a connect timeout
//! ```
//!
//! When the loop gives up with a response, that response goes back as the
//! upstream sent it (status, headers, every body byte). When it gives up
//! with no response at all, the client gets
//! [`error_response`](tower_ollama_retry::http::error_response): 504 when
//! every attempt timed out, 502 otherwise, with an Ollama-shaped
//! `{"error":"..."}` body.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;
use tower::timeout::{Timeout, TimeoutLayer};
use tower_ollama_retry::http::{
    HttpRetryLayer, PeekService, ReplayBody, ReplayService, error_response,
};
use tower_ollama_retry::ollama::{Http, OllamaRecovery};
use tower_ollama_retry::{OllamaPolicy, Report, Retry};

/// The retrying Ollama proxy: forwards every request to an Ollama server
/// with CodeWorm's retry loop (OOM recovery, linear backoff on timeouts and
/// connection errors). Point any Ollama client at it by changing its base
/// URL.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "ollama_proxy", version)]
pub struct Config {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:11435")]
    pub listen: SocketAddr,

    /// The Ollama server to forward to (plain http; an optional path prefix
    /// is kept).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:11434", value_parser = Upstream::parse)]
    pub upstream: Upstream,

    /// `default` classifies the real Ollama error surface; `codeworm`
    /// reproduces CodeWorm exactly, quirks included.
    #[arg(long, value_enum, default_value_t = ProxyMode::Default)]
    pub mode: ProxyMode,

    /// Total attempts per request, the first included (CodeWorm's
    /// `max_retries`).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,

    /// The linear backoff step: after attempt i a timeout or connection
    /// error sleeps `i × DUR`.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_delay: Duration,

    /// The bound on one attempt, until the upstream's response head arrives.
    #[arg(long, value_name = "DUR", default_value = "600s", value_parser = positive_duration)]
    pub attempt_timeout: Duration,

    /// The bound on establishing one TCP connection to the upstream.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = positive_duration)]
    pub connect_timeout: Duration,

    /// OOM recovery's settle time: CodeWorm's fixed sleep after the unload,
    /// or (default mode) the longest wait for `/api/ps` to drop the model.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub recovery_settle: Duration,
}

/// The classification mode, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    /// CodeWorm's exact rules: only `out of memory`/`cuda` bodies recover,
    /// every other non-200 is returned at once.
    Codeworm,
    /// The real Ollama error surface: busy, crashed and slow runners back off
    /// and retry, permanent errors return at once, real OOMs recover.
    Default,
}

/// The upstream base URL: scheme, authority and an optional path prefix
/// (without its trailing slash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
}

impl Upstream {
    /// Parses `http://host:port[/prefix]`; a missing scheme means `http`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            return Err(format!(
                "unsupported scheme `{scheme}`: the proxy speaks plain http to Ollama"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| "the URL has no host".to_owned())?;
        if uri.query().is_some() {
            return Err("the URL must not have a query".to_owned());
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }

    /// The upstream URI for an incoming request's path and query.
    fn target(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let pq = incoming.path_and_query().map_or("/", PathAndQuery::as_str);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{pq}", self.prefix))
            .build()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// One attempt: the hyper-util client under a per-attempt timeout.
type Upstreamed = Timeout<Client<HttpConnector, ReplayBody<Body>>>;

/// The whole retry stack the handler calls.
type Stack = ReplayService<Retry<PeekService<Upstreamed>, OllamaPolicy<Http, OllamaRecovery>>>;

#[derive(Clone)]
struct Proxy {
    upstream: Upstream,
    stack: Stack,
}

/// The retry stack of `config`: `HttpRetryLayer(OllamaPolicy + OllamaRecovery)`
/// over a per-attempt timeout over a hyper-util client.
fn stack(config: &Config) -> Stack {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    // CodeWorm's pool: 20 idle connections, idle ones expire after 60 s.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(20)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector.clone());
    // The recovery's unload, poll and reload calls share the transport
    // settings (and connect timeout) of the proxied requests.
    let recovery_client = Client::builder(TokioExecutor::new()).build(connector);

    let (policy, recovery) = match config.mode {
        ProxyMode::Codeworm => (OllamaPolicy::codeworm(), OllamaRecovery::codeworm()),
        ProxyMode::Default => (OllamaPolicy::default(), OllamaRecovery::new()),
    };
    let recovery = recovery
        .with_settle(config.recovery_settle)
        .with_request_timeout(config.attempt_timeout)
        .with_client(recovery_client);
    let policy = policy
        .with_max_attempts(config.max_attempts)
        .with_retry_delay(config.retry_delay)
        .with_recovery(recovery);

    tower::ServiceBuilder::new()
        .layer(HttpRetryLayer::new(policy))
        .layer(TimeoutLayer::new(config.attempt_timeout))
        .service(client)
}

/// The proxy app: every method and path is forwarded through the retry
/// stack.
pub fn router(config: &Config) -> Router {
    let proxy = Proxy {
        upstream: config.upstream.clone(),
        stack: stack(config),
    };
    Router::new().fallback(forward).with_state(proxy)
}

/// A human duration (`2s`, `150ms`) that is not zero: a zero timeout would
/// fail every attempt before it started.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the pre-standard ones proxies also drop. `Trailer` is not among them:
/// it announces the message's trailers, and hyper only sends the trailers it
/// names, so dropping it would drop them.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops the hop-by-hop headers, and those that `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

async fn forward(State(proxy): State<Proxy>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    parts.uri = match proxy.upstream.target(&parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(%method, %path, error = %e, "cannot build the upstream URI");
            return plain_error(StatusCode::BAD_REQUEST, &format!("bad request URI: {e}"));
        }
    };
    strip_hop_by_hop(&mut parts.headers);
    // The client sets `Host` from the upstream URI.
    parts.headers.remove(header::HOST);
    // The upstream connection is HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;

    match proxy.stack.oneshot(Request::from_parts(parts, body)).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let attempts = parts.extensions.get::<Report>().map_or(1, Report::attempts);
            tracing::info!(%method, %path, status = parts.status.as_u16(), attempts, "proxied");
            // A success is a passthrough: it streams as it arrives.
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            let res: Response = error_response(&e);
            tracing::warn!(%method, %path, status = res.status().as_u16(), attempts = e.attempts(), error = %e, "upstream_failed");
            res
        }
    }
}

/// An Ollama-shaped error answer the proxy makes up itself.
fn plain_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-keep"]);
    }

    #[test]
    fn upstream_targets() {
        let up = Upstream::parse("http://127.0.0.1:11434").unwrap();
        let t = up.target(&"/api/tags?x=1".parse().unwrap()).unwrap();
        assert_eq!(t, "http://127.0.0.1:11434/api/tags?x=1");
        let up = Upstream::parse("http://h:1/ollama/").unwrap();
        assert_eq!(up.to_string(), "http://h:1/ollama");
        assert_eq!(
            up.target(&"/".parse().unwrap()).unwrap(),
            "http://h:1/ollama/"
        );
        assert_eq!(Upstream::parse("h:2").unwrap().to_string(), "http://h:2");
        assert!(Upstream::parse("https://h:1").is_err());
        assert!(Upstream::parse("http://h:1/?q").is_err());
        assert!(Upstream::parse("/just/a/path").is_err());
    }
}
