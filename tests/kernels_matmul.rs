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

use std::sync::{Arc, OnceLock};

use fado::gpu::{GpuContext, GpuOptions};
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

/// The adapter with its subgroups hidden, so the workgroup-memory reductions run too.
fn ctx_no_subgroups() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut o = GpuOptions::from_env();
        o.disable_subgroups = true;
        GpuContext::new(&o).expect("second GPU context")
    })
    .clone()
}

/// Both contexts, labelled.
fn contexts() -> Vec<(&'static str, Arc<GpuContext>)> {
    vec![("default", ctx()), ("no-subgroups", ctx_no_subgroups())]
}

fn upload_weight(ctx: &GpuContext, w: &[f32], n: usize, k: usize, dtype: DType) -> Tensor {
    let desc = TensorDesc::new(dtype, [n, k]);
    let bytes = match dtype {
        DType::F32 => bytemuck::cast_slice(w).to_vec(),
        DType::F16 => matmul::to_f16_bytes(w),
        _ => matmul::to_bf16_bytes(w),
    };
    ctx.upload("w", desc, &bytes).expect("upload w")
}

/// Run one op on `ctx`, outputs poisoned first; returns the outputs.
fn run_on(ctx: &Arc<GpuContext>, op: impl Op + 'static, inputs: &[&Tensor]) -> Vec<Vec<f32>> {
    let mut g = Graph::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.external(format!("in{i}"), t))
        .collect();
    let outs = g.add(op, &ids).expect("op rejected valid inputs");
    let exe = g.compile(ctx, &outs).expect("compile");
    for o in &outs {
        ctx.poison(exe.tensor(*o));
    }
    exe.run(Step::default()).expect("run");
    outs.iter()
        .map(|o| exe.read_f32(*o).expect("read"))
        .collect()
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
/// has no subgroup variant, so the second context would only repeat the same kernel.
fn contexts_for(m: usize) -> Vec<(&'static str, Arc<GpuContext>)> {
    let mut c = contexts();
    if m > matmul::GEMV_MAX_ROWS {
        c.truncate(1);
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
    // 2 and 7 rows run the multi-row GEMV; 8 is its largest variant.
    for &m in &[2usize, 7, 8] {
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
    for &(n, k) in &[(257usize, 129usize), (130, 1000), (63, 576), (5, 7), (257, 64)] {
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
    let e = g.add(Matmul, &[x, wq]).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("q4_0") && e.contains("not supported"), "{e}");

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
        e.contains("matmul_add_into") && e.contains("f32[3, 63]") && e.contains("expected y to be f32[3, 64]"),
        "{e}"
    );

    let xi = g.external("xi", &ctx.upload("xi", TensorDesc::new(DType::U32, [3, 100]), &[]).unwrap());
    let e = g.add(Matmul, &[xi, w]).unwrap_err().to_string();
    assert!(e.contains("x is u32[3, 100]") && e.contains("not supported"), "{e}");

    let e = g.add(Matmul, &[x]).unwrap_err().to_string();
    assert!(e.contains("expected 2 inputs"), "{e}");
}

#[test]
fn gemv_reduction_follows_the_device_caps() {
    let with = ctx();
    let without = ctx_no_subgroups();
    let (red, tpr) = matmul::gemv_reduction(&without.caps);
    assert_eq!(red, matmul::GemvReduction::Workgroup);
    assert_eq!(tpr, matmul::GEMV_TPR);
    eprintln!(
        "default context: {:?} (subgroups {}, sizes {}..{})",
        matmul::gemv_reduction(&with.caps),
        with.caps.subgroups,
        with.caps.subgroup_min,
        with.caps.subgroup_max
    );
}
