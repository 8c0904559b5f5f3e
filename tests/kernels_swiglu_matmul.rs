//! `SwiGluMatmulAddInto` (the MLP's SwiGLU fused into the down projection) against SwiGLU then
//! matmul-add on the CPU, for every weight dtype, on every kernel variant: the one-dispatch
//! GEMV reading silu(gate)·up where the device decodes with GPU-style kernels, SwiGLU into a
//! scratch buffer then the product elsewhere. Ragged shapes; y starts from random values (it
//! is added into), so a kernel that overwrites instead of adding fails.

mod common;
use common::*;

use fado::ops::matmul::int_dot;
use fado::ops::matmul::swiglu::{self as swiglu_matmul, SwiGluMatmulAddInto};
use fado::ops::Op;
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

#[test]
fn swiglu_matmul_matches_swiglu_then_matmul_for_every_dtype_and_variant() {
    let mut rng = Rng::new(78);
    let op = SwiGluMatmulAddInto;
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
                DType::Q4K => &[256, 512],
                q if q.is_quantized() => &[64, 96],
                _ => &[40, 64, 256],
            };
            for &k in ks {
                for (m, n) in [(1usize, 37usize), (1, 301), (3, 37)] {
                    let w = rng.vec(n * k, 1.0);
                    let (bytes, wv) = weight_bytes(dtype, &w, k);
                    // Gate values on both sides of 0, where silu bends.
                    let gu = rng.vec(m * 2 * k, 4.0);
                    let y0 = rng.vec(m * n, 2.0);
                    let wd = TensorDesc::new(dtype, [n, k]);
                    let wt = c.upload("w", wd.clone(), &bytes).expect("upload w");
                    let gt = c.upload_f32("gu", &[m, 2 * k], &gu).expect("upload gu");
                    let yt = c.upload_f32("y", &[m, n], &y0).expect("upload y");
                    let calls = op
                        .kernels(&c.caps, &[&gt.desc, &wd, &yt.desc])
                        .expect("kernels");
                    let fused = SwiGluMatmulAddInto::fuses(&c.caps, &gt.desc);
                    assert_eq!(fused, m == 1 && !c.caps.cpu, "{label}");
                    if fused {
                        assert_eq!(calls.len(), 1, "{label} {dtype}: one dispatch");
                        assert!(calls[0].defines.contains_key("X_SWIGLU"));
                    } else {
                        assert!(calls.len() >= 2, "{label} {dtype}: swiglu, then product");
                    }
                    let outs = run_op_on(&c, op.clone(), &[&gt, &wt, &yt], Default::default());
                    assert!(outs.is_empty());
                    let got = c.read_f32(&yt).expect("read y");
                    let want = swiglu_matmul::cpu(&gu, &wv, &y0, n);
                    let what = format!("swiglu_matmul {dtype} m={m} n={n} k={k} {label}");
                    assert_close_rel_max(&what, &got, &want, 1e-4);
                }
            }
        }
    }
}

/// The fused down projection with the integer path on (GPU-style kernels on an adapter with
/// packed integer dot products, every format that has one): the kernel quantizes silu(gate)·up
/// per 32 as it reads it; the reference is the integer GEMV's of that activation, added to y.
/// The float reference differs by the int8 rounding and must fail the same check.
#[test]
fn swiglu_matmul_with_the_integer_path_matches_the_int8_x_reference() {
    let c = ctx_int_dot();
    let mut rng = Rng::new(81);
    let op = SwiGluMatmulAddInto;
    for &dtype in int_dot::FORMATS {
        let k = if dtype.block_len() == 256 { 512 } else { 96 };
        for n in [37usize, 301] {
            let (bytes, wv) = random_quant_weight(&mut rng, dtype, n, k);
            let gu = rng.vec(2 * k, 4.0);
            let y0 = rng.vec(n, 2.0);
            let wd = TensorDesc::new(dtype, [n, k]);
            let wt = c.upload("w", wd.clone(), &bytes).expect("upload w");
            let gt = c.upload_f32("gu", &[1, 2 * k], &gu).expect("upload gu");
            let yt = c.upload_f32("y", &[1, n], &y0).expect("upload y");
            let calls = op
                .kernels(&c.caps, &[&gt.desc, &wd, &yt.desc])
                .expect("kernels");
            assert_eq!(calls.len(), 1, "{dtype}: one dispatch");
            for d in ["X_SWIGLU", "INT_DOT"] {
                assert!(calls[0].defines.contains_key(d), "{dtype}: {d}");
            }
            run_op_on(&c, op.clone(), &[&gt, &wt, &yt], Default::default());
            let got = c.read_f32(&yt).expect("read y");
            let act = fado::ops::swiglu::cpu(&gu[..k], &gu[k..]);
            let prod = int_dot::cpu(&act, &wv, k);
            let want: Vec<f32> = y0.iter().zip(&prod).map(|(a, b)| a + b).collect();
            let what = format!("swiglu_matmul int {dtype} n={n} k={k}");
            // Relative to the product's scale (y0 is added exactly).
            let got_p: Vec<f32> = got.iter().zip(&y0).map(|(a, b)| a - b).collect();
            assert_close_rel_max(&what, &got_p, &prod, 1e-3);
            assert_close_rel_max(&what, &got, &want, 1e-3);
            let float = swiglu_matmul::cpu(&gu, &wv, &y0, n);
            let float_p: Vec<f32> = float.iter().zip(&y0).map(|(a, b)| a - b).collect();
            assert!(
                !within_rel_max(&got_p, &float_p, 1e-3),
                "{what}: the float reference passed too (is x quantized?)"
            );
        }
    }
}

#[test]
fn swiglu_matmul_rejects_mismatched_shapes_with_a_named_error() {
    let op = SwiGluMatmulAddInto;
    for (gu, w, y) in [
        // gate|up not twice the weight's K
        (
            TensorDesc::f32([1, 100]),
            TensorDesc::f32([8, 64]),
            TensorDesc::f32([1, 8]),
        ),
        // odd gate|up width
        (
            TensorDesc::f32([1, 127]),
            TensorDesc::f32([8, 63]),
            TensorDesc::f32([1, 8]),
        ),
        // y of the wrong width
        (
            TensorDesc::f32([1, 128]),
            TensorDesc::f32([8, 64]),
            TensorDesc::f32([1, 9]),
        ),
    ] {
        let e = op.infer(&[&gu, &w, &y]).expect_err("mismatch");
        let msg = e.to_string();
        assert!(msg.contains("swiglu_matmul_add_into"), "{msg}");
    }
}
