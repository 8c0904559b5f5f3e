//! Constrained decoding end to end on SmolLM2-135M-Instruct (the default model): ten JSON
//! schemas of different shapes at temperature 0 and 0.7, every completed answer parsed and
//! validated with an independent JSON-schema validator (boon); penalties and log-probabilities
//! with a constraint; a Lark grammar; errors that name the problem; a schema that cannot be
//! finished within max_tokens ends with `length`; `fado run --json-schema`; and the same
//! through `fado serve`: `response_format` (json_schema, json_object) on chat and completions,
//! forced and automatic tool calls with their round trip, and the 400s for bad schemas/tools.
//! Needs the default model (`scripts/fetch-default-model.sh` or FADO_DEFAULT_MODEL).

mod common;
use common::*;
#[path = "common/server.rs"]
mod server_common;

use std::sync::{Arc, OnceLock};

use fado::chat_template::Message;
use fado::constrain::GrammarSpec;
use fado::generate::{
    encode_chat, generate_text, generate_text_reusing, generate_text_with_logprobs, TextRequest,
};
use fado::model::Model;
use fado::sampling::SamplingParams;
use fado::session::{FinishReason, Session};
use serde_json::{json, Value};

/// Tokens per answer: the schemas bound their strings and arrays, so a completed answer fits.
const MAX_TOKENS: usize = 64;

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| load(default_model())).clone()
}

/// Ten shapes: nested objects, arrays with min/max items, enums, bounded integers, required
/// and optional fields, patterns, a top-level array, const/null/boolean.
fn schemas() -> Vec<(&'static str, &'static str, Value)> {
    let s = |max: u32| json!({"type": "string", "maxLength": max});
    vec![
        (
            "person",
            "Describe a fictional person.",
            json!({
            "type": "object",
            "properties": {"name": s(24), "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"], "additionalProperties": false}),
        ),
        (
            "nested",
            "Give a user with an address.",
            json!({
            "type": "object",
            "properties": {"user": {"type": "object",
                "properties": {"name": s(20), "address": {"type": "object",
                    "properties": {"city": s(20), "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": false}},
                "required": ["name", "address"], "additionalProperties": false}},
            "required": ["user"], "additionalProperties": false}),
        ),
        (
            "tags",
            "List a few tags for a blog post about cooking.",
            json!({
            "type": "object",
            "properties": {"tags": {"type": "array", "items": s(12), "minItems": 2, "maxItems": 4}},
            "required": ["tags"], "additionalProperties": false}),
        ),
        (
            "enums",
            "Pick a t-shirt.",
            json!({
            "type": "object",
            "properties": {"color": {"enum": ["red", "green", "blue"]},
                           "size": {"type": "string", "enum": ["S", "M", "L", "XL"]}},
            "required": ["color", "size"], "additionalProperties": false}),
        ),
        (
            "bounded integers",
            "Give a point and a year.",
            json!({
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": -10, "maximum": 10},
                           "y": {"type": "integer", "exclusiveMinimum": 0, "maximum": 99},
                           "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
            "required": ["x", "y", "year"], "additionalProperties": false}),
        ),
        (
            "optional fields",
            "Describe a book.",
            json!({
            "type": "object",
            "properties": {"title": s(30), "pages": {"type": "integer", "minimum": 1, "maximum": 5000},
                           "read": {"type": "boolean"}},
            "required": ["title"], "additionalProperties": false}),
        ),
        (
            "patterns",
            "Give a flight code and a date.",
            json!({
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
                           "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}},
            "required": ["code", "date"], "additionalProperties": false}),
        ),
        (
            "array of objects",
            "List up to three tasks.",
            json!({
            "type": "object",
            "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}, "done": {"type": "boolean"}},
                "required": ["id", "done"], "additionalProperties": false}}},
            "required": ["tasks"], "additionalProperties": false}),
        ),
        (
            "top-level array",
            "Give three numbers.",
            json!({
            "type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1000},
            "minItems": 3, "maxItems": 3}),
        ),
        (
            "const, null, boolean",
            "Report a status.",
            json!({
            "type": "object",
            "properties": {"version": {"const": 2}, "ok": {"type": "boolean"},
                           "error": {"type": ["string", "null"], "maxLength": 20}},
            "required": ["version", "ok", "error"], "additionalProperties": false}),
        ),
    ]
}

fn prompt(model: &Model, task: &str) -> Vec<u32> {
    let msg = format!("{task} Answer in JSON.");
    encode_chat(model, &[Message::new("user", msg)], true).unwrap()
}

fn params(model: &Model, schema: &Value, temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: 7,
        constraint: Some(
            model
                .constraint(GrammarSpec::JsonSchema(schema.clone()))
                .expect("schema compiles"),
        ),
        ..Default::default()
    }
}

/// Err(message) when `text` is not JSON or not valid under `schema` (boon, draft 2020-12).
fn validate(schema: &Value, text: &str) -> Result<(), String> {
    let instance: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut schemas = boon::Schemas::new();
    let mut c = boon::Compiler::new();
    c.add_resource("mem:///schema.json", schema.clone())
        .map_err(|e| format!("{e:#}"))?;
    let idx = c
        .compile("mem:///schema.json", &mut schemas)
        .map_err(|e| format!("schema: {e:#}"))?;
    schemas
        .validate(&instance, idx)
        .map_err(|e| format!("{e:#}"))
}

/// Every schema at `temperature`: completed answers (finish `stop`) must validate; returns how
/// many completed.
fn run_all(temperature: f32) -> usize {
    let m = model();
    let mut session = Session::new(m.clone(), 512).unwrap();
    let mut completed = 0;
    for (name, task, schema) in schemas() {
        let req = TextRequest {
            params: params(&m, &schema, temperature),
            max_tokens: MAX_TOKENS,
            stop: Vec::new(),
        };
        // The chat template's system prompt is shared: reusing it keeps prefill short.
        let out =
            generate_text_reusing(&mut session, &prompt(&m, task), &req, &mut |_| true).unwrap();
        let g = &out.generation;
        eprintln!(
            "[t {temperature}] {name}: {:?} in {} tokens: {}",
            g.finish_reason,
            g.tokens.len(),
            out.text
        );
        match g.finish_reason {
            FinishReason::Stop => {
                if let Err(e) = validate(&schema, &out.text) {
                    panic!(
                        "[t {temperature}] {name}: completed answer invalid: {e}\n{}",
                        out.text
                    );
                }
                completed += 1;
            }
            FinishReason::Length => assert_eq!(g.tokens.len(), MAX_TOKENS, "{name}"),
            FinishReason::Cancelled => panic!("{name}: cancelled"),
        }
    }
    completed
}

#[test]
fn ten_schemas_greedy_complete_and_validate() {
    let done = run_all(0.0);
    assert_eq!(
        done, 10,
        "greedy: every schema should complete within {MAX_TOKENS} tokens"
    );
}

#[test]
fn ten_schemas_sampled_complete_and_validate() {
    let done = run_all(0.7);
    assert!(done >= 8, "temperature 0.7: only {done} of 10 completed");
}

#[test]
fn penalties_and_logprobs_work_under_a_constraint() {
    let m = model();
    let (_, task, schema) = schemas().swap_remove(2);
    let mut session = Session::new(m.clone(), 512).unwrap();
    let mut p = params(&m, &schema, 0.7);
    p.repeat_penalty = 1.3;
    p.presence_penalty = 0.5;
    let req = TextRequest {
        params: p,
        max_tokens: MAX_TOKENS,
        stop: Vec::new(),
    };
    let out = generate_text_with_logprobs(
        &mut session,
        &prompt(&m, task),
        &req,
        Some(3),
        &mut |_, _| true,
    )
    .unwrap();
    assert_eq!(
        out.generation.finish_reason,
        FinishReason::Stop,
        "{}",
        out.text
    );
    validate(&schema, &out.text).unwrap();
    let lps = &out.logprobs;
    assert_eq!(
        lps.len(),
        out.generation.tokens.len(),
        "one entry per token"
    );
    for lp in lps {
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite(), "{lp:?}");
    }
}

#[test]
fn lark_grammar_constrains_the_output() {
    let m = model();
    let lark = r#"start: "The answer is " /[0-9]{1,3}/ "."
"#;
    let c = m.constraint(GrammarSpec::Lark(lark.into())).unwrap();
    let req = TextRequest {
        params: SamplingParams {
            constraint: Some(c),
            ..Default::default()
        },
        max_tokens: 20,
        stop: Vec::new(),
    };
    let mut session = Session::new(m.clone(), 256).unwrap();
    let out = generate_text(
        &mut session,
        &prompt(&m, "What is 6 times 7?"),
        &req,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(out.generation.finish_reason, FinishReason::Stop);
    let n = out
        .text
        .strip_prefix("The answer is ")
        .and_then(|r| r.strip_suffix('.'))
        .unwrap_or_else(|| panic!("{:?}", out.text));
    assert!(
        !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()),
        "{n}"
    );
}

#[test]
fn bad_schemas_and_grammars_are_errors_naming_the_problem() {
    let m = model();
    let cases = [
        (GrammarSpec::JsonSchema(json!({"type": "strng"})), "strng"),
        (
            GrammarSpec::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1})),
            "minimum",
        ),
        (
            GrammarSpec::JsonSchema(json!({"$ref": "#/$defs/nope"})),
            "nope",
        ),
        (
            GrammarSpec::JsonSchema(json!([1, 2])),
            "object or a boolean",
        ),
        (GrammarSpec::Lark("start: foo\n".into()), "foo"),
        (GrammarSpec::Lark("start: /[a-/\n".into()), "regex"),
    ];
    for (spec, needle) in cases {
        let kind = spec.kind();
        let e = m.constraint(spec).expect_err(needle).to_string();
        assert!(e.contains(needle), "{kind}: {e:?} should name {needle:?}");
        assert!(e.contains(&format!("invalid {kind}")), "{e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
}

#[test]
fn schema_that_cannot_finish_within_max_tokens_ends_with_length() {
    let m = model();
    let schema = json!({"type": "array", "items": {"type": "string", "minLength": 5},
                        "minItems": 40});
    let req = TextRequest {
        params: params(&m, &schema, 0.0),
        max_tokens: 12,
        stop: Vec::new(),
    };
    let mut session = Session::new(m.clone(), 256).unwrap();
    let out = generate_text(&mut session, &prompt(&m, "List words."), &req, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(out.generation.finish_reason, FinishReason::Length);
    assert_eq!(out.generation.tokens.len(), 12);
    assert!(
        serde_json::from_str::<Value>(&out.text).is_err(),
        "{}",
        out.text
    );
}

#[test]
fn cli_run_with_json_schema_prints_valid_json_and_names_bad_files() {
    let dir = scratch("constrained", "cli");
    std::fs::create_dir_all(&*dir).unwrap();
    let (_, task, schema) = schemas().swap_remove(3);
    let good = dir.join("shirt.json");
    std::fs::write(&good, schema.to_string()).unwrap();
    let fado = env!("CARGO_BIN_EXE_fado");
    let model = default_model();
    let run = |file: &std::path::Path, flag: &str| {
        std::process::Command::new(fado)
            .args(["run", "--chat", "--json", "--temperature", "0", "-n", "60"])
            .arg("-m")
            .arg(&model)
            .arg(flag)
            .arg(file)
            .args(["-p", &format!("{task} Answer in JSON.")])
            .output()
            .unwrap()
    };
    let out = run(&good, "--json-schema");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    assert_eq!(v["finish_reason"], "stop", "{v}");
    validate(&schema, v["text"].as_str().unwrap()).unwrap();

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type": "object", "properties": {"a": {"type": "strng"}}}"#,
    )
    .unwrap();
    let out = run(&bad, "--json-schema");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("strng"), "{err}");

    let lark = dir.join("g.lark");
    std::fs::write(&lark, "start: missing_rule\n").unwrap();
    let out = run(&lark, "--grammar");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("g.lark") && err.contains("missing_rule"),
        "{err}"
    );
}

// ---- The same through the server (`fado serve`'s OpenAI API) ----

fn serve_cfg() -> fado::server::ServerConfig {
    fado::server::ServerConfig {
        parallel: 1,
        ctx: 1024,
        ..Default::default()
    }
}

/// SmolLM2 on a loaded 2-core lavapipe machine takes longer per request than the tiny model
/// the common client's timeout is sized for.
fn slow_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .expect("http client")
}

fn chat_request(task: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": format!("{task} Answer in JSON.")}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_response_format_answers_validate_and_equal_direct_generation() {
    let m = model();
    let (h, base) = server_common::start_with(m.clone(), serve_cfg()).await;
    let c = slow_client();
    let url = format!("{base}/v1/chat/completions");
    let (name, task, schema) = schemas().swap_remove(0);
    let rf = json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": true}}});
    let v = server_common::post_json(&c, &url, &chat_request(task, rf.clone()), name).await;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    validate(&schema, text).unwrap();
    // Greedy under the same constraint, directly: the same text.
    let req = TextRequest {
        params: params(&m, &schema, 0.0),
        max_tokens: MAX_TOKENS,
        stop: Vec::new(),
    };
    let mut session = Session::new(m.clone(), 1024).unwrap();
    let want = generate_text(&mut session, &prompt(&m, task), &req, &mut |_| true).unwrap();
    assert_eq!(text, want.text);
    // Streamed: the same text in pieces.
    let mut body = chat_request(task, rf);
    body["stream"] = json!(true);
    let ev = server_common::sse(server_common::post(&c, &url, &body, "stream").await).await;
    assert_eq!(server_common::stream_text(&ev), want.text);

    // json_object on completions: a JSON object.
    let body = json!({"prompt": "A JSON object describing a cat: ", "temperature": 0,
        "max_tokens": MAX_TOKENS, "response_format": {"type": "json_object"}});
    let v = server_common::post_json(&c, format!("{base}/v1/completions"), &body, "cmpl").await;
    let text = v["choices"][0]["text"].as_str().expect("text");
    if v["choices"][0]["finish_reason"] == "stop" {
        let o: Value = serde_json::from_str(text).expect("a completed json_object is JSON");
        assert!(o.is_object(), "{text}");
    } else {
        assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
    }
    h.shutdown().await;
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20},
                               "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
            "description": "Current local time in a time zone",
            "parameters": {"type": "object",
                "properties": {"timezone": {"type": "string", "enum": ["Europe/Lisbon", "UTC"]}},
                "required": ["timezone"], "additionalProperties": false}}}
    ])
}

/// The call in a whole response, checked against its function's schema.
fn checked_call(v: &Value, tools: &Value) -> Value {
    let ch = &v["choices"][0];
    assert_eq!(ch["finish_reason"], "tool_calls", "{v}");
    assert_eq!(ch["message"]["content"], Value::Null, "{v}");
    let call = ch["message"]["tool_calls"][0].clone();
    assert_eq!(call["type"], "function", "{v}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
    let name = call["function"]["name"].as_str().unwrap();
    let decl = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == name)
        .unwrap_or_else(|| panic!("undeclared function {name}"));
    let args = call["function"]["arguments"]
        .as_str()
        .expect("arguments as a string");
    validate(&decl["function"]["parameters"], args).unwrap();
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tool_calls_are_forced_parsed_streamed_and_answered() {
    let m = model();
    let (h, base) = server_common::start_with(m.clone(), serve_cfg()).await;
    let c = slow_client();
    let url = format!("{base}/v1/chat/completions");
    let tools = weather_tools();
    let question = "What is the weather like in Lisbon right now?";
    let ask = |choice: Value, stream: bool| {
        json!({"messages": [{"role": "user", "content": question}], "tools": tools,
               "tool_choice": choice, "temperature": 0, "max_tokens": 60, "stream": stream})
    };
    // Required: some declared function, valid arguments.
    let v = server_common::post_json(&c, &url, &ask(json!("required"), false), "required").await;
    let call = checked_call(&v, &tools);
    // Named: that function.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let v = server_common::post_json(&c, &url, &ask(named, false), "named").await;
    assert_eq!(checked_call(&v, &tools)["function"]["name"], "get_time");

    // Streamed: the call arrives as delta.tool_calls, then finish_reason tool_calls.
    let ev =
        server_common::sse(server_common::post(&c, &url, &ask(json!("required"), true), "s").await)
            .await;
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["tool_calls"].is_null())
        .collect();
    assert_eq!(deltas.len(), 1, "{ev:?}");
    let d = &deltas[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(d["index"], 0);
    assert_eq!(
        d["function"], call["function"],
        "stream and whole answers differ"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(
        server_common::stream_text(&ev),
        "",
        "a forced call has no text"
    );

    // The round trip: the call, the tool's answer, and the model replies.
    let follow = json!({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temperature\": 18, \"sky\": \"clear\"}"}],
        "tools": tools, "temperature": 0, "max_tokens": 16});
    let v = server_common::post_json(&c, &url, &follow, "follow-up").await;
    let ch = &v["choices"][0];
    eprintln!("follow-up: {ch}");
    assert!(
        ch["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
            || ch["finish_reason"] == "tool_calls",
        "{v}"
    );
    // Streamed with `auto`, text passes through the tool-call watch unchanged.
    let mut streamed = follow.clone();
    streamed["stream"] = json!(true);
    let ev =
        server_common::sse(server_common::post(&c, &url, &streamed, "auto stream").await).await;
    if ch["finish_reason"] != "tool_calls" {
        assert_eq!(
            server_common::stream_text(&ev),
            ch["message"]["content"].as_str().unwrap()
        );
    }
    // tool_choice none: the same request answers text, never parsed calls.
    let mut none = follow.clone();
    none["tool_choice"] = json!("none");
    let v = server_common::post_json(&c, &url, &none, "none").await;
    assert!(v["choices"][0]["message"]["tool_calls"].is_null(), "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_bad_schemas_and_tools_get_400s_and_unfinished_answers_say_length() {
    let m = model();
    let (h, base) = server_common::start_with(m.clone(), serve_cfg()).await;
    let c = slow_client();
    let url = format!("{base}/v1/chat/completions");
    let bad_int = json!({"type": "integer", "minimum": 5, "maximum": 1});
    let tool = |params: Value| json!([{"type": "function", "function": {"name": "f", "parameters": params}}]);
    let cases = [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad_int}}}),
            "response_format",
            "minimum",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}}),
            "response_format",
            "strng",
        ),
        (
            json!({"tools": tool(json!({"type": "object", "properties": {"n": bad_int}, "required": ["n"]}))}),
            "tools[0].function.parameters",
            "unsatisfiable",
        ),
        (
            json!({"tools": [{"type": "function"}]}),
            "tools[0].function",
            "function",
        ),
        (
            json!({"tools": tool(json!({"type": "object"})), "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
            "\"g\"",
        ),
    ];
    for (extra, param, needle) in cases {
        let r = server_common::post(&c, &url, &chat_request("Hi.", extra.clone()), param).await;
        assert_eq!(r.status(), 400, "{extra}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{param}: {msg}");
    }
    // A schema that cannot be finished in 12 tokens: `length`, and the text is not JSON.
    let schema =
        json!({"type": "array", "items": {"type": "string", "minLength": 5}, "minItems": 40});
    let mut body = chat_request(
        "List words.",
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}}),
    );
    body["max_tokens"] = json!(12);
    let v = server_common::post_json(&c, &url, &body, "length").await;
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
    assert_eq!(v["usage"]["completion_tokens"], 12);
    // The server still answers.
    let ok = server_common::post(
        &c,
        &url,
        &chat_request("Hi.", json!({"max_tokens": 2})),
        "ok",
    )
    .await;
    assert_eq!(ok.status(), 200);
    h.shutdown().await;
}
