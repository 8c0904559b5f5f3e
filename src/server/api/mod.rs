//! The OpenAI wire format: request parsing with errors that name the parameter, response and
//! stream-chunk bodies, and errors in OpenAI's shape `{"error": {message, type, param, code}}`.
//!
//! Requests are parsed field by field from a `serde_json::Value`, so a wrong type says which
//! field (`"temperature": invalid type: string "hot", expected f32`) and carries it in `param`.
//! Unknown fields are ignored (clients send many); fields that would change the output in a way
//! this server cannot honour (`n` > 16, the deprecated `functions`) are refused with a 400 rather than
//! silently ignored.
//!
//! Log-probabilities: chat takes `logprobs: true` and `top_logprobs: 0..=20` and answers
//! `choices[0].logprobs.content = [{token, logprob, bytes, top_logprobs: [{token, logprob,
//! bytes}]}]`; completions take `logprobs: 0..=20` (the number of alternatives; OpenAI's legacy
//! limit is 5, this server allows 20) and answer `{tokens, token_logprobs, top_logprobs,
//! text_offset}` with `text_offset` the byte offset of each token in the completion text. Both
//! are natural logs of the softmax of the logits after penalties, before temperature, and
//! appear in stream chunks too (for the tokens of that chunk).

#![warn(missing_docs)]

mod error;
mod request;
mod response;
mod tools;

pub use error::ApiError;
pub use request::{
    parse_chat, parse_completion, parse_object, text_request, ChatRequest, CompletionRequest,
    GenParams, Prompt, MAX_N, MAX_STOP_STRINGS,
};
pub use response::{
    chat_logprobs, completion_logprobs, echo_logprobs, finish_str, usage, Choice, ResponseMeta,
    TokenBytes, SYSTEM_FINGERPRINT,
};

/// Which endpoint's bodies to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}
