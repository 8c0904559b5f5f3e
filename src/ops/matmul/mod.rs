//! Linear layers: `y = x · Wᵀ` ([`Matmul`]) and `y += x · Wᵀ` in place ([`MatmulAddInto`], the
//! residual add fused into o_proj / down_proj).
//!
//! Inputs: `x` f32 `[.., K]` (M rows = product of the leading dimensions) and `w` `[N, K]`
//! (f32, or f16 / bf16 packed two per `u32`), row-major as in Hugging Face checkpoints.
//! Output: f32 `[.., N]`, the leading dimensions of `x` kept.
//!
//! Kernels: up to [`GEMV_MAX_ROWS`] rows (M = 1 is decode) run the bandwidth-bound GEMV of
//! `shaders/gemv.wgsl` (several weight rows per workgroup, each weight load used for every row of
//! x, one row's dot product reduced by a subgroup when the device has subgroups, by workgroup
//! memory otherwise); longer prefills run the tiled, register-blocked matmul of
//! `shaders/matmul.wgsl`. Block-quantized weights go to [`quant`], which dequantizes
//! them inside its kernels. CPU devices take the CPU-style kernel of [`rows`] for every format.
//!
//! The family: this module (float weights, GPU-style kernels, the shape rules and the CPU
//! reference), [`quant`] (block-quantized weights), [`norm`] (RMSNorm fused in front) and
//! [`rows`] (the CPU-style kernel of every format).

pub mod coop;
pub mod int_dot;
pub mod norm;
pub mod quant;
pub mod rows;
pub mod swiglu;

use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::ops::{expect_dtype, expect_inputs, format_define, grid_2d, Arg, KernelCall, Op};
use crate::tensor::{DType, TensorDesc};

/// Threads per GEMV workgroup.
pub const GEMV_WG: u32 = 256;
/// Rows of x up to which the GEMV kernel (weights read once for all rows) is used instead of
/// the tiled matmul.
pub const GEMV_MAX_ROWS: usize = 8;
/// GEMV threads per weight row with the workgroup-memory reduction (no subgroups).
pub const GEMV_TPR: u32 = 32;
/// GEMV threads per weight row at least, with subgroups.
pub const GEMV_TPR_SUBGROUPS: u32 = 64;

/// Tile shape of the matmul kernel: 16×16 threads, each computing `s`×`s` blocks of 4×4
/// outputs, so a workgroup covers 64·s rows by 64·s columns; `bk` is the k-step staged in
/// workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    /// 4×4 output blocks per thread along each side: 1 or 2.
    pub s: u32,
    /// k values staged per step: a multiple of 4, at most 64.
    pub bk: u32,
}

/// The tiles for an `m`×`n` product: 128×128 (8×8 outputs per thread, twice the arithmetic
/// per workgroup-memory read) when that still gives at least 512 workgroups, else 64×64.
/// Measured on an H200 (BENCHMARKS.md): M=4096, N=K=4096 runs 6.6 ms with 128×128 tiles
/// against 8.5 ms with 64×64; M=512 runs 1.22 ms with 64×64 against 1.39 ms (128 workgroups
/// cannot fill the device).
pub fn tiles_for(m: usize, n: usize) -> Tiles {
    if m.div_ceil(128) * n.div_ceil(128) >= 512 {
        Tiles { s: 2, bk: 16 }
    } else {
        Tiles { s: 1, bk: 16 }
    }
}

/// `y = x · Wᵀ`. Inputs (x, w); output y.
#[derive(Clone, Debug)]
pub struct Matmul;

/// `y += x · Wᵀ`. Inputs (x, w, y); y is written in place and there are no outputs.
#[derive(Clone, Debug)]
pub struct MatmulAddInto;

/// Check x and w (and y for the in-place form); returns (M, N, K) and y's description.
pub(crate) fn check(
    op: &'static str,
    x: &TensorDesc,
    w: &TensorDesc,
    y: Option<&TensorDesc>,
) -> Result<(usize, usize, usize, TensorDesc)> {
    expect_dtype(op, "x", x, &[DType::F32])?;
    if x.rank() == 0 {
        return Err(Error::op(
            op,
            format!("x is {x}: expected at least one dimension [.., K]"),
        ));
    }
    // Block-quantized weights are computed by [`quant`]'s kernels.
    if !DType::WEIGHT_TYPES.contains(&w.dtype) {
        return Err(Error::op(
            op,
            format!(
                "w is {w}: dtype {} is not supported for weights (expected one of {})",
                w.dtype,
                DType::list(&DType::WEIGHT_TYPES)
            ),
        ));
    }
    if w.rank() != 2 {
        return Err(Error::op(
            op,
            format!("x is {x} and w is {w}: expected w to have 2 dimensions [N, K]"),
        ));
    }
    let k = x.cols();
    if w.shape[1] != k {
        return Err(Error::op(
            op,
            format!("x is {x} and w is {w}: expected w's last dimension {k}"),
        ));
    }
    // K = 0 has nothing to multiply, and the kernels size their windows by K.
    if k == 0 {
        return Err(Error::op(
            op,
            format!("x is {x} and w is {w}: expected a non-empty inner dimension K"),
        ));
    }
    if w.dtype.is_quantized() && !k.is_multiple_of(w.dtype.block_len()) {
        return Err(Error::op(
            op,
            format!(
                "x is {x} and w is {w}: rows of {k} values are not whole {} blocks of {}",
                w.dtype,
                w.dtype.block_len()
            ),
        ));
    }
    let n = w.shape[0];
    let mut shape = x.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    let out = TensorDesc::f32(shape);
    if let Some(y) = y {
        if *y != out {
            return Err(Error::op(
                op,
                format!("x is {x}, w is {w} and y is {y}: expected y to be {out}"),
            ));
        }
    }
    Ok((x.rows(), n, k, out))
}

impl Op for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (_, _, _, y) = check(self.name(), inputs[0], inputs[1], None)?;
        Ok(vec![y])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        kernels_for(self.name(), caps, inputs[0], inputs[1], None)
    }
}

impl Op for MatmulAddInto {
    fn name(&self) -> &'static str {
        "matmul_add_into"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 3)?;
        check(self.name(), inputs[0], inputs[1], Some(inputs[2]))?;
        Ok(vec![])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        kernels_for(self.name(), caps, inputs[0], inputs[1], Some(inputs[2]))
    }
}

/// Which kernel computes a product, and its shape. [`plan`] picks it from the device and the
/// shapes; tests and benchmarks can force any variant through [`kernels_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// `shaders/gemv.wgsl`: `tpr` threads per weight row, reduced as `reduction` says.
    Gemv {
        /// How a row's partial sums are combined.
        reduction: GemvReduction,
        /// Threads per weight row (a power of two up to [`GEMV_WG`]).
        tpr: u32,
    },
    /// `shaders/matmul.wgsl` with these tiles.
    Tiled(Tiles),
    /// `shaders/matmul_coop.wgsl`: cooperative matrices (f16 products, f32 sums); needs
    /// [`coop::fits`].
    Coop,
    /// `shaders/matmul_rows.wgsl` (CPU devices): a thread per weight row, x uniform in
    /// windows of up to [`rows::ROWS_WINDOW`] rows; needs [`rows::fits`].
    Rows,
}

/// How the GEMV reduces one row's partial sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvReduction {
    /// Workgroup-memory tree (no subgroups); `tpr` a power of two.
    Workgroup,
    /// `subgroupAdd`, then the row's `tpr / subgroup_size` subgroup sums through workgroup
    /// memory; `tpr` a multiple of the largest subgroup size.
    Subgroup,
    /// One subgroup per row: `subgroupAdd` alone, no barrier; `tpr` must equal the (fixed)
    /// subgroup size.
    SubgroupRow,
}

/// The kernel for an `m`×`k` by `n`×`k` product on this device.
///
/// GEMV (m ≤ [`GEMV_MAX_ROWS`]) threads per row, measured on an H200 (BENCHMARKS.md): two
/// 32-wide subgroups per row (3.0 TB/s for f32 4096×4096) beat one (2.6 TB/s) and the
/// workgroup-memory tree (2.3–2.5 TB/s), so rows get max(64, subgroup size) threads and a
/// single-subgroup reduction only where a fixed subgroup is that wide.
pub fn plan(caps: &Caps, m: usize, n: usize) -> Plan {
    if !(1..=GEMV_MAX_ROWS).contains(&m) {
        return Plan::Tiled(tiles_for(m, n));
    }
    let (lo, hi) = (caps.subgroup_min, caps.subgroup_max);
    let usable = caps.subgroups && lo >= 1 && hi.is_power_of_two() && hi <= GEMV_WG;
    if !usable {
        return Plan::Gemv {
            reduction: GemvReduction::Workgroup,
            tpr: GEMV_TPR,
        };
    }
    let tpr = GEMV_TPR_SUBGROUPS.max(hi);
    let reduction = if lo == hi && hi == tpr {
        GemvReduction::SubgroupRow
    } else {
        GemvReduction::Subgroup
    };
    Plan::Gemv { reduction, tpr }
}

/// The dispatches for `y (+)= x · Wᵀ`; `y` is given for the in-place form (input 2).
pub fn kernels_for(
    op: &'static str,
    caps: &Caps,
    x: &TensorDesc,
    w: &TensorDesc,
    y: Option<&TensorDesc>,
) -> Result<Vec<KernelCall>> {
    let (m, n, k, _) = check(op, x, w, y)?;
    let plan = if caps.cpu && !w.dtype.is_quantized() && rows::fits(caps, k, w.dtype) {
        Plan::Rows
    } else if coop::fits(caps, m, k, w.dtype) {
        Plan::Coop
    } else {
        plan(caps, m, n)
    };
    kernels_with(op, caps, x, w, y, plan)
}

/// [`kernels_for`] with the kernel choice given (tests use it to cover every variant on one
/// device). A GEMV plan needs 1 ≤ M ≤ [`GEMV_MAX_ROWS`] and a valid `tpr` for its reduction.
pub fn kernels_with(
    op: &'static str,
    caps: &Caps,
    x: &TensorDesc,
    w: &TensorDesc,
    y: Option<&TensorDesc>,
    plan: Plan,
) -> Result<Vec<KernelCall>> {
    let (m, n, k, _) = check(op, x, w, y)?;
    let add_into = y.is_some();
    if w.dtype.is_quantized() {
        return quant::kernels(caps, x, w, add_into);
    }
    let args = if add_into {
        [Arg::In(0), Arg::In(1), Arg::InOut(2)]
    } else {
        [Arg::In(0), Arg::In(1), Arg::Out(0)]
    };
    let call = match plan {
        Plan::Gemv { reduction, tpr } => {
            let tpr_ok = tpr.is_power_of_two() && tpr <= GEMV_WG;
            if !(1..=GEMV_MAX_ROWS).contains(&m) || !tpr_ok {
                return Err(Error::op(
                    op,
                    format!(
                        "x is {x}: the GEMV kernel takes 1 to {GEMV_MAX_ROWS} rows and a power-of-two \
                         number of threads per row up to {GEMV_WG} (got {m} rows, {tpr} threads)"
                    ),
                ));
            }
            gemv_call(caps, m as u32, n as u32, k as u32, w.dtype, reduction, tpr)
        }
        Plan::Tiled(t) => {
            if !(t.s == 1 || t.s == 2) || t.bk == 0 || !t.bk.is_multiple_of(4) || t.bk > 64 {
                return Err(Error::op(
                    op,
                    format!("tiles {t:?}: expected s 1 or 2 and bk a multiple of 4 up to 64"),
                ));
            }
            matmul_call(caps, m as u32, n as u32, k as u32, w.dtype, t)
        }
        Plan::Rows => return rows::calls(op, caps, (m, n, k), w, add_into),
        Plan::Coop => {
            if !coop::fits(caps, m, k, w.dtype) {
                return Err(Error::op(
                    op,
                    format!(
                        "x is {x} and w is {w}: the cooperative-matrix kernel needs an adapter \
                         configuration, more than {GEMV_MAX_ROWS} rows, K a multiple of {} and \
                         16-bit weights",
                        coop::BK
                    ),
                ));
            }
            return Ok(vec![
                coop::call(caps, (m, n, k), w.dtype, add_into)?.args(&args)
            ]);
        }
    };
    Ok(vec![call.define("ADD_INTO", add_into as u32).args(&args)])
}

fn gemv_call(
    caps: &Caps,
    m: u32,
    n: u32,
    k: u32,
    w: DType,
    red: GemvReduction,
    tpr: u32,
) -> KernelCall {
    // The widest load that divides K, so that every row starts on a load boundary.
    let vec = match w {
        DType::F32 if k.is_multiple_of(4) => 4,
        DType::F32 => 1,
        _ if k.is_multiple_of(8) => 8,
        _ if k.is_multiple_of(4) => 4,
        _ if k.is_multiple_of(2) => 2,
        _ => 1,
    };
    let rows = GEMV_WG / tpr;
    let [gx, gy, _] = grid_2d(n.div_ceil(rows), caps.max_workgroups_per_dim);
    KernelCall::new("gemv.wgsl", "gemv")
        .define("WG", GEMV_WG)
        .define("TPR", tpr)
        .define("MR", m)
        .define("VEC", vec)
        .define(&format!("V{vec}"), 1)
        .define(format_define(w), 1)
        .define("X_VEC4", (vec >= 4) as u32)
        .define("U4", 1)
        .define("SUBGROUPS", (red != GemvReduction::Workgroup) as u32)
        .define("SG_ROW", (red == GemvReduction::SubgroupRow) as u32)
        .params(&[k, n, gx, m, 0, 0, 0, 0])
        .workgroups(gx, gy, 1)
}

fn matmul_call(caps: &Caps, m: u32, n: u32, k: u32, w: DType, t: Tiles) -> KernelCall {
    let tile = 64 * t.s;
    let tiles_n = n.div_ceil(tile);
    let tiles = m.div_ceil(tile) * tiles_n;
    let [gx, gy, _] = grid_2d(tiles, caps.max_workgroups_per_dim);
    KernelCall::new("matmul.wgsl", "matmul")
        .define("S", t.s)
        .define("S2", (t.s == 2) as u32)
        .define("BK", t.bk)
        .define(format_define(w), 1)
        .define("X_VEC4", k.is_multiple_of(4) as u32)
        .define("V4", k.is_multiple_of(4) as u32)
        .params(&[m, n, k, gx, tiles_n, 0, 0, 0])
        .workgroups(gx, gy, 1)
}

/// CPU reference: `y[m, n] = Σ_k x[m, k] · w[n, k]` with f64 accumulation; x `[m, k]`, w `[n, k]`.
pub fn cpu(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let s: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// f32 values as little-endian f16 bytes (the GPU layout of an f16 tensor), rounded to nearest.
pub fn to_f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

/// f32 values as little-endian bf16 bytes (the GPU layout of a bf16 tensor), rounded to nearest.
pub fn to_bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// Round f32 values through a 16-bit dtype (what the GPU sees after [`to_f16_bytes`] /
/// [`to_bf16_bytes`]); other dtypes are returned unchanged.
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
        DType::BF16 => v
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect(),
        _ => v.to_vec(),
    }
}
