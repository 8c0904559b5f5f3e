//! Batched decode: one forward pass advances several sequences by a token each.
//!
//! A [`Pool`] holds the GPU state of `slots` sequences in shared buffers — per layer one K and
//! one V cache of `slots × stride` rows, one token history of `slots × history_stride` words,
//! one array of sampler parameters — and hands out each slot's [`Sequence`] as views into them,
//! so a slot runs its own steps (prefill, constrained decoding, scoring) exactly as a lone
//! sequence does. A [`BatchGraph`] is the forward pass of `rows` slots at once
//! ([`llama::forward_rows`]): the matmuls read every weight once for all rows, and each row's
//! RoPE, cache write, attention, penalties and sampler use its own sequence, located by the
//! step's rows table ([`RowStep`]). The graph for a batch shape is compiled once and run with
//! any rows; between runs only the step uniform changes.

#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::graph::{Executable, TensorId};
use crate::ops::sample::{SamplerParams, SAMPLER_PARAMS_WORDS};
use crate::ops::{RowStep, Step, MAX_ROWS};
use crate::tensor::{DType, Tensor, TensorDesc};

use super::llama::{self, KvCache, RowsHead};
use super::step::{check_cache_size, KvType, Sequence};
use super::Model;

/// The pooled GPU state of several sequences (see the module docs).
pub struct Pool {
    cache: KvCache,
    history: Tensor,
    sampler: Tensor,
    slots: usize,
    ctx: usize,
    stride: usize,
    history_stride: usize,
}

/// `n` rounded up to a multiple of `m`.
fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m.max(1)) * m.max(1)
}

/// Elements of `bytes` bytes each per slot so a slot's view starts at an offset aligned to
/// `align` bytes: `n` rounded up.
fn aligned_stride(n: usize, bytes: usize, align: usize) -> usize {
    let mut s = n;
    while !(s * bytes).is_multiple_of(align) {
        s += 1;
    }
    s
}

impl Pool {
    /// Buffers for `slots` sequences of up to `ctx` tokens each. The whole cache's size is
    /// checked before the device is touched (an error names the limit and what to lower).
    pub fn new(model: &Model, slots: usize, ctx: usize, kv: KvType) -> Result<Pool> {
        if slots == 0 || slots > 4096 {
            return Err(Error::Config(format!(
                "a pool of {slots} sequences: expected 1 ..= 4096"
            )));
        }
        let cfg = &model.config;
        let gpu = &model.ctx;
        let align = gpu.caps.storage_offset_align.max(4) as usize;
        let row_bytes = cfg.num_key_value_heads * cfg.head_dim * kv.bytes() as usize;
        let stride = aligned_stride(ctx.max(1), row_bytes, align);
        let history_stride = round_up(ctx + 1, align / 4);
        let rows = slots
            .checked_mul(stride)
            .ok_or_else(|| Error::Config(format!("{slots} slots of {ctx} tokens: too many")))?;
        check_cache_size(model, ctx, rows, kv)?;
        let desc = TensorDesc::new(kv.dtype(), [rows, cfg.num_key_value_heads, cfg.head_dim]);
        let mut k = Vec::new();
        let mut v = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            k.push(gpu.empty(&format!("k_pool.{i}"), desc.clone())?);
            v.push(gpu.empty(&format!("v_pool.{i}"), desc.clone())?);
        }
        Ok(Pool {
            cache: KvCache {
                k,
                v,
                capacity: rows,
                sync: gpu.empty(
                    "attention_sync",
                    TensorDesc::new(DType::U32, [cfg.num_key_value_heads]),
                )?,
            },
            history: gpu.empty(
                "history_pool",
                TensorDesc::new(DType::U32, [slots * history_stride]),
            )?,
            sampler: gpu.empty(
                "sampler_pool",
                TensorDesc::new(DType::U32, [slots * SAMPLER_PARAMS_WORDS]),
            )?,
            slots,
            ctx,
            stride,
            history_stride,
        })
    }

    /// Sequences the pool holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens each sequence holds at most.
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Slot `slot`'s sequence: views of its rows of the pooled buffers (and its own small
    /// buffers for the steps it runs alone).
    pub fn sequence(&self, model: &Model, slot: usize) -> Result<Sequence> {
        if slot >= self.slots {
            return Err(Error::op(
                "pool",
                format!("slot {slot} of a pool of {}", self.slots),
            ));
        }
        let view = |t: &Tensor, shape: Vec<usize>, elem_offset: usize| -> Result<Tensor> {
            let (buffer, base) = t
                .buffer()
                .ok_or_else(|| Error::op("pool", "a pooled buffer lives in a texel image"))?;
            let desc = TensorDesc::new(t.desc.dtype, shape);
            let bytes = t.desc.dtype.bytes_for(elem_offset) as u64;
            Ok(Tensor::in_buffer(desc, buffer.clone(), base + bytes))
        };
        let cfg = &model.config;
        let row = cfg.num_key_value_heads * cfg.head_dim;
        let shape = vec![self.ctx, cfg.num_key_value_heads, cfg.head_dim];
        let at = slot * self.stride * row;
        let k = (self.cache.k.iter())
            .map(|t| view(t, shape.clone(), at))
            .collect::<Result<Vec<_>>>()?;
        let v = (self.cache.v.iter())
            .map(|t| view(t, shape.clone(), at))
            .collect::<Result<Vec<_>>>()?;
        let history = view(
            &self.history,
            vec![self.ctx + 1],
            slot * self.history_stride,
        )?;
        let sampler_at = (slot * SAMPLER_PARAMS_WORDS * 4) as u64;
        Sequence::with_buffers(
            model,
            k,
            v,
            history,
            Some((self.sampler.clone(), sampler_at)),
        )
    }

    /// Where slot `slot`'s token at position `pos` lives, for a batched step's rows table.
    pub fn row(&self, slot: usize, pos: usize) -> RowStep {
        RowStep {
            pos: pos as u32,
            cache_base: (slot * self.stride) as u32,
            history_base: (slot * self.history_stride) as u32,
            slot: slot as u32,
        }
    }

    /// The pooled token history; slot `s`'s token at position `p` is word
    /// `row(s, p).history_base + p`.
    pub fn history(&self) -> &Tensor {
        &self.history
    }

    /// Write slot `slot`'s sampler parameters where batched steps read them (a slot's
    /// [`Sequence::write_sampler`] does this too).
    pub fn write_sampler(&self, model: &Model, slot: usize, p: &SamplerParams) -> Result<()> {
        let at = (slot * SAMPLER_PARAMS_WORDS * 4) as u64;
        model
            .ctx
            .write(&self.sampler, at, bytemuck::cast_slice(&p.words()))
    }

    /// Compile the batched forward pass of `rows` sequences with `head`.
    pub fn compile(&self, model: &Model, rows: usize, head: RowsHead) -> Result<BatchGraph> {
        if rows == 0 || rows > MAX_ROWS.min(self.slots) {
            return Err(Error::op(
                "batch",
                format!(
                    "a batch of {rows} rows: expected 1 ..= {}",
                    MAX_ROWS.min(self.slots)
                ),
            ));
        }
        let fwd = llama::forward_rows(
            &model.config,
            &model.weights,
            &self.cache,
            (&self.history, &self.sampler),
            rows,
            self.ctx,
            head,
        )?;
        let topk = fwd
            .topk
            .ok_or_else(|| Error::op("batch", "the batched head built no top-k"))?;
        let mut keep = vec![fwd.logits, topk];
        keep.extend(fwd.logsumexp);
        let exe = fwd.graph.compile(&model.ctx, &keep)?;
        Ok(BatchGraph {
            exe,
            rows,
            head,
            topk,
            logits: fwd.logits,
            logsumexp: fwd.logsumexp,
        })
    }
}

/// A compiled batched step: `rows` sequences of a [`Pool`], one token each.
pub struct BatchGraph {
    exe: Executable,
    rows: usize,
    head: RowsHead,
    topk: TensorId,
    logits: TensorId,
    logsumexp: Option<TensorId>,
}

impl BatchGraph {
    /// Rows (sequences) one run advances.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The head it was compiled with.
    pub fn head(&self) -> RowsHead {
        self.head
    }

    /// Queue one run over `rows` (exactly [`BatchGraph::rows`] of them, on distinct slots)
    /// followed by `copies` (see [`Executable::submit_with_copies`]); nothing waits.
    pub fn submit(
        &self,
        rows: &[RowStep],
        copies: &[(&Tensor, u64, &wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        if rows.len() != self.rows {
            return Err(Error::op(
                "batch",
                format!("{} rows for a graph of {}", rows.len(), self.rows),
            ));
        }
        self.exe.submit_with_copies(Step::batch(rows)?, copies)
    }

    /// The top-k output (u32 `[rows, 2k]`: per row k ids, then k logits as f32 bits).
    pub fn topk_tensor(&self) -> &Tensor {
        self.exe.tensor(self.topk)
    }

    /// The log-sum-exp output (f32 `[rows]`), when the head computes it.
    pub fn logsumexp_tensor(&self) -> Option<&Tensor> {
        self.logsumexp.map(|l| self.exe.tensor(l))
    }

    /// The logits of every row of the most recent run, `[rows, vocab]` row by row.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.exe.read_f32(self.logits)
    }

    /// Compute dispatches one run records.
    pub fn num_dispatches(&self) -> usize {
        self.exe.num_dispatches()
    }

    /// Time every dispatch of one run over `rows` (timestamp queries).
    pub fn profile(&self, rows: &[RowStep]) -> Result<crate::graph::Profile> {
        self.exe.run_profiled(Step::batch(rows)?)
    }
}
