//! Matrix multiplication by a block-quantized weight, dequantized inside the kernel:
//! `y = x · Wᵀ` (or `y += x · Wᵀ`), x f32 `[.., K]`, W `[N, K]` in one of the GGUF block formats
//! (in the GPU layout of [`crate::quant`]), y f32 `[.., N]`.
//!
//! [`kernels`] is the entry the float matmul op calls for quantized weights; [`QuantMatmul`] is a
//! standalone op over the same kernels. M = 1 uses the streaming GEMV ([`GEMV_ROWS`] W rows per
//! workgroup, its threads all along K, 16-byte quant loads, x read once per workgroup, subgroup
//! or workgroup-memory reduction), M ≥ 2 the tiled kernel (each dequantized chunk reused for
//! `MATMUL_BM` rows of x). See `shaders/matmul_quant.wgsl`; CPU devices take [`rows`]
//! (`shaders/matmul_rows.wgsl`).

use super::{coop, int_dot, rows};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::ops::{expect_dtype, expect_inputs, format_define, grid_2d, Arg, KernelCall, Op};
use crate::quant;
use crate::tensor::{DType, TensorDesc};

/// Most threads per GEMV workgroup (all of them split K).
pub const GEMV_WG: u32 = 256;
/// Fewest threads per GEMV workgroup: a multiple of every common subgroup size; devices whose
/// subgroups can be larger take the workgroup-memory reduction.
pub const GEMV_WG_MIN: u32 = 64;
/// W rows per GEMV workgroup: each x load serves this many rows, and each thread has this many
/// 16-byte weight loads in flight. (Not yet tuned on a GPU.)
pub const GEMV_ROWS: u32 = 4;
/// Threads (= W rows) per matmul workgroup.
pub const MATMUL_WG: u32 = 64;
/// x rows per matmul workgroup.
pub const MATMUL_BM: u32 = 16;

/// The block formats these kernels read (dequantized in registers, f32 accumulation).
pub const QUANTIZED: &[DType] = &DType::BLOCK_FORMATS;

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
/// Args: `In(0)` = x, `In(1)` = w, and `Out(0)`, or `InOut(2)` when `add_into`. CPU devices
/// take the CPU-style kernel of [`rows`] where a row of x fits its uniform windows.
pub fn kernels(
    caps: &Caps,
    x: &TensorDesc,
    w: &TensorDesc,
    add_into: bool,
) -> Result<Vec<KernelCall>> {
    kernels_int(caps, x, w, add_into, int_dot::enabled(caps))
}

/// [`kernels`] with the integer path of the streaming GEMV chosen by the caller (`int_dot`:
/// x quantized to int8 per 32 values, `dot4I8Packed` products; see [`int_dot`]). It applies to
/// GPU-style decode (m = 1) only; other shapes and CPU devices ignore it.
pub fn kernels_int(
    caps: &Caps,
    x: &TensorDesc,
    w: &TensorDesc,
    add_into: bool,
    int_dot: bool,
) -> Result<Vec<KernelCall>> {
    let (m, n, k) = check("matmul", x, w)?;
    let cpu_style =
        caps.cpu && rows::fits(caps, k, w.dtype) && rows::windows(caps, m, k as u64 * 4).is_some();
    if cpu_style {
        return rows::calls("matmul", caps, (m, n, k), w, add_into);
    }
    let call = if coop::fits(caps, m, k, w.dtype) {
        coop::call(caps, (m, n, k), w.dtype, add_into)?
    } else if m == 1 {
        let c = gemv_call(caps, (n, k), w.dtype);
        if int_dot && int_dot::FORMATS.contains(&w.dtype) {
            c.define("INT_DOT", 1)
                .define("KQ", (w.dtype.block_len() == 256) as u32)
        } else {
            c
        }
    } else {
        matmul_call(caps, (m, n, k), x, w)?
    };
    let out = if add_into { Arg::InOut(2) } else { Arg::Out(0) };
    Ok(vec![call.define("ADD", add_into as u32).args(&[
        Arg::In(0),
        Arg::In(1),
        out,
    ])])
}

/// A call of `entry` of `shaders/matmul_quant.wgsl` for `dtype`, with its params.
fn call(
    entry: &'static str,
    wg: u32,
    (m, n, k): (usize, usize, usize),
    dtype: DType,
) -> KernelCall {
    let nbr = k / dtype.block_len();
    let sections = quant::gpu_sections(dtype, n * nbr);
    let scales_word = sections.scales_offset.unwrap_or(0) / 4;
    let params = [m, n, k, nbr, scales_word, 0, k / 32, 0];
    // Whole 16-byte words (every real model's tensors): w is bound as vec4<u32>, so quant loads
    // are single 16-byte loads; otherwise the last words would be out of the vec4 view's reach.
    let w4 = quant::gpu_layout_bytes(dtype, n, k).is_multiple_of(16);
    KernelCall::new("matmul_quant.wgsl", entry)
        .define(format_define(dtype), 1)
        .define("SUBS", dtype.block_len() / 32)
        .define("WG", wg)
        .define("W4", w4 as u32)
        .define("KREC", matches!(dtype, DType::Q4K | DType::Q5K) as u32)
        .params(&params.map(|v| v as u32))
}

/// Threads of the streaming GEMV for rows of `units` work units: enough that few idle, a power
/// of two from [`GEMV_WG_MIN`] to [`GEMV_WG`].
pub fn gemv_threads(units: usize) -> u32 {
    (units.next_power_of_two() as u32).clamp(GEMV_WG_MIN, GEMV_WG)
}

/// Values per GEMV work unit: a block of the 32-value formats, 64 values of the K-quants.
pub fn gemv_unit(dtype: DType) -> usize {
    dtype.block_len().min(64)
}

/// The streaming GEMV (m = 1): [`GEMV_ROWS`] rows per workgroup, a subgroup reduction where
/// every subgroup fits in the workgroup.
fn gemv_call(caps: &Caps, (n, k): (usize, usize), dtype: DType) -> KernelCall {
    let units = k / gemv_unit(dtype);
    let wg = gemv_threads(units);
    let groups = (n as u32).div_ceil(GEMV_ROWS);
    let [gx, gy, _] = grid_2d(groups, caps.max_workgroups_per_dim);
    let mut c = call("gemv", wg, (1, n, k), dtype)
        .define("R", GEMV_ROWS)
        .define("RED", wg * GEMV_ROWS)
        .workgroups(gx, gy, 1);
    c.params[5] = gx;
    c.params[6] = units as u32;
    let sizes_ok = caps.subgroup_min > 0 && caps.subgroup_max.is_power_of_two();
    if caps.subgroups && sizes_ok && caps.subgroup_max <= wg {
        c = c.define("SUBGROUPS", 1);
    }
    c
}

/// The tiled kernel (m ≥ 2): [`MATMUL_WG`] W rows by [`MATMUL_BM`] x rows per workgroup.
fn matmul_call(
    caps: &Caps,
    (m, n, k): (usize, usize, usize),
    x: &TensorDesc,
    w: &TensorDesc,
) -> Result<KernelCall> {
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
    let mut c = call("matmul", MATMUL_WG, (m, n, k), w.dtype)
        .define("BM", MATMUL_BM)
        .workgroups(gx, gy, 1);
    c.params[5] = gx;
    Ok(c)
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
