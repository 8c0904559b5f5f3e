//! RoPE fused with the KV-cache write.
//!
//! Inputs: `qkv` f32 `[T, (Hq + 2·Hkv)·D]` (each token's row: Q heads, K heads, V heads, D values
//! each), `inv_freq` f32 `[D/2]` (from `LlamaConfig::rope_inv_freq`), `k_cache` and `v_cache`
//! `[C, Hkv, D]` (f32, or f16 packed two per u32), both written in place.
//! Output: `q` f32 `[T, Hq·D]`, rotated. Token `t` sits at position `step.pos + t`; its rotated K
//! and its V go to cache row `step.pos + t`. Rows at or past `C` are not written (the host
//! refuses such a step before it runs).
//!
//! One dispatch does all of it: the Q/K/V split is free, and K/V never round-trip through an
//! intermediate buffer.

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, expect_rank, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 64;

/// RoPE on the Q and K heads of fused q|k|v rows, writing K and V into the cache.
#[derive(Clone, Debug)]
pub struct RopeKv {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Size of one head (a multiple of 4, at most 256).
    pub head_dim: usize,
    /// GGUF/GPT-J pair layout `(2i, 2i+1)` instead of Hugging Face rotate-half `(i, i + D/2)`.
    pub interleaved: bool,
}

/// Shape checks shared by the ops that read a KV cache: `[C, hkv, d]`, f32 or f16.
pub(crate) fn check_cache(
    op: &'static str,
    what: &str,
    c: &TensorDesc,
    hkv: usize,
    d: usize,
) -> Result<()> {
    expect_dtype(op, what, c, &[DType::F32, DType::F16])?;
    expect_rank(op, what, c, 3)?;
    if c.shape[1] != hkv || c.shape[2] != d || c.shape[0] == 0 {
        return Err(Error::op(
            op,
            format!("{what} is {c}: expected [capacity, {hkv}, {d}] (capacity ≥ 1)"),
        ));
    }
    Ok(())
}

/// A step of `x.shape[0]` tokens must fit the cache even at position 0; more would silently
/// drop rows (the kernels skip rows past the capacity).
pub(crate) fn check_fits_cache(
    op: &'static str,
    what: &str,
    x: &TensorDesc,
    cache: &TensorDesc,
) -> Result<()> {
    if x.shape[0] > cache.shape[0] {
        return Err(Error::op(
            op,
            format!(
                "{what} is {x} and the cache is {cache}: expected at most {} tokens (the cache's capacity)",
                cache.shape[0]
            ),
        ));
    }
    Ok(())
}

/// A batched step's rows (`x`'s) over a pooled cache of sequences of `capacity` rows each: at
/// most [`super::MAX_ROWS`] rows, and sequences that fit the pool.
pub(crate) fn check_pooled(
    op: &'static str,
    x: &TensorDesc,
    pool: &TensorDesc,
    capacity: usize,
) -> Result<()> {
    let (rows, pool) = (x.shape[0], pool.shape[0]);
    if rows > super::MAX_ROWS || capacity == 0 || capacity > pool {
        return Err(Error::op(
            op,
            format!(
                "a batched step of {rows} rows over sequences of {capacity} rows in a pool of \
                 {pool}: expected at most {} rows and 1 ..= {pool} rows per sequence",
                super::MAX_ROWS
            ),
        ));
    }
    Ok(())
}

/// Head-count and head-size rules shared by RoPE and attention.
pub(crate) fn check_heads(op: &'static str, hq: usize, hkv: usize, d: usize) -> Result<()> {
    if hq == 0 || hkv == 0 || !hq.is_multiple_of(hkv) {
        return Err(Error::op(
            op,
            format!("{hq} query heads and {hkv} kv heads: expected a whole number of query heads per kv head"),
        ));
    }
    if d == 0 || !d.is_multiple_of(4) || d > 256 {
        return Err(Error::op(
            op,
            format!("head_dim {d}: expected a multiple of 4 between 4 and 256"),
        ));
    }
    Ok(())
}

impl Op for RopeKv {
    fn name(&self) -> &'static str {
        "rope_kv"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 4)?;
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        check_heads(name, hq, hkv, d)?;
        let (qkv, inv, kc, vc) = (inputs[0], inputs[1], inputs[2], inputs[3]);
        expect_dtype(name, "qkv", qkv, &[DType::F32])?;
        expect_rank(name, "qkv", qkv, 2)?;
        let width = (hq + 2 * hkv) * d;
        if qkv.shape[1] != width || qkv.shape[0] == 0 {
            return Err(Error::op(
                name,
                format!("qkv is {qkv}: expected [tokens, {width}] ((heads {hq} + 2·kv heads {hkv}) · head_dim {d})"),
            ));
        }
        expect_dtype(name, "inv_freq", inv, &[DType::F32])?;
        if inv.shape != [d / 2] {
            return Err(Error::op(
                name,
                format!("inv_freq is {inv}: expected [{}] (head_dim / 2)", d / 2),
            ));
        }
        check_cache(name, "k_cache", kc, hkv, d)?;
        check_cache(name, "v_cache", vc, hkv, d)?;
        if kc != vc {
            return Err(Error::op(
                name,
                format!("k_cache is {kc} but v_cache is {vc}: expected the same"),
            ));
        }
        check_fits_cache(name, "qkv", qkv, kc)?;
        Ok(vec![TensorDesc::f32([qkv.shape[0], hq * d])])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.calls(caps, inputs, inputs[2].shape[0])
    }
}

/// [`RopeKv`] for a batched step (see [`super::RowStep`]): row `t` of `qkv` is the next token
/// of its own sequence, at position `step.rows[t].x`; its K and V go to row
/// `step.rows[t].y + pos` of the pooled caches (`[rows of every sequence, Hkv, D]`), written
/// when `pos < capacity`.
#[derive(Clone, Debug)]
pub struct RopeKvRows {
    /// The rotation.
    pub rope: RopeKv,
    /// Rows of one sequence's cache.
    pub capacity: usize,
}

impl Op for RopeKvRows {
    fn name(&self) -> &'static str {
        "rope_kv"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let out = self.rope.infer(inputs)?;
        check_pooled(self.name(), inputs[0], inputs[2], self.capacity)?;
        Ok(out)
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let mut calls = self.rope.calls(caps, inputs, self.capacity)?;
        for c in &mut calls {
            c.defines.insert("ROWS".into(), "1".into());
        }
        Ok(calls)
    }
}

impl RopeKv {
    /// The dispatch, writing cache rows below `cap`.
    fn calls(&self, caps: &Caps, inputs: &[&TensorDesc], cap: usize) -> Result<Vec<KernelCall>> {
        let (qkv, kc) = (inputs[0], inputs[2]);
        let t = qkv.shape[0] as u32;
        let threads = t as u64 * (qkv.shape[1] / 4) as u64;
        let groups = u32::try_from(threads.div_ceil(WORKGROUP as u64)).map_err(|_| {
            Error::op(
                self.name(),
                format!("qkv is {qkv}: too many tokens for one dispatch"),
            )
        })?;
        let [gx, gy, _] = grid_2d(groups, caps.max_workgroups_per_dim);
        Ok(vec![KernelCall::new("rope.wgsl", "rope_kv")
            .define("WG", WORKGROUP)
            .define("INTERLEAVED", self.interleaved as u32)
            .define("KV_F16", (kc.dtype == DType::F16) as u32)
            .params(&[
                t,
                self.n_heads as u32,
                self.n_kv_heads as u32,
                self.head_dim as u32,
                cap as u32,
                gx,
                0,
                0,
            ])
            .args(&[
                Arg::In(0),
                Arg::In(1),
                Arg::InOut(2),
                Arg::InOut(3),
                Arg::Out(0),
            ])
            .workgroups(gx, gy, 1)])
    }
}

/// CPU reference: RoPE over rows of `x` (`[positions.len(), heads·head_dim]`), row `r` at
/// position `positions[r]`. The angle is `f32(pos)·inv_freq[i]` rounded to f32 (as Hugging Face
/// computes it); cos/sin and the rotation in f64.
pub fn rope_cpu(
    x: &[f32],
    positions: &[u32],
    inv_freq: &[f32],
    head_dim: usize,
    interleaved: bool,
) -> Vec<f32> {
    let d = head_dim;
    let half = d / 2;
    let mut y = x.to_vec();
    let width = if positions.is_empty() {
        0
    } else {
        x.len() / positions.len()
    };
    for (r, &pos) in positions.iter().enumerate() {
        let row = &mut y[r * width..(r + 1) * width];
        for head in row.chunks_mut(d) {
            for (i, &f) in inv_freq.iter().enumerate().take(half) {
                let theta = (pos as f32 * f) as f64;
                let (s, c) = theta.sin_cos();
                let (ia, ib) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (a, b) = (head[ia] as f64, head[ib] as f64);
                head[ia] = (a * c - b * s) as f32;
                head[ib] = (b * c + a * s) as f32;
            }
        }
    }
    y
}
