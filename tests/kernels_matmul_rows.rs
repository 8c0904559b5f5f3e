//! The CPU-style row kernel (`shaders/matmul_rows.wgsl`, what CPU devices run every product
//! with) for every weight format against the CPU reference, with every way of binding a prefill
//! window — 8 rows of x in 1, 2, 4 or 8 uniform bindings — and with x shared through subgroups
//! or not. Rows 1, 3, a window (8), a window plus one, two windows plus three; N ragged across
//! workgroups; float K not a multiple of the 32-value blocks; outputs poisoned before the run,
//! plain and in place. Then the windows the kernel picks by itself for rows too long for 8 in
//! one binding (K > 2048), as AMALIA-9B's 4096 and 12288 are.
//!
//! Tolerance: the reference is the f64 product of x and the weight values the GPU sees (16-bit
//! floats rounded, blocks dequantized), so what is left is f32 accumulation:
//! |got − want| ≤ RTOL · Σ_k |x_k · w_k|.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::ops::matmul::rows::{self, Windows};
use fado::ops::matmul::{self, Matmul, MatmulAddInto};
use fado::ops::{KernelCall, Op, Step};
use fado::tensor::{DType, TensorDesc};

const RTOL: f64 = F32_RTOL as f64;

/// Rows of x: one (decode), a partial window, a window, a window plus one, two plus three.
const MS: &[usize] = &[1, 3, 8, 9, 19];
/// Weight rows: a workgroup (64) plus three.
const N: usize = 67;

/// Every grouping of a window of 8 rows.
const GROUPINGS: [Windows; 4] = [
    Windows { rpb: 8, groups: 1 },
    Windows { rpb: 4, groups: 2 },
    Windows { rpb: 2, groups: 4 },
    Windows { rpb: 1, groups: 8 },
];

/// `Matmul` / `MatmulAddInto` through the row kernel with its windows and x sharing forced.
#[derive(Debug)]
struct ForcedRows {
    win: Windows,
    share_x: bool,
    add_into: bool,
}

impl Op for ForcedRows {
    fn name(&self) -> &'static str {
        if self.add_into {
            "matmul_add_into"
        } else {
            "matmul"
        }
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> fado::Result<Vec<TensorDesc>> {
        if self.add_into {
            MatmulAddInto.infer(inputs)
        } else {
            Matmul.infer(inputs)
        }
    }
    fn kernels(
        &self,
        caps: &fado::gpu::Caps,
        inputs: &[&TensorDesc],
    ) -> fado::Result<Vec<KernelCall>> {
        let (x, w) = (inputs[0], inputs[1]);
        let shape = (x.rows(), w.shape[0], w.shape[1]);
        let (win, share_x) = (self.win, self.share_x);
        rows::calls_with(self.name(), caps, shape, w, self.add_into, win, share_x)
    }
}

/// A random `[n, k]` weight of `dtype`: its GPU bytes and the values the kernel sees.
fn weight(rng: &mut Rng, dtype: DType, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    if dtype.is_quantized() {
        random_quant_weight(rng, dtype, n, k)
    } else {
        weight_bytes(dtype, &rng.vec(n * k, 1.0), k)
    }
}

fn assert_rows_close(what: &str, got: &[f32], want: &[f32], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        let lim = RTOL * scale[i] + 1e-30;
        assert!(
            !g.is_nan() && err <= lim,
            "{what}: element {i} (row {}, column {}) is {g} but expected {w} (|err| {err:.3e} > \
             {RTOL} · Σ|x·w| = {lim:.3e})",
            i / N.max(1),
            i % N.max(1),
        );
    }
}

/// One product of `m` rows of `k` values by a `[n, k]` weight of `dtype`, through `op` (plain:
/// y poisoned first; in place: onto random y), against the reference.
fn check(
    ctx: &Arc<GpuContext>,
    rng: &mut Rng,
    dtype: DType,
    (m, n, k): (usize, usize, usize),
    forced: Option<(Windows, bool)>,
) {
    let (bytes, wv) = weight(rng, dtype, n, k);
    let x = rng.vec(m * k, 1.0);
    let y0 = rng.vec(m * n, 2.0);
    let want = matmul::cpu(&x, &wv, m, n, k);
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f32> = wv.iter().map(|v| v.abs()).collect();
    let scale: Vec<f64> = matmul::cpu(&ax, &aw, m, n, k)
        .into_iter()
        .map(f64::from)
        .collect();
    let what = format!("{dtype} M={m} N={n} K={k} {forced:?}");
    let xt = ctx.upload_f32("x", &[m, k], &x).expect("upload x");
    let wt = ctx
        .upload("w", TensorDesc::new(dtype, [n, k]), &bytes)
        .expect("upload w");
    let got = match forced {
        Some((win, share_x)) => {
            let op = ForcedRows {
                win,
                share_x,
                add_into: false,
            };
            run_op_on(ctx, op, &[&xt, &wt], Step::default())
        }
        None => run_op_on(ctx, Matmul, &[&xt, &wt], Step::default()),
    };
    assert_rows_close(&what, &got[0], &want, &scale);

    let yt = ctx.upload_f32("y", &[m, n], &y0).expect("upload y");
    match forced {
        Some((win, share_x)) => {
            let op = ForcedRows {
                win,
                share_x,
                add_into: true,
            };
            run_op_on(ctx, op, &[&xt, &wt, &yt], Step::default());
        }
        None => {
            run_op_on(ctx, MatmulAddInto, &[&xt, &wt, &yt], Step::default());
        }
    }
    let got = ctx.read_f32(&yt).expect("read y");
    let want_add: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
    let scale_add: Vec<f64> = scale
        .iter()
        .zip(&y0)
        .map(|(s, y)| s + y.abs() as f64)
        .collect();
    assert_rows_close(&format!("{what} add_into"), &got, &want_add, &scale_add);
}

/// K values per format: floats below one 32-value block and with a partial last block (f32
/// K = 12: rows of 48 bytes, not texel-aligned, so the weight stays in a storage buffer), block
/// formats one and two or three blocks.
fn ks(dtype: DType) -> &'static [usize] {
    match (dtype, dtype.block_len()) {
        (DType::F32, _) => &[12, 72, 200],
        (_, 1) => &[8, 72, 200],
        (_, 32) => &[32, 96],
        _ => &[256, 512],
    }
}

#[test]
fn rows_kernel_matches_reference_for_every_format_window_grouping_and_x_sharing() {
    // The CPU-style context with subgroups (x shared where the device allows) and without.
    let with = ctx_variant(true, true);
    let without = ctx_variant(true, false);
    assert!(!rows::shares_x(&without.caps));
    let mut rng = Rng::new(23);
    for dtype in DType::WEIGHT_TYPES {
        for &k in ks(dtype) {
            for &m in MS {
                if m == 1 {
                    // Decode: one row, one binding, nothing to share.
                    let one = Some((Windows { rpb: 1, groups: 1 }, false));
                    check(&with, &mut rng, dtype, (1, N, k), one);
                    continue;
                }
                let align = with.caps.uniform_offset_align.max(1) as usize;
                for win in GROUPINGS {
                    if (win.rpb * k * 4) % align != 0 {
                        continue;
                    }
                    for share_x in [false, true] {
                        let ctx = if share_x { &with } else { &without };
                        if share_x && !rows::shares_x(&ctx.caps) {
                            continue;
                        }
                        check(ctx, &mut rng, dtype, (m, N, k), Some((win, share_x)));
                    }
                }
            }
        }
    }
}

#[test]
fn long_rows_keep_windows_of_eight_rows_in_several_bindings() {
    let ctx = ctx_variant(true, true);
    let mut rng = Rng::new(29);
    // 8 rows of K = 2304, 4352, 8448 values are 72, 136, 264 KiB: 2, 4, 8 bindings of 64 KiB.
    for (k, groups) in [(2304, 2), (4352, 4), (8448, 8)] {
        let win = rows::windows(&ctx.caps, 19, k as u64 * 4).expect("aligned windows");
        assert_eq!(win.rows(), rows::ROWS_WINDOW, "K = {k}");
        assert_eq!(win.groups, groups, "K = {k}");
        let calls = Matmul
            .kernels(
                &ctx.caps,
                &[
                    &TensorDesc::f32([19, k]),
                    &TensorDesc::new(DType::Q4_0, [N, k]),
                ],
            )
            .expect("kernels");
        assert_eq!(calls.len(), 3, "windows of 8 rows, K = {k}");
        assert!(calls.iter().all(|c| c.entry == "matmul_rows"));
        assert_eq!(
            calls[0].defines["SGX"],
            (rows::shares_x(&ctx.caps) as u32).to_string()
        );
        let dtypes: &[DType] = if k == 4352 {
            &DType::WEIGHT_TYPES
        } else {
            &[DType::F16, DType::Q4_0, DType::Q6K]
        };
        for &dtype in dtypes {
            check(&ctx, &mut rng, dtype, (19, N, k), None);
        }
    }
}

#[test]
fn small_batches_take_windows_of_two_or_four_rows() {
    // A batched decode step of 2 to 4 rows computes only the rows of a 2- or 4-row window
    // (WR4 / WR8 unset), with x shared through subgroups and without.
    for (m, rows) in [(2, 2), (3, 4), (4, 4), (5, 8)] {
        let caps = &ctx_variant(true, true).caps;
        let win = rows::windows(caps, m, 64 * 4).expect("aligned windows");
        assert_eq!(win.rows(), rows, "{m} rows");
    }
    let mut rng = Rng::new(31);
    for ctx in [ctx_variant(true, true), ctx_variant(true, false)] {
        for dtype in DType::WEIGHT_TYPES {
            for &k in ks(dtype) {
                for m in [2, 3, 4] {
                    check(&ctx, &mut rng, dtype, (m, N, k), None);
                }
            }
        }
    }
}
