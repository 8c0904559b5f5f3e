//! The server's batched decode (`--parallel` > 1: the slots' decode steps run as one batched
//! step): a mix of requests — penalties, log-probabilities, a stop string, seeded sampling —
//! sent at once, next to streams that disconnect mid-way, gets exactly what each request gets
//! when it runs alone on the same server; and a second request sharing a 500-token system
//! prompt prefills only its own suffix.

mod common;
#[path = "common/server.rs"]
mod server_common;
use server_common::*;

use fado::server::ServerConfig;
use futures::StreamExt;
use serde_json::{json, Value};

/// The requests of the mix: (endpoint, body).
fn mix() -> Vec<(&'static str, Value)> {
    let chat = |text: &str, extra: Value| {
        let mut b = chat_body(text, 14, false);
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        ("chat/completions", b)
    };
    vec![
        chat("Tell me about the sea.", json!({})),
        chat(
            "List some fruits, many of them.",
            json!({"presence_penalty": 0.6, "frequency_penalty": 0.4, "repeat_penalty": 1.2}),
        ),
        chat(
            "What is a tram?",
            json!({"logprobs": true, "top_logprobs": 3}),
        ),
        chat(
            "Count slowly.",
            json!({"temperature": 1.5, "seed": 42, "top_p": 1.0, "top_k": 0, "min_p": 0.0}),
        ),
        (
            "completions",
            json!({"prompt": "Once upon a time there", "max_tokens": 16, "temperature": 0,
                "stop": [" the"]}),
        ),
    ]
}

/// What a test compares of an answer: its text and, when present, its log-probabilities.
fn answer(v: &Value) -> (String, Vec<(String, f64)>) {
    let c = &v["choices"][0];
    let text = c["message"]["content"]
        .as_str()
        .or(c["text"].as_str())
        .unwrap_or_else(|| panic!("no text: {v}"))
        .to_string();
    let lps = c["logprobs"]["content"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["token"].as_str().unwrap().to_string(),
                        e["logprob"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (text, lps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_requests_under_load_equal_each_run_alone() {
    let (h, base) = start(cfg(4)).await;
    let c = client();
    let url = |e: &str| format!("{base}/v1/{e}");
    let mut alone = Vec::new();
    for (e, b) in mix() {
        alone.push(answer(&post_json(&c, url(e), &b, e).await));
    }
    let greedy = mix()[3].1.clone();
    let greedy = json!({"messages": greedy["messages"], "temperature": 0, "max_tokens": 14});
    let greedy = answer(&post_json(&c, url("chat/completions"), &greedy, "greedy").await);
    assert_ne!(
        alone[3].0, greedy.0,
        "the sampled request must differ from greedy"
    );
    assert!(
        alone[4].0.len() < 60 && !alone[4].0.contains(" the"),
        "the stop string cut the completion: {:?}",
        alone[4].0
    );

    // Everything at once, twice over, with two streams that leave after their first chunks.
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (i, (e, b)) in mix().into_iter().enumerate() {
            let (c, u) = (client(), url(e));
            tasks.push(tokio::spawn(async move {
                let v = post_json(&c, u, &b, e).await;
                (round, i, answer(&v))
            }));
        }
    }
    for _ in 0..2 {
        let (c, u) = (client(), url("chat/completions"));
        tokio::spawn(async move {
            let r = post(
                &c,
                u,
                &chat_body("Write a very long story.", 200, true),
                "s",
            )
            .await;
            let mut s = r.bytes_stream();
            for _ in 0..3 {
                s.next().await;
            }
        });
    }
    for t in tasks {
        let (round, i, got) = t.await.expect("client task");
        let want = &alone[i];
        assert_eq!(got.0, want.0, "round {round}, request {i}: the text");
        assert_eq!(got.1.len(), want.1.len(), "request {i}: log-probabilities");
        for (g, w) in got.1.iter().zip(&want.1) {
            assert_eq!(g.0, w.0, "request {i}");
            assert!((g.1 - w.1).abs() < 1e-3, "request {i}: {g:?} vs {w:?}");
        }
    }
    // The disconnected streams end as cancelled and free their slots.
    let v = wait_health(&c, &base, REQUEST_TIMEOUT, |v| {
        v["slots"]["busy"] == 0 && v["requests"]["cancelled"] == 2
    })
    .await;
    assert_eq!(v["requests"]["completed"], 16, "{v}");
    let (steps, rows) = (&v["batched"]["steps"], &v["batched"]["rows"]);
    assert!(
        rows.as_u64().unwrap() as f64 >= 1.5 * steps.as_u64().unwrap() as f64,
        "the slots' steps were hardly batched: {v}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_sharing_a_500_token_system_prompt_prefills_only_its_suffix() {
    // Past the fixture's trained context (a warning), which only the numbers here care about.
    let (h, base) = start(ServerConfig {
        ctx: 1024,
        ..cfg(2)
    })
    .await;
    let c = client();
    let system: String = (0..125)
        .map(|i| format!("rule {i} "))
        .collect::<Vec<_>>()
        .join(". ");
    let ask = |q: &str| {
        json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q}],
            "temperature": 0, "max_tokens": 4})
    };
    let url = format!("{base}/v1/chat/completions");
    let first = post_json(&c, url.clone(), &ask("Which rule is first?"), "first").await;
    let second = post_json(&c, url, &ask("And the last?"), "second").await;
    let prompt = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    assert!(prompt(&first) > 500, "the system prompt is long: {first}");
    assert_eq!(cached(&first).unwrap_or(0), 0, "{first}");
    let reused = cached(&second).unwrap_or(0);
    assert!(
        reused >= 500,
        "the second request reused {reused} tokens: {second}"
    );
    // Only the part after the shared prefix was prefilled.
    assert!(prompt(&second) - reused < 30, "{second}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_request_uses_the_pool_beyond_ctx_while_a_short_one_runs_beside_it() {
    // Two slots of 128 tokens each share one pool: a request of 300 tokens (over --ctx) takes
    // most of it while the other slot answers a short one, each equal to the same request on
    // a one-slot server whose own context holds it.
    let (h, base) = start(ServerConfig { ctx: 128, ..cfg(2) }).await;
    let (h1, base1) = start(ServerConfig { ctx: 512, ..cfg(1) }).await;
    let c = client();
    let models = get_json(&c, format!("{base}/v1/models")).await;
    let limit = models["data"][0]["context_length"]
        .as_u64()
        .expect("length");
    assert!(limit >= 2 * 128, "the pool's tokens: {models}");
    let long = json!({"prompt": "The history of Lisbon", "max_tokens": 300,
        "temperature": 0, "ignore_eos": true});
    let short = json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0});
    let url = format!("{base}/v1/completions");
    let (a, b) = tokio::join!(post_json(&c, url.clone(), &long, "long"), async {
        // Let the long one take its rows first.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        post_json(&c, url.clone(), &short, "short").await
    });
    assert_eq!(a["usage"]["completion_tokens"], 300, "{a}");
    assert_eq!(a["choices"][0]["finish_reason"], "length", "{a}");
    assert!(b["choices"][0]["text"].is_string(), "{b}");
    let url1 = format!("{base1}/v1/completions");
    let a1 = post_json(&c, url1.clone(), &long, "long alone").await;
    let b1 = post_json(&c, url1, &short, "short alone").await;
    assert_eq!(a["choices"][0]["text"], a1["choices"][0]["text"]);
    assert_eq!(b["choices"][0]["text"], b1["choices"][0]["text"]);
    // A prompt longer than the whole pool is refused, naming the limit.
    let huge = json!({"prompt": "word ".repeat(limit as usize + 10), "max_tokens": 1});
    let r = post(&c, url, &huge, "huge").await;
    let e = expect_error(r, 400, "a prompt over the pool").await;
    assert_eq!(e["error"]["code"], "context_length_exceeded", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&limit.to_string())),
        "{e}"
    );
    h.shutdown().await;
    h1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_does_not_fit_beside_a_running_one_waits_for_it() {
    // --parallel 2 --ctx 128: a 300-token answer holds most of the pool, so a second request
    // for 150 more tokens cannot fit beside it: it waits (it is neither refused nor cut short)
    // and runs once the first is done.
    let (h, base) = start(ServerConfig { ctx: 128, ..cfg(2) }).await;
    let c = client();
    let long = json!({"prompt": "The history of Lisbon", "max_tokens": 300,
        "temperature": 0, "ignore_eos": true});
    let second = json!({"prompt": "Once upon a time", "max_tokens": 150,
        "temperature": 0, "ignore_eos": true});
    let url = format!("{base}/v1/completions");
    let t0 = std::time::Instant::now();
    let (a, b) = tokio::join!(
        async {
            let v = post_json(&c, url.clone(), &long, "long").await;
            (v, t0.elapsed())
        },
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let v = post_json(&c, url.clone(), &second, "second").await;
            (v, t0.elapsed())
        }
    );
    assert_eq!(a.0["usage"]["completion_tokens"], 300, "{}", a.0);
    assert_eq!(b.0["usage"]["completion_tokens"], 150, "{}", b.0);
    assert!(
        b.1 > a.1,
        "the second ended at {:?}, before the first at {:?}",
        b.1,
        a.1
    );
    let st = health(&c, &base).await;
    assert_eq!(st["requests"]["failed"], 0, "{st}");
    // They never decoded in the same step.
    assert_eq!(st["batched"]["rows"], st["batched"]["steps"], "{st}");
    h.shutdown().await;
}
