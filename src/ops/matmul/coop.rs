//! Prefill matmul on cooperative matrices (`shaders/matmul_coop.wgsl`): `y (+)= x · Wᵀ` for
//! f16 / bf16 and block-quantized weights, x and W rounded to f16 as they are staged in
//! workgroup memory, f32 accumulation — the tensor-core path, as llama.cpp's coopmat shaders.
//!
//! Chosen by [`fits`] for GPU-style kernels on an adapter with a supported configuration
//! ([`crate::gpu::CoopMat`]), for more rows than the GEMV takes and K a multiple of 32;
//! everything else (f32 weights, whose models expect f32 products, included) keeps the SIMT
//! kernels. `FADO_COOPMAT=0` switches it off.

use super::GEMV_MAX_ROWS;
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::ops::{format_define, grid_2d, KernelCall};
use crate::quant;
use crate::tensor::DType;

/// k values staged per step: one 32-value chunk of the block formats.
pub const BK: usize = 32;

/// Bytes of workgroup memory the kernel declares for tile side `t`: x and W tiles as f16, the
/// output tile as f32.
pub fn workgroup_bytes(t: u32) -> u32 {
    2 * (4 * t * BK as u32 * 2) + 16 * t * t * 4
}

/// Whether the cooperative-matrix kernel computes an `m`×`k` by `[n, k]` `w` product here.
pub fn fits(caps: &Caps, m: usize, k: usize, w: DType) -> bool {
    let Some(cm) = caps.coopmat else {
        return false;
    };
    !caps.cpu
        && m > GEMV_MAX_ROWS
        && k.is_multiple_of(BK)
        && !matches!(w, DType::F32 | DType::U32)
        && workgroup_bytes(cm.size) <= caps.max_workgroup_storage
        && 4 * cm.subgroup <= caps.max_invocations
}

/// Which kernel prefill's matmuls take on this device: `"coopmat"` (cooperative matrices),
/// `"tiled"` (the SIMT tiled kernels) or `"rows"` (the CPU-style row kernel), for
/// `fado devices` and `fado bench --json`.
pub fn prefill_path(caps: &Caps) -> &'static str {
    if caps.cpu {
        "rows"
    } else if caps.coopmat.is_some() {
        "coopmat"
    } else {
        "tiled"
    }
}

/// The dispatch of `y (+)= x · Wᵀ` (`add` for the in-place form); the caller checked [`fits`].
pub fn call(
    caps: &Caps,
    (m, n, k): (usize, usize, usize),
    w: DType,
    add: bool,
) -> Result<KernelCall> {
    let cm = caps
        .coopmat
        .ok_or_else(|| Error::op("matmul", "no cooperative-matrix configuration".to_string()))?;
    let side = 4 * cm.size as usize;
    let tiles_n = n.div_ceil(side);
    let tiles = m.div_ceil(side) * tiles_n;
    let [gx, gy, _] = grid_2d(tiles as u32, caps.max_workgroups_per_dim);
    let (nbr, scales_word, w4) = if w.is_quantized() {
        let nbr = k / w.block_len();
        let sections = quant::gpu_sections(w, n * nbr);
        let w4 = quant::gpu_layout_bytes(w, n, k).is_multiple_of(16);
        (nbr, sections.scales_offset.unwrap_or(0) / 4, w4)
    } else {
        (0, 0, false)
    };
    let mut c = KernelCall::new("matmul_coop.wgsl", "matmul")
        .define("T", cm.size)
        .define("SG", cm.subgroup)
        .define(format_define(w), 1)
        .define("ADD", add as u32)
        .params(&[m, n, k, gx as usize, tiles_n, nbr, scales_word, 0].map(|v| v as u32))
        .workgroups(gx, gy, 1);
    if w.is_quantized() {
        c = c
            .define("QUANT", 1)
            .define("SUBS", w.block_len() / 32)
            .define("W4", w4 as u32)
            .define("KREC", matches!(w, DType::Q4K | DType::Q5K) as u32);
    }
    Ok(c)
}
