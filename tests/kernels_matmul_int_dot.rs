//! The integer path of the streaming quantized GEMV (`ops::matmul::int_dot`): x quantized to
//! int8 per 32 values inside the GEMV, `dot4I8Packed` products. Forced on regardless of the
//! adapter (and of `FADO_INT_DOT`), on the GPU-style kernels with and without subgroups, for
//! every format against "quantize x per 32 exactly as the kernel does, then dot with the
//! dequantized weights"; ragged row counts, output poisoned; and a wrong x scale is caught.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::{Caps, GpuContext, GpuOptions};
use fado::ops::matmul::int_dot;
use fado::ops::matmul::quant::{self as matmul_quant, QuantMatmul};
use fado::ops::{KernelCall, Op, Step};
use fado::quant;
use fado::tensor::{DType, TensorDesc};

/// Integer GEMV vs its reference (x quantized the same way): the products are exact integers,
/// so what differs is the f32 accumulation order and the scales' rounding, as in the float
/// GEMV's tolerance: max |g − w| ≤ 1e-3 · max |w|.
const INT_RTOL: f32 = 1e-3;

const NS: &[usize] = &[1, 6, 37];

/// `QuantMatmul` (y = x · Wᵀ) with the integer path forced on.
#[derive(Clone, Debug)]
struct IntGemv;

impl Op for IntGemv {
    fn name(&self) -> &'static str {
        "int_gemv"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> fado::Result<Vec<TensorDesc>> {
        QuantMatmul { add_into: false }.infer(inputs)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> fado::Result<Vec<KernelCall>> {
        matmul_quant::kernels_int(caps, inputs[0], inputs[1], false, true)
    }
}

fn gpu_contexts() -> Vec<(&'static str, Arc<GpuContext>)> {
    vec![
        ("gpu-style", ctx_variant(false, true)),
        ("gpu-style-no-subgroups", ctx_variant(false, false)),
    ]
}

/// The int GEMV of a `[n, k]` weight on `c` (output poisoned first).
fn run_int(
    c: &Arc<GpuContext>,
    dtype: DType,
    n: usize,
    k: usize,
    gguf: &[u8],
    x: &[f32],
) -> Vec<f32> {
    let g = quant::gpu_layout(dtype, n, k, gguf).expect("gpu layout");
    let w = c
        .upload("w", TensorDesc::new(dtype, [n, k]), &g)
        .expect("upload w");
    let xt = c.upload_f32("x", &[1, k], x).expect("upload x");
    run_op_on(c, IntGemv, &[&xt, &w], Step::default()).remove(0)
}

fn check_format(dtype: DType, ks: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    for (label, c) in gpu_contexts() {
        let calls = IntGemv
            .kernels(
                &c.caps,
                &[
                    &TensorDesc::f32([1, ks[0]]),
                    &TensorDesc::new(dtype, [4, ks[0]]),
                ],
            )
            .expect("kernels");
        assert_eq!(calls.len(), 1, "one dispatch, as the float GEMV");
        assert_eq!(calls[0].entry, "gemv");
        assert_eq!(
            calls[0].defines.get("INT_DOT").map(String::as_str),
            Some("1")
        );
        for &k in ks {
            for &n in NS {
                let gguf = random_blocks(&mut rng, dtype, n, k);
                let wf = quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
                let x = rng.vec(k, 1.0);
                let want = int_dot::cpu(&x, &wf, k);
                let got = run_int(&c, dtype, n, k, &gguf, &x);
                let what = format!("int {dtype} n={n} k={k} {label}");
                assert_close_rel_max(&what, &got, &want, INT_RTOL);
            }
        }
    }
}

#[test]
fn q8_0_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q8_0, &[32, 96, 32 * 67], 1);
}

#[test]
fn q4_0_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q4_0, &[32, 96, 32 * 67], 2);
}

#[test]
fn q4_1_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q4_1, &[32, 96, 32 * 67], 3);
}

#[test]
fn q4_k_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q4K, &[256, 512, 2816], 4);
}

#[test]
fn q5_k_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q5K, &[256, 512, 2816], 5);
}

#[test]
fn q6_k_int_gemv_matches_the_int8_x_reference() {
    check_format(DType::Q6K, &[256, 512, 2816], 6);
}

#[test]
fn a_wrong_x_scale_or_unquantized_x_is_caught() {
    // The int GEMV's output checked against references with the x scale off by 2 %, and
    // against the float x: the check must fail for both (so it would catch a kernel that got
    // the scale wrong, or that skipped the quantization), and pass for the right reference.
    let c = ctx_variant(false, true);
    let mut rng = Rng::new(9);
    for (dtype, k) in [
        (DType::Q8_0, 32 * 67),
        (DType::Q4_0, 96),
        (DType::Q4K, 2816),
        (DType::Q6K, 512),
    ] {
        let n = 37;
        let gguf = random_blocks(&mut rng, dtype, n, k);
        let wf = quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
        let x = rng.vec(k, 1.0);
        let got = run_int(&c, dtype, n, k, &gguf, &x);
        assert_close_rel_max(
            &format!("{dtype}"),
            &got,
            &int_dot::cpu(&x, &wf, k),
            INT_RTOL,
        );
        let xq = int_dot::quantized_x_values(&x);
        let off: Vec<f32> = xq.iter().map(|v| v * 1.02).collect();
        for (what, want) in [
            ("x scale 2 % off", matmul_quant::cpu(&off, &wf, k)),
            ("float x", matmul_quant::cpu(&x, &wf, k)),
        ] {
            assert!(
                !within_rel_max(&got, &want, INT_RTOL),
                "{dtype} k={k}: a reference with {what} passed the check"
            );
        }
    }
}

#[test]
fn the_reference_quantizes_x_per_32_with_ties_to_even() {
    let mut x = vec![0f32; 64];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -3.5;
    x[33] = -0.5;
    let (q, d) = int_dot::quantize_x(&x);
    assert_eq!(d, vec![1.0, 0.5 / 127.0]);
    assert_eq!(&q[..3], &[127, 2, -4]);
    assert_eq!(q[33], -127);
    assert!(q[32..].iter().enumerate().all(|(i, v)| i == 1 || *v == 0));
}

#[test]
fn the_adapter_fact_is_read_from_the_vulkan_driver_and_carried_by_caps() {
    // Device-dependent (lavapipe is Vulkan 1.3: true); printed for the record, never skipped.
    let c = ctx();
    let has = fado::gpu::adapter_has_int_dot(&c.adapter);
    eprintln!("{}: packed integer dot products: {has}", c.adapter_name());
    if c.info.backend != wgpu::Backend::Vulkan {
        assert!(!has);
    }
    // Caps: on by default where the adapter has them, GPU-style kernels only; the option
    // (FADO_INT_DOT) overrides.
    let with = |cpu: bool, int_dot: Option<bool>| {
        let mut o = GpuOptions::from_env();
        o.cpu_kernels = Some(cpu);
        o.int_dot = int_dot;
        GpuContext::new(&o).expect("context").caps.int_dot
    };
    assert_eq!(with(false, None), has, "default: the adapter's fact");
    assert!(!with(true, None), "never with CPU-style kernels");
    assert!(!with(true, Some(true)), "never with CPU-style kernels");
    assert!(with(false, Some(true)), "forced on");
    assert!(!with(false, Some(false)), "forced off");
    // What the quantized GEMV then takes.
    let x = TensorDesc::f32([1, 256]);
    let w = TensorDesc::new(DType::Q4K, [8, 256]);
    for (c, want) in [(ctx_int_dot(), true), (ctx_variant(false, true), false)] {
        let calls = matmul_quant::kernels(&c.caps, &x, &w, false).expect("kernels");
        assert_eq!(calls[0].defines.contains_key("INT_DOT"), want);
    }
}
