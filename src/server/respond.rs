//! Answering a queued job: the whole response once the slot is done, or a server-sent-event
//! stream of chunks as text arrives; with tools, the answer's calls parsed out of the text.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::{self, ApiError, Choice, Endpoint, ResponseMeta};
use super::scheduler::{Event, Finished};
use crate::model::Model;
use crate::session::{FinishReason, TokenLogprobs};
use crate::tools::{self, split_tool_calls, Tool, ToolCall};

pub(super) fn worker_gone() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the request was dropped before it finished (the server is shutting down)",
    )
}

/// The endpoint's logprobs object for `entries` (`offset`: see [`api::completion_logprobs`]),
/// or null when they were not asked for (`model` is None).
fn logprobs_value(
    endpoint: Endpoint,
    model: Option<&Arc<Model>>,
    entries: &[TokenLogprobs],
    offset: &mut usize,
) -> Value {
    let Some(m) = model else {
        return Value::Null;
    };
    let bytes = |id: u32| m.tokenizer.token_bytes(id);
    match endpoint {
        Endpoint::Chat => api::chat_logprobs(entries, &bytes),
        Endpoint::Completion => api::completion_logprobs(entries, &bytes, offset),
    }
}

/// Tool-call ids for one response: `call_` + the response id's tail + a counter.
fn call_ids(meta: &ResponseMeta) -> impl FnMut() -> String {
    let tail = meta.id.rsplit('-').next().unwrap_or("0").to_string();
    let mut k = 0;
    move || {
        k += 1;
        format!("call_{tail}{k}")
    }
}

pub(super) async fn whole_response(
    endpoint: Endpoint,
    meta: ResponseMeta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    logprobs_model: Option<Arc<Model>>,
    tools: Option<Arc<Vec<Tool>>>,
) -> std::result::Result<Response, ApiError> {
    let mut text = String::new();
    let mut lps = Vec::new();
    let mut echo = None;
    let mut choices = Vec::new();
    let mut ids = call_ids(&meta);
    loop {
        match rx.recv().await {
            Some(Event::Text(t, l)) => {
                text.push_str(&t);
                lps.extend(l);
            }
            Some(Event::Prompt(t, ids, l)) => {
                text.insert_str(0, &t);
                echo = Some((ids, l));
            }
            Some(Event::EndChoice(finish)) => {
                let lps = std::mem::take(&mut lps);
                let lp = match (&echo, &logprobs_model) {
                    (Some((ids, plps)), Some(m)) => {
                        api::echo_logprobs(ids, plps, &lps, &|id| m.tokenizer.token_bytes(id))
                    }
                    _ => logprobs_value(endpoint, logprobs_model.as_ref(), &lps, &mut 0),
                };
                let text = std::mem::take(&mut text);
                let (text, calls) = match &tools {
                    Some(t) => split_tool_calls(&text, t, &mut ids),
                    None => (text, vec![]),
                };
                choices.push(Choice {
                    text,
                    calls,
                    finish,
                    logprobs: lp,
                });
            }
            Some(Event::Done(f)) => {
                let body = meta.full(endpoint, &choices, usage_of(&f));
                return Ok(Json(body).into_response());
            }
            Some(Event::Failed(e)) => return Err(e.into()),
            None => return Err(worker_gone()),
        }
    }
}

fn usage_of(f: &Finished) -> Value {
    let mut u = api::usage(f.prompt_tokens, f.completion_tokens);
    u["prompt_tokens_details"] = json!({"cached_tokens": f.cached_tokens});
    u
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    out: VecDeque<SseEvent>,
    first: bool,
    done: bool,
    endpoint: Endpoint,
    meta: ResponseMeta,
    include_usage: bool,
    /// Set when log-probabilities were asked for (their token strings need the tokenizer).
    logprobs_model: Option<Arc<Model>>,
    /// Byte offset of the next token in the completion text (legacy `text_offset`).
    text_offset: usize,
    /// Tool calls are parsed from the answer (see [`StreamState::text`]).
    calls: Option<StreamCalls>,
    /// The answer the next text belongs to (`n` > 1 streams them one after another).
    index: usize,
}

/// A stream's tool-call state: text is passed on until a `<tool_call>` block starts (a
/// possible start is held back); from there on everything is held and parsed at the end.
struct StreamCalls {
    tools: Arc<Vec<Tool>>,
    held: String,
    held_logprobs: Vec<TokenLogprobs>,
    in_call: bool,
    ids: Box<dyn FnMut() -> String + Send>,
}

impl StreamState {
    fn push(&mut self, v: Value) {
        self.out.push_back(SseEvent::default().data(v.to_string()));
    }

    /// A text chunk with the log-probabilities of its tokens.
    fn push_text(&mut self, t: &str, l: &[TokenLogprobs]) {
        let lp = if l.is_empty() {
            Value::Null
        } else {
            logprobs_value(
                self.endpoint,
                self.logprobs_model.as_ref(),
                l,
                &mut self.text_offset,
            )
        };
        let c = self
            .meta
            .chunk(self.endpoint, self.index, self.first, Some(t), None, lp);
        self.first = false;
        self.push(c);
    }

    /// New text from the slot: passed on, or held while it may be a tool call.
    fn text(&mut self, t: String, l: Vec<TokenLogprobs>) {
        let Some(c) = self.calls.as_mut() else {
            return self.push_text(&t, &l);
        };
        c.held.push_str(&t);
        c.held_logprobs.extend(l);
        if c.in_call {
            return;
        }
        let pass = match c.held.find(tools::CALL_OPEN) {
            Some(i) => {
                c.in_call = true;
                i
            }
            None => c.held.len() - tools::held_back(&c.held),
        };
        if pass > 0 {
            let t: String = c.held.drain(..pass).collect();
            let l = std::mem::take(&mut c.held_logprobs);
            self.push_text(&t, &l);
        }
    }

    /// The end: held text parsed for calls; the finish chunk.
    fn finish(&mut self, f: FinishReason) {
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut lps = Vec::new();
        if let Some(c) = self.calls.as_mut() {
            let held = std::mem::take(&mut c.held);
            lps = std::mem::take(&mut c.held_logprobs);
            let text = if c.in_call {
                let (text, found) = split_tool_calls(&held, &c.tools, &mut c.ids);
                calls = found;
                text
            } else {
                held
            };
            if !text.is_empty() || (calls.is_empty() && !lps.is_empty()) {
                self.push_text(&text, &std::mem::take(&mut lps));
            }
        }
        if !calls.is_empty() {
            let lp = logprobs_value(
                self.endpoint,
                self.logprobs_model.as_ref(),
                &lps,
                &mut self.text_offset,
            );
            let c = self.meta.calls_chunk(self.index, &calls, lp);
            self.push(c);
            let c = self.meta.calls_finish_chunk(self.index);
            self.push(c);
        } else {
            let c = self.meta.chunk(
                self.endpoint,
                self.index,
                self.first,
                None,
                Some(f),
                Value::Null,
            );
            self.push(c);
        }
        // The next answer starts clean.
        self.index += 1;
        self.text_offset = 0;
        if let Some(c) = self.calls.as_mut() {
            c.in_call = false;
        }
    }
}

/// SSE: `data: {chunk}` per piece of text, a last chunk with `finish_reason`, the usage chunk
/// when asked, then `data: [DONE]`. Dropping the stream (client gone) drops `rx`, which the
/// slot notices at its next token.
pub(super) fn stream_response(
    endpoint: Endpoint,
    meta: ResponseMeta,
    rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    logprobs_model: Option<Arc<Model>>,
    tools: Option<Arc<Vec<Tool>>>,
    n: usize,
) -> Response {
    let calls = tools.map(|tools| StreamCalls {
        tools,
        held: String::new(),
        held_logprobs: Vec::new(),
        in_call: false,
        ids: Box::new(call_ids(&meta)),
    });
    let mut st = StreamState {
        rx,
        out: VecDeque::new(),
        first: true,
        done: false,
        endpoint,
        meta,
        include_usage,
        logprobs_model,
        text_offset: 0,
        calls,
        index: 0,
    };
    if endpoint == Endpoint::Chat {
        // The role comes first, before any text (as OpenAI sends it), for every answer.
        for i in 0..n.max(1) {
            let c = st
                .meta
                .chunk(endpoint, i, true, Some(""), None, Value::Null);
            st.push(c);
        }
        st.first = false;
    }
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Text(t, l)) => st.text(t, l),
                // Requests with `echo` are not streamed (refused when parsed).
                Some(Event::Prompt(..)) => {}
                Some(Event::EndChoice(f)) => st.finish(f),
                Some(Event::Done(f)) => {
                    if st.include_usage {
                        let u = st.meta.usage_chunk(st.endpoint, usage_of(&f));
                        st.push(u);
                    }
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.done = true;
                }
                Some(Event::Failed(e)) => {
                    // Headers are sent already: the error travels as an event.
                    st.push(ApiError::from(e).body());
                    st.out.push_back(SseEvent::default().data("[DONE]"));
                    st.done = true;
                }
                None => {
                    st.push(worker_gone().body());
                    st.done = true;
                }
            }
        }
    });
    // Comment lines while a request waits or prefills: proxies keep the connection, and a
    // client gone while queued is noticed (the write fails, the job is skipped).
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(10)))
        .into_response()
}
