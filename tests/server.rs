//! `fado serve` over real loopback HTTP with the tiny fixture model: answers equal direct
//! generation, streams equal whole answers, concurrent slots give their sequential results, a
//! client that disconnects frees its slot, bad requests get OpenAI-shaped 4xx errors while
//! the server keeps answering, log-probabilities equal the log-softmax of the session's logits
//! and penalties reach generation.

mod common;
#[path = "common/server.rs"]
mod server_common;
use server_common::*;

use std::time::Instant;

use fado::chat_template::Message;
use fado::generate::{encode_chat, encode_raw};
use fado::sampling::SamplingParams;
use fado::server::ServerConfig;
use fado::session::Session;
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_at_temperature_zero_equals_direct_generation_and_stream_equals_whole() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Tell me about the sea.";
    let want = direct_chat(prompt, 24);

    let r = post(
        &c,
        format!("{base}/v1/chat/completions"),
        &chat_body(prompt, 24, false),
        "chat",
    )
    .await;
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
        let r = post(
            &c,
            format!("{base}/v1/chat/completions"),
            &chat_body(prompt, 24, true),
            "stream",
        )
        .await;
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
        let v: Value = post_json(&c, format!("{base}/v1/chat/completions"), &b, "request").await;
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
    let v: Value = post_json(&c, format!("{base}/v1/completions"), &body, "request").await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let ev = sse(post(&c, format!("{base}/v1/completions"), &sb, "request").await).await;
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&ev), want);

    let m: Value = get_json(&c, format!("{base}/v1/models")).await;
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
            let r = post(&c, url, &body, "send").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_frees_its_slot_and_a_full_queue_answers_429() {
    let (h, base) = start(ServerConfig { queue: 1, ..cfg(1) }).await;
    let c = client();
    // A long generation: greedy output must not end early for this to show anything.
    let long_prompt = "Write a very long story.";
    let ids = encode_chat(&model(), &user(long_prompt), true).unwrap();
    let long = CTX - ids.len();
    let r = post(
        &c,
        format!("{base}/v1/chat/completions"),
        &chat_body(long_prompt, long, true),
        "request",
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut a = r.bytes_stream();
    let first = a.next().await.expect("a first chunk").unwrap();
    assert!(first.starts_with(b"data: "));
    wait_health(&c, &base, REQUEST_TIMEOUT, |v| v["slots"]["busy"] == 1).await;

    // The slot is busy: one request may wait, the next is refused with 429.
    let b = post(
        &c,
        format!("{base}/v1/chat/completions"),
        &chat_body("Hi", 4, true),
        "request",
    )
    .await;
    assert_eq!(b.status(), 200, "queued streams get their headers at once");
    let refused = post(
        &c,
        format!("{base}/v1/chat/completions"),
        &chat_body("Hi", 4, false),
        "request",
    )
    .await;
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
        post(format!(r#"{{{ok_msgs},"logprobs":"yes"}}"#))
            .send()
            .await
            .unwrap(),
        400,
        "logprobs of the wrong type",
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

/// log-softmax of `logits` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("bytes is a list")
        .iter()
        .map(|b| b.as_u64().expect("a byte") as u8)
        .collect()
}

const LOGPROB_TOL: f64 = 1e-4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_equal_the_log_softmax_of_the_session_logits() {
    const TOP: usize = 5;
    const MAX_TOKENS: usize = 8;
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Name three rivers.";
    let mut body = chat_body(prompt, MAX_TOKENS, false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(TOP);
    let v: Value = post_json(&c, format!("{base}/v1/chat/completions"), &body, "request").await;
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs.content: {v}"))
        .clone();
    assert!(!content.is_empty(), "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        direct_chat(prompt, MAX_TOKENS)
    );

    // The reference: a session fed the same tokens; each step's logits, log-softmaxed.
    let m = model();
    let ids = encode_chat(&m, &user(prompt), true).unwrap();
    let mut s = Session::new(m.clone(), CTX).unwrap();
    s.prefill(&ids, 1).unwrap();
    for (i, e) in content.iter().enumerate() {
        let logits = s.last_logits().unwrap();
        let ls = log_softmax(&logits);
        let (best, _) = fado::ops::topk::topk_cpu(&logits, TOP);
        let t = best[0];
        assert_eq!(
            bytes_of(&e["bytes"]),
            m.tokenizer.token_bytes(t),
            "token {i}: {e}"
        );
        assert_eq!(
            e["token"].as_str().unwrap(),
            String::from_utf8_lossy(&m.tokenizer.token_bytes(t))
        );
        let lp = e["logprob"].as_f64().unwrap();
        assert!(
            (lp - ls[t as usize]).abs() < LOGPROB_TOL,
            "token {i}: {lp} vs {}",
            ls[t as usize]
        );
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), TOP, "token {i}: {e}");
        for (j, (alt, &id)) in top.iter().zip(&best).enumerate() {
            let alp = alt["logprob"].as_f64().unwrap();
            assert_eq!(
                bytes_of(&alt["bytes"]),
                m.tokenizer.token_bytes(id),
                "token {i} alt {j}"
            );
            assert!(
                (alp - ls[id as usize]).abs() < LOGPROB_TOL,
                "token {i} alt {j}: {alp}"
            );
            if j > 0 {
                assert!(
                    alp <= top[j - 1]["logprob"].as_f64().unwrap(),
                    "token {i}: unsorted"
                );
            }
        }
        assert_eq!(
            top[0]["logprob"], e["logprob"],
            "greedy: the token is the best alternative"
        );
        s.prefill(&[t], 1).unwrap();
    }

    // Streamed: the chunks' entries, concatenated, are the same.
    body["stream"] = json!(true);
    let ev = sse(post(&c, format!("{base}/v1/chat/completions"), &body, "request").await).await;
    let streamed: Vec<Value> = ev
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|v| {
            v["choices"].get(0)?["logprobs"]["content"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(streamed.len(), content.len());
    for (a, b) in streamed.iter().zip(&content) {
        assert_eq!(a["bytes"], b["bytes"]);
        let (x, y) = (
            a["logprob"].as_f64().unwrap(),
            b["logprob"].as_f64().unwrap(),
        );
        assert!((x - y).abs() < LOGPROB_TOL, "{a} vs {b}");
    }

    // More than OpenAI's 20 alternatives, or top_logprobs alone, is a 400 naming the field.
    body["top_logprobs"] = json!(21);
    let r = post(&c, format!("{base}/v1/chat/completions"), &body, "request").await;
    let e = expect_error(r, 400, "top_logprobs 21").await;
    assert_eq!(e["error"]["param"], "top_logprobs");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_logprobs_have_the_legacy_shape() {
    const N: usize = 3;
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Once upon a time";
    let m = model();
    let ids = encode_raw(&m, prompt).unwrap();
    let body = json!({"prompt": prompt, "temperature": 0, "max_tokens": 6, "logprobs": N});
    let v: Value = post_json(&c, format!("{base}/v1/completions"), &body, "request").await;
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap_or_else(|| panic!("{v}"));
    let n = tokens.len();
    assert!(n > 0, "{v}");
    for k in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[k].as_array().map(Vec::len), Some(n), "{k}: {lp}");
    }
    let mut s = Session::new(m.clone(), CTX).unwrap();
    s.prefill(&ids, 1).unwrap();
    let mut offset = 0;
    for i in 0..n {
        let logits = s.last_logits().unwrap();
        let ls = log_softmax(&logits);
        let t = fado::ops::topk::topk_cpu(&logits, 1).0[0];
        let text = String::from_utf8_lossy(&m.tokenizer.token_bytes(t)).into_owned();
        assert_eq!(tokens[i], text.as_str(), "token {i}");
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(
            (got - ls[t as usize]).abs() < LOGPROB_TOL,
            "token {i}: {got}"
        );
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= N, "{top:?}");
        assert!((top[&text].as_f64().unwrap() - got).abs() < LOGPROB_TOL);
        assert_eq!(lp["text_offset"][i], offset);
        offset += m.tokenizer.token_bytes(t).len();
        s.prefill(&[t], 1).unwrap();
    }
    let mut b = body.clone();
    b["logprobs"] = json!(21);
    let r = post(&c, format!("{base}/v1/completions"), &b, "request").await;
    let e = expect_error(r, 400, "logprobs 21").await;
    assert_eq!(e["error"]["param"], "logprobs");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_frequency_penalties_reach_generation() {
    const MAX_TOKENS: usize = 24;
    let (h, base) = start(cfg(1)).await;
    let c = client();
    // BOS alone: the tiny model's greedy answer repeats tokens, so penalties change it.
    let ids = vec![0u32];
    let plain = direct(&ids, MAX_TOKENS, &[]);
    // Each penalty on its own, so that one not reaching generation fails the test.
    for (presence, frequency) in [(0.5f32, 0.0f32), (0.0, 0.75)] {
        let penalized = SamplingParams {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..SamplingParams::greedy()
        };
        let want = direct_with(&ids, penalized, MAX_TOKENS, &[]);
        assert_ne!(
            want, plain,
            "precondition: {presence}/{frequency} change the answer"
        );
        let body = json!({"prompt": ids, "temperature": 0, "max_tokens": MAX_TOKENS,
                          "presence_penalty": presence, "frequency_penalty": frequency});
        let v: Value = post_json(&c, format!("{base}/v1/completions"), &body, "request").await;
        assert_eq!(v["choices"][0]["text"], want, "{presence}/{frequency}: {v}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_model_names_are_answered_to_and_reported() {
    let (h, base) = start(ServerConfig {
        served_model_names: vec!["gpt-4o-mini".into(), "amalia".into()],
        ..cfg(1)
    })
    .await;
    let c = client();
    let ask = |name: &str| {
        json!({"model": name, "messages": [{"role": "user", "content": "hi"}],
               "temperature": 0, "max_tokens": 2})
    };
    let url = format!("{base}/v1/chat/completions");
    for name in ["gpt-4o-mini", "amalia", "default"] {
        let v = post_json(&c, &url, &ask(name), name).await;
        assert_eq!(v["object"], "chat.completion", "{name}: {v}");
        assert_eq!(v["model"], "gpt-4o-mini", "the first name is reported: {v}");
    }
    // Names not served stay a 404, the file name included once others are given.
    let r = post(&c, &url, &ask(&model().name), "file name").await;
    assert_eq!(r.status(), 404);
    let m: Value = get_json(&c, format!("{base}/v1/models")).await;
    assert_eq!(m["data"][0]["id"], "gpt-4o-mini");
    h.shutdown().await;
}

/// The value of a sample line of `/metrics` (`name` with its labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_cache_hits_and_latencies() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let url = format!("{base}/v1/chat/completions");
    // The same prompt twice: the second reuses the slot's cached prefix.
    let mut usage = Vec::new();
    for stream in [false, false, true] {
        let mut body = chat_body("Tell me about the sea.", 8, stream);
        body["stream_options"] = json!({"include_usage": true});
        let r = post(&c, &url, &body, "chat").await;
        let u = if stream {
            let ev = sse(r).await;
            let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
            last["usage"].clone()
        } else {
            r.json::<Value>().await.unwrap()["usage"].clone()
        };
        usage.push(u);
    }
    let bad = post(&c, &url, &json!({"messages": []}), "bad").await;
    assert_eq!(bad.status(), 400);
    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let t = r.text().await.unwrap();
    let sum = |k: &str| usage.iter().map(|u| u[k].as_u64().unwrap()).sum::<u64>() as f64;
    let cached: f64 = usage
        .iter()
        .map(|u| {
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        })
        .sum::<u64>() as f64;
    assert!(
        cached > 0.0,
        "the repeated prompt reused the cache: {usage:?}"
    );
    assert_eq!(metric(&t, "fado:prompt_tokens_total"), sum("prompt_tokens"));
    assert_eq!(
        metric(&t, "fado:generation_tokens_total"),
        sum("completion_tokens")
    );
    assert_eq!(
        metric(&t, "fado:prefix_cache_queries_total"),
        sum("prompt_tokens")
    );
    assert_eq!(metric(&t, "fado:prefix_cache_hits_total"), cached);
    let finished: f64 = ["stop", "length"]
        .iter()
        .filter_map(|r| {
            let name = format!("fado:request_success_total{{finished_reason=\"{r}\"}}");
            t.contains(&name).then(|| metric(&t, &name))
        })
        .sum();
    assert_eq!(finished, 3.0, "{t}");
    assert_eq!(metric(&t, "fado:time_to_first_token_seconds_count"), 3.0);
    assert_eq!(metric(&t, "fado:e2e_request_latency_seconds_count"), 3.0);
    assert_eq!(metric(&t, "fado:request_queue_time_seconds_count"), 3.0);
    assert!(metric(&t, "fado:inter_token_latency_seconds_count") >= 3.0);
    assert_eq!(metric(&t, "fado:num_requests_running"), 0.0);
    assert_eq!(metric(&t, "fado:num_requests_waiting"), 0.0);
    // One slot of CTX rows holds the last conversation.
    let kv = metric(&t, "fado:kv_cache_usage_perc");
    assert!(kv > 0.0 && kv <= 1.0, "{kv}");
    h.shutdown().await;
}

/// Six requests sharing a long system prompt, one after another on four slots: whichever slot
/// takes a request, it prefills only what no idle slot holds — a slot without the prefix
/// copies it from one that has it — and the answers equal fresh sessions' (the copied rows
/// are the right ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_system_prompt_is_prefilled_once_across_slots() {
    let (h, base) = start(cfg(4)).await;
    let c = client();
    let system = "You are a museum guide in Lisbon. ".repeat(10);
    let questions = [
        "apples?", "rivers?", "tiles?", "trams?", "fado?", "bridges?",
    ];
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        let msgs = vec![
            Message::new("system", system.as_str()),
            Message::new("user", *q),
        ];
        let ids = encode_chat(&model(), &msgs, true).unwrap();
        let body = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
            "temperature": 0, "max_tokens": 6});
        let v = post_json(&c, format!("{base}/v1/chat/completions"), &body, q).await;
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or_else(|| panic!("request {i}: {v}")) as usize;
        let lcp = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let expect = prompts.iter().map(|p| lcp(p, &ids)).max().unwrap_or(0);
        assert!(
            i == 0 || expect > 100,
            "the system prompt is long: {expect}"
        );
        assert_eq!(cached, expect.min(ids.len() - 1), "request {i}: {v}");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            direct(&ids, 6, &[]),
            "request {i}"
        );
        prompts.push(ids);
    }
    h.shutdown().await;
}

/// `n` answers to one prompt: each is what a fresh session samples with seed + its index, the
/// prompt is counted (and prefilled) once, and a stream carries every answer under its index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_answers_share_one_prefill_and_sample_their_own_seeds() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let prompt = "Once upon a time";
    let ids = encode_raw(&model(), prompt).unwrap();
    let params = |seed| SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.0,
        seed,
        ..SamplingParams::default()
    };
    let want: Vec<String> = (0..3)
        .map(|i| direct_with(&ids, params(5 + i), 10, &[]))
        .collect();
    assert!(
        want[0] != want[1] || want[1] != want[2],
        "the seeds differ: {want:?}"
    );
    let body = json!({"prompt": prompt, "n": 3, "temperature": 0.9, "top_k": 40, "top_p": 0.95,
        "min_p": 0.0, "seed": 5, "max_tokens": 10});
    let v = post_json(&c, format!("{base}/v1/completions"), &body, "n=3").await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{v}");
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert_eq!(ch["text"], want[i], "answer {i}");
    }
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    let generated: u64 = 30;
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= generated);

    // Streamed chat: every answer under its own index, each equal to the whole response's.
    let mut chat = chat_body("Tell me about the sea.", 8, true);
    chat["n"] = json!(2);
    chat["temperature"] = json!(0.8);
    chat["seed"] = json!(11);
    let ev = sse(post(&c, format!("{base}/v1/chat/completions"), &chat, "stream").await).await;
    let mut texts = [String::new(), String::new()];
    let mut finished = [false, false];
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        for ch in v["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            texts[i].push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            finished[i] |= !ch["finish_reason"].is_null();
        }
    }
    assert_eq!(finished, [true, true], "{ev:?}");
    chat["stream"] = json!(false);
    let v = post_json(&c, format!("{base}/v1/chat/completions"), &chat, "whole").await;
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(v["choices"][i]["message"]["content"], *t, "answer {i}");
    }
    h.shutdown().await;
}
