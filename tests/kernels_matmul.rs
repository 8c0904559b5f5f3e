//! Matmul (prefill) and GEMV (decode) kernels against the CPU reference, for every weight dtype,
//! with subgroups on and off, on shapes chosen to break tiles and vector loads.
//!
//! Tolerance: the reference is computed in f64 on the weights the GPU sees (16-bit weights are
//! rounded first; widening them is exact), so the only error left is the kernel's f32
//! accumulation. Its bound is proportional to Σ_k |x_k · w_k|, not to |y|: a dot product whose
//! terms cancel has a tiny result but the same absolute rounding error. So each element is
//! checked as |got − want| ≤ MATMUL_RTOL · Σ_k |x_k · w_k| (+ a denormal-sized floor).

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::matmul::{self, Matmul, MatmulAddInto};
use fado::ops::{Op, Step};
use fado::tensor::{DType, Tensor, TensorDesc};

/// Relative tolerance against Σ|x·w| for every weight dtype (f32 accumulation; K ≤ 1000 gives a
/// worst-case bound of K·2⁻²⁴ ≈ 6e-5, typical errors are far smaller).
const MATMUL_RTOL: f64 = F32_RTOL as f64;

const KS: &[usize] = &[1, 3, 7, 64, 129, 576, 1000];
const NS: &[usize] = &[1, 5, 63, 130, 257];
const DTYPES: &[DType] = &[DType::F32, DType::F16, DType::BF16];

fn upload_weight(ctx: &GpuContext, w: &[f32], n: usize, k: usize, dtype: DType) -> Tensor {
    let desc = TensorDesc::new(dtype, [n, k]);
    let (bytes, _) = weight_bytes(dtype, w, k);
    ctx.upload("w", desc, &bytes).expect("upload w")
}

/// Run one op on `ctx` (step 0), outputs poisoned first; returns the outputs.
fn run_on(ctx: &Arc<GpuContext>, op: impl Op + 'static, inputs: &[&Tensor]) -> Vec<Vec<f32>> {
    run_op_on(ctx, op, inputs, Step::default())
}

/// Σ_k |x[i, k] · w[j, k]| for every output: the scale of each element's rounding error.
fn abs_scale(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let aw: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    matmul::cpu(&ax, &aw, m, n, k)
        .into_iter()
        .map(|v| v as f64)
        .collect()
}

fn assert_matmul_close(what: &str, got: &[f32], want: &[f32], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        let lim = MATMUL_RTOL * scale[i] + 1e-30;
        assert!(
            !g.is_nan() && err <= lim,
            "{what}: element {i} is {g} but expected {w} (|err| {err:.3e} > {MATMUL_RTOL} · Σ|x·w| = {lim:.3e}); {} elements",
            got.len()
        );
    }
}

/// The contexts a product of `m` rows must be checked on: the tiled matmul (m > GEMV_MAX_ROWS)
/// has no subgroup variant, so the third context would only repeat the second's kernel.
fn contexts_for(m: usize) -> Vec<(&'static str, Arc<GpuContext>)> {
    let mut c = variant_contexts();
    if m > matmul::GEMV_MAX_ROWS {
        c.truncate(2);
    }
    c
}

/// Check `Matmul` for one shape on every context and weight dtype.
fn check_shape(rng: &mut Rng, m: usize, n: usize, k: usize) {
    let x = rng.vec(m * k, 1.0);
    let w32 = rng.vec(n * k, 1.0);
    for &dtype in DTYPES {
        let w = matmul::round_to(dtype, &w32);
        let want = matmul::cpu(&x, &w, m, n, k);
        let scale = abs_scale(&x, &w, m, n, k);
        for (label, ctx) in contexts_for(m) {
            let xt = ctx.upload_f32("x", &[m, k], &x).expect("upload x");
            let wt = upload_weight(&ctx, &w32, n, k, dtype);
            let got = run_on(&ctx, Matmul, &[&xt, &wt]);
            assert_matmul_close(
                &format!("matmul {dtype} M={m} N={n} K={k} ({label})"),
                &got[0],
                &want,
                &scale,
            );
        }
    }
}

#[test]
fn gemv_matches_reference_for_every_dtype_on_ragged_shapes() {
    let mut rng = Rng::new(11);
    for &k in KS {
        for &n in NS {
            check_shape(&mut rng, 1, n, k);
        }
    }
}

#[test]
fn small_prefill_gemv_matches_reference_for_every_dtype_on_ragged_shapes() {
    let mut rng = Rng::new(16);
    // 2 and 7 rows run the multi-row GEMV (8, its largest variant, in the tests below).
    for &m in &[2usize, 7] {
        for &k in KS {
            for &n in NS {
                check_shape(&mut rng, m, n, k);
            }
        }
    }
}

#[test]
fn matmul_matches_reference_for_every_dtype_on_ragged_shapes() {
    let mut rng = Rng::new(12);
    // 9 is the smallest M on the tiled path, 33 crosses no tile edge in M but is ragged.
    for &m in &[9usize, 33] {
        for &k in KS {
            for &n in NS {
                check_shape(&mut rng, m, n, k);
            }
        }
    }
}

#[test]
fn matmul_matches_reference_on_larger_prefill_shapes() {
    let mut rng = Rng::new(13);
    // M = 200 crosses several 64-row tiles with a ragged last one.
    for &(n, k) in &[
        (257usize, 129usize),
        (130, 1000),
        (63, 576),
        (5, 7),
        (257, 64),
    ] {
        check_shape(&mut rng, 200, n, k);
    }
}

#[test]
fn matmul_keeps_the_leading_dimensions_of_x() {
    let ctx = ctx();
    let mut rng = Rng::new(14);
    let (b, t, n, k) = (2usize, 3usize, 5usize, 7usize);
    let x = rng.vec(b * t * k, 1.0);
    let w = rng.vec(n * k, 1.0);
    let mut g = Graph::new();
    let xi = g.external("x", &ctx.upload_f32("x", &[b, t, k], &x).unwrap());
    let wi = g.external("w", &ctx.upload_f32("w", &[n, k], &w).unwrap());
    let y = g.add1(Matmul, &[xi, wi]).unwrap();
    assert_eq!(g.desc(y), &TensorDesc::f32([b, t, n]));
}

#[test]
fn matmul_add_into_adds_to_y_in_place() {
    let mut rng = Rng::new(15);
    for &(m, n, k) in &[
        (1usize, 130usize, 129usize),
        (1, 63, 576),
        (1, 5, 7),
        (3, 257, 1000),
        (7, 257, 64),
        (33, 63, 1000),
        (70, 130, 129),
    ] {
        let x = rng.vec(m * k, 1.0);
        let w32 = rng.vec(n * k, 1.0);
        let y0 = rng.vec(m * n, 4.0);
        for &dtype in DTYPES {
            let w = matmul::round_to(dtype, &w32);
            let prod = matmul::cpu(&x, &w, m, n, k);
            let want: Vec<f32> = prod.iter().zip(&y0).map(|(a, b)| a + b).collect();
            // The add itself rounds once at |y|.
            let scale: Vec<f64> = abs_scale(&x, &w, m, n, k)
                .iter()
                .zip(&y0)
                .map(|(s, y)| s + y.abs() as f64)
                .collect();
            for (label, ctx) in contexts_for(m) {
                let xt = ctx.upload_f32("x", &[m, k], &x).unwrap();
                let wt = upload_weight(&ctx, &w32, n, k, dtype);
                let yt = ctx.upload_f32("y", &[m, n], &y0).unwrap();
                let outs = run_on(&ctx, MatmulAddInto, &[&xt, &wt, &yt]);
                assert!(outs.is_empty());
                let got = ctx.read_f32(&yt).unwrap();
                assert_matmul_close(
                    &format!("matmul_add_into {dtype} M={m} N={n} K={k} ({label})"),
                    &got,
                    &want,
                    &scale,
                );
            }
        }
    }
}

#[test]
fn matmul_rejects_inconsistent_shapes_and_dtypes_with_a_named_error() {
    let ctx = ctx();
    let mut g = Graph::new();
    let x = g.external("x", &ctx.upload_f32("x", &[3, 100], &[0.0; 300]).unwrap());
    let w99 = g.external(
        "w",
        &ctx.upload("w", TensorDesc::new(DType::BF16, [64, 99]), &[])
            .unwrap(),
    );
    let e = g.add(Matmul, &[x, w99]).unwrap_err().to_string();
    assert!(
        e.contains("matmul")
            && e.contains("f32[3, 100]")
            && e.contains("bf16[64, 99]")
            && e.contains("expected w's last dimension 100"),
        "{e}"
    );

    let wq = g.external(
        "wq",
        &ctx.upload("wq", TensorDesc::new(DType::Q4_0, [64, 100]), &[])
            .unwrap(),
    );
    // Quantized weights are supported, but only in whole blocks along K.
    let e = g.add(Matmul, &[x, wq]).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("q4_0") && e.contains("not whole q4_0 blocks of 32"),
        "{e}"
    );

    let wu = g.external(
        "wu",
        &ctx.upload("wu", TensorDesc::new(DType::U32, [64, 100]), &[])
            .unwrap(),
    );
    let e = g.add(Matmul, &[x, wu]).unwrap_err().to_string();
    assert!(e.contains("u32") && e.contains("not supported"), "{e}");

    let w = g.external(
        "w",
        &ctx.upload("w", TensorDesc::new(DType::F16, [64, 100]), &[])
            .unwrap(),
    );
    let ybad = g.external("y", &ctx.upload_f32("y", &[3, 63], &[0.0; 189]).unwrap());
    let e = g.add(MatmulAddInto, &[x, w, ybad]).unwrap_err().to_string();
    assert!(
        e.contains("matmul_add_into")
            && e.contains("f32[3, 63]")
            && e.contains("expected y to be f32[3, 64]"),
        "{e}"
    );

    let xi = g.external(
        "xi",
        &ctx.upload("xi", TensorDesc::new(DType::U32, [3, 100]), &[])
            .unwrap(),
    );
    let e = g.add(Matmul, &[xi, w]).unwrap_err().to_string();
    assert!(
        e.contains("x is u32[3, 100]") && e.contains("not supported"),
        "{e}"
    );

    let e = g.add(Matmul, &[x]).unwrap_err().to_string();
    assert!(e.contains("expected 2 inputs"), "{e}");
}

#[test]
fn plan_follows_the_device_caps_and_shapes() {
    use matmul::{GemvReduction, Plan};
    let with = ctx();
    let without = ctx_variant(false, false);
    assert_eq!(
        matmul::plan(&without.caps, 1, 4096),
        Plan::Gemv {
            reduction: GemvReduction::Workgroup,
            tpr: matmul::GEMV_TPR
        }
    );
    let p = matmul::plan(&with.caps, 1, 4096);
    eprintln!(
        "default context: {p:?} (subgroups {}, sizes {}..{})",
        with.caps.subgroups, with.caps.subgroup_min, with.caps.subgroup_max
    );
    if with.caps.subgroups {
        assert!(matches!(p, Plan::Gemv { reduction, .. } if reduction != GemvReduction::Workgroup));
    }
    assert!(matches!(
        matmul::plan(&with.caps, matmul::GEMV_MAX_ROWS, 64),
        Plan::Gemv { .. }
    ));
    assert_eq!(
        matmul::plan(&with.caps, matmul::GEMV_MAX_ROWS + 1, 64),
        Plan::Tiled(matmul::Tiles { s: 1, bk: 16 })
    );
    assert_eq!(
        matmul::plan(&with.caps, 4096, 4096),
        Plan::Tiled(matmul::Tiles { s: 2, bk: 16 })
    );
}

/// `Matmul` / `MatmulAddInto` with the kernel choice forced, to cover every variant.
#[derive(Debug)]
struct Forced {
    plan: matmul::Plan,
    add_into: bool,
}

impl Op for Forced {
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
    ) -> fado::Result<Vec<fado::ops::KernelCall>> {
        let y = self.add_into.then(|| inputs[2]);
        matmul::kernels_with(self.name(), caps, inputs[0], inputs[1], y, self.plan)
    }
}

/// Run `plan` on one shape for the given weight dtypes, plain and in place, against the reference.
fn check_forced(
    ctx: &Arc<GpuContext>,
    rng: &mut Rng,
    plan: matmul::Plan,
    dtypes: &[DType],
    (m, n, k): (usize, usize, usize),
) {
    let x = rng.vec(m * k, 1.0);
    let w32 = rng.vec(n * k, 1.0);
    let y0 = rng.vec(m * n, 2.0);
    for &dtype in dtypes {
        let w = matmul::round_to(dtype, &w32);
        let want = matmul::cpu(&x, &w, m, n, k);
        let scale = abs_scale(&x, &w, m, n, k);
        let what = format!("{plan:?} {dtype} M={m} N={n} K={k}");
        let xt = ctx.upload_f32("x", &[m, k], &x).unwrap();
        let wt = upload_weight(ctx, &w32, n, k, dtype);
        let got = run_on(
            ctx,
            Forced {
                plan,
                add_into: false,
            },
            &[&xt, &wt],
        );
        assert_matmul_close(&what, &got[0], &want, &scale);
        let yt = ctx.upload_f32("y", &[m, n], &y0).unwrap();
        run_on(
            ctx,
            Forced {
                plan,
                add_into: true,
            },
            &[&xt, &wt, &yt],
        );
        let got = ctx.read_f32(&yt).unwrap();
        let want_add: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        let scale_add: Vec<f64> = scale
            .iter()
            .zip(&y0)
            .map(|(s, y)| s + y.abs() as f64)
            .collect();
        assert_matmul_close(&format!("{what} add_into"), &got, &want_add, &scale_add);
    }
}

#[test]
fn every_gemv_reduction_matches_reference() {
    use matmul::{GemvReduction, Plan};
    let ctx = ctx();
    let mut rng = Rng::new(17);
    let mut plans = vec![
        Plan::Gemv {
            reduction: GemvReduction::Workgroup,
            tpr: 32,
        },
        Plan::Gemv {
            reduction: GemvReduction::Workgroup,
            tpr: 64,
        },
    ];
    let (lo, hi) = (ctx.caps.subgroup_min, ctx.caps.subgroup_max);
    if ctx.caps.subgroups {
        plans.push(Plan::Gemv {
            reduction: GemvReduction::Subgroup,
            tpr: 64.max(hi),
        });
        plans.push(Plan::Gemv {
            reduction: GemvReduction::Subgroup,
            tpr: 128.max(hi),
        });
        if lo == hi {
            plans.push(Plan::Gemv {
                reduction: GemvReduction::SubgroupRow,
                tpr: hi,
            });
        }
    }
    // The reduction does not depend on the weight dtype (the loads are covered by the tests
    // above): f32 on every shape, the 16-bit loads on one.
    for plan in plans {
        for &shape in &[
            (1, 63, 129),
            (1, 257, 576),
            (8, 5, 7),
            (2, 1, 3),
            (1, 66, 64),
        ] {
            check_forced(&ctx, &mut rng, plan, &[DType::F32], shape);
        }
        check_forced(&ctx, &mut rng, plan, DTYPES, (3, 130, 1000));
    }
}

#[test]
fn cpu_device_rows_kernel_matches_reference_across_windows() {
    // One row of x, a partial window, a full one, a full one plus one row, several; ragged N.
    // On the CPU-style context whatever FADO_KERNELS says: it sizes buffers for uniform windows.
    let ctx = ctx_variant(true, true);
    let mut rng = Rng::new(19);
    for &shape in &[
        (1, 63, 64),
        (3, 130, 576),
        (8, 5, 8),
        (9, 257, 64),
        (20, 33, 1000),
    ] {
        check_forced(&ctx, &mut rng, matmul::Plan::Rows, DTYPES, shape);
    }
    // The plan the CPU-style context picks by itself.
    let calls = Matmul
        .kernels(
            &ctx.caps,
            &[
                &TensorDesc::f32([20, 64]),
                &TensorDesc::new(DType::F16, [5, 64]),
            ],
        )
        .unwrap();
    assert_eq!(calls.len(), 3, "windows of 8 rows");
    assert!(calls.iter().all(|c| c.shader == "matmul_rows.wgsl"));
}

#[test]
fn every_matmul_tiling_matches_reference() {
    use matmul::{Plan, Tiles};
    let ctx = ctx();
    let mut rng = Rng::new(18);
    // 130×131 crosses the 128×128 tiles by two rows and three columns; K = 7 and 129 leave
    // partial k-steps. f32 weights on every shape, the 16-bit loads on one.
    let tilings = [
        Tiles { s: 1, bk: 16 },
        Tiles { s: 2, bk: 16 },
        Tiles { s: 2, bk: 8 },
        Tiles { s: 1, bk: 32 },
    ];
    for t in tilings {
        for &shape in &[(2, 63, 129), (130, 131, 7), (1, 5, 3), (9, 66, 132)] {
            check_forced(&ctx, &mut rng, Plan::Tiled(t), &[DType::F32], shape);
        }
        check_forced(&ctx, &mut rng, Plan::Tiled(t), DTYPES, (33, 130, 129));
    }
}
