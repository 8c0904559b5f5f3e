//! Causal attention over the KV cache (grouped-query heads, no K/V copies).
//!
//! Inputs: `q` f32 `[T, Hq·D]` (rotated), `k_cache`, `v_cache` `[C, Hkv, D]` (f32 or f16).
//! Output: f32 `[T, Hq·D]`. Query token `t` sits at position `step.pos + t` and attends to cache
//! rows `0 ..= step.pos + t`; query head `h` reads kv head `h / (Hq / Hkv)`.
//!
//! - `T > 1` (prefill): one flash-attention dispatch; each workgroup takes a block of tokens and
//!   one kv head, so the query heads of a GQA group share every K/V tile it loads.
//! - `T == 1` (decode): split-K. The keys `0 .. kv_len` are cut into `chunks` pieces of
//!   `max(min_chunk, ceil(kv_len / chunks))` rows (decided at run time from the step, so the grid
//!   is static); a first dispatch writes `(max, sum, unnormalized output)` per (chunk, head) into
//!   scratch, a second merges them. Chunks past `kv_len` are skipped by both.

#![warn(missing_docs)]

use super::rope::{check_cache, check_fits_cache, check_heads, check_pooled};
use super::{expect_dtype, expect_inputs, expect_rank, fbits, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Causal multi-head attention over the KV cache, with the default decode split.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (a divisor of `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one head (a multiple of 4, at most 256).
    pub head_dim: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

/// Decode split-K geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSplit {
    /// Chunks (workgroups per kv head) of the decode pass.
    pub chunks: u32,
    /// Fewest keys per chunk: short caches use fewer chunks instead of tiny ones.
    pub min_chunk: u32,
}

/// Fewest keys per decode chunk by default.
pub const MIN_CHUNK: u32 = 32;
/// Most decode chunks by default.
pub const MAX_CHUNKS: u32 = 64;
/// Keys per decode chunk at full context by default.
pub const FULL_CHUNK: usize = 128;

impl DecodeSplit {
    /// The default for a cache of `capacity` rows: chunks of [`FULL_CHUNK`] rows at full context
    /// (at most [`MAX_CHUNKS`] of them), never under [`MIN_CHUNK`] rows. A decode step has
    /// only `Hkv` rows of work per chunk, so the chunks are what fills a large GPU.
    pub fn for_capacity(capacity: usize) -> Self {
        DecodeSplit {
            chunks: (capacity.div_ceil(FULL_CHUNK) as u32).clamp(1, MAX_CHUNKS),
            min_chunk: MIN_CHUNK,
        }
    }
}

/// [`Attention`] with an explicit decode split (tests, tuning).
#[derive(Clone, Debug)]
pub struct AttentionSplit {
    /// The attention to compute.
    pub attn: Attention,
    /// How decode steps split the cache.
    pub split: DecodeSplit,
}

/// Most query heads per kv head (one workgroup thread per head in the softmax step).
pub const MAX_GROUP: usize = DECODE_WG as usize;
const PREFILL_WG: u32 = 128;
/// Threads of a decode (split) workgroup.
pub(crate) const DECODE_WG: u32 = 64;
const REDUCE_WG: u32 = 64;
/// Query rows (token × head pairs) a prefill workgroup aims for.
const PREFILL_ROWS: usize = 16;
/// Largest workgroup storage the kernels plan for, even where the device offers more.
const STORAGE_BUDGET: u32 = 32 * 1024;

/// Tile sizes of one attention variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiles {
    /// Query tokens per workgroup.
    pub(crate) bq: usize,
    /// Keys per K/V tile.
    pub(crate) bk: usize,
}

pub(crate) fn storage_bytes(r: usize, bk: usize, d4: usize) -> usize {
    16 * (r * (d4 + 1) + bk * (d4 + 1) + bk * d4) + 4 * (r * bk + 3 * r)
}

/// Largest tiles that fit the workgroup storage: keys per tile first (fewer barriers), then
/// tokens per block.
pub(crate) fn choose_tiles(g: usize, d: usize, decode: bool, limit: u32) -> Option<Tiles> {
    let d4 = d / 4;
    let limit = limit.min(STORAGE_BUDGET) as usize;
    let mut bq = if decode { 1 } else { (PREFILL_ROWS / g).max(1) };
    loop {
        for bk in [32, 16, 8] {
            if storage_bytes(bq * g, bk, d4) <= limit {
                return Some(Tiles { bq, bk });
            }
        }
        if bq == 1 {
            break;
        }
        bq /= 2;
    }
    [4, 2, 1]
        .into_iter()
        .find(|&bk| storage_bytes(g, bk, d4) <= limit)
        .map(|bk| Tiles { bq: 1, bk })
}

impl Attention {
    fn check(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = "attention";
        expect_inputs(name, inputs, 3)?;
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        check_heads(name, hq, hkv, d)?;
        if hq / hkv > MAX_GROUP {
            return Err(Error::op(
                name,
                format!("{hq} query heads share each of {hkv} kv heads: at most {MAX_GROUP} per kv head are supported"),
            ));
        }
        let q = inputs[0];
        expect_dtype(name, "q", q, &[DType::F32])?;
        expect_rank(name, "q", q, 2)?;
        if q.shape[1] != hq * d || q.shape[0] == 0 {
            return Err(Error::op(
                name,
                format!(
                    "q is {q}: expected [tokens, {}] (heads {hq} · head_dim {d})",
                    hq * d
                ),
            ));
        }
        check_cache(name, "k_cache", inputs[1], hkv, d)?;
        check_cache(name, "v_cache", inputs[2], hkv, d)?;
        if inputs[1] != inputs[2] {
            return Err(Error::op(
                name,
                format!(
                    "k_cache is {} but v_cache is {}: expected the same",
                    inputs[1], inputs[2]
                ),
            ));
        }
        check_fits_cache(name, "q", q, inputs[1])?;
        Ok(vec![q.clone()])
    }

    fn scratch_with(&self, split: DecodeSplit, inputs: &[&TensorDesc], batch: bool) -> Vec<u64> {
        let rows = inputs.first().map_or(0, |q| q.rows());
        if rows == 0 || (rows != 1 && !batch) {
            return Vec::new();
        }
        let slots = rows as u64 * split.chunks as u64 * self.n_heads as u64;
        vec![slots * self.head_dim as u64 * 4, slots * 8]
    }

    /// The kernel calls with an explicit decode split; `batch`: a batched decode step over
    /// sequences of that many rows each ([`AttentionRows`]).
    pub(crate) fn kernels_with(
        &self,
        split: DecodeSplit,
        caps: &Caps,
        inputs: &[&TensorDesc],
        batch: Option<usize>,
    ) -> Result<Vec<KernelCall>> {
        let (q, kc) = (inputs[0], inputs[1]);
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let g = hq / hkv;
        let t = q.rows();
        let decode = t == 1 || batch.is_some();
        // Decode grids take one workgroup layer per row (sequence) of a batched step.
        let rows = if batch.is_some() { t as u32 } else { 1 };
        let cap = batch.unwrap_or(kc.shape[0]);
        let tiles = choose_tiles(g, d, decode, caps.max_workgroup_storage).ok_or_else(|| {
            Error::op(
                "attention",
                format!(
                    "head_dim {d} with {g} query heads per kv head needs more workgroup storage \
                     than the device's {} bytes",
                    caps.max_workgroup_storage
                ),
            )
        })?;
        let wg = if decode { DECODE_WG } else { PREFILL_WG };
        let r = tiles.bq * g;
        let d4 = d / 4;
        let params = [
            t as u32,
            hq as u32,
            hkv as u32,
            fbits(self.scale),
            split.chunks.max(1),
            split.min_chunk.max(1),
            cap as u32,
            0,
        ];
        let call = KernelCall::new("attention.wgsl", "attn")
            .define("D4", d4)
            .define("G", g)
            .define("BQ", tiles.bq)
            .define("BK", tiles.bk)
            .define("R", r)
            .define("WG", wg)
            .define("ACC", (r * d4).div_ceil(wg as usize))
            .define("QS_LEN", r * (d4 + 1))
            .define("KS_LEN", tiles.bk * (d4 + 1))
            .define("VS_LEN", tiles.bk * d4)
            .define("SS_LEN", r * tiles.bk)
            .define("KV_F16", (kc.dtype == DType::F16) as u32)
            .define("BATCH", batch.is_some() as u32)
            .params(&params);
        if !decode {
            let blocks = t.div_ceil(tiles.bq) as u32;
            if blocks > caps.max_workgroups_per_dim {
                return Err(Error::op(
                    "attention",
                    format!("q is {q}: too many tokens for one dispatch"),
                ));
            }
            return Ok(vec![call
                .args(&[Arg::In(0), Arg::In(1), Arg::In(2), Arg::Out(0)])
                .workgroups(blocks, hkv as u32, 1)]);
        }
        let chunks = split.chunks.max(1);
        let sg = caps.subgroup_min;
        let qu_bytes = (t * hq * d * 4) as u64;
        if caps.cpu
            && caps.subgroups
            && sg > 0
            && sg == caps.subgroup_max
            && d4.is_multiple_of(2 * sg as usize)
            && qu_bytes <= caps.uniform_window
            && hkv as u64 * sg as u64 <= caps.max_invocations as u64
        {
            return Ok(vec![
                KernelCall::new("attention.wgsl", "attn_rows")
                    .define("ROWS", 1)
                    .define("D4", d4)
                    .define("G", g)
                    .define("LH", sg)
                    .define("WG", hkv as u32 * sg)
                    .define("QU", caps.uniform_window / 16)
                    .define("KV_F16", (kc.dtype == DType::F16) as u32)
                    .define("BATCH", batch.is_some() as u32)
                    .params(&params)
                    .args(&[
                        Arg::Uniform(0),
                        Arg::In(1),
                        Arg::In(2),
                        Arg::Scratch(0),
                        Arg::Scratch(1),
                    ])
                    .workgroups(chunks, 1, rows),
                reduce_call(d4, &params, batch.is_some(), rows),
            ]);
        }
        Ok(vec![
            call.define("SPLIT", 1)
                .args(&[
                    Arg::In(0),
                    Arg::In(1),
                    Arg::In(2),
                    Arg::Scratch(0),
                    Arg::Scratch(1),
                ])
                .workgroups(chunks, hkv as u32, rows),
            reduce_call(d4, &params, batch.is_some(), rows),
        ])
    }
}

/// The split-decode reduce pass: one workgroup per (query head, row).
fn reduce_call(d4: usize, params: &[u32; 8], batch: bool, rows: u32) -> KernelCall {
    KernelCall::new("attention.wgsl", "attn_reduce")
        .define("REDUCE", 1)
        .define("D4", d4)
        .define("WG", REDUCE_WG)
        .define("BATCH", batch as u32)
        .params(params)
        .args(&[Arg::Scratch(0), Arg::Scratch(1), Arg::Out(0)])
        .workgroups(params[1], 1, rows)
}

fn capacity(inputs: &[&TensorDesc]) -> usize {
    inputs.get(1).map_or(1, |k| k.shape[0])
}

impl Op for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        self.check(inputs)
    }
    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        self.scratch_with(DecodeSplit::for_capacity(capacity(inputs)), inputs, false)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.kernels_with(
            DecodeSplit::for_capacity(capacity(inputs)),
            caps,
            inputs,
            None,
        )
    }
}

/// [`Attention`] for a batched decode step (see [`super::RowStep`]): `q` is `[B, Hq·D]`, row
/// `b` the next token of its own sequence at position `step.rows[b].x`, attending to that
/// sequence's rows `0 ..= pos` of the pooled caches (`[rows of every sequence, Hkv, D]`),
/// which start at row `step.rows[b].y`. Split-K as a decode step, one grid layer per row.
#[derive(Clone, Debug)]
pub struct AttentionRows {
    /// The attention to compute.
    pub attn: Attention,
    /// Rows of one sequence's cache at most (positions are bounded by it).
    pub capacity: usize,
    /// The cache rows the split into chunks is sized for ([`DecodeSplit::for_capacity`]): a
    /// typical sequence, such as a pool's even share. Chunks grow with a longer sequence; a
    /// split sized for the largest possible one would launch mostly empty chunks every step.
    pub split_for: usize,
}

impl AttentionRows {
    fn split(&self) -> DecodeSplit {
        DecodeSplit::for_capacity(self.split_for.clamp(1, self.capacity.max(1)))
    }
}

impl Op for AttentionRows {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let out = self.attn.check(inputs)?;
        check_pooled(self.name(), inputs[0], inputs[1], self.capacity)?;
        Ok(out)
    }
    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        self.attn.scratch_with(self.split(), inputs, true)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.attn
            .kernels_with(self.split(), caps, inputs, Some(self.capacity))
    }
}

impl Op for AttentionSplit {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        if self.split.chunks == 0 || self.split.min_chunk == 0 {
            return Err(Error::op(
                "attention",
                format!(
                    "{:?}: expected at least one chunk of at least one row",
                    self.split
                ),
            ));
        }
        self.attn.check(inputs)
    }
    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        self.attn.scratch_with(self.split, inputs, false)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.attn.kernels_with(self.split, caps, inputs, None)
    }
}

/// CPU reference in f64. `q` is `[t, hq·d]`, the caches `[C, hkv, d]` (C ≥ pos + t); query `i`
/// sits at position `pos + i` and attends to cache rows `0 ..= pos + i`.
#[allow(clippy::too_many_arguments)]
pub fn attention_cpu(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    t: usize,
    pos: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let g = hq / hkv;
    let mut out = vec![0.0f32; t * hq * d];
    let mut scores = Vec::new();
    for i in 0..t {
        let n = pos + i + 1;
        for h in 0..hq {
            let hk = h / g;
            let qr = &q[(i * hq + h) * d..(i * hq + h + 1) * d];
            scores.clear();
            for j in 0..n {
                let kr = &k_cache[(j * hkv + hk) * d..(j * hkv + hk + 1) * d];
                let s: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                scores.push(s * scale as f64);
            }
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut l = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - m).exp();
                l += *s;
            }
            let o = &mut out[(i * hq + h) * d..(i * hq + h + 1) * d];
            for (e, oe) in o.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for (j, p) in scores.iter().enumerate() {
                    acc += p * v_cache[(j * hkv + hk) * d + e] as f64;
                }
                *oe = (acc / l) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_portable_minimum_workgroup_storage() {
        // WebGPU guarantees 16 KiB. Every head size with up to 8 query heads per kv head must
        // fit it, and up to 16 heads for head_dim ≤ 128 (larger groups need a device with more
        // workgroup storage, or get a named error when the graph is built).
        for d in (4..=256).step_by(4) {
            for g in 1..=if d <= 128 { 16 } else { 8 } {
                for decode in [false, true] {
                    let t = choose_tiles(g, d, decode, 16 * 1024);
                    let t = t.unwrap_or_else(|| panic!("d {d} g {g} decode {decode}: no tiles"));
                    assert!(storage_bytes(t.bq * g, t.bk, d / 4) <= 16 * 1024);
                    assert!(t.bq * g <= PREFILL_WG as usize && (!decode || t.bq == 1));
                }
            }
        }
    }

    #[test]
    fn default_decode_split_grows_with_the_cache() {
        assert_eq!(DecodeSplit::for_capacity(1).chunks, 1);
        assert_eq!(DecodeSplit::for_capacity(4096).chunks, 32);
        assert_eq!(DecodeSplit::for_capacity(1 << 20).chunks, MAX_CHUNKS);
    }
}
