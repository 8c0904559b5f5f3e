//! Matrix multiplication by a block-quantized weight, dequantized inside the kernel:
//! `y = x · Wᵀ` (or `y += x · Wᵀ`), x f32 `[.., K]`, W `[N, K]` in one of the GGUF block formats
//! (in the GPU layout of [`crate::quant`]), y f32 `[.., N]`.
//!
//! [`kernels`] is the entry the float matmul op calls for quantized weights; [`QuantMatmul`] is a
//! standalone op over the same kernels. M = 1 uses the GEMV kernel (threads split K, workgroup
//! reduction), M ≥ 2 the tiled kernel (each dequantized chunk reused for `MATMUL_BM` rows of x).
//! See `shaders/quant_matmul.wgsl`.

use super::{expect_dtype, expect_inputs, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::quant;
use crate::tensor::{DType, TensorDesc};

/// Threads per GEMV workgroup.
pub const GEMV_WG: u32 = 256;
/// GEMV threads per W row (`GEMV_WG / GEMV_TPR` rows per workgroup). A multiple of every common
/// subgroup size, so a subgroup never spans two rows; devices whose subgroups can be larger
/// take the workgroup-memory reduction.
pub const GEMV_TPR: u32 = 64;
/// Threads (= W rows) per workgroup of the CPU-device kernels (`gemv_rows`, `matmul_rows`).
pub const ROWS_WG: u32 = 64;
/// Rows of x per `matmul_rows` call (the shader's named accumulators).
pub const MATMUL_ROWS_MB: usize = 8;
/// Threads (= W rows) per matmul workgroup.
pub const MATMUL_WG: u32 = 64;
/// x rows per matmul workgroup.
pub const MATMUL_BM: u32 = 16;

/// The block formats these kernels read (dequantized in registers, f32 accumulation).
pub const QUANTIZED: &[DType] = &DType::BLOCK_FORMATS;

fn dtype_define(d: DType) -> &'static str {
    match d {
        DType::Q8_0 => "Q8_0",
        DType::Q4_0 => "Q4_0",
        DType::Q4_1 => "Q4_1",
        DType::Q4K => "Q4K",
        DType::Q5K => "Q5K",
        _ => "Q6K",
    }
}

/// Check `x` f32 `[.., K]` against `w` quantized `[N, K]`; returns `(M, N, K)`.
pub fn check(op: &'static str, x: &TensorDesc, w: &TensorDesc) -> Result<(usize, usize, usize)> {
    expect_dtype(op, "x", x, &[DType::F32])?;
    expect_dtype(op, "weight", w, QUANTIZED)?;
    if w.rank() != 2 {
        return Err(Error::op(
            op,
            format!("weight is {w}: expected 2 dimensions [out, in]"),
        ));
    }
    let (n, k) = (w.shape[0], w.shape[1]);
    let bl = w.dtype.block_len();
    if !k.is_multiple_of(bl) {
        return Err(Error::op(
            op,
            format!(
                "weight is {w}: its rows of {k} values are not whole {} blocks of {bl}",
                w.dtype
            ),
        ));
    }
    if x.rank() == 0 || x.cols() != k {
        return Err(Error::op(
            op,
            format!("x is {x} and weight is {w}: expected x [.., {k}]"),
        ));
    }
    let m = x.rows();
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::op(
            op,
            format!("x is {x} and weight is {w}: empty product"),
        ));
    }
    Ok((m, n, k))
}

/// Output description of `x · Wᵀ`: x's shape with the last dimension replaced by N.
pub fn out_desc(x: &TensorDesc, w: &TensorDesc) -> TensorDesc {
    let mut shape = x.shape.clone();
    if let (Some(last), Some(n)) = (shape.last_mut(), w.shape.first()) {
        *last = *n;
    }
    TensorDesc::f32(shape)
}

/// The dispatches of `y = x · Wᵀ` (or `y += x · Wᵀ` when `add_into`) for a quantized `w`.
/// Args: `In(0)` = x, `In(1)` = w, and `Out(0)`, or `InOut(2)` when `add_into`.
pub fn kernels(
    caps: &Caps,
    x: &TensorDesc,
    w: &TensorDesc,
    add_into: bool,
) -> Result<Vec<KernelCall>> {
    let (m, n, k) = check("matmul", x, w)?;
    let dtype = w.dtype;
    let nbr = k / dtype.block_len();
    let sections = quant::gpu_sections(dtype, n * nbr);
    let scales_word = sections.scales_offset.unwrap_or(0) / 4;
    let subs = dtype.block_len() / 32;
    let out = if add_into { Arg::InOut(2) } else { Arg::Out(0) };
    let base = |entry: &'static str, wg: u32| {
        let c = KernelCall::new("quant_matmul.wgsl", entry)
            .define(dtype_define(dtype), 1)
            .define("SUBS", subs)
            .define("WG", wg)
            .args(&[Arg::In(0), Arg::In(1), out]);
        if add_into {
            c.define("ADD", 1)
        } else {
            c
        }
    };
    let words = |gx: u32, rows: usize, m0: usize| {
        [
            rows as u32,
            n as u32,
            k as u32,
            nbr as u32,
            scales_word as u32,
            gx,
            (k / 32) as u32,
            m0 as u32,
        ]
    };
    let row_bytes = k as u64 * 4;
    // CPU devices: x rows as uniform windows (see the shader); windows start at multiples of
    // the uniform offset alignment.
    let window = if m == 1 {
        1
    } else {
        let fit = (caps.uniform_window / row_bytes).min(MATMUL_ROWS_MB as u64) as usize;
        let mut w = fit;
        while w > 0 && !(w as u64 * row_bytes).is_multiple_of(caps.uniform_offset_align as u64) {
            w -= 1;
        }
        w
    };
    if caps.cpu && row_bytes <= caps.uniform_window && window > 0 {
        let entry = if m == 1 { "gemv_rows" } else { "matmul_rows" };
        let groups = (n as u32).div_ceil(ROWS_WG);
        let [gx, gy, _] = grid_2d(groups, caps.max_workgroups_per_dim);
        let mut calls = Vec::new();
        for m0 in (0..m).step_by(window) {
            let rows = window.min(m - m0);
            let mut c = base(entry, ROWS_WG)
                .define("ROWS", 1)
                .define(if m == 1 { "GEMV_ROWS" } else { "MATMUL_ROWS" }, 1)
                .define("XU", caps.uniform_window / 16)
                .params(&words(gx, rows, m0))
                .workgroups(gx, gy, 1);
            c.args[0] = Arg::UniformRange(0, m0 as u64 * row_bytes, rows as u64 * row_bytes);
            if crate::gpu::reads_texels(caps, w) {
                c = c.define("TEX", 1);
                c.args[1] = Arg::Texels(1);
            } else {
                // The same buffer again as vec4 words (binding 5).
                c.args.push(Arg::In(1));
            }
            match dtype {
                DType::Q4_0 | DType::Q4_1 => c = c.define("NIB32", 1),
                DType::Q5K | DType::Q6K => c = c.define("QH", 1),
                _ => {}
            }
            calls.push(c);
        }
        return Ok(calls);
    }
    let call = if m == 1 {
        let groups = (n as u32).div_ceil(GEMV_WG / GEMV_TPR);
        let [gx, gy, _] = grid_2d(groups, caps.max_workgroups_per_dim);
        let mut c = base("gemv", GEMV_WG)
            .define("TPR", GEMV_TPR)
            .params(&words(gx, m, 0))
            .workgroups(gx, gy, 1);
        if caps.subgroups && caps.subgroup_max <= GEMV_TPR && caps.subgroup_min > 0 {
            c = c.define("SUBGROUPS", 1);
        }
        c
    } else {
        let gx = (n as u32).div_ceil(MATMUL_WG);
        let gy = (m as u32).div_ceil(MATMUL_BM);
        if gx > caps.max_workgroups_per_dim || gy > caps.max_workgroups_per_dim {
            return Err(Error::op(
                "matmul",
                format!(
                    "x is {x} and weight is {w}: {gx}×{gy} workgroups exceed the device limit {}",
                    caps.max_workgroups_per_dim
                ),
            ));
        }
        base("matmul", MATMUL_WG)
            .define("BM", MATMUL_BM)
            .params(&words(gx, m, 0))
            .workgroups(gx, gy, 1)
    };
    Ok(vec![call])
}

/// `y = x · Wᵀ` (inputs `[x, w]`, one output) or, with `add_into`, `y += x · Wᵀ` (inputs
/// `[x, w, y]`, no output) for a block-quantized `w`.
#[derive(Clone, Debug, Default)]
pub struct QuantMatmul {
    /// Add into input 2 (`y += x · Wᵀ`, the residual) instead of writing a new output.
    pub add_into: bool,
}

impl Op for QuantMatmul {
    fn name(&self) -> &'static str {
        "quant_matmul"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, if self.add_into { 3 } else { 2 })?;
        let (x, w) = (inputs[0], inputs[1]);
        check(self.name(), x, w)?;
        let out = out_desc(x, w);
        if self.add_into {
            let y = inputs[2];
            if y.dtype != DType::F32 || y.numel() != out.numel() || y.cols() != out.cols() {
                return Err(Error::op(
                    self.name(),
                    format!("x is {x}, weight is {w} and y is {y}: expected y {out}"),
                ));
            }
            return Ok(vec![]);
        }
        Ok(vec![out])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        kernels(caps, inputs[0], inputs[1], self.add_into)
    }
}

/// CPU reference: `y = x · Wᵀ` with W given as dequantized f32 `[n, k]` (f64 accumulation).
pub fn cpu(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let n = w.len() / k;
    let mut y = Vec::with_capacity(x.len() / k * n);
    for xr in x.chunks(k) {
        for wr in w.chunks(k) {
            y.push(
                xr.iter()
                    .zip(wr)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>() as f32,
            );
        }
    }
    y
}
