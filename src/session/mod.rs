//! A generation session: one sequence's KV cache plus the compiled prefill and decode graphs.
//!
//! The session keeps the tokens already in its cache, so a chat turn only prefills what is
//! new. Generation is pipelined (`session/pipeline.rs`): the sampler runs in the graph and writes each
//! token where the next step reads it, so steps are queued ahead of the host. The step-by-step
//! path ([`Session::generate_step_by_step`], and [`Session::prefill`]) reads back the top-k
//! candidates of each step (and, for log-probabilities, the log-sum-exp) and samples on the
//! CPU; it is the reference the pipeline is tested against.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{
    KvCache, Model, Penalty, Profile, Sequence, StepGraph, StepOut, StepSpec, NO_TOKEN,
};
use crate::sampling::{SamplingParams, MAX_TOP_LOGPROBS};

pub use crate::model::KvType;

pub mod batch;
pub mod kl_divergence;
pub mod logits_file;
pub mod perplexity;
mod pipeline;
mod prompt;
mod score;
mod stepwise;

pub use batch::{BatchStats, Batcher};
pub use pipeline::{DecodeStats, DEPTH, INTERLEAVED_CHUNK};
pub use prompt::{check_prompt, room_for_generation, PromptProblem};
pub use score::log_sum_exp;

pub use crate::model::PREFILL_CHUNK;

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The caller's callback asked to stop (e.g. a client disconnected).
    Cancelled,
}

impl FinishReason {
    /// `"stop"`, `"length"` or `"cancelled"`. The server maps `Cancelled` to `"length"` for
    /// OpenAI clients.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The outcome of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Every sampled token id, in order, including a final end-of-sequence token and the token
    /// on which the callback asked to stop. The last one is not in the session's cache.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Tokens prefilled by this call (`prompt.len()`; tokens already in the session not
    /// counted).
    pub prompt_tokens: usize,
    /// Wall-clock seconds of the prefill, up to its first token's candidates (GPU synced).
    pub prefill_seconds: f64,
    /// Wall-clock seconds from the end of the prefill to the end of generation, callbacks
    /// included.
    pub decode_seconds: f64,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Decode steps per second: the first token comes from the prefill, so `tokens.len() - 1`
    /// steps over `decode_seconds`.
    pub fn decode_tokens_per_s(&self) -> f64 {
        // The first token comes from the prefill; the rest are decode steps.
        (self.tokens.len().saturating_sub(1)) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// The log-probabilities of one generated token (natural log, of the softmax of the logits
/// after penalties and before temperature, as OpenAI reports them).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The generated token id.
    pub token: u32,
    /// Its log-probability: its logit minus the log-sum-exp of all logits.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// One sequence's generation state on the GPU: a KV cache of a fixed number of tokens, the
/// tokens it holds, and the compiled graphs of the step shapes run so far (their number is
/// bounded). Steps take `&mut self`, one at a time; several sequences need several sessions
/// (each with its own cache), as the server's slots have.
pub struct Session {
    model: Arc<Model>,
    seq: Sequence,
    graphs: HashMap<StepSpec, StepGraph>,
    /// Tokens whose keys and values are in the cache, in order.
    history: Vec<u32>,
    /// The graph that ran last (its logits can be read back).
    last: Option<StepSpec>,
    /// Counters of pipelined decoding.
    stats: DecodeStats,
    /// The batcher this session's plain decode steps go through, and its slot in the pool
    /// ([`Batcher::session`]).
    batch: Option<(Arc<Batcher>, usize)>,
    /// In the decode loop with a batcher: plain decode steps go to it.
    batching: bool,
}

/// How a [`Session`] is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Context capacity in tokens (the KV cache's rows).
    pub ctx: usize,
    /// How the KV cache stores keys and values (default f16).
    pub kv_type: KvType,
}

impl SessionOptions {
    /// `ctx` tokens with the default KV type.
    pub fn new(ctx: usize) -> Self {
        SessionOptions {
            ctx,
            kv_type: KvType::default(),
        }
    }
}

impl Session {
    /// A session with room for `ctx` tokens and the default options (an f16 KV cache).
    pub fn new(model: Arc<Model>, ctx: usize) -> Result<Session> {
        Session::with_options(model, SessionOptions::new(ctx))
    }

    /// A session set up as `opts` says.
    pub fn with_options(model: Arc<Model>, opts: SessionOptions) -> Result<Session> {
        let seq = Sequence::new(&model, opts.ctx, opts.kv_type)?;
        Ok(Session::from_sequence(model, seq))
    }

    fn from_sequence(model: Arc<Model>, seq: Sequence) -> Session {
        Session {
            seq,
            graphs: HashMap::new(),
            history: Vec::new(),
            last: None,
            stats: DecodeStats::default(),
            model,
            batch: None,
            batching: false,
        }
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Context capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.seq.capacity()
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> u64 {
        self.seq.kv_bytes()
    }

    /// Tokens currently in the cache.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forget everything (the cache is simply overwritten from position 0).
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Keep only the first `n` cached tokens (e.g. the common prefix with a new prompt).
    pub fn truncate(&mut self, n: usize) {
        self.history.truncate(n);
    }

    /// How many leading tokens of `prompt` [`Session::reuse_prefix`] would keep.
    pub fn common_prefix(&self, prompt: &[u32]) -> usize {
        common_prefix(&self.history, prompt)
    }

    /// The KV cache's shared handles, for [`Session::adopt_prefix`] into another session.
    pub fn kv_cache(&self) -> KvCache {
        self.seq.cache().clone()
    }

    /// Take `tokens`, held at positions `0..tokens.len()` of `from` (another session's cache,
    /// [`Session::kv_cache`], of the same model), as this session's history: their keys and
    /// values are copied on the GPU queue, so the next prefill reuses them. `from`'s owner must
    /// not queue writes to those rows before this call returns (the copy is queued first).
    pub fn adopt_prefix(&mut self, from: &KvCache, tokens: &[u32]) -> Result<()> {
        self.seq.copy_prefix_from(&self.model, from, tokens.len())?;
        self.seq.write_tokens(&self.model, 0, tokens)?;
        self.history = tokens.to_vec();
        self.last = None;
        Ok(())
    }

    /// Keep the longest cached prefix of `prompt` (but always leave at least one token to
    /// prefill: its logits start generation) and return its length; prefill `prompt[kept..]`
    /// next. A multi-turn chat re-sends the whole conversation, so a turn prefills only what is
    /// new.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self.common_prefix(prompt);
        self.truncate(common);
        common
    }

    fn graph(&mut self, spec: StepSpec) -> Result<&StepGraph> {
        if !self.graphs.contains_key(&spec) {
            // Bound the number of graphs kept around (each holds its intermediates): keep the
            // plain decode and full-chunk graphs, drop prefill remainders and request-specific
            // heads.
            if self.graphs.len() > 8 {
                self.graphs
                    .retain(|k, _| k.plain_head() && (k.tokens == 1 || k.tokens == PREFILL_CHUNK));
            }
            let g = self.seq.compile(&self.model, spec)?;
            self.graphs.insert(spec, g);
        }
        Ok(&self.graphs[&spec])
    }

    /// Penalty window length for `params` (0 when penalties are off).
    fn penalty_window(&self, params: &SamplingParams) -> usize {
        if params.has_penalties() {
            params.repeat_last_n.min(self.seq.capacity())
        } else {
            0
        }
    }

    /// Write the distinct ids among the last `n` tokens of `history ++ tokens` and, per id,
    /// `presence + frequency · count` (the Penalize op runs with presence 0 and frequency 1, so
    /// these two are data, not part of the compiled graph).
    fn write_penalty_window(
        &self,
        tokens: &[u32],
        n: usize,
        params: &SamplingParams,
    ) -> Result<()> {
        let all = self.history.iter().chain(tokens);
        let len = self.history.len() + tokens.len();
        let mut window: Vec<u32> = all.skip(len.saturating_sub(n)).copied().collect();
        window.sort_unstable();
        let mut ids = Vec::with_capacity(n);
        let mut amounts = Vec::with_capacity(n);
        for run in window.chunk_by(|a, b| a == b) {
            ids.push(run[0]);
            amounts.push(params.presence_penalty + params.frequency_penalty * run.len() as f32);
        }
        ids.resize(n, NO_TOKEN);
        amounts.resize(n, 0.0);
        self.seq.write_penalty_window(&self.model, &ids, &amounts)
    }

    /// Run `tokens` (≤ PREFILL_CHUNK) at the current position; returns the top-k candidates
    /// of the last token's logits, best first (after penalties when `params` has any).
    fn step(
        &mut self,
        tokens: &[u32],
        k: usize,
        params: &SamplingParams,
        logsumexp: bool,
    ) -> Result<StepOut> {
        self.model.ctx.check_alive("running the model")?;
        let pos = self.history.len();
        let n = self.penalty_window(params);
        let spec = StepSpec {
            tokens: tokens.len(),
            k,
            penalty: (n > 0).then(|| Penalty::Window {
                n,
                repeat_bits: params.repeat_penalty.to_bits(),
            }),
            logsumexp,
            sample: false,
            masked: false,
            all_logits: false,
        };
        self.seq.write_tokens(&self.model, pos, tokens)?;
        if n > 0 {
            self.write_penalty_window(tokens, n, params)?;
        }
        let out = self.graph(spec)?.run(pos, tokens.len())?;
        self.history.extend_from_slice(tokens);
        self.last = Some(spec);
        Ok(out)
    }

    /// The full logits of the last token of the most recent prefill or decode step (after the
    /// penalties, when that step applied any).
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        self.last
            .and_then(|k| self.graphs.get(&k))
            .ok_or_else(|| Error::Request("no step has run yet".into()))?
            .logits()
    }

    /// Compute dispatches of one greedy pipelined decode step (compiling its graph if needed).
    pub fn decode_dispatches(&mut self) -> Result<usize> {
        let spec = StepSpec {
            sample: true,
            ..StepSpec::plain(1, 1)
        };
        Ok(self.graph(spec)?.num_dispatches())
    }

    /// Time every dispatch of one decode step at the current position (timestamp queries).
    /// The step's token is not added to the history.
    /// It writes the KV-cache row of the next position, so a full cache is an error rather
    /// than a damaged last row.
    pub fn profile_decode(&mut self) -> Result<Profile> {
        self.profile_step(1)
    }

    /// Time every dispatch of one step of `tokens` tokens (a prefill chunk, at most
    /// [`PREFILL_CHUNK`]) at the current position, as [`Session::profile_decode`]: the tokens
    /// are whatever the history holds there, and nothing is added to it.
    pub fn profile_step(&mut self, tokens: usize) -> Result<Profile> {
        let pos = self.history.len();
        let tokens = tokens.clamp(1, PREFILL_CHUNK);
        if pos + tokens > self.seq.capacity() {
            return Err(Error::Request(format!(
                "the context has {pos} of {} positions filled: profile a step of {tokens} \
                 tokens before it fills, or use a larger context",
                self.seq.capacity()
            )));
        }
        let spec = StepSpec::plain(tokens, 1);
        self.graph(spec)?.profile(pos, tokens)
    }

    /// Append `tokens` to the cache and return the top-k candidates for the next token.
    pub fn prefill(&mut self, tokens: &[u32], k: usize) -> Result<Vec<(u32, f32)>> {
        Ok(self
            .prefill_with(tokens, k, &SamplingParams::greedy(), false)?
            .cands)
    }

    fn prefill_with(
        &mut self,
        tokens: &[u32],
        k: usize,
        params: &SamplingParams,
        logsumexp: bool,
    ) -> Result<StepOut> {
        let vocab = self.model.config.vocab_size;
        check_prompt(tokens, vocab, self.history.len(), self.capacity())
            .map_err(|p| Error::Request(p.to_string()))?;
        let chunks: Vec<&[u32]> = tokens.chunks(PREFILL_CHUNK).collect();
        let (last, rest) = chunks.split_last().expect("tokens is not empty");
        // Only the last chunk's logits are used: earlier chunks run the plain graphs.
        for chunk in rest {
            self.step(chunk, 1, &SamplingParams::greedy(), false)?;
        }
        self.step(last, k, params, logsumexp)
    }

    /// Generate after `prompt` (appended to what the session already holds).
    /// `on_token` sees each new token and returns `false` to stop.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation> {
        self.generate_with_logprobs(prompt, params, max_tokens, None, &mut |t, _| on_token(t))
    }

    /// [`Session::generate`], also reporting each token's log-probability and the
    /// `top_logprobs` (≤ [`MAX_TOP_LOGPROBS`]) most likely alternatives when `top_logprobs` is
    /// given. Steps are pipelined (see `session/pipeline.rs`): the sampler runs on the GPU and the host
    /// reads tokens back while later steps run; only the chosen token (and, for
    /// log-probabilities, the top candidates and one float) comes back per step.
    pub fn generate_with_logprobs(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        top_logprobs: Option<usize>,
        on_token: &mut dyn FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation> {
        self.generate_pipelined(prompt, params, max_tokens, top_logprobs, on_token)
    }
}

/// The checks of a generation request's parameters, for both paths.
fn check_request(params: &SamplingParams, top_logprobs: Option<usize>) -> Result<()> {
    params.validate().map_err(Error::Request)?;
    if let Some(n) = top_logprobs {
        if n > MAX_TOP_LOGPROBS {
            return Err(Error::Request(format!(
                "top_logprobs = {n}: at most {MAX_TOP_LOGPROBS} are supported"
            )));
        }
    }
    Ok(())
}

/// The longest common prefix of a cached `history` and `prompt`, leaving at least one token of
/// `prompt` to prefill (its logits start generation).
pub fn common_prefix(history: &[u32], prompt: &[u32]) -> usize {
    history
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
        .min(prompt.len().saturating_sub(1))
}
