//! Text in, text out: prompts (raw or through the chat template), streaming text with stop
//! strings, on top of a [`Session`]. Used by the CLI and the server.

#![warn(missing_docs)]

use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::session::{FinishReason, Generation, Session, TokenLogprobs};
use crate::tools::{prompt_messages, Tool};

/// What to generate.
#[derive(Clone, Debug)]
pub struct TextRequest {
    /// Sampling settings.
    pub params: SamplingParams,
    /// Most new tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are not part of the text.
    pub stop: Vec<String>,
}

/// What came out.
#[derive(Clone, Debug)]
pub struct TextOutput {
    /// The generated text (stop strings removed).
    pub text: String,
    /// Token ids, timings and why generation stopped.
    pub generation: Generation,
    /// One entry per generated token passed on (not the end-of-sequence token), when
    /// log-probabilities were asked for.
    pub logprobs: Vec<TokenLogprobs>,
}

/// Token ids of a raw prompt (with BOS when the tokenizer adds one).
pub fn encode_raw(model: &Model, text: &str) -> Result<Vec<u32>> {
    model.tokenizer.encode(text, true)
}

/// Render a conversation with the model's chat template and tokenize it.
pub fn encode_chat(
    model: &Model,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    encode_chat_with_tools(model, messages, &[], add_generation_prompt)
}

/// [`encode_chat`] for a conversation that may declare and call functions: templates that know
/// tools receive them, the others get [`crate::tools`]' generic fallback.
pub fn encode_chat_with_tools(
    model: &Model,
    messages: &[Message],
    tools: &[Tool],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    let bos = model.tokenizer.bos_token().unwrap_or("");
    let eos = model.tokenizer.eos_token().unwrap_or("");
    let tmpl = &model.chat_template;
    let (messages, decl) = prompt_messages(tmpl.knows_tools(), messages, tools);
    let text =
        tmpl.render_with_tools(&messages, decl.as_deref(), add_generation_prompt, bos, eos)?;
    // The template writes the special tokens itself (as transformers' apply_chat_template).
    model.tokenizer.encode(&text, false)
}

/// Longest suffix of `s` that is a proper prefix of one of `stops` (text that must be held
/// back because a stop string may be starting).
fn held_back(s: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for stop in stops {
        for (i, _) in stop.char_indices().skip(1) {
            if i <= s.len() && s.ends_with(&stop[..i]) {
                best = best.max(i);
            }
        }
    }
    best
}

/// Generate after `prompt` (appended to the session), streaming text through `on_text`, which
/// returns `false` to cancel.
pub fn generate_text(
    session: &mut Session,
    prompt: &[u32],
    req: &TextRequest,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<TextOutput> {
    generate_text_with_logprobs(session, prompt, req, None, &mut |t, _| on_text(t))
}

/// [`generate_text`] for a whole prompt (not a continuation): the session keeps the longest
/// prefix of `prompt` it already holds and prefills only the rest, so a conversation re-sent
/// with one more turn costs only the new turn. Used by the C and Python bindings.
pub fn generate_text_reusing(
    session: &mut Session,
    prompt: &[u32],
    req: &TextRequest,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<TextOutput> {
    let kept = session.reuse_prefix(prompt);
    generate_text(session, &prompt[kept..], req, on_text)
}

/// [`generate_text`] that also computes each token's log-probabilities (with the
/// `top_logprobs` best alternatives) when `top_logprobs` is given. `on_text` receives, with each
/// piece of text, the entries of the tokens generated since the previous piece (a token whose
/// text is held back — an incomplete UTF-8 sequence, a possible stop string — comes with the
/// piece that releases it). Entries not yet passed on when generation ends are the tail of
/// [`TextOutput::logprobs`] past those delivered.
pub fn generate_text_with_logprobs(
    session: &mut Session,
    prompt: &[u32],
    req: &TextRequest,
    top_logprobs: Option<usize>,
    on_text: &mut dyn FnMut(&str, &[TokenLogprobs]) -> bool,
) -> Result<TextOutput> {
    if req.stop.iter().any(|s| s.is_empty()) {
        return Err(Error::Request("a stop string may not be empty".into()));
    }
    let model = session.model().clone();
    let mut dec = model.tokenizer.stream_decoder().skip_special_tokens(true);
    let mut text = String::new(); // everything decoded so far
    let mut emitted = 0usize; // bytes of `text` passed to on_text
    let mut stopped = false;
    let mut cancelled = false;
    let stops = &req.stop;
    let mut lps: Vec<TokenLogprobs> = Vec::new();
    let mut sent = 0usize; // entries of `lps` passed to on_text
    let mut gen = session.generate_with_logprobs(
        prompt,
        &req.params,
        req.max_tokens,
        top_logprobs,
        &mut |id, lp| {
            lps.extend(lp.cloned());
            text.push_str(&dec.push(id));
            if let Some(cut) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                if cut > emitted {
                    if !on_text(&text[emitted..], &lps[sent..]) {
                        cancelled = true;
                    }
                    sent = lps.len();
                }
                emitted = text.len().max(emitted);
                stopped = true;
                return false;
            }
            let safe = text.len() - held_back(&text, stops);
            if safe > emitted {
                let ok = on_text(&text[emitted..safe], &lps[sent..]);
                sent = lps.len();
                emitted = safe;
                if !ok {
                    cancelled = true;
                    return false;
                }
            }
            true
        },
    )?;
    if !stopped {
        text.push_str(&dec.finish());
        if text.len() > emitted && !cancelled {
            on_text(&text[emitted..], &lps[sent..]);
        }
    }
    if stopped {
        gen.finish_reason = FinishReason::Stop;
    } else if cancelled {
        gen.finish_reason = FinishReason::Cancelled;
    }
    Ok(TextOutput {
        text,
        generation: gen,
        logprobs: lps,
    })
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        let stops = vec!["<|end|>".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello <|e", &stops), 3);
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
    }
}
