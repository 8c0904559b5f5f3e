//! One sequence's GPU state and the compiled graphs that advance it: what a session runs.
//!
//! A [`Sequence`] owns the KV cache and the small input buffers a step rewrites (token ids,
//! the penalty window); a [`StepGraph`] is the forward pass for one step shape ([`StepSpec`]:
//! how many tokens, how many candidates, which head ops) compiled against that sequence's
//! buffers once, then run at any position. Only the step uniform and those inputs are written
//! per run; only the top-k candidates (and one float for log-probabilities) come back.

#![warn(missing_docs)]

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{Executable, Profile, TensorId};
use crate::ops::sample::{SamplerParams, SAMPLER_PARAMS_WORDS};
use crate::ops::topk::Penalize;
use crate::ops::Step;
use crate::tensor::{DType, Tensor, TensorDesc};

use super::llama::{self, Head, KvCache};
use super::Model;

pub use crate::ops::topk::NO_TOKEN;

/// Prompt tokens per prefill chunk (the largest step a [`Sequence`] runs at once).
pub const PREFILL_CHUNK: usize = 256;

/// How the KV cache stores keys and values. f16 (the default) halves the cache's memory and
/// the bytes attention reads per token; the kernels widen to f32 before any arithmetic, so
/// only the storage rounds (to 11 significant bits, as llama.cpp and vLLM store theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// Half precision, packed two per 32-bit word.
    #[default]
    F16,
    /// Single precision.
    F32,
}

impl KvType {
    /// Every KV type, in the order help texts list them.
    pub const ALL: [KvType; 2] = [KvType::F16, KvType::F32];

    /// The tensor dtype of the cache.
    pub fn dtype(self) -> DType {
        match self {
            KvType::F16 => DType::F16,
            KvType::F32 => DType::F32,
        }
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> u64 {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    /// The name `--kv-type` takes (`f16`, `f32`).
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// Parse `--kv-type` (any case); the error lists the accepted names.
    pub fn parse(s: &str) -> std::result::Result<KvType, String> {
        KvType::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown KV-cache type `{s}` (use f16 or f32)"))
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The GPU buffers of one sequence: its KV cache, its tokens by position (the steps' embedding
/// reads its ids there, and a sampler in the graph writes the next one there) and the
/// penalty window (distinct token ids, unused slots [`NO_TOKEN`], and what to subtract from
/// each one's logit) — room for a whole context, so any window fits without a reallocation.
pub struct Sequence {
    cache: KvCache,
    history: Tensor,
    sampler: Tensor,
    pen_ids: Tensor,
    pen_counts: Tensor,
    mask: Tensor,
    /// A pooled sequence's entry in the pool's sampler parameters (the tensor and the byte
    /// offset), which batched steps read; [`Sequence::write_sampler`] writes it too.
    pooled_sampler: Option<(Tensor, u64)>,
}

impl Sequence {
    /// Buffers for a sequence of up to `ctx` tokens of `model`. The KV cache's size is checked
    /// before the device is touched, with overflow-safe arithmetic, so a huge context is an
    /// error naming the numbers, not an overflow or a driver abort.
    pub fn new(model: &Model, ctx: usize, kv: KvType) -> Result<Sequence> {
        check_cache_size(model, ctx, ctx, kv)?;
        let cfg = &model.config;
        let gpu = &model.ctx;
        let kv_desc = TensorDesc::new(kv.dtype(), [ctx, cfg.num_key_value_heads, cfg.head_dim]);
        let mut k = Vec::new();
        let mut v = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            k.push(gpu.empty(&format!("k_cache.{i}"), kv_desc.clone())?);
            v.push(gpu.empty(&format!("v_cache.{i}"), kv_desc.clone())?);
        }
        // One row past the context: the step at the last position still samples a token.
        let history = gpu.empty("history", TensorDesc::new(DType::U32, [ctx + 1]))?;
        Sequence::with_buffers(model, k, v, history, None)
    }

    /// A sequence over the given KV cache tensors (per layer `[ctx, kv_heads, head_dim]`) and
    /// token history (`[ctx + 1]`), with its own small buffers; `pooled_sampler`: where a
    /// pool's batched steps read its sampler parameters.
    pub(super) fn with_buffers(
        model: &Model,
        k: Vec<Tensor>,
        v: Vec<Tensor>,
        history: Tensor,
        pooled_sampler: Option<(Tensor, u64)>,
    ) -> Result<Sequence> {
        let cfg = &model.config;
        let gpu = &model.ctx;
        let ctx = history.desc.numel().saturating_sub(1);
        Ok(Sequence {
            cache: KvCache {
                k,
                v,
                capacity: ctx,
                // wgpu zero-fills new buffers: the counters start at zero.
                sync: gpu.empty(
                    "attention_sync",
                    TensorDesc::new(DType::U32, [cfg.num_key_value_heads]),
                )?,
            },
            history,
            sampler: gpu.empty(
                "sampler",
                TensorDesc::new(DType::U32, [SAMPLER_PARAMS_WORDS]),
            )?,
            pen_ids: gpu.empty("penalty_ids", TensorDesc::new(DType::U32, [ctx]))?,
            pen_counts: gpu.empty("penalty_counts", TensorDesc::f32([ctx]))?,
            // One bit per logit; 6 KiB for a 49k vocabulary, written only by constrained steps.
            mask: gpu.empty(
                "token_mask",
                TensorDesc::new(DType::U32, [cfg.vocab_size.div_ceil(32)]),
            )?,
            pooled_sampler,
        })
    }

    /// The KV cache (its tensors are shared handles: a clone refers to the same memory).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Copy the keys and values of positions `0..rows` from `from` (another sequence of the
    /// same model and KV type) into this one's cache, on the GPU queue: work queued before
    /// this call on either cache is ordered before the copy, later work after it.
    pub fn copy_prefix_from(&self, model: &Model, from: &KvCache, rows: usize) -> Result<()> {
        let mine = &self.cache;
        if rows > mine.capacity.min(from.capacity) || from.k.len() != mine.k.len() {
            return Err(Error::op(
                "copy_prefix",
                format!(
                    "{rows} rows of a {}-layer cache of {} rows into a {}-layer cache of {}",
                    from.k.len(),
                    from.capacity,
                    mine.k.len(),
                    mine.capacity
                ),
            ));
        }
        let mut enc = model.ctx.device.create_command_encoder(&Default::default());
        let pairs = from.k.iter().zip(&mine.k).chain(from.v.iter().zip(&mine.v));
        for (src, dst) in pairs {
            // Capacities may differ (pooled regions are sized per request); rows may not.
            if src.desc.dtype != dst.desc.dtype || src.desc.shape[1..] != dst.desc.shape[1..] {
                return Err(Error::op(
                    "copy_prefix",
                    format!("{} into {}: the KV rows differ", src.desc, dst.desc),
                ));
            }
            // Rows are position-major ([ctx, kv_heads, head_dim]): a prefix is contiguous.
            let bytes = src.size_bytes() / from.capacity as u64 * rows as u64;
            let (Some((sb, so)), Some((db, doff))) = (src.buffer(), dst.buffer()) else {
                return Err(Error::op(
                    "copy_prefix",
                    "a KV cache lives in a texel image",
                ));
            };
            if Arc::ptr_eq(sb, db) {
                // Two sequences of one pool: wgpu copies only between distinct buffers.
                let tmp = model.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("copy_prefix staging"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                enc.copy_buffer_to_buffer(sb, so, &tmp, 0, bytes);
                enc.copy_buffer_to_buffer(&tmp, 0, db, doff, bytes);
            } else {
                enc.copy_buffer_to_buffer(sb, so, db, doff, bytes);
            }
        }
        model.ctx.queue.submit(Some(enc.finish()));
        Ok(())
    }

    /// Token positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }

    /// Bytes of the KV cache (keys and values of every layer).
    pub fn kv_bytes(&self) -> u64 {
        self.cache
            .k
            .iter()
            .chain(&self.cache.v)
            .map(|t| t.size_bytes())
            .sum()
    }

    /// Write the token ids of the step at `pos` into the history (`pos + tokens.len()` must
    /// not pass the capacity).
    pub fn write_tokens(&self, model: &Model, pos: usize, tokens: &[u32]) -> Result<()> {
        if pos + tokens.len() > self.capacity() {
            return Err(Error::Request(format!(
                "{} tokens at position {pos} do not fit the context of {} tokens; raise the context size (--ctx)",
                tokens.len(),
                self.capacity()
            )));
        }
        model.ctx.write(
            &self.history,
            (pos * 4) as u64,
            bytemuck::cast_slice(tokens),
        )
    }

    /// The token history buffer (u32 `[capacity + 1]`).
    pub fn history(&self) -> &Tensor {
        &self.history
    }

    /// Write the parameters the sampling steps' head reads ([`StepSpec::sample`],
    /// [`Penalty::History`]).
    pub fn write_sampler(&self, model: &Model, p: &SamplerParams) -> Result<()> {
        let words = p.words();
        if let Some((pool, at)) = &self.pooled_sampler {
            model.ctx.write(pool, *at, bytemuck::cast_slice(&words))?;
        }
        model
            .ctx
            .write(&self.sampler, 0, bytemuck::cast_slice(&words))
    }

    /// Write the allowed-token mask the next masked step reads ([`StepSpec::masked`]): one bit
    /// per logit, `ceil(vocab / 32)` words (fewer leave the rest as they were).
    pub fn write_mask(&self, model: &Model, words: &[u32]) -> Result<()> {
        let n = words.len().min(self.mask.desc.numel());
        model
            .ctx
            .write(&self.mask, 0, bytemuck::cast_slice(&words[..n]))
    }

    /// Write the penalty window: `ids` and their `amounts`, both as long as the window the
    /// step was compiled for ([`StepSpec::penalty`]; pad with [`NO_TOKEN`] and 0).
    pub fn write_penalty_window(&self, model: &Model, ids: &[u32], amounts: &[f32]) -> Result<()> {
        model
            .ctx
            .write(&self.pen_ids, 0, bytemuck::cast_slice(ids))?;
        model
            .ctx
            .write(&self.pen_counts, 0, bytemuck::cast_slice(amounts))
    }

    /// Build and compile the forward pass of `spec` against this sequence's buffers.
    pub fn compile(&self, model: &Model, spec: StepSpec) -> Result<StepGraph> {
        // Presence and frequency penalties are folded into the per-step amounts (the op runs
        // with presence 0 and frequency 1), so requests differing only in those share a graph.
        let penalize = match spec.penalty {
            Some(Penalty::Window { n, repeat_bits }) => Some((
                Penalize {
                    repeat: f32::from_bits(repeat_bits),
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
            )),
            _ => None,
        };
        let penalize_history = spec.penalty == Some(Penalty::History);
        let head = Head {
            all_rows: spec.all_logits,
            topk: (!spec.all_logits).then_some(spec.k),
            penalize,
            logsumexp: spec.logsumexp,
            sampler: (spec.sample || penalize_history).then(|| self.sampler.clone()),
            penalize_history,
            sample: spec.sample,
            mask: (spec.sample && spec.masked).then(|| self.mask.clone()),
        };
        let fwd = llama::forward_with(
            &model.config,
            &model.weights,
            &self.cache,
            &self.history,
            spec.tokens,
            &head,
        )?;
        let topk = fwd.topk;
        if topk.is_none() && !spec.all_logits {
            return Err(Error::op(
                "forward",
                "the head was asked for top-k but built none",
            ));
        }
        let mut keep = vec![fwd.logits];
        keep.extend(topk);
        keep.extend(fwd.logsumexp);
        let exe = fwd.graph.compile(&model.ctx, &keep)?;
        let split = fwd.mask.and_then(|m| exe.first_dispatch_reading(m));
        Ok(StepGraph {
            exe,
            k: spec.k,
            topk,
            logits: fwd.logits,
            logsumexp: fwd.logsumexp,
            split,
        })
    }
}

/// Check that a KV cache of `rows` rows (`ctx` per sequence) fits the device before it is
/// touched, with overflow-safe arithmetic, so a huge context is an error naming the numbers, not
/// an overflow or a driver abort.
pub(super) fn check_cache_size(model: &Model, ctx: usize, rows: usize, kv: KvType) -> Result<()> {
    let cfg = &model.config;
    if ctx == 0 {
        return Err(Error::Request("the context size must be at least 1".into()));
    }
    let gpu = &model.ctx;
    gpu.check_alive("creating a session")?;
    let row = (cfg.num_key_value_heads * cfg.head_dim) as u64 * kv.bytes();
    let buffers = 2 * cfg.num_hidden_layers as u64; // keys and values per layer
    let per_buffer = (rows as u64).checked_mul(row);
    let total = per_buffer.and_then(|b| b.checked_mul(buffers));
    let trained = cfg.max_position_embeddings;
    // The limit is the smaller of one cache buffer within the adapter's max_buffer_size and
    // the whole cache within the memory the device has (where that is known).
    let max = gpu.caps.max_buffer;
    let budget = gpu.memory_budget();
    let fit_buffer = max / row.max(1);
    let fit = budget.map_or(fit_buffer, |m| fit_buffer.min(m / (row * buffers).max(1)));
    if rows as u64 > fit {
        let (needed, available, limit) = match (per_buffer, budget) {
            (Some(b), _) if b > max => (b, max, "per cache buffer (the adapter's max_buffer_size)"),
            (_, Some(m)) => (
                total.unwrap_or(u64::MAX),
                m,
                "for the whole cache (the memory available)",
            ),
            _ => (
                per_buffer.unwrap_or(u64::MAX),
                max,
                "per cache buffer (the adapter's max_buffer_size)",
            ),
        };
        return Err(Error::OutOfMemory {
            what: format!(
                "creating a session of {ctx} tokens (KV cache: {} layers × keys and values, \
                     {} in all)",
                cfg.num_hidden_layers,
                total.map_or_else(|| "more than 2^64 bytes".to_string(), gib)
            ),
            needed,
            available,
            hint: format!(
                " {limit}; use a smaller --ctx{}: at most {} tokens fit{} (the model was \
                     trained for {trained})",
                if rows > ctx {
                    " or fewer --parallel slots"
                } else {
                    ""
                },
                fit / rows.div_ceil(ctx) as u64,
                if rows > ctx { " per slot" } else { "" },
            ),
        });
    }
    if ctx > trained && trained > 0 {
        tracing::warn!(
            "--ctx {ctx} is beyond the {trained} tokens {} was trained for; output past \
                 {trained} tokens degrades",
            model.name
        );
    }
    tracing::debug!(
        "KV cache: {ctx} tokens × {} layers, {kv}, {} bytes",
        cfg.num_hidden_layers,
        total.unwrap_or(u64::MAX)
    );
    Ok(())
}

/// `bytes` as GiB for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The shape of one step: part of a compiled graph's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepSpec {
    /// Tokens run at once (1 for decode, ≤ [`PREFILL_CHUNK`] for prefill).
    pub tokens: usize,
    /// Top-k candidates returned.
    pub k: usize,
    /// Penalties applied to the logits before the top-k, when any.
    pub penalty: Option<Penalty>,
    /// Also return the log-sum-exp of the logits (for log-probabilities).
    pub logsumexp: bool,
    /// Choose the next token in the graph ([`crate::ops::sample::Sample`], parameters from
    /// [`Sequence::write_sampler`]) and write it into the history at `pos + tokens`, where the
    /// next step's embedding reads it: steps can then be queued without the host in between.
    pub sample: bool,
    /// With `sample`: only tokens the allowed-token mask ([`Sequence::write_mask`]) sets can
    /// be sampled (constrained decoding). Each step's mask depends on the token before it, so
    /// the host writes it between steps.
    pub masked: bool,
    /// Return the logits of every token, not the top-k of the last one (then `k`, `penalty`,
    /// `logsumexp` and `sample` are unused): scoring a text ([`StepGraph::run_logits`]).
    pub all_logits: bool,
}

/// Where a step's penalties come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Penalty {
    /// A window the host writes before the step ([`Sequence::write_penalty_window`]): `n`
    /// slots and the repetition penalty's bits.
    Window {
        /// Slots of the window.
        n: usize,
        /// `repeat_penalty.to_bits()`.
        repeat_bits: u32,
    },
    /// The last tokens of the history on the GPU, with the amounts of the sampler parameters
    /// (for steps queued before the host knows the tokens before them).
    History,
}

impl StepSpec {
    /// A plain step of `tokens` tokens returning `k` candidates: no penalties, no
    /// log-sum-exp, no sampler.
    pub fn plain(tokens: usize, k: usize) -> Self {
        StepSpec {
            tokens,
            k,
            penalty: None,
            logsumexp: false,
            sample: false,
            masked: false,
            all_logits: false,
        }
    }

    /// Whether this step's head is the plain top-k one (no penalties, no log-sum-exp, no
    /// sampler, one row of logits).
    pub fn plain_head(&self) -> bool {
        self.penalty.is_none() && !self.logsumexp && !self.sample && !self.all_logits
    }

    /// A step of `tokens` tokens that returns the logits of every row ([`StepGraph::run_logits`]):
    /// for scoring a text, not for generating.
    pub fn scoring(tokens: usize) -> Self {
        StepSpec {
            all_logits: true,
            ..StepSpec::plain(tokens, 1)
        }
    }
}

/// What one step returns.
pub struct StepOut {
    /// Top-k (id, logit), best first.
    pub cands: Vec<(u32, f32)>,
    /// log Σ exp(logits), when asked for.
    pub logsumexp: Option<f32>,
}

/// A compiled step: run it at any position of its sequence.
pub struct StepGraph {
    exe: Executable,
    k: usize,
    /// None for a scoring step ([`StepSpec::all_logits`]).
    topk: Option<TensorId>,
    logits: TensorId,
    logsumexp: Option<TensorId>,
    /// The first dispatch that reads the allowed-token mask (masked steps): the forward pass
    /// before it can be queued before the host has written the mask.
    split: Option<usize>,
}

impl StepGraph {
    /// Run `tokens` tokens (already written with [`Sequence::write_tokens`]) at `pos`; returns
    /// the top-k candidates of the last token's logits, best first.
    pub fn run(&self, pos: usize, tokens: usize) -> Result<StepOut> {
        let k = self.k;
        let topk = self
            .topk
            .ok_or_else(|| Error::op("step", "a scoring step returns logits: use run_logits"))?;
        let mut reads = vec![(topk, (2 * k * 4) as u64)];
        reads.extend(self.logsumexp.map(|l| (l, 4)));
        let raw = self
            .exe
            .run_read_many(Step::new(pos as u32, tokens as u32), &reads)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&raw[0]);
        let logsumexp = raw
            .get(1)
            .map(|b| f32::from_bits(bytemuck::pod_read_unaligned::<u32>(&b[..4])));
        Ok(StepOut {
            cands: (0..k)
                .map(|i| (words[i], f32::from_bits(words[k + i])))
                .collect(),
            logsumexp,
        })
    }

    /// Run a scoring step ([`StepSpec::all_logits`]) of `tokens` tokens at `pos`; returns the
    /// logits of every row, `tokens × vocab` values, row by row.
    pub fn run_logits(&self, pos: usize, tokens: usize) -> Result<Vec<f32>> {
        if self.topk.is_some() {
            return Err(Error::op(
                "step",
                "run_logits needs a scoring step (all_logits)",
            ));
        }
        let len = self.exe.tensor(self.logits).size_bytes();
        let raw = self
            .exe
            .run_read(Step::new(pos as u32, tokens as u32), self.logits, len)?;
        Ok(bytemuck::pod_collect_to_vec(&raw))
    }

    /// Queue one run of `tokens` tokens at `pos` followed by `copies` (see
    /// [`Executable::submit_with_copies`]); nothing waits.
    pub fn submit(
        &self,
        pos: usize,
        tokens: usize,
        copies: &[(&Tensor, u64, &wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        self.exe
            .submit_with_copies(Step::new(pos as u32, tokens as u32), copies)
    }

    /// Queue the part of a masked step's run that does not read the mask — the whole forward
    /// pass up to the logits — of `tokens` tokens at `pos`. [`StepGraph::submit_masked_head`]
    /// queues the rest once the mask is written; nothing else may run this graph in between.
    pub fn submit_forward(&self, pos: usize, tokens: usize) -> Result<()> {
        let split = self.split_point()?;
        self.exe
            .submit_part(Some(Step::new(pos as u32, tokens as u32)), 0..split, &[])?;
        Ok(())
    }

    /// Queue the rest of the run [`StepGraph::submit_forward`] began — the masked top-k, the
    /// sampler and what follows — then `copies` (see [`Executable::submit_with_copies`]).
    pub fn submit_masked_head(
        &self,
        copies: &[(&Tensor, u64, &wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        let split = self.split_point()?;
        self.exe
            .submit_part(None, split..self.exe.num_dispatches(), copies)
    }

    fn split_point(&self) -> Result<usize> {
        self.split
            .ok_or_else(|| Error::op("step", "only a masked step can be submitted in two parts"))
    }

    /// The top-k output (u32 `[2k]`: ids, then logits as f32 bits); a scoring step has none.
    pub fn topk_tensor(&self) -> Result<&Tensor> {
        self.topk
            .map(|t| self.exe.tensor(t))
            .ok_or_else(|| Error::op("step", "a scoring step has no top-k output"))
    }

    /// The log-sum-exp output (f32 `[1]`), when the step computes it.
    pub fn logsumexp_tensor(&self) -> Option<&Tensor> {
        self.logsumexp.map(|l| self.exe.tensor(l))
    }

    /// Compute dispatches one run records.
    pub fn num_dispatches(&self) -> usize {
        self.exe.num_dispatches()
    }

    /// The full logits of the last token of the most recent run.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.exe.read_f32(self.logits)
    }

    /// Time every dispatch of one run of `tokens` tokens at `pos` (timestamp queries).
    pub fn profile(&self, pos: usize, tokens: usize) -> Result<Profile> {
        self.exe.run_profiled(Step::new(pos as u32, tokens as u32))
    }
}
