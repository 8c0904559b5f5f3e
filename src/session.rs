//! A generation session: one sequence's KV cache plus the compiled prefill and decode graphs.
//!
//! The session keeps the tokens already in its cache, so a chat turn only prefills what is
//! new. A decode step writes the token id and the step uniform (and, with penalties, the
//! penalty window: the distinct ids among the last `repeat_last_n` tokens), submits one command
//! buffer and reads back the top-k candidates (and, when log-probabilities are asked for, the
//! log-sum-exp of the logits).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::graph::{Executable, TensorId};
use crate::model::llama::{self, Head, KvCache};
use crate::model::Model;
use crate::ops::topk::{Penalize, NO_TOKEN};
use crate::ops::Step;
use crate::rng::Rng;
use crate::sampling::{sample, SamplingParams, MAX_TOP_LOGPROBS};
use crate::tensor::{DType, Tensor, TensorDesc};

/// Prompt tokens per prefill chunk.
pub const PREFILL_CHUNK: usize = 256;

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
    /// OpenAI clients ([`crate::server::api::finish_str`]).
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

/// What the decode head computes besides the logits; part of a compiled graph's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
struct HeadKey {
    /// Penalty window length (ids slots) and the repetition penalty's bits, when penalties run.
    /// Presence and frequency penalties are folded into the per-step counts (see
    /// [`Session::write_penalty_window`]), so requests differing only in those share a graph.
    penalty: Option<(usize, u32)>,
    logsumexp: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GraphKey {
    tokens: usize,
    k: usize,
    head: HeadKey,
}

struct Compiled {
    exe: Executable,
    topk: TensorId,
    logits: TensorId,
    logsumexp: Option<TensorId>,
}

/// What one step returns.
struct StepOut {
    /// Top-k (id, logit), best first.
    cands: Vec<(u32, f32)>,
    /// log Σ exp(logits), when asked for.
    logsumexp: Option<f32>,
}

/// One sequence's generation state on the GPU: a KV cache of a fixed number of tokens, the
/// tokens it holds, and the compiled graphs of the step shapes run so far (their number is
/// bounded). Steps take `&mut self`, one at a time; several sequences need several sessions
/// (each with its own cache), as the server's slots have.
pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    ids: Tensor,
    /// The penalty window, rewritten before each penalized step: distinct token ids (u32,
    /// unused slots [`NO_TOKEN`]) and what to subtract from each one's logit (f32). Room for a
    /// whole context, so any `repeat_last_n` fits without a reallocation.
    pen_ids: Tensor,
    pen_counts: Tensor,
    graphs: HashMap<GraphKey, Compiled>,
    /// Tokens whose keys and values are in the cache, in order.
    history: Vec<u32>,
    /// The graph that ran last (its logits can be read back).
    last: Option<GraphKey>,
}

impl Session {
    /// A session with room for `ctx` tokens.
    pub fn new(model: Arc<Model>, ctx: usize) -> Result<Session> {
        let cfg = &model.config;
        if ctx == 0 {
            return Err(Error::Request("the context size must be at least 1".into()));
        }
        let gpu = &model.ctx;
        gpu.check_alive("creating a session")?;
        // Check the KV cache's size before touching the device, with overflow-safe arithmetic,
        // so a huge --ctx gives an error naming the numbers, not an overflow or a driver abort.
        let row = (cfg.num_key_value_heads * cfg.head_dim * 4) as u64;
        let per_buffer = (ctx as u64).checked_mul(row);
        let total = per_buffer.and_then(|b| b.checked_mul(2 * cfg.num_hidden_layers as u64));
        let max = gpu.caps.max_buffer;
        if per_buffer.is_none_or(|b| b > max) {
            return Err(Error::OutOfMemory {
                what: format!(
                    "creating a session of {ctx} tokens (KV cache: {} layers × keys and values, \
                     {} bytes in all)",
                    cfg.num_hidden_layers,
                    total.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string())
                ),
                needed: per_buffer.unwrap_or(u64::MAX),
                available: max,
                hint: format!(
                    " per cache buffer (the adapter's max_buffer_size); use a smaller --ctx \
                     (at most {} tokens fit)",
                    max / row.max(1)
                ),
            });
        }
        let kv_desc = TensorDesc::f32([ctx, cfg.num_key_value_heads, cfg.head_dim]);
        let mut k = Vec::new();
        let mut v = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            k.push(gpu.empty(&format!("k_cache.{i}"), kv_desc.clone())?);
            v.push(gpu.empty(&format!("v_cache.{i}"), kv_desc.clone())?);
        }
        let ids = gpu.empty("ids", TensorDesc::new(DType::U32, [PREFILL_CHUNK]))?;
        let pen_ids = gpu.empty("penalty_ids", TensorDesc::new(DType::U32, [ctx]))?;
        let pen_counts = gpu.empty("penalty_counts", TensorDesc::f32([ctx]))?;
        Ok(Session {
            pen_ids,
            pen_counts,
            cache: KvCache {
                k,
                v,
                capacity: ctx,
            },
            ids,
            graphs: HashMap::new(),
            history: Vec::new(),
            last: None,
            model,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Context capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.cache.capacity
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

    fn graph(&mut self, key: GraphKey, params: &SamplingParams) -> Result<&Compiled> {
        if !self.graphs.contains_key(&key) {
            // Bound the number of graphs kept around (each holds its intermediates): keep the
            // plain decode and full-chunk graphs, drop prefill remainders and request-specific
            // heads.
            if self.graphs.len() > 8 {
                self.graphs.retain(|k, _| {
                    k.head == HeadKey::default() && (k.tokens == 1 || k.tokens == PREFILL_CHUNK)
                });
            }
            let ids = Tensor {
                desc: TensorDesc::new(DType::U32, [key.tokens]),
                ..self.ids.clone()
            };
            let penalize = key.head.penalty.map(|(n, _)| {
                (
                    Penalize {
                        repeat: params.repeat_penalty,
                        presence: 0.0,
                        frequency: 1.0,
                    },
                    Tensor {
                        desc: TensorDesc::new(DType::U32, [n]),
                        ..self.pen_ids.clone()
                    },
                    Tensor {
                        desc: TensorDesc::f32([n]),
                        ..self.pen_counts.clone()
                    },
                )
            });
            let head = Head {
                topk: Some(key.k),
                penalize,
                logsumexp: key.head.logsumexp,
            };
            let fwd = llama::forward_with(
                &self.model.config,
                &self.model.weights,
                &self.cache,
                &ids,
                &head,
            )?;
            let topk = fwd.topk.expect("asked for top-k");
            let mut keep = vec![topk, fwd.logits];
            keep.extend(fwd.logsumexp);
            let exe = fwd.graph.compile(&self.model.ctx, &keep)?;
            self.graphs.insert(
                key,
                Compiled {
                    exe,
                    topk,
                    logits: fwd.logits,
                    logsumexp: fwd.logsumexp,
                },
            );
        }
        Ok(&self.graphs[&key])
    }

    /// Penalty window length for `params` (0 when penalties are off).
    fn penalty_window(&self, params: &SamplingParams) -> usize {
        if params.has_penalties() {
            params.repeat_last_n.min(self.cache.capacity)
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
        let gpu = &self.model.ctx;
        gpu.write(&self.pen_ids, 0, bytemuck::cast_slice(&ids))?;
        gpu.write(&self.pen_counts, 0, bytemuck::cast_slice(&amounts))
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
        let key = GraphKey {
            tokens: tokens.len(),
            k,
            head: HeadKey {
                penalty: (n > 0).then(|| (n, params.repeat_penalty.to_bits())),
                logsumexp,
            },
        };
        let gpu = self.model.ctx.clone();
        gpu.write(&self.ids, 0, bytemuck::cast_slice(tokens))?;
        if n > 0 {
            self.write_penalty_window(tokens, n, params)?;
        }
        let c = self.graph(key, params)?;
        let mut reads = vec![(c.topk, (2 * k * 4) as u64)];
        reads.extend(c.logsumexp.map(|l| (l, 4)));
        let raw = c
            .exe
            .run_read_many(Step::new(pos as u32, tokens.len() as u32), &reads)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&raw[0]);
        let logsumexp = raw
            .get(1)
            .map(|b| f32::from_bits(bytemuck::pod_read_unaligned::<u32>(&b[..4])));
        self.history.extend_from_slice(tokens);
        self.last = Some(key);
        Ok(StepOut {
            cands: (0..k)
                .map(|i| (words[i], f32::from_bits(words[k + i])))
                .collect(),
            logsumexp,
        })
    }

    /// The full logits of the last token of the most recent prefill or decode step (after the
    /// penalties, when that step applied any).
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        let c = self
            .last
            .and_then(|k| self.graphs.get(&k))
            .ok_or_else(|| Error::Request("no step has run yet".into()))?;
        c.exe.read_f32(c.logits)
    }

    /// Time every dispatch of one decode step at the current position (timestamp queries).
    /// The step's token is not added to the history.
    /// It writes the KV-cache row of the next position, so a full cache is an error rather
    /// than a damaged last row.
    pub fn profile_decode(&mut self) -> Result<crate::graph::Profile> {
        let pos = self.history.len();
        if pos >= self.cache.capacity {
            return Err(Error::Request(format!(
                "the context is full ({pos} of {} positions): profile a decode step before it \
                 fills, or use a larger context",
                self.cache.capacity
            )));
        }
        let key = GraphKey {
            tokens: 1,
            k: 1,
            head: HeadKey::default(),
        };
        let c = self.graph(key, &SamplingParams::greedy())?;
        c.exe.run_profiled(Step::new(pos as u32, 1))
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size as u32;
        if let Some(t) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(Error::Request(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
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
        if tokens.is_empty() {
            return Err(Error::Request(
                "empty prompt: nothing to generate from".into(),
            ));
        }
        self.check_ids(tokens)?;
        let need = self.history.len() + tokens.len();
        if need > self.cache.capacity {
            return Err(Error::Request(format!(
                "the prompt needs {need} tokens of context ({} new + {} already in the session) \
                 but the context holds {}; shorten the prompt or raise --ctx",
                tokens.len(),
                self.history.len(),
                self.cache.capacity
            )));
        }
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
    /// given. The GPU computes the log-softmax normaliser; only the top candidates and one
    /// float come back per step.
    pub fn generate_with_logprobs(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        top_logprobs: Option<usize>,
        on_token: &mut dyn FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation> {
        params.validate().map_err(Error::Request)?;
        if let Some(n) = top_logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(Error::Request(format!(
                    "top_logprobs = {n}: at most {MAX_TOP_LOGPROBS} are supported"
                )));
            }
        }
        let want_lp = top_logprobs.is_some();
        // The candidates serve both sampling and the top log-probabilities.
        let k = params.candidates().max(top_logprobs.unwrap_or(0)).max(1);
        let mut rng = Rng::new(params.seed);
        let t0 = Instant::now();
        let mut out = self.prefill_with(prompt, k, params, want_lp)?;
        self.model.ctx.sync()?;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let eos = self.model.config.eos_token_ids.clone();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        while tokens.len() < max_tokens {
            // Sampling sees only the candidates it asked for; extra ones are for top_logprobs.
            let t = sample(&out.cands[..params.candidates().min(k)], params, &mut rng);
            tokens.push(t);
            if eos.contains(&t) {
                finish = FinishReason::Stop;
                break;
            }
            let lp = match (top_logprobs, out.logsumexp) {
                (Some(n), Some(lse)) => Some(token_logprobs(t, &out.cands, n, lse)),
                _ => None,
            };
            if !on_token(t, lp.as_ref()) {
                finish = FinishReason::Cancelled;
                break;
            }
            if tokens.len() >= max_tokens {
                break;
            }
            if self.history.len() >= self.cache.capacity {
                finish = FinishReason::Length;
                break;
            }
            out = self.step(&[t], k, params, want_lp)?;
        }
        Ok(Generation {
            tokens,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            prefill_seconds,
            decode_seconds: t1.elapsed().as_secs_f64(),
        })
    }
}

/// Log-probabilities of `token` and of the `n` best candidates, given `lse = log Σ exp(logits)`.
/// The sampled token is always among the candidates (it was sampled from them).
fn token_logprobs(token: u32, cands: &[(u32, f32)], n: usize, lse: f32) -> TokenLogprobs {
    let logprob = cands
        .iter()
        .find(|c| c.0 == token)
        .map_or(f32::NEG_INFINITY, |c| c.1 - lse);
    TokenLogprobs {
        token,
        logprob,
        top: cands
            .iter()
            .filter(|c| c.0 != NO_TOKEN)
            .take(n)
            .map(|&(id, l)| (id, l - lse))
            .collect(),
    }
}
