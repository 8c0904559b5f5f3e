//! Sampling helpers that keep the vocabulary on the GPU.
//!
//! [`TopK`]: logits f32 `[1, V]` → u32 `[2k]`: the k best token ids, then their logits as f32
//! bits, sorted by value descending (ties: lower id first); a decode step reads back `8k` bytes
//! instead of `4V`. Two dispatches: per-workgroup top-k candidates into scratch, then a one-workgroup
//! merge; each reads its data once (threads keep sorted private lists) and then runs k cheap
//! selection rounds. `k = 1` is a single-pass argmax. Slots past the number of non-NaN logits hold id
//! `u32::MAX` and `-inf`.
//!
//! [`Penalize`]: repetition, presence and frequency penalties applied in place to the logits
//! of listed token ids.
//!
//! [`PenalizeHistory`]: the same penalties for the distinct tokens of the last `window` tokens
//! of the token history, read on the GPU (no per-step window from the host).
//!
//! [`LogSumExp`]: logits f32 `[1, V]` → f32 `[1]`, `log Σ exp(l)`: with it the log-probability of
//! any returned candidate is `logit − lse`, so log-probs need 4 more bytes of readback, not `4V`.
//!
//! Batched decode ([`PenalizeHistoryRows`], [`LogSumExpRows`], and
//! [`super::sample::TopKSampleRows`]): the same kernels over logits `[B, V]`, one row per
//! sequence, the row as the grid's z (the `ROWS` variants); each row reads its own sequence's
//! place in the pooled history and sampler params from `Step::rows`.

#![warn(missing_docs)]

use super::sample::{
    expect_history, expect_history_pool, expect_params, expect_params_pool, SamplerParams,
};
use super::{
    expect_dtype, expect_inputs, expect_rank, fbits, grid_2d, Arg, KernelCall, Op, RowStep,
    MAX_ROWS,
};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;
/// Largest supported k.
pub const MAX_K: usize = 64;
/// Logits per stage-1 thread: for argmax (a running maximum) and for k > 1 (a sorted private list).
const ITEMS_ARGMAX: u32 = 16;
const ITEMS_TOPK: u32 = 32;
/// Unused slot of [`Penalize`]'s id list (and "no candidate" in [`TopK`]'s output).
pub const NO_TOKEN: u32 = u32::MAX;

/// The `k` largest logits and their token ids.
#[derive(Clone, Debug)]
pub struct TopK {
    /// How many (1 ..= [`MAX_K`]).
    pub k: usize,
}

fn vocab(op: &'static str, logits: &TensorDesc) -> Result<usize> {
    expect_dtype(op, "logits", logits, &[DType::F32])?;
    if logits.rank() == 0 || logits.rows() != 1 || logits.cols() == 0 {
        return Err(Error::op(
            op,
            format!("logits is {logits}: expected one non-empty row [1, vocab]"),
        ));
    }
    Ok(logits.cols())
}

impl TopK {
    fn items(&self) -> u32 {
        if self.k == 1 {
            ITEMS_ARGMAX
        } else {
            ITEMS_TOPK
        }
    }
    fn seg(&self) -> u32 {
        WORKGROUP * self.items()
    }
    fn blocks(&self, v: usize) -> u32 {
        (v as u32).div_ceil(self.seg())
    }
}

impl Op for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        vocab(self.name(), inputs[0])?;
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::op(
                self.name(),
                format!("k = {}: expected 1 ..= {MAX_K}", self.k),
            ));
        }
        Ok(vec![TensorDesc::new(DType::U32, [2 * self.k])])
    }

    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        let v = inputs.first().map_or(1, |l| l.cols());
        vec![self.scratch_bytes(v, 1)]
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let v = vocab(self.name(), inputs[0])?;
        self.calls(caps, v, None)
    }
}

impl TopK {
    /// The two passes over logits rows of `v`: one row (`rows` None), or `rows = Some(B)` rows
    /// of a batched step (the `ROWS` variants, row = `workgroup_id.z`; scratch and output are
    /// per row).
    pub(crate) fn calls(
        &self,
        caps: &Caps,
        v: usize,
        rows: Option<usize>,
    ) -> Result<Vec<KernelCall>> {
        let v = v as u32;
        let nb = self.blocks(v as usize);
        let [gx, gy, _] = grid_2d(nb, caps.max_workgroups_per_dim);
        let gz = batch_grid(self.name(), caps, rows)?;
        let k = self.k as u32;
        let n_cand = nb * k;
        let params = [v, n_cand, gx, self.seg(), 0, 0, 0, 0];
        let common = |entry| {
            let c = KernelCall::new("topk.wgsl", entry)
                .define("K", k)
                .define("WG", WORKGROUP)
                .define("SUBGROUPS", caps.subgroups as u32)
                .define("K1", (k == 1) as u32)
                .params(&params);
            match rows {
                Some(_) => c.define("ROWS", 1),
                None => c,
            }
        };
        Ok(vec![
            common("topk_partial")
                .define("ITEMS", self.items())
                .args(&[Arg::In(0), Arg::Scratch(0)])
                .workgroups(gx, gy, gz),
            common("topk_final")
                .define("FINAL", 1)
                .define("ITEMS", n_cand.div_ceil(WORKGROUP))
                .args(&[Arg::Scratch(0), Arg::Out(0)])
                .workgroups(1, 1, gz),
        ])
    }

    /// Scratch bytes for `rows` rows of `v` logits: each row's per-workgroup candidates.
    pub(crate) fn scratch_bytes(&self, v: usize, rows: usize) -> u64 {
        rows as u64 * self.blocks(v) as u64 * self.k as u64 * 8
    }
}

/// A batched step's logits f32 `[B, V]`, 1 ≤ B ≤ [`MAX_ROWS`], V ≥ 1: (B, V).
pub(crate) fn batch_vocab(op: &'static str, logits: &TensorDesc) -> Result<(usize, usize)> {
    expect_dtype(op, "logits", logits, &[DType::F32])?;
    let (b, v) = (logits.rows(), logits.cols());
    if logits.rank() != 2 || b == 0 || b > MAX_ROWS || v == 0 {
        return Err(Error::op(
            op,
            format!(
                "logits is {logits}: expected [rows, vocab] with 1 ≤ rows ≤ {MAX_ROWS} (one row \
                 per sequence of a batched step) and vocab ≥ 1"
            ),
        ));
    }
    Ok((b, v))
}

/// The z extent of a grid whose z is the batched step's row (1 for single-row kernels).
fn batch_grid(op: &'static str, caps: &Caps, rows: Option<usize>) -> Result<u32> {
    let b = rows.unwrap_or(1) as u32;
    if b > caps.max_workgroups_per_dim {
        return Err(Error::op(
            op,
            format!(
                "{b} rows: the device dispatches at most {} workgroups per dimension",
                caps.max_workgroups_per_dim
            ),
        ));
    }
    Ok(b)
}

/// CPU reference: the `k` best (id, value) pairs, value descending, ties by lower id, NaN
/// skipped, padded with `(NO_TOKEN, -inf)`.
pub fn topk_cpu(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut idx: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| !logits[i as usize].is_nan())
        .collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    let mut vals: Vec<f32> = idx.iter().map(|&i| logits[i as usize]).collect();
    idx.resize(k, NO_TOKEN);
    vals.resize(k, f32::NEG_INFINITY);
    (idx, vals)
}

/// Repetition / presence / frequency penalties, in place on logits `[1, V]`, for the ids of
/// `ids` u32 `[P]` with their occurrence counts in `counts` f32 `[P]`:
/// `l = l > 0 ? l / repeat : l · repeat; l -= presence + frequency · count`.
/// The id list has a fixed capacity `P`; unused slots hold [`NO_TOKEN`]; ids must be distinct.
/// The host rewrites `ids`/`counts` between steps.
#[derive(Clone, Debug)]
pub struct Penalize {
    /// Repetition penalty: positive logits divided by it, negative ones multiplied (1 = off).
    pub repeat: f32,
    /// Subtracted once from the logit of every listed token.
    pub presence: f32,
    /// Subtracted once per occurrence.
    pub frequency: f32,
}

const PENALIZE_WG: u32 = 64;

impl Op for Penalize {
    fn name(&self) -> &'static str {
        "penalize"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 3)?;
        vocab(name, inputs[0])?;
        let (ids, counts) = (inputs[1], inputs[2]);
        expect_dtype(name, "ids", ids, &[DType::U32])?;
        expect_rank(name, "ids", ids, 1)?;
        expect_dtype(name, "counts", counts, &[DType::F32])?;
        if counts.shape != ids.shape {
            return Err(Error::op(
                name,
                format!("ids is {ids} and counts is {counts}: expected the same length"),
            ));
        }
        if !(self.repeat.is_finite() && self.repeat > 0.0) {
            return Err(Error::op(
                name,
                format!(
                    "repetition penalty {}: expected a positive number",
                    self.repeat
                ),
            ));
        }
        Ok(Vec::new())
    }

    fn kernels(&self, _caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let v = inputs[0].cols() as u32;
        let p = inputs[1].numel() as u32;
        Ok(vec![KernelCall::new("topk.wgsl", "penalize")
            .define("PENALIZE", 1)
            .define("WG", PENALIZE_WG)
            .params(&[
                v,
                p,
                0,
                0,
                fbits(self.repeat),
                fbits(self.presence),
                fbits(self.frequency),
                0,
            ])
            .args(&[Arg::InOut(0), Arg::In(1), Arg::In(2)])
            .workgroups(p.div_ceil(PENALIZE_WG).max(1), 1, 1)])
    }
}

/// CPU reference of [`Penalize`].
pub fn penalize_cpu(
    logits: &mut [f32],
    ids: &[u32],
    counts: &[f32],
    repeat: f32,
    presence: f32,
    frequency: f32,
) {
    for (&id, &c) in ids.iter().zip(counts) {
        if let Some(l) = logits.get_mut(id as usize) {
            let x = if *l > 0.0 { *l / repeat } else { *l * repeat };
            *l = x - (presence + frequency * c);
        }
    }
}

/// [`Penalize`] with its window taken from the token history on the GPU: inputs (0) logits f32
/// `[1, V]` (in place), (1) [`SamplerParams`] u32 `[16]` (`repeat_penalty`, `presence`,
/// `frequency`, `window`), (2) history u32 `[capacity]`. Each distinct id among
/// `history[max(0, end − window) .. end]`, `end = min(Step::kv_len, capacity)` (the window ends
/// at the token just run), is penalised once with its count in the window; ids ≥ V are
/// ignored. No outputs. One workgroup whose threads stride over the window.
#[derive(Clone, Debug)]
pub struct PenalizeHistory;

impl Op for PenalizeHistory {
    fn name(&self) -> &'static str {
        "penalize_history"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 3)?;
        vocab(name, inputs[0])?;
        expect_params(name, inputs[1])?;
        expect_history(name, inputs[2])?;
        Ok(Vec::new())
    }

    fn kernels(&self, _caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let v = vocab(self.name(), inputs[0])? as u32;
        let capacity = inputs[2].numel() as u32;
        Ok(vec![KernelCall::new("topk.wgsl", "penalize_history")
            .define("PENALIZE_HISTORY", 1)
            .define("WG", WORKGROUP)
            .params(&[v, capacity, 0, 0, 0, 0, 0, 0])
            .args(&[Arg::InOut(0), Arg::In(1), Arg::In(2)])
            .workgroups(1, 1, 1)])
    }
}

/// [`PenalizeHistory`] for a batched step (one row per sequence, see [`RowStep`]): inputs (0)
/// logits f32 `[B, V]` (in place), (1) the pooled [`SamplerParams`] u32 `[S·16]`, (2) the
/// pooled token history u32 `[H]`. Row `t`, with `Step::rows[t] = (pos, _, base, slot)`, is
/// penalised exactly as [`PenalizeHistory`] penalises one row at `kv_len = pos + 1`, with slot
/// `slot`'s params and the history `history[base .. base + history_len]` (the window ends at
/// `min(pos + 1, history_len)`). No outputs. One workgroup per row (grid z).
#[derive(Clone, Debug)]
pub struct PenalizeHistoryRows {
    /// Words of each sequence's history (its context + 1), the same for every sequence.
    pub history_len: usize,
}

impl Op for PenalizeHistoryRows {
    fn name(&self) -> &'static str {
        "penalize_history_rows"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 3)?;
        batch_vocab(name, inputs[0])?;
        expect_params_pool(name, inputs[1])?;
        expect_history_pool(name, inputs[2], self.history_len)?;
        Ok(Vec::new())
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (b, v) = batch_vocab(self.name(), inputs[0])?;
        let gz = batch_grid(self.name(), caps, Some(b))?;
        Ok(vec![KernelCall::new("topk.wgsl", "penalize_history")
            .define("PENALIZE_HISTORY", 1)
            .define("ROWS", 1)
            .define("WG", WORKGROUP)
            .params(&[v as u32, self.history_len as u32, 0, 0, 0, 0, 0, 0])
            .args(&[Arg::InOut(0), Arg::In(1), Arg::In(2)])
            .workgroups(1, 1, gz)])
    }
}

/// CPU reference of [`PenalizeHistoryRows`]: [`penalize_history_cpu`] on each row of `logits`
/// (`rows.len()` rows of `logits.len() / rows.len()`) with its slot's params and its sequence's
/// history. Slots and history windows must lie inside `params` and `history`.
pub fn penalize_history_rows_cpu(
    logits: &mut [f32],
    rows: &[RowStep],
    params: &[SamplerParams],
    history: &[u32],
    history_len: usize,
) {
    let v = logits.len() / rows.len().max(1);
    for (l, r) in logits.chunks_mut(v).zip(rows) {
        let base = r.history_base as usize;
        let h = &history[base..base + history_len];
        penalize_history_cpu(l, h, r.pos + 1, &params[r.slot as usize]);
    }
}

/// CPU reference of [`PenalizeHistory`]: the window's distinct ids and counts (as the session
/// computes its penalty window), then [`penalize_cpu`].
pub fn penalize_history_cpu(logits: &mut [f32], history: &[u32], kv_len: u32, p: &SamplerParams) {
    let end = (kv_len as usize).min(history.len());
    let start = end - end.min(p.window as usize);
    let mut window = history[start..end].to_vec();
    window.sort_unstable();
    let (mut ids, mut counts) = (Vec::new(), Vec::new());
    for run in window.chunk_by(|a, b| a == b) {
        ids.push(run[0]);
        counts.push(run.len() as f32);
    }
    penalize_cpu(
        logits,
        &ids,
        &counts,
        p.repeat_penalty,
        p.presence,
        p.frequency,
    );
}

/// `log Σ_i exp(logits[i])` over one row, NaN skipped; `-inf` when no finite-or-`-inf` logit
/// remains (all NaN) or all are `-inf`; `+inf` when a logit is `+inf`. One workgroup: each
/// thread keeps an online (max, sum) over a strided slice, merged through workgroup memory.
#[derive(Clone, Debug)]
pub struct LogSumExp;

impl Op for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        vocab(self.name(), inputs[0])?;
        Ok(vec![TensorDesc::f32([1])])
    }

    fn kernels(&self, _caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let v = vocab(self.name(), inputs[0])? as u32;
        Ok(vec![KernelCall::new("topk.wgsl", "logsumexp")
            .define("LOGSUMEXP", 1)
            .define("WG", WORKGROUP)
            .params(&[v, 0, 0, 0, 0, 0, 0, 0])
            .args(&[Arg::In(0), Arg::Out(0)])
            .workgroups(1, 1, 1)])
    }
}

/// [`LogSumExp`] of each row of a batched step: logits f32 `[B, V]` (1 ≤ B ≤ [`MAX_ROWS`]) →
/// f32 `[B]`, row `t`'s value exactly [`LogSumExp`]'s of that row alone (the same kernel, its
/// row = grid z; CPU reference: [`logsumexp_cpu`] per row).
#[derive(Clone, Debug)]
pub struct LogSumExpRows;

impl Op for LogSumExpRows {
    fn name(&self) -> &'static str {
        "logsumexp_rows"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        let (b, _) = batch_vocab(self.name(), inputs[0])?;
        Ok(vec![TensorDesc::f32([b])])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (b, v) = batch_vocab(self.name(), inputs[0])?;
        let gz = batch_grid(self.name(), caps, Some(b))?;
        Ok(vec![KernelCall::new("topk.wgsl", "logsumexp")
            .define("LOGSUMEXP", 1)
            .define("ROWS", 1)
            .define("WG", WORKGROUP)
            .params(&[v as u32, 0, 0, 0, 0, 0, 0, 0])
            .args(&[Arg::In(0), Arg::Out(0)])
            .workgroups(1, 1, gz)])
    }
}

/// CPU reference of [`LogSumExp`] (f64 inside).
pub fn logsumexp_cpu(logits: &[f32]) -> f32 {
    let m = logits
        .iter()
        .filter(|x| !x.is_nan())
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    if !m.is_finite() {
        return m as f32;
    }
    let s: f64 = logits
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| (x as f64 - m).exp())
        .sum();
    (m + s.ln()) as f32
}
