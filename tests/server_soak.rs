//! Soak test of `fado serve` on loopback with the tiny fixture model: 4 slots, a bounded queue,
//! 64 concurrent clients per round for several rounds, mixing valid streamed and whole
//! requests (plain greedy, with penalties, with logprobs, constrained by a JSON schema) with
//! clients that disconnect mid-stream, malformed JSON, oversized bodies, wrong field types,
//! unsatisfiable schemas and prompts longer than the context. Every valid request must answer exactly what a sequential run gives (temperature
//! 0), every invalid one a 4xx JSON error; the server must stay up, `/health` must be ok at the
//! end, and the process's resident memory must not grow across rounds after a warm-up round.
//!
//! Everything is seeded: a failure names the round, the client and the request kind, and
//! replays the same way.

mod common;
#[path = "common/server.rs"]
mod server_common;
use server_common::*;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::Rng;
use fado::constrain::GrammarSpec;
use fado::generate::{encode_chat, encode_raw};
use fado::sampling::SamplingParams;
use fado::server::ServerConfig;
use futures::StreamExt;
use serde_json::{json, Value};

const CLIENTS: usize = 64;
/// Rounds 0 and 1 warm up (pipelines, each slot's graphs — masked ones for schema requests
/// too —, allocator pools); memory is compared after round [`WARM_UP`] and after the last.
/// Ten rounds on lavapipe grew 6.0, 4.9, 1.4, 1.9, 1.1, 1.4, 0.6, 1.1, 0.2 MB round over round:
/// warm-up that flattens, not a leak (compiling a schema and taking its first mask 1,200 times
/// grew resident memory by 28 KiB).
const ROUNDS: usize = 5;
const WARM_UP: usize = 2;
const MAX_TOKENS: usize = 5;
const MAX_BODY: usize = 16 * 1024;
/// Resident-memory growth allowed between the end of round [`WARM_UP`] and the end of the
/// last round. Measured growth on lavapipe is printed; the slack covers allocator noise, not a
/// per-request leak (64 requests × 2 rounds × 48 KiB each would exceed it). Measured on
/// lavapipe: ~3.3 MiB.
const RSS_SLACK_KIB: u64 = 6 * 1024;
/// The whole soak must finish within this on the 2-core lavapipe machine.
const TIME_LIMIT: Duration = Duration::from_secs(180);

/// A valid generation request: which endpoint, which prompt, which extra parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Variant {
    Plain,
    Penalized,
    Logprobs,
    /// `response_format` with [`schema`].
    Schema,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Chat {
        prompt: usize,
        variant: Variant,
        stream: bool,
    },
    Completion {
        prompt: usize,
        variant: Variant,
        stream: bool,
    },
    /// A stream dropped after this many data events.
    Disconnect {
        prompt: usize,
        after: usize,
    },
    MalformedJson,
    Oversized,
    WrongType,
    BadSchema,
    TooLong,
}

const CHAT_PROMPTS: [&str; 4] = [
    "Tell me about the sea.",
    "What is two plus two?",
    "Escreve uma frase sobre Lisboa.",
    "List three colours.",
];
const COMPLETION_PROMPTS: [&str; 4] = [
    "Once upon a time",
    "The capital of Portugal is",
    "1, 2, 3,",
    "In the beginning",
];

fn params(v: Variant) -> SamplingParams {
    match v {
        Variant::Penalized => SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            repeat_penalty: 1.3,
            ..SamplingParams::greedy()
        },
        Variant::Plain | Variant::Logprobs => SamplingParams::greedy(),
        Variant::Schema => SamplingParams {
            constraint: Some(
                model()
                    .constraint(GrammarSpec::JsonSchema(schema()))
                    .expect("schema compiles"),
            ),
            ..SamplingParams::greedy()
        },
    }
}

/// The schema of [`Variant::Schema`] requests.
fn schema() -> Value {
    json!({"type": "object", "properties": {"word": {"type": "string", "maxLength": 8},
        "n": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["word", "n"]})
}

fn with_variant(mut body: Value, v: Variant, chat: bool) -> Value {
    match v {
        Variant::Plain => {}
        Variant::Penalized => {
            body["presence_penalty"] = json!(0.5);
            body["frequency_penalty"] = json!(0.5);
            body["repeat_penalty"] = json!(1.3);
        }
        Variant::Logprobs if chat => {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(3);
        }
        Variant::Logprobs => body["logprobs"] = json!(3),
        Variant::Schema => {
            body["response_format"] =
                json!({"type": "json_schema", "json_schema": {"name": "soak", "schema": schema()}})
        }
    }
    body
}

fn pick(rng: &mut Rng) -> Kind {
    let prompt = rng.below(4) as usize;
    let variant = [
        Variant::Plain,
        Variant::Penalized,
        Variant::Logprobs,
        Variant::Schema,
    ][rng.below(4) as usize];
    let stream = rng.below(2) == 1;
    match rng.below(16) {
        0..=4 => Kind::Chat {
            prompt,
            variant,
            stream,
        },
        5..=8 => Kind::Completion {
            prompt,
            variant,
            stream,
        },
        9..=10 => Kind::Disconnect {
            prompt,
            after: 1 + rng.below(3) as usize,
        },
        11 => Kind::MalformedJson,
        12 => Kind::Oversized,
        13 => Kind::WrongType,
        14 => Kind::BadSchema,
        _ => Kind::TooLong,
    }
}

/// The text of a whole response, or of a stream's chunks.
async fn answer_text(r: reqwest::Response, stream: bool, what: &str) -> String {
    assert_eq!(r.status(), 200, "{what}");
    if stream {
        let ev = sse(r).await;
        assert_eq!(
            ev.last().map(String::as_str),
            Some("[DONE]"),
            "{what}: {ev:?}"
        );
        stream_text(&ev)
    } else {
        let v: Value = r.json().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let c = &v["choices"][0];
        c["message"]["content"]
            .as_str()
            .or(c["text"].as_str())
            .unwrap_or_else(|| panic!("{what}: no text in {v}"))
            .to_string()
    }
}

type Refs = HashMap<(bool, usize, Variant), String>;

async fn run_client(c: reqwest::Client, base: String, kind: Kind, refs: &Refs, what: String) {
    let chat_url = format!("{base}/v1/chat/completions");
    let cmpl_url = format!("{base}/v1/completions");
    match kind {
        Kind::Chat {
            prompt,
            variant,
            stream,
        } => {
            let body = with_variant(
                chat_body(CHAT_PROMPTS[prompt], MAX_TOKENS, stream),
                variant,
                true,
            );
            let r = post(&c, &chat_url, &body, &what).await;
            let got = answer_text(r, stream, &what).await;
            assert_eq!(got, refs[&(true, prompt, variant)], "{what}");
        }
        Kind::Completion {
            prompt,
            variant,
            stream,
        } => {
            let body = with_variant(
                json!({"prompt": COMPLETION_PROMPTS[prompt], "temperature": 0,
                       "max_tokens": MAX_TOKENS, "stream": stream}),
                variant,
                false,
            );
            let r = post(&c, &cmpl_url, &body, &what).await;
            let got = answer_text(r, stream, &what).await;
            assert_eq!(got, refs[&(false, prompt, variant)], "{what}");
        }
        Kind::Disconnect { prompt, after } => {
            // Long enough that the drop happens mid-generation.
            let body = chat_body(CHAT_PROMPTS[prompt], 64, true);
            let r = post(&c, &chat_url, &body, &what).await;
            assert_eq!(r.status(), 200, "{what}");
            let mut s = r.bytes_stream();
            for _ in 0..after {
                if s.next().await.is_none() {
                    break;
                }
            }
            drop(s);
        }
        Kind::MalformedJson => {
            let r = c
                .post(chat_url)
                .header("content-type", "application/json")
                .body(r#"{"messages":[{"role":"user","content":"hi"}"#)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let v = expect_error(r, 400, &what).await;
            assert_eq!(v["error"]["code"], "invalid_json", "{what}");
        }
        Kind::Oversized => {
            let big = "x".repeat(MAX_BODY + 1024);
            let body = json!({"prompt": big, "max_tokens": 1});
            let r = post(&c, &cmpl_url, &body, &what).await;
            expect_error(r, 413, &what).await;
        }
        Kind::WrongType => {
            let body = json!({"messages": [{"role": "user", "content": "hi"}],
                              "max_tokens": "five"});
            let r = post(&c, &chat_url, &body, &what).await;
            let v = expect_error(r, 400, &what).await;
            assert_eq!(v["error"]["param"], "max_tokens", "{what}");
        }
        Kind::BadSchema => {
            let mut body = chat_body("hi", 4, false);
            body["response_format"] = json!({"type": "json_schema", "json_schema":
                {"name": "bad", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}});
            let r = post(&c, &chat_url, &body, &what).await;
            let v = expect_error(r, 400, &what).await;
            assert_eq!(v["error"]["param"], "response_format", "{what}");
        }
        Kind::TooLong => {
            // Over the whole KV pool, which one request may use: 4 slots of CTX tokens, each
            // share rounded up to whole granules of rows.
            let ids = vec![1u32; 8 * CTX];
            let body = json!({"prompt": ids, "max_tokens": 1});
            let r = post(&c, &cmpl_url, &body, &what).await;
            let v = expect_error(r, 400, &what).await;
            assert_eq!(v["error"]["code"], "context_length_exceeded", "{what}");
        }
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_mixing_valid_and_invalid_requests_for_four_rounds() {
    let t0 = Instant::now();
    // Sequential references at temperature 0, from fresh sessions.
    let m = model();
    let mut refs = Refs::new();
    for v in [
        Variant::Plain,
        Variant::Penalized,
        Variant::Logprobs,
        Variant::Schema,
    ] {
        for (i, p) in CHAT_PROMPTS.iter().enumerate() {
            let ids = encode_chat(&m, &user(p), true).unwrap();
            refs.insert((true, i, v), direct_with(&ids, params(v), MAX_TOKENS, &[]));
        }
        for (i, p) in COMPLETION_PROMPTS.iter().enumerate() {
            let ids = encode_raw(&m, p).unwrap();
            refs.insert((false, i, v), direct_with(&ids, params(v), MAX_TOKENS, &[]));
        }
    }
    let refs: &'static Refs = Box::leak(Box::new(refs));

    let (h, base) = start(ServerConfig {
        queue: CLIENTS,
        max_body: MAX_BODY,
        max_tokens_cap: 64,
        ..cfg(4)
    })
    .await;
    let probe = client();
    let mut rng = Rng::new(0x50a6);
    let mut rss = Vec::new();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let kind = pick(&mut rng);
            let name = match kind {
                Kind::Chat { .. } => "chat",
                Kind::Completion { .. } => "completion",
                Kind::Disconnect { .. } => "disconnect",
                Kind::MalformedJson => "malformed",
                Kind::Oversized => "oversized",
                Kind::WrongType => "wrong type",
                Kind::BadSchema => "bad schema",
                Kind::TooLong => "too long",
            };
            *counts.entry(name).or_default() += 1;
            let what = format!("round {round} client {i}: {kind:?}");
            tasks.push(tokio::spawn(run_client(
                client(),
                base.clone(),
                kind,
                refs,
                what,
            )));
        }
        for t in tasks {
            if let Err(e) = t.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        // Cancelled streams end at their next token; wait until every slot is idle.
        wait_health(&probe, &base, REQUEST_TIMEOUT, |v| {
            v["slots"]["busy"] == 0 && v["queue"]["waiting"] == 0
        })
        .await;
        rss.push(rss_kib());
        eprintln!(
            "round {round}: {:.1} s, VmRSS {} KiB",
            t0.elapsed().as_secs_f64(),
            rss[round]
        );
    }
    let v = health(&probe, &base).await;
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["requests"]["failed"], 0, "{v}");
    assert_eq!(v["requests"]["rejected"], 0, "{v}");
    eprintln!("requests by kind: {counts:?}; health at the end: {v}");
    for k in [
        "chat",
        "completion",
        "disconnect",
        "malformed",
        "oversized",
        "wrong type",
        "bad schema",
        "too long",
    ] {
        assert!(
            counts.get(k).copied().unwrap_or(0) > 0,
            "the seed never drew {k}"
        );
    }
    let growth = rss[ROUNDS - 1].saturating_sub(rss[WARM_UP]);
    assert!(
        growth <= RSS_SLACK_KIB,
        "resident memory grew {growth} KiB from round {WARM_UP} to round {} (allowed {RSS_SLACK_KIB} KiB): {rss:?}",
        ROUNDS - 1
    );
    h.shutdown().await;
    let took = t0.elapsed();
    eprintln!(
        "soak: {ROUNDS} rounds × {CLIENTS} clients in {:.1} s",
        took.as_secs_f64()
    );
    assert!(
        took < TIME_LIMIT,
        "the soak took {took:?} (limit {TIME_LIMIT:?})"
    );
}
