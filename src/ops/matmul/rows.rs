//! The CPU-style kernel of the matmul family (`shaders/matmul_rows.wgsl`), for every weight
//! format: a thread per weight row, x bound as uniform arrays in windows of up to
//! [`ROWS_WINDOW`] rows, weights as a texel image where [`reads_texels`] says so. CPU devices
//! (lavapipe) take every product with it that [`fits`].
//!
//! In a prefill each weight load serves every row of the window, so a window should hold
//! [`ROWS_WINDOW`] rows however long they are: rows too long for eight in one uniform binding
//! (K > 2048 with 64 KiB windows, e.g. AMALIA-9B's K of 4096 and 12288) are bound as 2, 4 or 8
//! groups of rows, one uniform binding each ([`Windows`]).
//!
//! lavapipe turns a uniform load whose index varies with a loop into a gather per component,
//! for every lane, even when all lanes read the same address: with eight rows per window that
//! is one gather per multiply-add, and a prefill costs nearly what eight decode steps do. So
//! where subgroups have at least 8 lanes ([`shares_x`]), each lane loads a different vec4 of a
//! 32-value block of x and the others take it by `subgroupBroadcast` (a register shuffle).

use crate::error::{Error, Result};
use crate::gpu::{reads_texels, rows_fit, Caps};
use crate::ops::{format_define, grid_2d, Arg, KernelCall};
use crate::quant;
use crate::tensor::{DType, TensorDesc};

/// Rows of x per call (the shader's eight named accumulators).
pub const ROWS_WINDOW: usize = 8;
/// Threads (= weight rows) per workgroup.
pub const ROWS_WG: u32 = 64;

/// How a window of x rows is bound: `groups` uniform bindings of `rpb` consecutive rows each
/// (`rpb · groups` rows per window, at most [`ROWS_WINDOW`]; `groups` is 1, 2, 4 or 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Rows of x per uniform binding.
    pub rpb: usize,
    /// Uniform bindings per window.
    pub groups: usize,
}

impl Windows {
    /// Rows of x per window (per call).
    pub fn rows(self) -> usize {
        self.rpb * self.groups
    }
}

/// Whether prefill windows (`m > 1`) share their x loads through subgroups on this device: every
/// subgroup has at least 8 lanes (powers of two) and fits the workgroup.
pub fn shares_x(caps: &Caps) -> bool {
    caps.subgroups && caps.subgroup_min >= 8 && caps.subgroup_max <= ROWS_WG
}

/// Whether the kernel takes a product with rows of `k` values and weight `w` on this device:
/// float weights per [`rows_fit`], block formats when a row of x fits one uniform binding.
pub fn fits(caps: &Caps, k: usize, w: DType) -> bool {
    if w.is_quantized() {
        (k as u64) * 4 <= caps.uniform_window
    } else {
        rows_fit(caps, k, w)
    }
}

/// The windows for a product of `m` rows of `row_bytes` bytes: [`ROWS_WINDOW`] rows (or, for
/// fewer rows — a batched decode step — the next power of two: 2 or 4) in the fewest groups
/// whose `rpb` rows fit one uniform binding and start at multiples of the uniform offset
/// alignment; else, where no such group exists, as many rows as are so aligned in one
/// binding. `None` when `m > 1` and no window size is so aligned.
pub fn windows(caps: &Caps, m: usize, row_bytes: u64) -> Option<Windows> {
    if m == 1 {
        return Some(Windows { rpb: 1, groups: 1 });
    }
    let window = m.next_power_of_two().min(ROWS_WINDOW);
    let align = caps.uniform_offset_align.max(1) as u64;
    let ok = |rows: usize| {
        let bytes = rows as u64 * row_bytes;
        bytes <= caps.uniform_window && bytes.is_multiple_of(align)
    };
    [8, 4, 2, 1]
        .into_iter()
        .filter(|&rpb| rpb <= window)
        .find(|&rpb| ok(rpb))
        .map(|rpb| Windows {
            rpb,
            groups: window / rpb,
        })
        .or_else(|| {
            (1..window)
                .rev()
                .find(|&rpb| ok(rpb))
                .map(|rpb| Windows { rpb, groups: 1 })
        })
}

/// The calls of `y (+)= x · Wᵀ` for `x` `[m, k]` and weight `wd` `[n, k]`: one per window of
/// x rows, each group of the window bound as a uniform at its offset. Args: x `In(0)`, w
/// `In(1)` (or `Texels(1)`), y `Out(0)` or, when `add_into`, `InOut(2)`.
pub fn calls(
    op: &'static str,
    caps: &Caps,
    (m, n, k): (usize, usize, usize),
    wd: &TensorDesc,
    add_into: bool,
) -> Result<Vec<KernelCall>> {
    let row_bytes = k as u64 * 4;
    let align = caps.uniform_offset_align.max(1);
    let win = windows(caps, m, row_bytes).ok_or_else(|| {
        Error::op(
            op,
            format!("rows of {row_bytes} bytes cannot start windows aligned to {align} bytes"),
        )
    })?;
    calls_with(
        op,
        caps,
        (m, n, k),
        wd,
        add_into,
        win,
        m > 1 && shares_x(caps),
    )
}

/// [`calls`] with the windows and the x sharing given (tests use it to cover every variant on
/// small shapes). `win` must have 1, 2, 4 or 8 groups, at most [`ROWS_WINDOW`] rows, and
/// groups of rows that fit a uniform binding at aligned offsets; `share_x` needs `m > 1` and
/// [`shares_x`].
pub fn calls_with(
    op: &'static str,
    caps: &Caps,
    (m, n, k): (usize, usize, usize),
    wd: &TensorDesc,
    add_into: bool,
    win: Windows,
    share_x: bool,
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
    let group_bytes = win.rpb as u64 * row_bytes;
    let align = caps.uniform_offset_align.max(1) as u64;
    let valid = matches!(win.groups, 1 | 2 | 4 | 8)
        && (1..=ROWS_WINDOW).contains(&win.rows())
        && group_bytes <= caps.uniform_window
        && (m == 1 || group_bytes.is_multiple_of(align))
        && (!share_x || (m > 1 && shares_x(caps)));
    if !valid {
        return Err(Error::op(
            op,
            format!(
                "{win:?} for {m} rows of {row_bytes} bytes, sharing x {share_x}: expected 1, 2, \
                 4 or 8 groups, at most {ROWS_WINDOW} rows, groups within {} bytes aligned to \
                 {align}, and sharing x only for several rows on subgroups of 8 lanes or more",
                caps.uniform_window
            ),
        ));
    }
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
        .define("SGX", share_x as u32)
        .define("XU", caps.uniform_window / 16)
        .define("RPB", win.rpb)
        .define("XG2", (win.groups >= 2) as u32)
        .define("XG4", (win.groups >= 4) as u32)
        .define("XG8", (win.groups >= 8) as u32)
        .define("W4B", 4 + win.groups)
        .define("WR4", (win.rows() > 2) as u32)
        .define("WR8", (win.rows() > 4) as u32)
        .define(format_define(w), 1)
        .define("ADD_INTO", add_into as u32)
        .define("TEX", texels as u32)
        .workgroups(gx, gy, 1);
    // Row r of the window reads the binding of its group.
    for r in 1..ROWS_WINDOW {
        let g = (r / win.rpb).min(win.groups - 1);
        let name = if g == 0 {
            "x".to_string()
        } else {
            format!("xg{g}")
        };
        base = base.define(&format!("X{r}"), name);
    }
    if w.is_quantized() {
        base = base
            .define("QUANT", 1)
            .define("SUBS", w.block_len() / 32)
            .define("NIB32", matches!(w, DType::Q4_0 | DType::Q4_1) as u32)
            .define("QH", matches!(w, DType::Q5K | DType::Q6K) as u32);
    }
    let weight = if texels { Arg::Texels(1) } else { Arg::In(1) };
    let out = if add_into { Arg::InOut(2) } else { Arg::Out(0) };
    let window = win.rows();
    let mut calls = Vec::new();
    for m0 in (0..m).step_by(window) {
        let rows = window.min(m - m0);
        // Group g holds rows m0 + g·rpb ..; a group past the window's end binds the first.
        let group = |g: usize| {
            let first = if g * win.rpb < rows { g * win.rpb } else { 0 };
            let len = win.rpb.min(rows - first);
            Arg::UniformRange(0, (m0 + first) as u64 * row_bytes, len as u64 * row_bytes)
        };
        let mut args = vec![group(0), weight, out];
        args.extend((1..win.groups).map(group));
        if w.is_quantized() && !texels {
            // The same buffer again as vec4 words (binding W4B).
            args.push(Arg::In(1));
        }
        let params = [rows, n, k, nbr, scales_word, gx as usize, chunks, m0];
        calls.push(base.clone().params(&params.map(|v| v as u32)).args(&args));
    }
    Ok(calls)
}
