//! A decode step's attention (one token) from the fused q|k|v row: RoPE, the KV-cache write and
//! split-K attention over the cache — [`RopeKv`] followed by [`Attention`], same definitions.
//!
//! Inputs, in order: `qkv` f32 `[1, (Hq + 2·Hkv)·D]` (Q heads, K heads, V heads, un-rotated),
//! `inv_freq` f32 `[D/2]`, `k_cache` and `v_cache` `[C, Hkv, D]` (f32, or f16 packed two per u32;
//! written in place), `sync` u32 `[n ≥ Hkv]` (written in place: a buffer the caller creates zeroed
//! and may share between layers; zero again after every run). Output: f32 `[1, Hq·D]`. The token
//! sits at position `step.pos`; its rotated K and its V go to cache row `step.pos` (not written
//! at or past `C`); it attends to rows `0 ..= step.pos`.
//!
//! Dispatches:
//! - GPU-style kernels: ONE (`attention_decode.wgsl`): every workgroup rotates its query heads
//!   on load, the workgroup owning the new row writes it, and the last workgroup of each kv head
//!   to finish merges the chunks (counted in `sync`). It needs the decode attention's tiles plus
//!   16 bytes of workgroup storage; where no tile fits that (`choose_tiles` under the device's
//!   limit minus 16 bytes: a shape at the edge of what the device holds at all), the op falls
//!   back to the multi-dispatch path below, and [`Attention`] names the limit if even it fails.
//! - CPU-style kernels (`Caps::cpu`): `rope_kv` (q into scratch 2), then the decode attention
//!   [`Attention`] runs there (`attn_rows` or `attn`, then `attn_reduce`): three dispatches,
//!   the fastest shape on lavapipe (no barriers, no workgroup memory). `sync` is not touched.
//!
//! Scratch: 0 partial O f32 `[S, Hq, D]`, 1 (m, l) f32 `[S, Hq, 2]`, 2 rotated q f32 `[Hq·D]`
//! (multi-dispatch path only), with `S` the chunks of the decode split. Only used within a run.

#![warn(missing_docs)]

use super::attention::{choose_tiles, Attention, DecodeSplit, DECODE_WG};
use super::rope::RopeKv;
use super::{expect_dtype, expect_inputs, expect_rank, fbits, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Workgroup storage the fused kernel needs beyond the attention tiles (the "last" flag),
/// rounded up to a vec4.
const EXTRA_STORAGE: u32 = 16;

/// RoPE + KV-cache write + decode attention for one token, in one dispatch on GPU-style kernels.
#[derive(Clone, Debug)]
pub struct AttentionDecode {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (a divisor of `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one head (a multiple of 4, at most 256).
    pub head_dim: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// GGUF/GPT-J pair layout `(2i, 2i+1)` instead of Hugging Face rotate-half `(i, i + D/2)`.
    pub interleaved: bool,
}

/// [`AttentionDecode`] with an explicit decode split (tests, tuning).
#[derive(Clone, Debug)]
pub struct AttentionDecodeSplit {
    /// The op.
    pub op: AttentionDecode,
    /// How the cache is split into chunks.
    pub split: DecodeSplit,
}

impl AttentionDecode {
    fn rope(&self) -> RopeKv {
        RopeKv {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            interleaved: self.interleaved,
        }
    }

    fn attention(&self) -> Attention {
        Attention {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            scale: self.scale,
        }
    }

    fn q_desc(&self) -> TensorDesc {
        TensorDesc::f32([1, self.n_heads * self.head_dim])
    }

    fn check(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = "attention_decode";
        expect_inputs(name, inputs, 5)?;
        // The parts' own rules (shapes, dtypes, group sizes), named by the part.
        self.rope().infer(&inputs[..4])?;
        let q = self.q_desc();
        self.attention().infer(&[&q, inputs[2], inputs[3]])?;
        let (qkv, sync) = (inputs[0], inputs[4]);
        if qkv.shape[0] != 1 {
            return Err(Error::op(
                name,
                format!("qkv is {qkv}: expected one token (use RopeKv and Attention for more)"),
            ));
        }
        expect_dtype(name, "sync", sync, &[DType::U32])?;
        expect_rank(name, "sync", sync, 1)?;
        if sync.shape[0] < self.n_kv_heads {
            return Err(Error::op(
                name,
                format!(
                    "sync is {sync}: expected at least {} words (one per kv head)",
                    self.n_kv_heads
                ),
            ));
        }
        Ok(vec![q])
    }

    fn scratch_with(&self, split: DecodeSplit) -> Vec<u64> {
        let slots = split.chunks.max(1) as u64 * self.n_heads as u64;
        let qd = (self.n_heads * self.head_dim) as u64;
        vec![slots * self.head_dim as u64 * 4, slots * 8, qd * 4]
    }

    /// The single fused dispatch, where the kernel style and workgroup storage allow it.
    fn fused_call(
        &self,
        split: DecodeSplit,
        caps: &Caps,
        inputs: &[&TensorDesc],
    ) -> Option<KernelCall> {
        if caps.cpu {
            return None;
        }
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (g, d4) = (hq / hkv, d / 4);
        let limit = caps.max_workgroup_storage.saturating_sub(EXTRA_STORAGE);
        let tiles = choose_tiles(g, d, true, limit)?;
        let kc = inputs[2];
        let chunks = split.chunks.max(1);
        Some(
            KernelCall::new("attention_decode.wgsl", "attn_decode")
                .define("D4", d4)
                .define("G", g)
                .define("BK", tiles.bk)
                .define("WG", DECODE_WG)
                .define("ACC", (g * d4).div_ceil(DECODE_WG as usize))
                .define("QS_LEN", g * (d4 + 1))
                .define("KS_LEN", tiles.bk * (d4 + 1))
                .define("VS_LEN", tiles.bk * d4)
                .define("SS_LEN", g * tiles.bk)
                .define("KV_F16", (kc.dtype == DType::F16) as u32)
                .define("INTERLEAVED", self.interleaved as u32)
                .params(&[
                    hq as u32,
                    hkv as u32,
                    fbits(self.scale),
                    chunks,
                    split.min_chunk.max(1),
                    kc.shape[0] as u32,
                    0,
                    0,
                ])
                .args(&[
                    Arg::In(0),
                    Arg::In(1),
                    Arg::InOut(2),
                    Arg::InOut(3),
                    Arg::InOut(4),
                    Arg::Out(0),
                    Arg::Scratch(0),
                    Arg::Scratch(1),
                ])
                .workgroups(chunks, hkv as u32, 1),
        )
    }

    fn kernels_with(
        &self,
        split: DecodeSplit,
        caps: &Caps,
        inputs: &[&TensorDesc],
    ) -> Result<Vec<KernelCall>> {
        if let Some(call) = self.fused_call(split, caps, inputs) {
            return Ok(vec![call]);
        }
        // RopeKv's q output goes to scratch 2, which the attention kernels then read as q.
        let mut calls = self.rope().kernels(caps, &inputs[..4])?;
        for c in &mut calls {
            for a in &mut c.args {
                if *a == Arg::Out(0) {
                    *a = Arg::Scratch(2);
                }
            }
        }
        let q = self.q_desc();
        let q_bytes = q.size_bytes();
        let mut attn =
            self.attention()
                .kernels_with(split, caps, &[&q, inputs[2], inputs[3]], None)?;
        for c in &mut attn {
            for a in &mut c.args {
                *a = match *a {
                    Arg::In(0) => Arg::ScratchIn(2),
                    Arg::Uniform(0) => Arg::ScratchUniformRange(2, 0, q_bytes),
                    Arg::In(i) => Arg::In(i + 1), // the caches: inputs 1, 2 there, 2, 3 here
                    other => other,
                };
            }
        }
        calls.extend(attn);
        Ok(calls)
    }
}

fn split_for(inputs: &[&TensorDesc]) -> DecodeSplit {
    DecodeSplit::for_capacity(inputs.get(2).map_or(1, |k| k.shape[0]))
}

impl Op for AttentionDecode {
    fn name(&self) -> &'static str {
        "attention_decode"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        self.check(inputs)
    }
    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        self.scratch_with(split_for(inputs))
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.kernels_with(split_for(inputs), caps, inputs)
    }
}

impl Op for AttentionDecodeSplit {
    fn name(&self) -> &'static str {
        "attention_decode"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        if self.split.chunks == 0 || self.split.min_chunk == 0 {
            return Err(Error::op(
                "attention_decode",
                format!(
                    "{:?}: expected at least one chunk of at least one row",
                    self.split
                ),
            ));
        }
        self.op.check(inputs)
    }
    fn scratch(&self, _inputs: &[&TensorDesc]) -> Vec<u64> {
        self.op.scratch_with(self.split)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        self.op.kernels_with(self.split, caps, inputs)
    }
}
