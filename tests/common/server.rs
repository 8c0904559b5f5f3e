//! Scaffolding shared by the server tests (tests/server.rs, tests/server_soak.rs): the tiny
//! fixture model, a server on loopback, HTTP helpers and the direct (sequential) reference.
//! Included with `#[path = "common/server.rs"] mod server_common;` so that only those binaries
//! compile it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fado::chat_template::Message;
use fado::generate::{encode_chat, generate_text, TextRequest};
use fado::model::Model;
use fado::sampling::SamplingParams;
use fado::server::{Server, ServerConfig, ServerHandle};
use fado::session::Session;
use futures::StreamExt;
use serde_json::{json, Value};

/// The fixture's max_position_embeddings.
pub const CTX: usize = 256;
/// Any single HTTP exchange in these tests finishes well within this on lavapipe.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The tiny fixture model every server test serves (one per test binary).
pub fn model() -> Arc<Model> {
    super::common::tiny_model()
}

/// A server for [`model`] on a loopback port: its handle and base URL.
pub async fn start(cfg: ServerConfig) -> (ServerHandle, String) {
    start_with(model(), cfg).await
}

/// [`start`] serving another model (e.g. one on its own device).
pub async fn start_with(model: Arc<Model>, cfg: ServerConfig) -> (ServerHandle, String) {
    let server = Server::new(model, cfg).expect("server starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let h = server.spawn(listener).expect("spawn");
    let base = format!("http://{}", h.addr);
    (h, base)
}

pub fn cfg(parallel: usize) -> ServerConfig {
    ServerConfig {
        parallel,
        ctx: CTX,
        ..Default::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// POST `body` as JSON to `url`; a transport error fails the test, naming `what`.
pub async fn post(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &Value,
    what: &str,
) -> reqwest::Response {
    c.post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`post`], then the response body as JSON (whatever the status).
pub async fn post_json(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &Value,
    what: &str,
) -> Value {
    post(c, url, body, what)
        .await
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

/// GET `url` and its body as JSON; a transport error or a body that is not JSON fails the test.
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    c.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a JSON body")
}

pub fn user(text: &str) -> Vec<Message> {
    vec![Message::new("user", text)]
}

/// Greedy text from a fresh session: what the server must reproduce.
pub fn direct(prompt: &[u32], max_tokens: usize, stop: &[&str]) -> String {
    direct_with(prompt, SamplingParams::greedy(), max_tokens, stop)
}

/// [`direct`] with other sampling parameters (e.g. penalties).
pub fn direct_with(
    prompt: &[u32],
    params: SamplingParams,
    max_tokens: usize,
    stop: &[&str],
) -> String {
    let m = model();
    let mut s = Session::new(m, CTX).expect("session");
    let req = TextRequest {
        params,
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
    };
    generate_text(&mut s, prompt, &req, &mut |_| true)
        .expect("direct generation")
        .text
}

pub fn direct_chat(text: &str, max_tokens: usize) -> String {
    let ids = encode_chat(&model(), &user(text), true).expect("encode");
    direct(&ids, max_tokens, &[])
}

pub fn chat_body(text: &str, max_tokens: usize, stream: bool) -> Value {
    json!({
        "model": "default",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Read an SSE response to its end: the `data:` payloads in order.
pub async fn sse(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200, "stream status");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let mut buf = String::new();
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(b) = body.next().await {
        buf.push_str(std::str::from_utf8(&b.expect("stream bytes")).expect("utf-8 stream"));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            for line in ev.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    out.push(d.to_string());
                }
            }
        }
    }
    out
}

/// Concatenated `delta.content` (chat) or `text` (completions) of parsed chunks.
pub fn stream_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).expect("chunk is JSON"))
        .filter_map(|v| {
            let c = v["choices"].get(0)?.clone();
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .map(str::to_string)
        })
        .collect()
}

pub async fn health(c: &reqwest::Client, base: &str) -> Value {
    let r = c
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    r.json().await.expect("health json")
}

/// Wait until `/health` satisfies `ok`, or fail after `limit`.
pub async fn wait_health(
    c: &reqwest::Client,
    base: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let v = health(c, base).await;
        if ok(&v) {
            return v;
        }
        assert!(t0.elapsed() < limit, "health never got there: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn expect_error(r: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(r.status(), status, "{what}");
    let v: Value = r
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(e["type"].is_string(), "{what}: {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{what}: {v}"
    );
    v
}
