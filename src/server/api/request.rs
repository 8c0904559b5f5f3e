//! Request bodies: parsed field by field, each error naming its parameter; and the mapping
//! of a parsed request to what a slot runs ([`text_request`]).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::tools::{message_tool_calls, response_format_param, tool_choice_param, tools_param};
use super::{ApiError, Endpoint};
use crate::chat_template::Message;
use crate::constrain::GrammarSpec;
use crate::generate::TextRequest;
use crate::sampling::{SamplingParams, MAX_TOP_LOGPROBS};
use crate::server::ServerConfig;
use crate::session::{check_prompt, room_for_generation, PromptProblem};
use crate::tools::{Tool, ToolChoice};

/// The most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 16;

/// The most answers (`n`) one request may ask for.
pub const MAX_N: usize = 16;

pub(super) type Obj = Map<String, Value>;

/// Parse a request body into its top-level JSON object.
pub fn parse_object(body: &[u8]) -> Result<Obj, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "the request body is not valid JSON ({e}); send a JSON object"
        ))
        .code("invalid_json")
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid(format!(
            "the request body must be a JSON object, got {}",
            kind_of(&other)
        ))
        .code("invalid_json")),
    }
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional field of type `T`; `null` counts as absent.
fn field<T: DeserializeOwned>(obj: &Obj, name: &str) -> Result<Option<T>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            ApiError::invalid(format!("`{name}`: {e}"))
                .param(name)
                .code("invalid_type")
        }),
    }
}

/// A stop parameter: one string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Generation settings common to both endpoints.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// The `model` the request names, if any (checked against the served model later).
    pub model: Option<String>,
    /// `stream`: answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: end a stream with a usage chunk.
    pub include_usage: bool,
    /// Sampling as the request sets it, validated (temperature at most 2). Defaults follow
    /// OpenAI (temperature 1, top_p 1, presence and frequency penalties 0); the extensions
    /// `top_k` and `min_p` default to [`SamplingParams::default`]'s 40 and 0.05,
    /// `repeat_penalty` to 1 (off). `seed` is 0 unless given (see `seeded`).
    pub params: SamplingParams,
    /// The seed was given (otherwise the server picks one).
    pub seeded: bool,
    /// `max_completion_tokens`, else `max_tokens` (≥ 1); `None` means the server's cap.
    pub max_tokens: Option<usize>,
    /// Stop strings (at most [`MAX_STOP_STRINGS`], none empty).
    pub stop: Vec<String>,
    /// Report log-probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Completions' `echo`: the answer starts with the prompt, and with `logprobs` the prompt
    /// tokens' log-probabilities come first (the first one `null`), as vLLM answers.
    pub echo: bool,
    /// `response_format` `json_object` or `json_schema`: what the answer is constrained to.
    pub response_format: Option<GrammarSpec>,
    /// Answers to generate for the prompt (`n`, 1 to [`MAX_N`]).
    pub n: usize,
}

/// OpenAI's default temperature and top_p; top_k and min_p (extensions) default to Fado's CLI
/// values, as llama.cpp's server does.
fn gen_params(obj: &Obj, endpoint: Endpoint) -> Result<GenParams, ApiError> {
    let model = field::<String>(obj, "model")?;
    let stream = field::<bool>(obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => field::<bool>(o, "include_usage")
            .map_err(|e| e.param("stream_options.include_usage"))?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(format!(
                "`stream_options` must be an object, got {}",
                kind_of(v)
            ))
            .param("stream_options"))
        }
    };
    let n = field::<u32>(obj, "n")?.unwrap_or(1) as usize;
    if !(1..=MAX_N).contains(&n) {
        return Err(
            ApiError::invalid(format!("`n` = {n} is out of range (1 to {MAX_N})")).param("n"),
        );
    }
    let logprobs = logprobs_param(obj, endpoint)?;
    for p in ["functions", "function_call"] {
        if obj.get(p).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!(
                "`{p}` (deprecated by OpenAI) is not supported; declare functions with `tools` \
                 and choose with `tool_choice`"
            ))
            .param(p)
            .code("unsupported_parameter"));
        }
    }
    let response_format = response_format_param(obj)?;

    let d = SamplingParams::default();
    let seed = field::<u64>(obj, "seed")?;
    let params = SamplingParams {
        temperature: field(obj, "temperature")?.unwrap_or(1.0),
        top_p: field(obj, "top_p")?.unwrap_or(1.0),
        top_k: field(obj, "top_k")?.unwrap_or(d.top_k),
        min_p: field(obj, "min_p")?.unwrap_or(d.min_p),
        presence_penalty: field(obj, "presence_penalty")?.unwrap_or(0.0),
        frequency_penalty: field(obj, "frequency_penalty")?.unwrap_or(0.0),
        repeat_penalty: field(obj, "repeat_penalty")?.unwrap_or(1.0),
        seed: seed.unwrap_or(0),
        // vLLM's extension: generate up to the token limit whatever the end-of-sequence token
        // (benchmarks that need equal-length answers).
        ignore_eos: field(obj, "ignore_eos")?.unwrap_or(false),
        ..d
    };
    if params.temperature > 2.0 {
        return Err(ApiError::invalid(format!(
            "temperature = {} is out of range (expected in [0, 2])",
            params.temperature
        ))
        .param("temperature"));
    }
    params.validate().map_err(|msg| {
        let p = msg.split(' ').next().unwrap_or("").to_string();
        ApiError::invalid(msg).param(&p)
    })?;

    // Completions with `echo` may ask for no new token: only the prompt's log-probabilities.
    let echo = endpoint == Endpoint::Completion && field::<bool>(obj, "echo")?.unwrap_or(false);
    let mt = max_tokens_param(obj, echo)?;
    if echo && stream {
        return Err(ApiError::invalid("`echo` with `stream` is not supported")
            .param("echo")
            .code("unsupported_parameter"));
    }
    if echo && n > 1 {
        return Err(ApiError::invalid("`echo` with `n` > 1 is not supported")
            .param("echo")
            .code("unsupported_parameter"));
    }
    let stop = match field::<StopField>(obj, "stop").map_err(|_| {
        ApiError::invalid("`stop` must be a string or a list of strings")
            .param("stop")
            .code("invalid_type")
    })? {
        None => vec![],
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(format!(
            "`stop` has {} strings; at most {MAX_STOP_STRINGS} are allowed",
            stop.len()
        ))
        .param("stop"));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("`stop` strings may not be empty").param("stop"));
    }
    Ok(GenParams {
        model,
        stream,
        include_usage,
        params,
        seeded: seed.is_some(),
        max_tokens: mt.map(|v| v.min(usize::MAX as u64) as usize),
        stop,
        logprobs,
        echo,
        response_format,
        n,
    })
}

/// `max_completion_tokens`, else `max_tokens`: OpenAI's newer name wins over the deprecated
/// one; both are checked, so a malformed one is an error even when the other is given. 0 only
/// with `echo`.
fn max_tokens_param(obj: &Obj, echo: bool) -> Result<Option<u64>, ApiError> {
    let deprecated = field::<u64>(obj, "max_tokens")?;
    let (mt_name, mt) = match field::<u64>(obj, "max_completion_tokens")? {
        Some(v) => ("max_completion_tokens", Some(v)),
        None => ("max_tokens", deprecated),
    };
    if mt == Some(0) && !echo {
        return Err(ApiError::invalid(format!("`{mt_name}` must be at least 1")).param(mt_name));
    }
    Ok(mt)
}

/// Chat: `logprobs: bool` with `top_logprobs: 0..=20` (which needs `logprobs: true`).
/// Completions: `logprobs: 0..=20`, the number of alternatives.
fn logprobs_param(obj: &Obj, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    let too_many = |name: &str, n: u32| {
        ApiError::invalid(format!(
            "`{name}` = {n}: at most {MAX_TOP_LOGPROBS} alternatives per token are supported"
        ))
        .param(name)
    };
    match endpoint {
        Endpoint::Chat => {
            let on = field::<bool>(obj, "logprobs")?.unwrap_or(false);
            let top = field::<u32>(obj, "top_logprobs")?;
            match (on, top) {
                (_, Some(n)) if n as usize > MAX_TOP_LOGPROBS => Err(too_many("top_logprobs", n)),
                (false, Some(_)) => Err(ApiError::invalid(
                    "`top_logprobs` needs `logprobs: true` as well",
                )
                .param("top_logprobs")),
                (false, None) => Ok(None),
                (true, n) => Ok(Some(n.unwrap_or(0) as usize)),
            }
        }
        Endpoint::Completion => match field::<u32>(obj, "logprobs")? {
            Some(n) if n as usize > MAX_TOP_LOGPROBS => Err(too_many("logprobs", n)),
            n => Ok(n.map(|n| n as usize)),
        },
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// The conversation (at least one message; role `developer` becomes `system`; a list of
    /// text parts is concatenated).
    pub messages: Vec<Message>,
    /// Generation settings.
    pub gen: GenParams,
    /// Functions the model may call.
    pub tools: Vec<Tool>,
    /// Whether it must call one.
    pub tool_choice: ToolChoice,
}

/// `POST /v1/completions`.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Generation settings.
    pub gen: GenParams,
}

/// A completion prompt: `"text"` (or `["text"]`), or a list of token ids (or `[[ids]]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Text, tokenized by the server (with BOS when the tokenizer adds one).
    Text(String),
    /// Token ids, used as given (the server checks them against the vocabulary; no BOS is
    /// added).
    Tokens(Vec<u32>),
}

fn message_content(v: Option<&Value>, i: usize) -> Result<String, ApiError> {
    let p = format!("messages[{i}].content");
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for part in parts {
                let ty = part.get("type").and_then(Value::as_str);
                match (ty, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "`{p}`: only text parts ({{\"type\": \"text\", \"text\": …}}) are supported"
                        ))
                        .param(&p))
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::invalid(format!(
            "`{p}` must be a string or a list of text parts, got {}",
            kind_of(other)
        ))
        .param(&p)
        .code("invalid_type")),
    }
}

/// Parse a `POST /v1/chat/completions` body. Errors are 400s, most with the parameter at
/// fault in `param`.
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    let msgs = match obj.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                ApiError::invalid("`messages` is required: a list of {role, content}")
                    .param("messages")
                    .code("missing_required_parameter"),
            )
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(format!(
                "`messages` must be a list of {{role, content}} objects, got {}",
                kind_of(v)
            ))
            .param("messages")
            .code("invalid_type"))
        }
    };
    if msgs.is_empty() {
        return Err(
            ApiError::invalid("`messages` is empty; give at least one message").param("messages"),
        );
    }
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Some(mo) = m.as_object() else {
            return Err(ApiError::invalid(format!(
                "`messages[{i}]` must be an object with `role` and `content`, got {}",
                kind_of(m)
            ))
            .param(&format!("messages[{i}]")));
        };
        let role = match mo.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => {
                return Err(ApiError::invalid(format!(
                    "`messages[{i}].role` must be a string (system, user, assistant or tool)"
                ))
                .param(&format!("messages[{i}].role")))
            }
        };
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system",
            other => {
                return Err(ApiError::invalid(format!(
                    "`messages[{i}].role` = {other:?} is not one of system, developer, user, \
                     assistant, tool"
                ))
                .param(&format!("messages[{i}].role")))
            }
        };
        let mut msg = Message::new(role, message_content(mo.get("content"), i)?);
        if role == "assistant" {
            msg.tool_calls = message_tool_calls(mo.get("tool_calls"), i)?;
        }
        if role == "tool" {
            msg.tool_call_id = field::<String>(mo, "tool_call_id")
                .map_err(|e| e.param(&format!("messages[{i}].tool_call_id")))?;
            msg.name =
                field::<String>(mo, "name").map_err(|e| e.param(&format!("messages[{i}].name")))?;
        }
        messages.push(msg);
    }
    let gen = gen_params(&obj, Endpoint::Chat)?;
    let tools = tools_param(&obj)?;
    let tool_choice = tool_choice_param(&obj, &tools)?;
    let forced = matches!(tool_choice, ToolChoice::Required | ToolChoice::Function(_));
    if forced && gen.response_format.is_some() {
        return Err(ApiError::invalid(
            "`response_format` and a forced `tool_choice` both constrain the answer; give one",
        )
        .param("response_format"));
    }
    Ok(ChatRequest {
        messages,
        gen,
        tools,
        tool_choice,
    })
}

/// Parse a `POST /v1/completions` body (one prompt; `suffix`, `best_of` > 1 and `echo` with
/// `stream` are refused). Errors are 400s, most with the parameter at fault in `param`.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let obj = parse_object(body)?;
    let bad = || {
        ApiError::invalid(
            "`prompt` must be a string, a list with one string, a list of token ids or a list \
             with one list of token ids",
        )
        .param("prompt")
        .code("invalid_type")
    };
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("`prompt` is required")
                .param("prompt")
                .code("missing_required_parameter"))
        }
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::String(s)] => Prompt::Text(s.clone()),
            [] => return Err(ApiError::invalid("`prompt` is empty").param("prompt")),
            [Value::Number(_), ..] => Prompt::Tokens(
                Vec::<u32>::deserialize(&Value::Array(a.clone())).map_err(|_| bad())?,
            ),
            // A batch of one tokenized prompt (lm-evaluation-harness's `local-completions`
            // sends this with its default `tokenized_requests=True`).
            [Value::Array(ids)] if matches!(ids.first(), Some(Value::Number(_))) => Prompt::Tokens(
                Vec::<u32>::deserialize(&Value::Array(ids.clone())).map_err(|_| bad())?,
            ),
            [Value::Array(_), _, ..] => {
                return Err(ApiError::invalid(
                    "`prompt`: one prompt per request (send several requests instead)",
                )
                .param("prompt"))
            }
            [Value::String(_), ..] => {
                return Err(ApiError::invalid(
                    "`prompt`: one prompt per request (send several requests instead)",
                )
                .param("prompt"))
            }
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    if field::<String>(&obj, "suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(
            ApiError::invalid("`suffix` (fill-in-the-middle) is not supported")
                .param("suffix")
                .code("unsupported_parameter"),
        );
    }
    if field::<u32>(&obj, "best_of")?.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("`best_of` must be 1").param("best_of"));
    }
    Ok(CompletionRequest {
        prompt,
        gen: gen_params(&obj, Endpoint::Completion)?,
    })
}

/// Turn a parsed request for `prompt` (token ids of a model of `vocab` tokens) into what a
/// slot runs, checking the prompt ([`check_prompt`]) and the server's limits (context,
/// `--max-tokens-cap`). `max_sequence` is the most tokens one request's sequence may hold
/// (`--ctx`, or with several slots the whole KV pool); without `max_tokens` a request whose
/// prompt fits `--ctx` generates at most to `--ctx`, as with one slot, so that its share of
/// the pool stays even. `fallback_seed` is used when the request gave none. No GPU work: the
/// HTTP-body fuzz target drives this too.
pub fn text_request(
    cfg: &ServerConfig,
    max_sequence: usize,
    endpoint: Endpoint,
    prompt: &[u32],
    vocab: usize,
    gen: &GenParams,
    fallback_seed: u64,
) -> std::result::Result<TextRequest, ApiError> {
    let prompt_param = if endpoint == Endpoint::Chat {
        "messages"
    } else {
        "prompt"
    };
    let limit = max_sequence.max(cfg.ctx);
    if let Err(p) = check_prompt(prompt, vocab, 0, limit) {
        let e = ApiError::invalid(format!("`{prompt_param}`: {p}")).param(prompt_param);
        return Err(match p {
            PromptProblem::TooLong { .. } => e.code("context_length_exceeded"),
            _ => e,
        });
    }
    let max_tokens = match gen.max_tokens {
        Some(n) if n > cfg.max_tokens_cap => {
            return Err(ApiError::invalid(format!(
                "max_tokens = {n} exceeds the server's cap of {} (--max-tokens-cap)",
                cfg.max_tokens_cap
            ))
            .param("max_tokens"))
        }
        Some(n) => n,
        None if prompt.len() < cfg.ctx => cfg
            .max_tokens_cap
            .min(room_for_generation(cfg.ctx, prompt.len())),
        None => cfg.max_tokens_cap,
    };
    // Generation also stops when the context is full (finish_reason "length").
    let max_tokens = max_tokens.min(room_for_generation(limit, prompt.len()));
    let mut params = gen.params.clone();
    if !gen.seeded {
        params.seed = fallback_seed;
    }
    Ok(TextRequest {
        params,
        max_tokens,
        stop: gen.stop.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn a_malformed_max_tokens_is_an_error_next_to_max_completion_tokens() {
        let e = parse_chat(
            br#"{"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5,"max_tokens":"lots"}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn wrong_types_name_the_parameter() {
        let e = parse_chat(br#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#)
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse_chat(br#"{"messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_chat(br#"{"model":"x"}"#).unwrap_err();
        assert_eq!(e.code, Some("missing_required_parameter"));
        let e =
            parse_chat(br#"{"messages":[{"role":"user","content":"hi"}],"top_p":0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_p"));
        let e = parse_chat(b"{not json").unwrap_err();
        assert_eq!(e.code, Some("invalid_json"));
    }

    #[test]
    fn chat_fields_parse() {
        let r = parse_chat(
            br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "stream":true,"stream_options":{"include_usage":true},"temperature":0,
                "stop":"\n","max_completion_tokens":7,"max_tokens":9,"seed":5,"top_k":3,
                "ignore_eos":true}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "ab");
        assert!(r.gen.stream && r.gen.include_usage && r.gen.seeded);
        assert_eq!(r.gen.max_tokens, Some(7));
        assert_eq!(r.gen.stop, vec!["\n".to_string()]);
        assert_eq!(r.gen.params.top_k, 3);
        assert!(r.gen.params.ignore_eos);
        assert_eq!(r.gen.params.temperature, 0.0);
    }

    #[test]
    fn completion_prompt_forms() {
        let p = |b: &[u8]| parse_completion(b).map(|r| r.prompt);
        assert_eq!(p(br#"{"prompt":"x"}"#).unwrap(), Prompt::Text("x".into()));
        assert_eq!(p(br#"{"prompt":["x"]}"#).unwrap(), Prompt::Text("x".into()));
        assert_eq!(
            p(br#"{"prompt":[1,2]}"#).unwrap(),
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            p(br#"{"prompt":[[1,2]]}"#).unwrap(),
            Prompt::Tokens(vec![1, 2])
        );
        assert!(p(br#"{"prompt":[[1],[2]]}"#).is_err());
        assert!(p(br#"{"prompt":[[]]}"#).is_err());
        assert!(p(br#"{"prompt":[[-1]]}"#).is_err());
        assert!(p(br#"{"prompt":[["x"]]}"#).is_err());
        assert!(p(br#"{"prompt":["x","y"]}"#).is_err());
        assert!(p(br#"{"prompt":[-1]}"#).is_err());
        assert!(p(br#"{"prompt":3}"#).is_err());
    }

    #[test]
    fn unsupported_features_are_refused() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        for extra in [
            r#""n":0"#,
            r#""n":17"#,
            r#""functions":[{"name":"f"}]"#,
            r#""function_call":"auto""#,
        ] {
            let body = format!("{{{m},{extra}}}");
            assert!(parse_chat(body.as_bytes()).is_err(), "{extra} accepted");
        }
        let body = format!(r#"{{{m},"logprobs":false,"n":1,"user":"u"}}"#);
        assert!(parse_chat(body.as_bytes()).is_ok());
    }

    #[test]
    fn logprobs_parameters_parse_and_are_capped() {
        let m = r#""messages":[{"role":"user","content":"hi"}]"#;
        let chat = |extra: &str| parse_chat(format!("{{{m},{extra}}}").as_bytes());
        assert_eq!(chat(r#""logprobs":true"#).unwrap().gen.logprobs, Some(0));
        assert_eq!(
            chat(r#""logprobs":true,"top_logprobs":20"#)
                .unwrap()
                .gen
                .logprobs,
            Some(20)
        );
        assert_eq!(chat(r#""logprobs":false"#).unwrap().gen.logprobs, None);
        let e = chat(r#""logprobs":true,"top_logprobs":21"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = chat(r#""top_logprobs":3"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = chat(r#""logprobs":5"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        let cmpl =
            |extra: &str| parse_completion(format!(r#"{{"prompt":"x",{extra}}}"#).as_bytes());
        assert_eq!(cmpl(r#""logprobs":3"#).unwrap().gen.logprobs, Some(3));
        assert_eq!(cmpl(r#""logprobs":null"#).unwrap().gen.logprobs, None);
        assert_eq!(
            cmpl(r#""logprobs":21"#).unwrap_err().param.as_deref(),
            Some("logprobs")
        );
        assert_eq!(
            cmpl(r#""logprobs":true"#).unwrap_err().param.as_deref(),
            Some("logprobs")
        );
    }
}
