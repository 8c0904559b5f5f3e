//! A generation session: one sequence's KV cache plus the compiled prefill and decode graphs.
//!
//! The session keeps the tokens already in its cache, so a chat turn only prefills what is
//! new. A decode step writes the token id and the step uniform, submits one command buffer and
//! reads back the top-k candidates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::graph::{Executable, TensorId};
use crate::model::llama::{self, KvCache};
use crate::model::Model;
use crate::ops::Step;
use crate::rng::Rng;
use crate::sampling::{sample, SamplingParams};
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
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    pub fn decode_tokens_per_s(&self) -> f64 {
        // The first token comes from the prefill; the rest are decode steps.
        (self.tokens.len().saturating_sub(1)) as f64 / self.decode_seconds.max(1e-9)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct GraphKey {
    tokens: usize,
    k: usize,
}

struct Compiled {
    exe: Executable,
    topk: TensorId,
    logits: TensorId,
}

pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    ids: Tensor,
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
        let kv_desc = TensorDesc::f32([ctx, cfg.num_key_value_heads, cfg.head_dim]);
        let mut k = Vec::new();
        let mut v = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            k.push(gpu.empty(&format!("k_cache.{i}"), kv_desc.clone())?);
            v.push(gpu.empty(&format!("v_cache.{i}"), kv_desc.clone())?);
        }
        let ids = gpu.empty("ids", TensorDesc::new(DType::U32, [PREFILL_CHUNK]))?;
        Ok(Session {
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

    fn graph(&mut self, tokens: usize, k: usize) -> Result<&Compiled> {
        let key = GraphKey { tokens, k };
        if !self.graphs.contains_key(&key) {
            // Bound the number of prefill remainders kept around.
            if self.graphs.len() > 8 {
                self.graphs
                    .retain(|k, _| k.tokens == 1 || k.tokens == PREFILL_CHUNK);
            }
            let ids = Tensor {
                desc: TensorDesc::new(DType::U32, [tokens]),
                ..self.ids.clone()
            };
            let fwd = llama::forward(
                &self.model.config,
                &self.model.weights,
                &self.cache,
                &ids,
                Some(k),
            )?;
            let topk = fwd.topk.expect("asked for top-k");
            let exe = fwd.graph.compile(&self.model.ctx, &[topk, fwd.logits])?;
            self.graphs.insert(
                key,
                Compiled {
                    exe,
                    topk,
                    logits: fwd.logits,
                },
            );
        }
        Ok(&self.graphs[&key])
    }

    /// Run `tokens` (≤ PREFILL_CHUNK) at the current position; returns the top-k candidates
    /// of the last token's logits, best first.
    fn step(&mut self, tokens: &[u32], k: usize) -> Result<Vec<(u32, f32)>> {
        let pos = self.history.len();
        let gpu = self.model.ctx.clone();
        gpu.write(&self.ids, 0, bytemuck::cast_slice(tokens));
        let c = self.graph(tokens.len(), k)?;
        let raw = c.exe.run_read(
            Step::new(pos as u32, tokens.len() as u32),
            c.topk,
            (2 * k * 4) as u64,
        )?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
        self.history.extend_from_slice(tokens);
        self.last = Some(GraphKey {
            tokens: tokens.len(),
            k,
        });
        Ok((0..k)
            .map(|i| (words[i], f32::from_bits(words[k + i])))
            .collect())
    }

    /// The full logits of the last token of the most recent prefill or decode step.
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        let c = self
            .last
            .and_then(|k| self.graphs.get(&k))
            .ok_or_else(|| Error::Request("no step has run yet".into()))?;
        c.exe.read_f32(c.logits)
    }

    /// Time every dispatch of one decode step at the current position (timestamp queries).
    /// The step's token is not added to the history.
    pub fn profile_decode(&mut self) -> Result<crate::graph::Profile> {
        let pos = self
            .history
            .len()
            .min(self.cache.capacity.saturating_sub(1));
        let c = self.graph(1, 1)?;
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
        let mut out = Vec::new();
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            out = self.step(chunk, k)?;
        }
        Ok(out)
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
        params.validate().map_err(Error::Request)?;
        let k = params.candidates();
        let mut rng = Rng::new(params.seed);
        let t0 = Instant::now();
        let mut cands = self.prefill(prompt, k)?;
        self.model.ctx.sync()?;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let eos = self.model.config.eos_token_ids.clone();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        while tokens.len() < max_tokens {
            let t = sample(&cands, params, &mut rng);
            tokens.push(t);
            if eos.contains(&t) {
                finish = FinishReason::Stop;
                break;
            }
            if !on_token(t) {
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
            cands = self.step(&[t], k)?;
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
