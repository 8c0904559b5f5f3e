//! The CPU-style kernel of the matmul family (`shaders/matmul_rows.wgsl`), for every weight
//! format: a thread per weight row, x bound as a uniform array in windows of up to
//! [`ROWS_WINDOW`] rows, weights as a texel image where [`reads_texels`] says so. CPU devices
//! (lavapipe) take every product with it that [`fits`].

use crate::error::{Error, Result};
use crate::gpu::{reads_texels, rows_fit, Caps};
use crate::ops::{format_define, grid_2d, Arg, KernelCall};
use crate::quant;
use crate::tensor::{DType, TensorDesc};

/// Rows of x per call (the shader's eight named accumulators).
pub const ROWS_WINDOW: usize = 8;
/// Threads (= weight rows) per workgroup.
pub const ROWS_WG: u32 = 64;

/// Whether the kernel takes a product with rows of `k` values and weight `w` on this device:
/// float weights per [`rows_fit`], block formats when a row of x fits one uniform binding.
pub fn fits(caps: &Caps, k: usize, w: DType) -> bool {
    if w.is_quantized() {
        (k as u64) * 4 <= caps.uniform_window
    } else {
        rows_fit(caps, k, w)
    }
}

/// Rows of x per window for a product of `m` rows of `row_bytes` bytes: as many as fit one
/// uniform binding, up to [`ROWS_WINDOW`], such that every window starts at a multiple of the
/// uniform offset alignment. `None` when `m > 1` and no window size is so aligned.
pub fn window(caps: &Caps, m: usize, row_bytes: u64) -> Option<usize> {
    if m == 1 {
        return Some(1);
    }
    let align = caps.uniform_offset_align.max(1) as u64;
    let fit = ((caps.uniform_window / row_bytes) as usize).min(ROWS_WINDOW);
    (1..=fit)
        .rev()
        .find(|&w| (w as u64 * row_bytes).is_multiple_of(align))
}

/// The calls of `y (+)= x · Wᵀ` for `x` `[m, k]` and weight `wd` `[n, k]`: one per window of
/// x rows, each bound as a uniform at its offset. Args: x `In(0)`, w `In(1)` (or `Texels(1)`),
/// y `Out(0)` or, when `add_into`, `InOut(2)`.
pub fn calls(
    op: &'static str,
    caps: &Caps,
    (m, n, k): (usize, usize, usize),
    wd: &TensorDesc,
    add_into: bool,
) -> Result<Vec<KernelCall>> {
    let w = wd.dtype;
    if !fits(caps, k, w) {
        return Err(Error::op(
            op,
            format!(
                "the CPU-device kernel needs K a multiple of {} and a row of x within {} bytes \
                 (got K = {k}, {w} weights)",
                if w == DType::F32 { 4 } else { 8 },
                caps.uniform_window
            ),
        ));
    }
    let row_bytes = k as u64 * 4;
    let align = caps.uniform_offset_align.max(1);
    let window = window(caps, m, row_bytes).ok_or_else(|| {
        Error::op(
            op,
            format!("rows of {row_bytes} bytes cannot start windows aligned to {align} bytes"),
        )
    })?;
    let texels = reads_texels(caps, wd);
    let [gx, gy, _] = grid_2d((n as u32).div_ceil(ROWS_WG), caps.max_workgroups_per_dim);
    // Block formats: blocks per row, the scale section's word, 32-value chunks per row.
    let (nbr, scales_word, chunks) = if w.is_quantized() {
        let nbr = k / w.block_len();
        let sections = quant::gpu_sections(w, n * nbr);
        (nbr, sections.scales_offset.unwrap_or(0) / 4, k / 32)
    } else {
        (0, 0, 0)
    };
    let mut base = KernelCall::new("matmul_rows.wgsl", "matmul_rows")
        .define("WG", ROWS_WG)
        .define("MR8", (m > 1) as u32)
        .define("XU", caps.uniform_window / 16)
        .define(format_define(w), 1)
        .define("ADD_INTO", add_into as u32)
        .define("TEX", texels as u32)
        .workgroups(gx, gy, 1);
    if w.is_quantized() {
        base = base
            .define("QUANT", 1)
            .define("SUBS", w.block_len() / 32)
            .define("NIB32", matches!(w, DType::Q4_0 | DType::Q4_1) as u32)
            .define("QH", matches!(w, DType::Q5K | DType::Q6K) as u32);
    }
    let weight = if texels { Arg::Texels(1) } else { Arg::In(1) };
    let out = if add_into { Arg::InOut(2) } else { Arg::Out(0) };
    let mut calls = Vec::new();
    for m0 in (0..m).step_by(window) {
        let rows = window.min(m - m0);
        let x = Arg::UniformRange(0, m0 as u64 * row_bytes, rows as u64 * row_bytes);
        let mut args = vec![x, weight, out];
        if w.is_quantized() && !texels {
            // The same buffer again as vec4 words (binding 5).
            args.push(Arg::In(1));
        }
        let params = [rows, n, k, nbr, scales_word, gx as usize, chunks, m0];
        calls.push(base.clone().params(&params.map(|v| v as u32)).args(&args));
    }
    Ok(calls)
}
