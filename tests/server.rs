//! `fado serve` over real loopback HTTP with the tiny fixture model: answers equal direct
//! generation, streams equal whole answers, concurrent slots give their sequential results, a
//! client that disconnects frees its slot, and bad requests get OpenAI-shaped 4xx errors while
//! the server keeps answering.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fado::chat_template::Message;
use fado::generate::{encode_chat, encode_raw, generate_text, TextRequest};
use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::server::{Server, ServerConfig, ServerHandle};
use fado::session::Session;
use futures::StreamExt;
use serde_json::{json, Value};

/// The fixture's max_position_embeddings.
const CTX: usize = 256;
/// Any single HTTP exchange in these tests finishes well within this on lavapipe.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        Model::load_on(common::ctx(), &p, &ModelOptions::default()).expect("tiny model loads")
    })
    .clone()
}

async fn start(cfg: ServerConfig) -> (ServerHandle, String) {
    let server = Server::new(model(), cfg).expect("server starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let h = server.spawn(listener).expect("spawn");
    let base = format!("http://{}", h.addr);
    (h, base)
}

fn cfg(parallel: usize) -> ServerConfig {
    ServerConfig {
        parallel,
        ctx: CTX,
        ..Default::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::new("user", text)]
}

/// Greedy text from a fresh session: what the server must reproduce.
fn direct(prompt: &[u32], max_tokens: usize, stop: &[&str]) -> String {
    let m = model();
    let mut s = Session::new(m, CTX).expect("session");
    let req = TextRequest {
        params: SamplingParams::greedy(),
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
    };
    generate_text(&mut s, prompt, &req, &mut |_| true)
        .expect("direct generation")
        .text
}

fn direct_chat(text: &str, max_tokens: usize) -> String {
    let ids = encode_chat(&model(), &user(text), true).expect("encode");
    direct(&ids, max_tokens, &[])
}

fn chat_body(text: &str, max_tokens: usize, stream: bool) -> Value {
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
async fn sse(resp: reqwest::Response) -> Vec<String> {
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
fn stream_text(events: &[String]) -> String {
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

async fn health(c: &reqwest::Client, base: &str) -> Value {
    let r = c
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    r.json().await.expect("health json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_at_temperature_zero_equals_direct_generation_and_stream_equals_whole() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Tell me about the sea.";
    let want = direct_chat(prompt, 24);

    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body(prompt, 24, false))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], model().name);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let got = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(got, want, "server text differs from a fresh session's");
    let ids = encode_chat(&model(), &user(prompt), true).unwrap();
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], ids.len());
    let completion = u["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion), "{u}");
    assert_eq!(u["total_tokens"], ids.len() as u64 + completion);
    let finish = v["choices"][0]["finish_reason"].clone();

    // The same request streamed, twice (the second reuses the slot's cached prefix).
    for round in 0..2 {
        let r = c
            .post(format!("{base}/v1/chat/completions"))
            .json(&chat_body(prompt, 24, true))
            .send()
            .await
            .expect("stream");
        let ev = sse(r).await;
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{ev:?}");
        assert_eq!(stream_text(&ev), want, "round {round}: stream differs");
        let chunks: Vec<Value> = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]), "usage chunk has no choices");
        assert_eq!(usage["usage"]["completion_tokens"], completion);
        assert_eq!(usage["usage"]["prompt_tokens"], ids.len());
        let last = &chunks[chunks.len() - 2];
        assert_eq!(last["choices"][0]["finish_reason"], finish);
        if round == 1 {
            let cached = usage["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            assert_eq!(cached as usize, ids.len() - 1, "prefix not reused");
        }
    }

    // A stop string cuts the answer before it.
    if let Some(cut) = want
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .nth(3)
    {
        let stop: String = want[cut..].chars().take(2).collect();
        let mut b = chat_body(prompt, 24, false);
        b["stop"] = json!([stop]);
        let v: Value = c
            .post(format!("{base}/v1/chat/completions"))
            .json(&b)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(got, &want[..want.find(&stop).unwrap()], "stop {stop:?}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_models_and_health_answer() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Once upon a time";
    let want = direct(&encode_raw(&model(), prompt).unwrap(), 16, &[]);
    let body = json!({"model": model().name, "prompt": prompt, "temperature": 0, "max_tokens": 16});
    let v: Value = c
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let ev = sse(c
        .post(format!("{base}/v1/completions"))
        .json(&sb)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&ev), want);

    let m: Value = c
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], model().name);
    let hv = health(&c, &base).await;
    assert_eq!(hv["status"], "ok");
    assert_eq!(hv["slots"]["total"], 1);
    assert_eq!(hv["requests"]["completed"], 2);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_streams_on_four_slots_equal_their_sequential_runs() {
    const CLIENTS: usize = 16;
    const MAX_TOKENS: usize = 12;
    let (h, base) = start(cfg(4)).await;
    let prompts: Vec<String> = (0..CLIENTS)
        .map(|i| format!("Question {i}: what is {} plus {}?", i * 7 + 3, i * i + 1))
        .collect();
    let want: Vec<String> = prompts.iter().map(|p| direct_chat(p, MAX_TOKENS)).collect();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for p in &prompts {
        let (c, url, body) = (
            client(),
            format!("{base}/v1/chat/completions"),
            chat_body(p, MAX_TOKENS, true),
        );
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&body).send().await.expect("send");
            sse(r).await
        }));
    }
    let mut max_busy_seen = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let ev = t.await.expect("client task");
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "client {i}");
        assert_eq!(stream_text(&ev), want[i], "client {i} ({:?})", prompts[i]);
        max_busy_seen = max_busy_seen.max(h.stats().busy);
    }
    let st = h.stats();
    assert_eq!(st.completed, CLIENTS as u64);
    assert_eq!((st.busy, st.queued, st.rejected), (0, 0, 0));
    assert!(max_busy_seen <= 4);
    eprintln!(
        "{CLIENTS} streams × {MAX_TOKENS} tokens on 4 slots: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    h.shutdown().await;
}

/// Wait until `/health` satisfies `ok`, or fail after `limit`.
async fn wait_health(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_frees_its_slot_and_a_full_queue_answers_429() {
    let (h, base) = start(ServerConfig { queue: 1, ..cfg(1) }).await;
    let c = client();
    // A long generation: greedy output must not end early for this to show anything.
    let long_prompt = "Write a very long story.";
    let ids = encode_chat(&model(), &user(long_prompt), true).unwrap();
    let long = CTX - ids.len();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body(long_prompt, long, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut a = r.bytes_stream();
    let first = a.next().await.expect("a first chunk").unwrap();
    assert!(first.starts_with(b"data: "));
    wait_health(&c, &base, REQUEST_TIMEOUT, |v| v["slots"]["busy"] == 1).await;

    // The slot is busy: one request may wait, the next is refused with 429.
    let b = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("Hi", 4, true))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200, "queued streams get their headers at once");
    let refused = c
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat_body("Hi", 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let e: Value = refused.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    assert!(e["error"]["message"].as_str().unwrap().contains("busy"));

    // Drop the long stream after its first chunk: the slot goes to the waiting request.
    let t0 = Instant::now();
    drop(a);
    let ev = sse(b).await;
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let freed = t0.elapsed();
    let v = wait_health(&c, &base, REQUEST_TIMEOUT, |v| {
        let r = &v["requests"];
        v["slots"]["busy"] == 0
            && r["completed"].as_u64().unwrap_or(0) + r["cancelled"].as_u64().unwrap_or(0) == 2
    })
    .await;
    assert_eq!(
        v["requests"]["cancelled"], 1,
        "the dropped stream ran to its end: {v}"
    );
    assert_eq!(v["requests"]["completed"], 1, "{v}");
    assert_eq!(v["requests"]["rejected"], 1, "{v}");
    // What the dropped request would have cost: its whole greedy run.
    let t1 = Instant::now();
    let full = direct(&ids, long, &[]);
    let full_time = t1.elapsed();
    eprintln!(
        "waiting request done {:.2} s after the disconnect; the full {long}-token run takes {:.2} s",
        freed.as_secs_f64(),
        full_time.as_secs_f64()
    );
    assert!(
        model().tokenizer.encode(&full, false).unwrap().len() > long / 2,
        "precondition: the long prompt's greedy output should not stop early"
    );
    assert!(
        freed < full_time,
        "the slot was not freed early ({freed:?} ≥ a full run's {full_time:?})"
    );
    h.shutdown().await;
}

async fn expect_error(r: reqwest::Response, status: u16, what: &str) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_answering() {
    const KEY: &str = "sk-test-key";
    const SMALL_CTX: usize = 64;
    let (h, base) = start(ServerConfig {
        api_key: Some(KEY.into()),
        max_body: 4096,
        max_tokens_cap: 100,
        ctx: SMALL_CTX,
        ..cfg(1)
    })
    .await;
    let c = client();
    let url = format!("{base}/v1/chat/completions");
    let post = |body: String| {
        c.post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
    };
    let ok_msgs = r#""messages":[{"role":"user","content":"hi"}]"#;

    let v = expect_error(
        post("{\"messages\": [".into()).send().await.unwrap(),
        400,
        "malformed",
    )
    .await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let v = expect_error(
        post(format!(r#"{{{ok_msgs},"temperature":"hot"}}"#))
            .send()
            .await
            .unwrap(),
        400,
        "wrong type",
    )
    .await;
    assert_eq!(v["error"]["param"], "temperature");
    let v = expect_error(
        post(format!(r#"{{{ok_msgs},"max_tokens":-3}}"#))
            .send()
            .await
            .unwrap(),
        400,
        "negative max_tokens",
    )
    .await;
    assert_eq!(v["error"]["param"], "max_tokens");
    expect_error(
        post(format!(r#"{{{ok_msgs},"max_tokens":101}}"#))
            .send()
            .await
            .unwrap(),
        400,
        "max_tokens over the cap",
    )
    .await;
    expect_error(
        post("[1,2]".into()).send().await.unwrap(),
        400,
        "not an object",
    )
    .await;
    let v = expect_error(
        post(r#"{"model":"default"}"#.into()).send().await.unwrap(),
        400,
        "missing messages",
    )
    .await;
    assert_eq!(v["error"]["param"], "messages");
    expect_error(
        post(r#"{"messages":[{"role":"wizard","content":"x"}]}"#.into())
            .send()
            .await
            .unwrap(),
        400,
        "unknown role",
    )
    .await;
    expect_error(
        post(format!(r#"{{{ok_msgs},"logprobs":true}}"#))
            .send()
            .await
            .unwrap(),
        400,
        "logprobs",
    )
    .await;
    let v = expect_error(
        post(format!(r#"{{{ok_msgs},"model":"gpt-4o"}}"#))
            .send()
            .await
            .unwrap(),
        404,
        "unknown model",
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(5000)
    );
    let v = expect_error(post(big).send().await.unwrap(), 413, "oversized body").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("4096"));
    let long = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "many words ".repeat(60)
    );
    let v = expect_error(
        post(long).send().await.unwrap(),
        400,
        "prompt over the context",
    )
    .await;
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&SMALL_CTX.to_string()));
    let v = expect_error(
        c.post(&url)
            .body(format!("{{{ok_msgs}}}"))
            .send()
            .await
            .unwrap(),
        401,
        "missing key",
    )
    .await;
    assert_eq!(v["error"]["code"], "invalid_api_key");
    expect_error(
        c.post(&url)
            .bearer_auth("sk-wrong")
            .body(format!("{{{ok_msgs}}}"))
            .send()
            .await
            .unwrap(),
        401,
        "wrong key",
    )
    .await;
    expect_error(
        c.get(format!("{base}/v1/models")).send().await.unwrap(),
        401,
        "models without key",
    )
    .await;
    expect_error(
        c.get(format!("{base}/v1/nope")).send().await.unwrap(),
        404,
        "unknown path",
    )
    .await;
    expect_error(
        c.get(&url).bearer_auth(KEY).send().await.unwrap(),
        405,
        "GET on a POST route",
    )
    .await;
    let v = expect_error(
        c.post(format!("{base}/v1/completions"))
            .bearer_auth(KEY)
            .body(r#"{"prompt":[1,99999]}"#)
            .send()
            .await
            .unwrap(),
        400,
        "token id outside the vocabulary",
    )
    .await;
    assert_eq!(v["error"]["param"], "prompt");

    // Still alive, and a good request with the key works.
    assert_eq!(health(&c, &base).await["status"], "ok");
    let r = post(format!(r#"{{{ok_msgs},"temperature":0,"max_tokens":3}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let st = h.stats();
    assert_eq!((st.completed, st.failed, st.busy), (1, 0, 0));
    h.shutdown().await;
}
