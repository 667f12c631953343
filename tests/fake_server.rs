//! The embedded fake Ollama server, over real loopback HTTP with hyper-util's
//! legacy client.

#![cfg(feature = "test-util")]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tower_ollama_retry::ollama::fake::{
    CORPUS_JSONL, DEFAULT_CONTEXT_LENGTH, DEFAULT_MODEL, DEFAULT_RESPONSE, FakeOllama, Reply,
    RequestKind,
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const MODEL: &str = DEFAULT_MODEL;
const JSON_CT: &str = "application/json; charset=utf-8";
const NDJSON_CT: &str = "application/x-ndjson";

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn lines(&self) -> Vec<Value> {
        std::str::from_utf8(&self.body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn request(method: Method, url: String, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::from(body.to_owned()))
        .unwrap()
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    let response = client.request(req).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(client: &HttpClient, ollama: &FakeOllama, path: &str) -> Answer {
    send(
        client,
        request(Method::GET, format!("{}{path}", ollama.url()), ""),
    )
    .await
}

async fn post(client: &HttpClient, ollama: &FakeOllama, path: &str, body: &str) -> Answer {
    send(
        client,
        request(Method::POST, format!("{}{path}", ollama.url()), body),
    )
    .await
}

fn gen_body(stream: Option<bool>) -> String {
    let mut v = json!({ "model": MODEL, "prompt": "why is the sky blue?" });
    if let Some(stream) = stream {
        v["stream"] = Value::Bool(stream);
    }
    v.to_string()
}

/// Polls `cond` every few milliseconds for up to 2 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

async fn ps_names(client: &HttpClient, ollama: &FakeOllama) -> Vec<String> {
    let ps = get(client, ollama, "/api/ps").await.json();
    ps["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn root_version_tags_ps() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    assert!(ollama.url().starts_with("http://127.0.0.1:"));
    assert!(!ollama.url().ends_with('/'));
    assert_eq!(ollama.url(), format!("http://{}", ollama.addr()));

    let root = get(&c, &ollama, "/").await;
    assert_eq!(root.status, 200);
    assert_eq!(&root.body[..], b"Ollama is running");

    let version = get(&c, &ollama, "/api/version").await;
    assert_eq!(version.status, 200);
    assert_eq!(version.content_type(), JSON_CT);
    assert_eq!(version.json(), json!({ "version": "0.15.0" }));

    let tags = get(&c, &ollama, "/api/tags").await.json();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models[0]["name"], MODEL);
    for key in ["name", "model", "modified_at", "size", "digest", "details"] {
        assert!(models[0].get(key).is_some(), "tags entry lacks {key}");
    }

    let ps = get(&c, &ollama, "/api/ps").await;
    assert_eq!(ps.status, 200);
    assert_eq!(&ps.body[..], br#"{"models":[]}"#);

    let missing = get(&c, &ollama, "/api/nope").await;
    assert_eq!(missing.status, 404);
    // A known path with the wrong method is not routed either.
    let wrong = get(&c, &ollama, "/api/generate").await;
    assert_eq!(wrong.status, 404);
    assert_eq!(ollama.generation_count(), 0);
}

#[tokio::test]
async fn non_stream_generate_has_ollamas_shape() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    let answer = post(&c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), JSON_CT);
    assert_eq!(
        answer.headers[header::CONTENT_LENGTH],
        answer.body.len().to_string()
    );
    let v = answer.json();
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["response"], DEFAULT_RESPONSE);
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert!(v["context"].is_array());
    let created = v["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 27, "{created}");
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ] {
        assert!(v[key].is_u64(), "{key} missing");
    }

    // Text replies and chat.
    ollama.push(Reply::text("forty-two"));
    let chat = json!({
        "model": MODEL,
        "messages": [{ "role": "user", "content": "answer?" }],
        "stream": false
    });
    let v = post(&c, &ollama, "/api/chat", &chat.to_string())
        .await
        .json();
    assert_eq!(
        v["message"],
        json!({ "role": "assistant", "content": "forty-two" })
    );
    assert!(v.get("response").is_none());
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(ollama.generation_count(), 2);
}

#[tokio::test]
async fn streaming_is_ndjson_by_default() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    for stream in [None, Some(true)] {
        let answer = post(&c, &ollama, "/api/generate", &gen_body(stream)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.content_type(), NDJSON_CT);
        assert!(answer.body.ends_with(b"\n"));
        let lines = answer.lines();
        assert!(lines.len() >= 3, "{lines:?}");
        let (last, tokens) = lines.split_last().unwrap();
        let text: String = tokens
            .iter()
            .map(|l| {
                assert_eq!(l["done"], false);
                assert_eq!(l["model"], MODEL);
                l["response"].as_str().unwrap()
            })
            .collect();
        assert_eq!(text, DEFAULT_RESPONSE);
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
    }

    ollama.push(Reply::text("a b"));
    let chat = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }] });
    let lines = post(&c, &ollama, "/api/chat", &chat.to_string())
        .await
        .lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0]["message"],
        json!({ "role": "assistant", "content": "a " })
    );
    assert_eq!(lines[1]["message"]["content"], "b");
    assert_eq!(lines[2]["done"], true);
}

#[tokio::test]
async fn every_corpus_row_is_served_byte_exact() {
    let corpus = Reply::corpus();
    let rows = CORPUS_JSONL
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(corpus.len(), rows, "a corpus line failed to parse");
    assert!(rows > 0);

    let ollama = FakeOllama::start().await.unwrap();
    ollama.push_many(corpus.iter().map(|(_, reply)| reply.clone()));
    assert_eq!(ollama.pending_replies(), rows);
    let c = client();
    for (id, reply) in &corpus {
        let Reply::Status {
            status,
            content_type,
            body,
        } = reply
        else {
            panic!("{id}: not a status reply");
        };
        // A streaming request: load-time errors still get a real status.
        let answer = post(&c, &ollama, "/api/generate", &gen_body(None)).await;
        assert_eq!(answer.status.as_u16(), *status, "{id}");
        assert_eq!(answer.content_type(), content_type, "{id}");
        assert_eq!(&answer.body[..], &body[..], "{id}");
    }
    assert_eq!(ollama.pending_replies(), 0);
    assert_eq!(ollama.generation_count(), rows);
}

#[tokio::test]
async fn hang_never_answers_until_the_client_leaves() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.push(Reply::Hang);
    let c = client();
    let req = request(
        Method::POST,
        format!("{}/api/generate", ollama.url()),
        &gen_body(Some(false)),
    );
    let started = Instant::now();
    let result = timeout(Duration::from_millis(200), c.request(req)).await;
    assert!(result.is_err(), "a hung request must time out");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(ollama.generation_count(), 1, "the request was logged");

    drop(c);
    assert!(
        eventually(|| ollama.open_connections() == 0).await,
        "the hung connection must close once the client is gone"
    );

    // The server still works.
    let answer = get(&client(), &ollama, "/").await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn close_mid_body_breaks_the_body_read() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    for stream in [false, true] {
        ollama.push(Reply::CloseMidBody);
        let req = request(
            Method::POST,
            format!("{}/api/generate", ollama.url()),
            &gen_body(Some(stream)),
        );
        let response = c.request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let promised: usize = response.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut body = response.into_body();
        let mut got = 0;
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) => break,
                None => panic!("the body ended cleanly after {got} of {promised} bytes"),
            }
        }
        assert!(got > 0 && got < promised, "got {got} of {promised}");
    }
}

#[tokio::test]
async fn stream_error_ends_with_an_error_line() {
    let ollama = FakeOllama::start().await.unwrap();
    let message = "model runner has unexpectedly stopped";
    ollama.push(Reply::StreamError {
        chunks: 3,
        error: message.to_owned(),
    });
    let answer = post(&client(), &ollama, "/api/generate", &gen_body(Some(true))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), NDJSON_CT);
    let lines = answer.lines();
    assert_eq!(lines.len(), 4);
    for line in &lines[..3] {
        assert_eq!(line["done"], false);
    }
    assert_eq!(lines[3], json!({ "error": message }));
    assert!(lines.iter().all(|l| l["done"] != true));
}

#[tokio::test]
async fn delay_is_logged_before_it_waits() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.push(Reply::text("late").delayed(Duration::from_millis(150)));
    let c = client();
    let url = format!("{}/api/generate", ollama.url());
    let started = Instant::now();
    let pending = tokio::spawn(async move {
        let answer = send(&c, request(Method::POST, url, &gen_body(Some(false)))).await;
        (answer.json(), Instant::now())
    });
    assert!(eventually(|| ollama.log().len() == 1).await);
    let logged = ollama.log()[0].at;
    assert!(!pending.is_finished(), "logged before the answer");
    let (v, done) = pending.await.unwrap();
    assert_eq!(v["response"], "late");
    assert!(done - logged >= Duration::from_millis(150));
    assert!(logged - started < Duration::from_millis(150));
}

#[tokio::test]
async fn chunked_streams_exact_chunks_with_gaps() {
    let ollama = FakeOllama::start().await.unwrap();
    let chunks: Vec<Vec<u8>> = vec![
        b"{\"response\":\"a\",\"done\":false}\n".to_vec(),
        b"{\"response\":\"b\",\"done\":false}\n".to_vec(),
        b"{\"done\":true}\n".to_vec(),
    ];
    let gap = Duration::from_millis(60);
    ollama.push(Reply::Chunked {
        chunks: chunks.clone(),
        gap,
    });
    let c = client();
    let req = request(
        Method::POST,
        format!("{}/api/generate", ollama.url()),
        &gen_body(None),
    );
    let start = Instant::now();
    let response = c.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.extend_from_slice(&data);
            arrivals.push(start.elapsed());
        }
    }
    assert_eq!(received, chunks.concat());
    assert_eq!(arrivals.len(), 3, "one frame a chunk: {arrivals:?}");
    // The last chunk cannot come before both gaps; the first came well
    // before it (passed through, not buffered).
    assert!(arrivals[2] >= gap * 2, "{arrivals:?}");
    assert!(arrivals[2] - arrivals[0] >= gap / 2, "{arrivals:?}");
}

#[tokio::test]
async fn unload_empties_ps_at_once_without_delay() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    post(&c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    assert_eq!(ps_names(&c, &ollama).await, [MODEL]);
    let ps = get(&c, &ollama, "/api/ps").await.json();
    let entry = &ps["models"][0];
    for key in [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ] {
        assert!(entry.get(key).is_some(), "ps entry lacks {key}");
    }
    assert_eq!(entry["context_length"], DEFAULT_CONTEXT_LENGTH);

    ollama.push(Reply::error(500, "not for the unload"));
    let unload = json!({ "model": MODEL, "keep_alive": 0 }).to_string();
    let answer = post(&c, &ollama, "/api/generate", &unload).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), JSON_CT);
    let v = answer.json();
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["response"], "");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "unload");
    assert!(v["created_at"].is_string());
    assert_eq!(
        ollama.pending_replies(),
        1,
        "unloads take no scripted reply"
    );
    assert_eq!(
        get(&c, &ollama, "/api/ps").await.body,
        Bytes::from_static(br#"{"models":[]}"#)
    );
    assert!(ollama.loaded_models().is_empty());

    // Unloading a model that is not loaded still answers 200; so does chat.
    let chat_unload = json!({ "model": MODEL, "messages": [], "keep_alive": 0 }).to_string();
    let v = post(&c, &ollama, "/api/chat", &chat_unload).await.json();
    assert_eq!(v["done_reason"], "unload");
    assert_eq!(v["message"]["content"], "");
    assert_eq!(ollama.generation_count(), 1);
    let kinds: Vec<_> = ollama.log().into_iter().map(|r| r.kind).collect();
    assert!(kinds.contains(&RequestKind::Unload {
        model: MODEL.to_owned()
    }));
}

#[tokio::test]
async fn unload_delay_keeps_the_model_listed_for_a_while() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.set_unload_delay(Duration::from_millis(100));
    let c = client();
    post(&c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    let unload = json!({ "model": MODEL, "keep_alive": 0 }).to_string();
    let unloaded_at = Instant::now();
    let answer = post(&c, &ollama, "/api/generate", &unload).await;
    assert_eq!(answer.json()["done_reason"], "unload");
    assert_eq!(ps_names(&c, &ollama).await, [MODEL], "still stopping");
    assert!(eventually(|| ollama.loaded_models().is_empty()).await);
    assert!(unloaded_at.elapsed() >= Duration::from_millis(100));
    assert!(ps_names(&c, &ollama).await.is_empty());
}

#[tokio::test]
async fn load_sets_the_context_length() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.push(Reply::Hang);
    let c = client();
    let load = json!({
        "model": MODEL,
        "prompt": "",
        "keep_alive": -1,
        "options": { "num_ctx": 8192 }
    })
    .to_string();
    let answer = post(&c, &ollama, "/api/generate", &load).await;
    assert_eq!(answer.status, 200);
    let v = answer.json();
    assert_eq!(v["done_reason"], "load");
    assert_eq!(v["done"], true);
    assert_eq!(ollama.pending_replies(), 1, "loads take no scripted reply");
    assert_eq!(ollama.generation_count(), 0);

    let ps = get(&c, &ollama, "/api/ps").await.json();
    assert_eq!(ps["models"][0]["name"], MODEL);
    assert_eq!(ps["models"][0]["context_length"], 8192);
    assert_eq!(ollama.context_length(MODEL), Some(8192));
    assert_eq!(
        ollama.log()[0].kind,
        RequestKind::Load {
            model: MODEL.to_owned(),
            num_ctx: Some(8192)
        }
    );

    // Untagged names are shown as Ollama shows them.
    let load = json!({ "model": "llama3", "prompt": "" }).to_string();
    post(&c, &ollama, "/api/generate", &load).await;
    assert_eq!(ollama.loaded_models(), ["llama3:latest", MODEL]);
    assert_eq!(
        ollama.context_length("llama3"),
        Some(DEFAULT_CONTEXT_LENGTH)
    );
}

#[tokio::test]
async fn the_log_records_every_request_in_order() {
    let ollama = FakeOllama::start().await.unwrap();
    let c = client();
    let generate = gen_body(Some(false));
    let unload = json!({ "model": MODEL, "keep_alive": 0 }).to_string();
    let load = json!({ "model": MODEL, "prompt": "", "options": { "num_ctx": 2048 } }).to_string();
    let chat = json!({
        "model": MODEL,
        "messages": [{ "role": "user", "content": "hi" }],
        "stream": false
    })
    .to_string();
    get(&c, &ollama, "/").await;
    post(&c, &ollama, "/api/generate", &generate).await;
    post(&c, &ollama, "/api/generate", &unload).await;
    post(&c, &ollama, "/api/generate", &load).await;
    get(&c, &ollama, "/api/ps").await;
    post(&c, &ollama, "/api/chat", &chat).await;
    get(&c, &ollama, "/api/tags").await;
    get(&c, &ollama, "/api/version").await;
    post(&c, &ollama, "/elsewhere", "{}").await;

    let log = ollama.log();
    let expected = [
        (Method::GET, "/", "", RequestKind::Root),
        (
            Method::POST,
            "/api/generate",
            generate.as_str(),
            RequestKind::Generate,
        ),
        (
            Method::POST,
            "/api/generate",
            unload.as_str(),
            RequestKind::Unload {
                model: MODEL.to_owned(),
            },
        ),
        (
            Method::POST,
            "/api/generate",
            load.as_str(),
            RequestKind::Load {
                model: MODEL.to_owned(),
                num_ctx: Some(2048),
            },
        ),
        (Method::GET, "/api/ps", "", RequestKind::Ps),
        (Method::POST, "/api/chat", chat.as_str(), RequestKind::Chat),
        (Method::GET, "/api/tags", "", RequestKind::Tags),
        (Method::GET, "/api/version", "", RequestKind::Version),
        (Method::POST, "/elsewhere", "{}", RequestKind::Other),
    ];
    assert_eq!(log.len(), expected.len());
    for (i, (entry, (method, path, body, kind))) in log.iter().zip(expected).enumerate() {
        assert_eq!(entry.method, method, "#{i}");
        assert_eq!(entry.path, path, "#{i}");
        assert_eq!(&entry.body[..], body.as_bytes(), "#{i}");
        assert_eq!(entry.kind, kind, "#{i}");
        assert_eq!(
            entry.headers[header::CONTENT_TYPE],
            "application/json",
            "#{i}"
        );
    }
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(log[1].json().unwrap()["prompt"], "why is the sky blue?");
    assert_eq!(log[1].model().as_deref(), Some(MODEL));
    assert!(log[0].json().is_none());
    assert_eq!(ollama.generation_count(), 2);

    ollama.clear_log();
    assert!(ollama.log().is_empty());
}

#[tokio::test]
async fn bad_requests_get_ollama_style_400s() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.push(Reply::text("kept"));
    let c = client();
    for (body, message) in [
        ("{not json", None),
        ("", Some("missing request body")),
        (r#"{"prompt":"hi"}"#, Some("model is required")),
        (
            r#"{"model":"m","prompt":"hi","keep_alive":"-1"}"#,
            Some(r#"time: missing unit in duration "-1""#),
        ),
    ] {
        let answer = post(&c, &ollama, "/api/generate", body).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(answer.content_type(), JSON_CT);
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        if let Some(message) = message {
            assert_eq!(error, message);
        }
    }
    assert_eq!(
        ollama.pending_replies(),
        1,
        "rejected requests take no reply"
    );
    // A scripted status that is not HTTP is reported, not panicked on.
    ollama.push(Reply::Status {
        status: 1000,
        content_type: String::new(),
        body: Vec::new(),
    });
    let v = post(&c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    assert_eq!(v.json()["response"], "kept");
    let bad = post(&c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    assert_eq!(bad.status, 500);
}

#[tokio::test]
async fn refused_for_a_while_then_back_on_the_same_port() {
    let ollama = FakeOllama::start().await.unwrap();
    let addr = ollama.addr();
    assert_eq!(get(&client(), &ollama, "/").await.status, 200);

    let refused_at = Instant::now();
    ollama.refuse_connections_for(Duration::from_millis(200));
    assert!(!ollama.is_listening());
    let raw = tokio::net::TcpStream::connect(addr).await;
    assert_eq!(
        raw.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let req = request(Method::GET, ollama.url(), "");
    let error = client().request(req).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");

    tokio::time::sleep_until(refused_at + Duration::from_millis(400)).await;
    assert!(ollama.is_listening());
    assert_eq!(ollama.addr(), addr);
    let answer = get(&client(), &ollama, "/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"Ollama is running");
}

#[tokio::test]
async fn connections_are_released_when_clients_go() {
    let ollama = FakeOllama::start().await.unwrap();
    let clients: Vec<HttpClient> = (0..4).map(|_| client()).collect();
    for c in &clients {
        post(c, &ollama, "/api/generate", &gen_body(Some(false))).await;
    }
    // Each client keeps its connection alive in its pool.
    assert!(eventually(|| ollama.open_connections() == 4).await);
    drop(clients);
    assert!(
        eventually(|| ollama.open_connections() == 0).await,
        "{} connections left",
        ollama.open_connections()
    );
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let ollama = FakeOllama::start().await.unwrap();
    let other = ollama.clone();
    let addr = ollama.addr();
    let c = client();
    get(&c, &ollama, "/").await;
    assert!(eventually(|| ollama.open_connections() == 1).await);

    other.shutdown();
    assert!(!ollama.is_listening());
    let raw = tokio::net::TcpStream::connect(addr).await;
    assert!(raw.is_err(), "shut down");
    assert!(eventually(|| ollama.open_connections() == 0).await);
    ollama.refuse_connections_for(Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!ollama.is_listening(), "no re-bind after shutdown");

    // Dropping the last handle stops a server too.
    let second = FakeOllama::start().await.unwrap();
    let addr = second.addr();
    drop(second);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_all_served_and_released() {
    let ollama = FakeOllama::start().await.unwrap();
    let replies = (0..40).map(|i| match i % 4 {
        0 => Reply::text(format!("reply {i}")),
        1 => Reply::error(
            503,
            "server busy, please try again.  maximum pending requests exceeded",
        ),
        2 => Reply::Ok.delayed(Duration::from_millis(5)),
        _ => Reply::StreamError {
            chunks: 2,
            error: "boom".into(),
        },
    });
    ollama.push_many(replies);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let ollama = ollama.clone();
        tasks.spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for _ in 0..5 {
                let answer = post(&c, &ollama, "/api/generate", &gen_body(None)).await;
                statuses.push(answer.status.as_u16());
            }
            statuses
        });
    }
    let mut statuses: Vec<u16> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        statuses.extend(done.unwrap());
    }
    assert_eq!(statuses.len(), 40);
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 10);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 30);
    assert_eq!(ollama.pending_replies(), 0);
    assert_eq!(ollama.generation_count(), 40);
    assert!(eventually(|| ollama.open_connections() == 0).await);
}

#[tokio::test]
async fn odd_scripted_statuses_do_not_break_the_server() {
    let ollama = FakeOllama::start().await.unwrap();
    for status in [100u16, 101, 204, 304, 599, 999] {
        ollama.push(Reply::json(status, "{}"));
        let req = request(
            Method::POST,
            format!("{}/api/generate", ollama.url()),
            &gen_body(Some(false)),
        );
        let got = timeout(Duration::from_secs(2), client().request(req)).await;
        let response = got.expect("answered").expect("a response");
        // Hyper will not send an informational status as a final one.
        let expected = if status == 100 { 500 } else { status };
        assert_eq!(response.status().as_u16(), expected);
    }
    assert_eq!(get(&client(), &ollama, "/").await.status, 200);
}

#[test]
fn a_handle_may_outlive_its_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ollama = rt.block_on(FakeOllama::start()).unwrap();
    drop(rt);
    assert!(ollama.loaded_models().is_empty());
    ollama.refuse_connections_for(Duration::from_millis(1));
    ollama.shutdown();
    drop(ollama);
}

#[tokio::test(start_paused = true)]
async fn delays_follow_a_paused_clock() {
    let ollama = FakeOllama::start().await.unwrap();
    ollama.push(Reply::text("after a long wait").delayed(Duration::from_secs(30)));
    let wall = std::time::Instant::now();
    let answer = post(&client(), &ollama, "/api/generate", &gen_body(Some(false))).await;
    assert_eq!(answer.json()["response"], "after a long wait");
    assert!(ollama.log()[0].at.elapsed() >= Duration::from_secs(30));
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "the clock was paused"
    );
}
