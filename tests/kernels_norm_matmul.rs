//! `NormMatmul` (RMSNorm fused into the following product) against RMSNorm-then-matmul on the
//! CPU, for every weight dtype, on every kernel variant: the one-dispatch fused GEMV where the
//! device decodes with GPU-style kernels, the two-kernel path (prefill, CPU-style) elsewhere.
//! Outputs are poisoned first; shapes are ragged (rows not a multiple of any workgroup).

mod common;
use common::*;

use fado::ops::matmul::int_dot;
use fado::ops::matmul::norm::{self as norm_matmul, NormMatmul};
use fado::ops::Op;
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

const EPS: f32 = 1e-5;

#[test]
fn norm_matmul_matches_rmsnorm_then_matmul_for_every_dtype_and_variant() {
    let mut rng = Rng::new(77);
    let op = NormMatmul { eps: EPS };
    for (label, c) in variant_contexts() {
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4K,
        ] {
            let ks: &[usize] = match dtype {
                DType::Q4K => &[256],
                q if q.is_quantized() => &[64, 96],
                _ => &[40, 64, 256],
            };
            for &k in ks {
                for (m, n) in [(1usize, 37usize), (1, 301), (3, 37), (9, 130)] {
                    let w = rng.vec(n * k, 1.0);
                    let (bytes, wv) = weight_bytes(dtype, &w, k);
                    // x far from unit scale, so a missing or doubled 1/rms shows.
                    let x = rng.vec(m * k, 7.0);
                    let g: Vec<f32> = (0..k).map(|_| rng.uniform(0.5, 1.5)).collect();
                    let wd = TensorDesc::new(dtype, [n, k]);
                    let wt = c.upload("w", wd.clone(), &bytes).expect("upload w");
                    let xt = c.upload_f32("x", &[m, k], &x).expect("upload x");
                    let gt = c.upload_f32("g", &[k], &g).expect("upload g");
                    let calls = op
                        .kernels(&c.caps, &[&xt.desc, &gt.desc, &wd])
                        .expect("kernels");
                    let fused = NormMatmul::fuses(&c.caps, &xt.desc);
                    assert_eq!(fused, m == 1 && !c.caps.cpu, "{label}");
                    if fused {
                        assert_eq!(calls.len(), 1, "{label} {dtype}: one dispatch");
                        assert!(calls[0].defines.contains_key("NORM"));
                    } else {
                        assert!(calls.len() >= 2, "{label} {dtype}: norm, then product");
                    }
                    let got = run_op_on(&c, op.clone(), &[&xt, &gt, &wt], Default::default());
                    let want = norm_matmul::cpu(&x, &g, &wv, EPS, n);
                    let what = format!("norm_matmul {dtype} m={m} n={n} k={k} {label}");
                    assert_close_rel_max(&what, &got[0], &want, 1e-4);
                }
            }
        }
    }
}

/// The fused decode GEMV with the integer path on (GPU-style kernels on an adapter with packed
/// integer dot products, every format that has one): the kernel quantizes g∘x per 32 as it
/// reads it and scales the sums by 1/rms as it stores them (per-group quantization does not
/// change with the scale), so the reference is the integer GEMV's of g∘x, times 1/rms; the
/// float reference differs by the int8 rounding and must fail the same check.
#[test]
fn norm_matmul_with_the_integer_path_matches_the_int8_x_reference() {
    let c = ctx_int_dot();
    let mut rng = Rng::new(80);
    let op = NormMatmul { eps: EPS };
    for &dtype in int_dot::FORMATS {
        let k = if dtype.block_len() == 256 { 512 } else { 96 };
        for n in [37usize, 301] {
            let (bytes, wv) = random_quant_weight(&mut rng, dtype, n, k);
            let x = rng.vec(k, 7.0);
            let g: Vec<f32> = (0..k).map(|_| rng.uniform(0.5, 1.5)).collect();
            let wd = TensorDesc::new(dtype, [n, k]);
            let wt = c.upload("w", wd.clone(), &bytes).expect("upload w");
            let xt = c.upload_f32("x", &[1, k], &x).expect("upload x");
            let gt = c.upload_f32("g", &[k], &g).expect("upload g");
            let calls = op
                .kernels(&c.caps, &[&xt.desc, &gt.desc, &wd])
                .expect("kernels");
            assert_eq!(calls.len(), 1, "{dtype}: one dispatch");
            for d in ["NORM", "INT_DOT"] {
                assert!(calls[0].defines.contains_key(d), "{dtype}: {d}");
            }
            let got = run_op_on(&c, op.clone(), &[&xt, &gt, &wt], Default::default());
            let gx: Vec<f32> = x.iter().zip(&g).map(|(a, b)| a * b).collect();
            let ms = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / k as f64;
            let inv = (1.0 / (ms + f64::from(EPS)).sqrt()) as f32;
            let want: Vec<f32> = int_dot::cpu(&gx, &wv, k).iter().map(|v| v * inv).collect();
            let what = format!("norm_matmul int {dtype} n={n} k={k}");
            assert_close_rel_max(&what, &got[0], &want, 1e-3);
            let float = norm_matmul::cpu(&x, &g, &wv, EPS, n);
            assert!(
                !within_rel_max(&got[0], &float, 1e-3),
                "{what}: the float reference passed too (is x quantized?)"
            );
        }
    }
}

#[test]
fn norm_matmul_rejects_mismatched_shapes_with_a_named_error() {
    let op = NormMatmul { eps: EPS };
    let x = TensorDesc::f32([1, 64]);
    for (g, w) in [
        (TensorDesc::f32([63]), TensorDesc::f32([8, 64])),
        (TensorDesc::f32([64]), TensorDesc::f32([8, 65])),
        (TensorDesc::new(DType::F16, [64]), TensorDesc::f32([8, 64])),
    ] {
        let e = op.infer(&[&x, &g, &w]).expect_err("mismatch");
        let msg = e.to_string();
        assert!(msg.contains("norm_matmul"), "{msg}");
    }
}
