//! Response bodies: whole responses, stream chunks, usage and log-probabilities.

use serde_json::{json, Map, Value};

use super::Endpoint;
use crate::session::{FinishReason, TokenLogprobs};
use crate::tools::ToolCall;

/// The bytes a token id stands for (the tokenizer's view).
pub type TokenBytes<'a> = &'a dyn Fn(u32) -> Vec<u8>;

fn token_entry(id: u32, logprob: f32, bytes: TokenBytes) -> Map<String, Value> {
    let b = bytes(id);
    let mut m = Map::new();
    m.insert(
        "token".into(),
        String::from_utf8_lossy(&b).into_owned().into(),
    );
    m.insert("logprob".into(), json!(logprob));
    m.insert("bytes".into(), json!(b));
    m
}

/// Chat's `logprobs` object for some generated tokens.
pub fn chat_logprobs(entries: &[TokenLogprobs], bytes: TokenBytes) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut m = token_entry(e.token, e.logprob, bytes);
            let top: Vec<Value> = e
                .top
                .iter()
                .map(|&(id, lp)| Value::Object(token_entry(id, lp, bytes)))
                .collect();
            m.insert("top_logprobs".into(), top.into());
            Value::Object(m)
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The legacy completions `logprobs` object; `offset` is the byte offset of the first token in
/// the completion text and is advanced past these tokens (streams call this per chunk).
pub fn completion_logprobs(
    entries: &[TokenLogprobs],
    bytes: TokenBytes,
    offset: &mut usize,
) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    for e in entries {
        let b = bytes(e.token);
        tokens.push(Value::from(String::from_utf8_lossy(&b).into_owned()));
        token_logprobs.push(json!(e.logprob));
        let mut top = Map::new();
        for &(id, lp) in &e.top {
            top.insert(String::from_utf8_lossy(&bytes(id)).into_owned(), json!(lp));
        }
        top_logprobs.push(Value::Object(top));
        text_offset.push(json!(*offset));
        *offset += b.len();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

/// The legacy completions `logprobs` object of an echoed prompt (`prompt` ids, `scored`: the
/// entries of its tokens after the first) followed by the completion's `entries`, as vLLM
/// answers `echo` with `logprobs`: the first prompt token has `null` log-probability and
/// `null` top_logprobs, and `text_offset` runs on through the completion.
pub fn echo_logprobs(
    prompt: &[u32],
    scored: &[TokenLogprobs],
    entries: &[TokenLogprobs],
    bytes: TokenBytes,
) -> Value {
    let Some(&first) = prompt.first() else {
        return completion_logprobs(entries, bytes, &mut 0);
    };
    let head = bytes(first);
    let mut offset = head.len();
    let rest = [
        completion_logprobs(scored, bytes, &mut offset),
        completion_logprobs(entries, bytes, &mut offset),
    ];
    let mut out = Map::new();
    for (key, first_value) in [
        ("tokens", json!(String::from_utf8_lossy(&head))),
        ("token_logprobs", Value::Null),
        ("top_logprobs", Value::Null),
        ("text_offset", json!(0)),
    ] {
        let mut all = vec![first_value];
        for r in &rest {
            all.extend(r[key].as_array().cloned().unwrap_or_default());
        }
        out.insert(key.into(), Value::Array(all));
    }
    Value::Object(out)
}

/// OpenAI's `finish_reason`: `"stop"` or `"length"` (`Cancelled` is reported as `"length"`).
pub fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        // A cancelled request has no client left to read this.
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// The `usage` object: prompt, completion and total token counts.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Identity of one response, shared by all its chunks.
#[derive(Clone, Debug)]
pub struct ResponseMeta {
    /// The response id (`chatcmpl-…` or `cmpl-…`).
    pub id: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: String,
}

impl ResponseMeta {
    fn base(&self, e: Endpoint, chunk: bool) -> Map<String, Value> {
        let object = match (e, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        };
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), object.into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("system_fingerprint".into(), SYSTEM_FINGERPRINT.into());
        m
    }

    /// A whole (non-streamed) response of `choices` (index order) and `usage`.
    pub fn full(&self, e: Endpoint, choices: &[Choice], usage: Value) -> Value {
        let mut m = self.base(e, false);
        let list: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = choice_body(e, &c.text, &c.calls, c.finish, c.logprobs.clone());
                v["index"] = json!(i);
                v
            })
            .collect();
        m.insert("choices".into(), Value::Array(list));
        m.insert("usage".into(), usage);
        Value::Object(m)
    }

    /// A stream chunk of answer `index`: `role` in the first chat chunk, `text` as the delta,
    /// `finish` in the last.
    #[allow(clippy::too_many_arguments)]
    pub fn chunk(
        &self,
        e: Endpoint,
        index: usize,
        first: bool,
        text: Option<&str>,
        finish: Option<FinishReason>,
        logprobs: Value,
    ) -> Value {
        let mut m = self.base(e, true);
        let fr = finish.map(finish_str);
        let choice = match e {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": fr})
            }
            Endpoint::Completion => {
                json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": fr})
            }
        };
        m.insert("choices".into(), json!([choice]));
        Value::Object(m)
    }

    /// A chat chunk whose delta carries whole tool calls (`delta.tool_calls[k]` with `index`,
    /// `id`, `type` and `function`), as OpenAI's first delta of each call does.
    pub fn calls_chunk(&self, index: usize, calls: &[ToolCall], logprobs: Value) -> Value {
        let mut m = self.base(Endpoint::Chat, true);
        let deltas: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let mut v = c.to_openai();
                v["index"] = json!(k);
                v
            })
            .collect();
        m.insert(
            "choices".into(),
            json!([{"index": index, "delta": {"tool_calls": deltas}, "logprobs": logprobs, "finish_reason": null}]),
        );
        Value::Object(m)
    }

    /// A chat chunk of answer `index` with only a `finish_reason` of `"tool_calls"`.
    pub fn calls_finish_chunk(&self, index: usize) -> Value {
        let mut m = self.base(Endpoint::Chat, true);
        m.insert(
            "choices".into(),
            json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
        );
        Value::Object(m)
    }

    /// The extra last chunk of `stream_options.include_usage`: no choices, only usage.
    pub fn usage_chunk(&self, e: Endpoint, usage: Value) -> Value {
        let mut m = self.base(e, true);
        m.insert("choices".into(), json!([]));
        m.insert("usage".into(), usage);
        Value::Object(m)
    }
}

/// One choice of a whole response. With `calls` (chat only) the message carries `tool_calls`,
/// its `content` is null when there is no text, and `finish_reason` is `"tool_calls"`.
fn choice_body(
    e: Endpoint,
    text: &str,
    calls: &[ToolCall],
    finish: FinishReason,
    logprobs: Value,
) -> Value {
    match e {
        Endpoint::Chat if !calls.is_empty() => json!({
            "index": 0,
            "message": {
                "role": "assistant",
                "content": if text.is_empty() { Value::Null } else { text.into() },
                "tool_calls": calls.iter().map(ToolCall::to_openai).collect::<Vec<_>>(),
            },
            "logprobs": logprobs,
            "finish_reason": "tool_calls",
        }),
        Endpoint::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish_str(finish),
        }),
        Endpoint::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_str(finish),
        }),
    }
}

/// One answer of a whole response.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Its text (tool calls taken out).
    pub text: String,
    /// The tool calls parsed from it.
    pub calls: Vec<ToolCall>,
    /// Why it ended.
    pub finish: FinishReason,
    /// The endpoint's logprobs object, or null.
    pub logprobs: Value,
}

/// The `system_fingerprint` of every response: `fado-` and the crate version.
pub const SYSTEM_FINGERPRINT: &str = concat!("fado-", env!("CARGO_PKG_VERSION"));
