//! Batched decode: one forward pass advances several sequences by a token each.
//!
//! A [`Pool`] holds the GPU state of `slots` sequences in shared buffers — per layer one K and
//! one V cache of `total` rows, one token history of `total` words, one array of sampler
//! parameters — and hands out each slot's [`Sequence`] as views of its [`Region`] of them, so a
//! slot runs its own steps (prefill, constrained decoding, scoring) exactly as a lone sequence
//! does. Regions start as an even share (`ctx` tokens each) and are moved and resized per
//! request ([`Pool::sequence_in`], [`super::regions::place`]): one long conversation can use
//! the rows short ones leave free. A [`BatchGraph`] is the forward pass of `rows` slots at once
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
use super::regions::Region;
use super::step::{check_cache_size, KvType, Sequence};
use super::Model;

/// The pooled GPU state of several sequences (see the module docs).
pub struct Pool {
    cache: KvCache,
    history: Tensor,
    sampler: Tensor,
    slots: usize,
    ctx: usize,
    /// Rows of the pooled cache (and words of the pooled history).
    total: usize,
    /// Regions are whole granules: every view starts at an aligned offset.
    granule: usize,
    /// Each slot's region (`None`: none yet).
    regions: std::sync::Mutex<Vec<Option<Region>>>,
}

/// `n` rounded up to a multiple of `m`.
fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m.max(1)) * m.max(1)
}

/// The fewest rows (a multiple of 64) whose K/V rows of `row_bytes` and history words both
/// span a multiple of `align` bytes, so a region of whole granules starts every view aligned.
fn granule(row_bytes: usize, align: usize) -> usize {
    let mut g = 64;
    while !(g * row_bytes).is_multiple_of(align) || !(g * 4).is_multiple_of(align) {
        g += 64;
    }
    g
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
        let granule = granule(row_bytes, align);
        // An even share holds `ctx` tokens and the history word after them.
        let share = round_up(ctx + 1, granule);
        let rows = slots
            .checked_mul(share)
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
            history: gpu.empty("history_pool", TensorDesc::new(DType::U32, [rows]))?,
            sampler: gpu.empty(
                "sampler_pool",
                TensorDesc::new(DType::U32, [slots * SAMPLER_PARAMS_WORDS]),
            )?,
            slots,
            ctx,
            total: rows,
            granule,
            regions: std::sync::Mutex::new(
                (0..slots)
                    .map(|i| {
                        Some(Region {
                            base: i * share,
                            rows: share,
                        })
                    })
                    .collect(),
            ),
        })
    }

    /// Rows of the pooled cache: a region holds at most this many (a sequence in it one less).
    pub fn total_rows(&self) -> usize {
        self.total
    }

    /// Regions are whole multiples of this many rows.
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// The most tokens one sequence can hold (a region of the whole pool).
    pub fn max_tokens(&self) -> usize {
        self.total - 1
    }

    /// Each slot's region now.
    pub fn regions(&self) -> Vec<Option<Region>> {
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn region(&self, slot: usize) -> Option<Region> {
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(slot)
            .copied()
            .flatten()
    }

    /// Sequences the pool holds.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Tokens of an even share (each slot's first region holds this many).
    pub fn ctx(&self) -> usize {
        self.ctx
    }

    /// Slot `slot`'s sequence in its current region: views of its rows of the pooled buffers
    /// (and its own small buffers for the steps it runs alone).
    pub fn sequence(&self, model: &Model, slot: usize) -> Result<Sequence> {
        let region = self
            .region(slot)
            .ok_or_else(|| Error::op("pool", format!("slot {slot} has no region")))?;
        self.sequence_in(model, slot, region)
    }

    /// Slot `slot`'s sequence in `region` (whole granules within the pool), which becomes the
    /// slot's: batched steps find its rows there from now on. The caller makes sure no other
    /// slot's running work uses those rows.
    pub fn sequence_in(&self, model: &Model, slot: usize, region: Region) -> Result<Sequence> {
        let ok = region.rows >= 2
            && region.end() <= self.total
            && region.base.is_multiple_of(self.granule)
            && region.rows.is_multiple_of(self.granule);
        if slot >= self.slots || !ok {
            return Err(Error::op(
                "pool",
                format!(
                    "slot {slot}, {region:?} of a pool of {} slots and {} rows in granules of {}",
                    self.slots, self.total, self.granule
                ),
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
        let ctx = region.rows - 1;
        let shape = vec![ctx, cfg.num_key_value_heads, cfg.head_dim];
        let at = region.base * row;
        let k = (self.cache.k.iter())
            .map(|t| view(t, shape.clone(), at))
            .collect::<Result<Vec<_>>>()?;
        let v = (self.cache.v.iter())
            .map(|t| view(t, shape.clone(), at))
            .collect::<Result<Vec<_>>>()?;
        let history = view(&self.history, vec![ctx + 1], region.base)?;
        let sampler_at = (slot * SAMPLER_PARAMS_WORDS * 4) as u64;
        let seq = Sequence::with_buffers(
            model,
            k,
            v,
            history,
            Some((self.sampler.clone(), sampler_at)),
        )?;
        if let Some(r) = self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(slot)
        {
            *r = Some(region);
        }
        Ok(seq)
    }

    /// Forget slot `slot`'s region (its rows are another's now).
    pub fn release(&self, slot: usize) {
        if let Some(r) = self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(slot)
        {
            *r = None;
        }
    }

    /// Where slot `slot`'s token at position `pos` lives, for a batched step's rows table (a
    /// slot without a region points at row 0: it has no steps to batch).
    pub fn row(&self, slot: usize, pos: usize) -> RowStep {
        let base = self.region(slot).map_or(0, |r| r.base) as u32;
        RowStep {
            pos: pos as u32,
            cache_base: base,
            history_base: base,
            slot: slot as u32,
        }
    }

    /// The pooled token history; slot `s`'s token at position `p` is word
    /// `row(s, p).history_base + p` (its region's rows, one word each).
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
            // Any region's capacity bounds positions; attention is split for an even share.
            (self.max_tokens(), self.ctx),
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
