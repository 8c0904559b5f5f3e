//! Quantized GEMV / matmul kernels against "dequantize on the CPU, then f32 matmul", for every
//! block format, with and without subgroups, on ragged N and several M and K; the streaming
//! GEMV on model-like K, with and without its vec4 view of the weight, and with a corrupted scale
//! word (caught); and the embedding gather from a quantized table against the CPU dequantizer
//! (bit-exact).

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::matmul::quant::{self as matmul_quant, QuantMatmul};
use fado::ops::{embedding, Step};
use fado::quant;
use fado::tensor::{DType, Tensor, TensorDesc};

/// Quantized kernels vs their dequantized reference: f32 accumulation in a different order.
const QUANT_RTOL: f32 = 1e-3;

const MS: &[usize] = &[1, 2, 7, 33];
const NS: &[usize] = &[1, 5, 63, 130];

fn upload_weight(ctx: &GpuContext, dtype: DType, n: usize, k: usize, gguf: &[u8]) -> Tensor {
    let gpu = quant::gpu_layout(dtype, n, k, gguf).expect("gpu layout");
    let desc = TensorDesc::new(dtype, [n, k]);
    assert_eq!(
        gpu.len() as u64,
        desc.size_bytes(),
        "layout size = file size"
    );
    ctx.upload("w", desc, &gpu).expect("upload weight")
}

/// Run `QuantMatmul` on `ctx` with the output poisoned; returns y.
fn run(ctx: &Arc<GpuContext>, x: &Tensor, w: &Tensor, y_in: Option<&Tensor>) -> Vec<f32> {
    let mut g = Graph::new();
    let xi = g.external("x", x);
    let wi = g.external("w", w);
    match y_in {
        None => {
            let y = g
                .add1(QuantMatmul { add_into: false }, &[xi, wi])
                .expect("op");
            let exe = g.compile(ctx, &[y]).expect("compile");
            ctx.poison(exe.tensor(y)).expect("poison");
            exe.run(Step::default()).expect("run");
            exe.read_f32(y).expect("read")
        }
        Some(yt) => {
            let yi = g.external("y", yt);
            g.add0(QuantMatmul { add_into: true }, &[xi, wi, yi])
                .expect("op");
            let exe = g.compile(ctx, &[]).expect("compile");
            exe.run(Step::default()).expect("run");
            ctx.read_f32(yt).expect("read")
        }
    }
}

fn check_format(dtype: DType, ks: &[usize], seed: u64) {
    check_shapes(dtype, ks, NS, MS, seed);
}

fn check_shapes(dtype: DType, ks: &[usize], ns: &[usize], ms: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let contexts = variant_contexts();
    // Each context really runs its variant of the GEMV: the row-per-thread kernel with x
    // uniform on the CPU-style one, the subgroup reduction where the device has subgroups.
    let entry = |c: &GpuContext| {
        let calls = matmul_quant::kernels(
            &c.caps,
            &TensorDesc::f32([1, ks[0]]),
            &TensorDesc::new(dtype, [4, ks[0]]),
            false,
        )
        .expect("kernels");
        (calls[0].entry, calls[0].defines.clone())
    };
    let (e, d) = entry(&contexts[0].1);
    assert_eq!(e, "matmul_rows");
    assert_eq!(d["MR8"], "0", "one row of x");
    assert!(d.contains_key("XU"), "x is bound as a uniform");
    let (e, d) = entry(&contexts[1].1);
    assert_eq!(e, "gemv");
    assert_eq!(
        d.contains_key("SUBGROUPS"),
        contexts[1].1.caps.subgroups,
        "subgroup sizes {}..{}",
        contexts[1].1.caps.subgroup_min,
        contexts[1].1.caps.subgroup_max
    );
    assert!(!contexts[2].1.caps.subgroups);
    for &k in ks {
        for &n in ns {
            let gguf = random_blocks(&mut rng, dtype, n, k);
            let wf = quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
            for &m in ms {
                let x = rng.vec(m * k, 1.0);
                let want = matmul_quant::cpu(&x, &wf, k);
                for (label, c) in &contexts {
                    let w = upload_weight(c, dtype, n, k, &gguf);
                    let xt = c.upload_f32("x", &[m, k], &x).expect("upload x");
                    let got = run(c, &xt, &w, None);
                    let what = format!("{dtype} m={m} n={n} k={k} {label}");
                    assert_close_rel_max(&what, &got, &want, QUANT_RTOL);
                }
            }
        }
    }
}

#[test]
fn q8_0_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q8_0, &[32, 96], 1);
}

#[test]
fn q4_0_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q4_0, &[32, 96], 2);
}

#[test]
fn q4_1_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q4_1, &[32, 96], 3);
}

#[test]
fn q4_k_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q4K, &[256, 768], 4);
}

#[test]
fn q5_k_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q5K, &[256, 512], 5);
}

#[test]
fn q6_k_gemv_and_matmul_match_dequantized_reference() {
    check_format(DType::Q6K, &[256, 768], 6);
}

#[test]
fn rows_longer_than_a_workgroup_of_chunks_use_every_thread() {
    // More 32-value chunks per row than GEMV threads (64), not a multiple of it: every thread
    // and every subgroup contributes to the reduction.
    for (i, dtype) in matmul_quant::QUANTIZED.iter().enumerate() {
        let k = if dtype.block_len() == 32 {
            32 * 67
        } else {
            256 * 9
        };
        check_shapes(*dtype, &[k], &[3, 6], &[1, 2], 20 + i as u64);
    }
}

/// The GPU-style GEMV's call for a `[n, k]` weight of `dtype` (entry, defines).
fn gemv_defines(c: &GpuContext, dtype: DType, n: usize, k: usize) -> Vec<(String, String)> {
    let calls = matmul_quant::kernels(
        &c.caps,
        &TensorDesc::f32([1, k]),
        &TensorDesc::new(dtype, [n, k]),
        false,
    )
    .expect("kernels");
    assert_eq!(calls[0].entry, "gemv");
    calls[0]
        .defines
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect()
}

#[test]
fn streaming_gemv_matches_reference_on_model_like_rows_for_every_format() {
    // Rows not a multiple of the rows per workgroup; K of one to many units per thread, past
    // a whole workgroup of units (256 · 9 for the K-quants, 32 · 67 for the 32-blocks).
    for (i, &dtype) in matmul_quant::QUANTIZED.iter().enumerate() {
        let ks: &[usize] = if dtype.block_len() == 32 {
            &[32, 160, 32 * 67, 4096]
        } else {
            &[256, 512, 2816]
        };
        check_shapes(dtype, ks, &[1, 6, 37], &[1], 40 + i as u64);
    }
}

#[test]
fn streaming_gemv_reads_whole_tensors_as_vec4_and_ragged_ones_as_words() {
    // Both views run in the shape tests above: 8 × 9 blocks is a whole number of 16-byte words
    // in every format, one block is not (but for Q4_K and Q5_K, whose blocks are 144 and 176).
    let c = ctx_variant(false, true);
    let w4 = |d: &[(String, String)]| d.contains(&("W4".into(), "1".into()));
    for &dtype in matmul_quant::QUANTIZED {
        let bl = dtype.block_len();
        assert!(
            w4(&gemv_defines(&c, dtype, 8, 9 * bl)),
            "{dtype} 8 × 9 blocks"
        );
        let kquant16 = matches!(dtype, DType::Q4K | DType::Q5K);
        assert_eq!(
            w4(&gemv_defines(&c, dtype, 1, bl)),
            kquant16,
            "{dtype} one block"
        );
    }
}

#[test]
fn a_corrupted_scale_word_is_read_where_the_layout_says_and_is_caught() {
    // Flip the top exponent bits of the first word of the scale section (a block's d, or Q6_K's
    // first four i8 scales): the GEMV must follow the corrupted layout's own dequantization
    // and miss the clean reference by far more than the tolerance.
    let mut rng = Rng::new(50);
    for &dtype in matmul_quant::QUANTIZED {
        let (n, k) = (5, 2 * dtype.block_len());
        let gguf = random_blocks(&mut rng, dtype, n, k);
        let clean = quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
        let mut gpu = quant::gpu_layout(dtype, n, k, &gguf).expect("layout");
        let at = quant::gpu_sections(dtype, n * k / dtype.block_len())
            .scales_offset
            .expect("scale section");
        for (b, f) in gpu[at..at + 4].iter_mut().zip(0x4000_4000u32.to_le_bytes()) {
            *b ^= f;
        }
        let bad = quant::gpu_layout_inverse(dtype, n, k, &gpu).expect("inverse");
        let broken = quant::dequantize(dtype, &bad, n * k).expect("dequantize");
        let x = rng.vec(k, 1.0);
        let (want, want_broken) = (
            matmul_quant::cpu(&x, &clean, k),
            matmul_quant::cpu(&x, &broken, k),
        );
        for (label, c) in variant_contexts() {
            let desc = TensorDesc::new(dtype, [n, k]);
            let w = c.upload("w", desc, &gpu).expect("upload");
            let got = run(&c, &c.upload_f32("x", &[1, k], &x).expect("x"), &w, None);
            let what = format!("{dtype} corrupted {label}");
            assert_close_rel_max(&what, &got, &want_broken, QUANT_RTOL);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let off = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(
                off > 10.0 * QUANT_RTOL * scale,
                "{what}: off by {off:e} of {scale:e}"
            );
        }
    }
}

#[test]
fn add_into_accumulates_onto_y_for_gemv_and_matmul() {
    let mut rng = Rng::new(7);
    let (n, k) = (37, 512);
    for dtype in [DType::Q4K, DType::Q8_0, DType::Q6K] {
        let gguf = random_blocks(&mut rng, dtype, n, k);
        let wf = quant::dequantize(dtype, &gguf, n * k).unwrap();
        for m in [1usize, 9] {
            let x = rng.vec(m * k, 1.0);
            let y0 = rng.vec(m * n, 3.0);
            let mut want = matmul_quant::cpu(&x, &wf, k);
            for (a, b) in want.iter_mut().zip(&y0) {
                *a += b;
            }
            for (label, c) in variant_contexts() {
                let w = upload_weight(&c, dtype, n, k, &gguf);
                let xt = c.upload_f32("x", &[m, k], &x).unwrap();
                let yt = c.upload_f32("y", &[m, n], &y0).unwrap();
                let got = run(&c, &xt, &w, Some(&yt));
                let what = format!("{dtype} add_into m={m} {label}");
                assert_close_rel_max(&what, &got, &want, QUANT_RTOL);
            }
        }
    }
}

#[test]
fn quantized_weights_from_the_quantizer_multiply_like_the_floats_they_approximate() {
    // End to end: f32 weights → Q4_K/Q8_0 blocks → GPU; close to the float product.
    let mut rng = Rng::new(8);
    let (m, n, k) = (3, 20, 512);
    let wf = rng.vec(n * k, 0.1);
    let x = rng.vec(m * k, 1.0);
    let exact = matmul_quant::cpu(&x, &wf, k);
    for (dtype, rtol) in [(DType::Q8_0, 0.02), (DType::Q4K, 0.1)] {
        let gguf = quant::quantize(dtype, &wf).unwrap();
        let w = upload_weight(&ctx(), dtype, n, k, &gguf);
        let got = run(&ctx(), &upload("x", &[m, k], &x), &w, None);
        assert_close_rel_max(&format!("{dtype} vs f32 weights"), &got, &exact, rtol);
    }
}

#[test]
fn quantized_matmul_rejects_bad_shapes_with_a_named_error() {
    let caps = &ctx().caps;
    let x = TensorDesc::f32([2, 300]);
    let w = TensorDesc::new(DType::Q4K, [8, 300]);
    let e = matmul_quant::kernels(caps, &x, &w, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("q4_k[8, 300]") && e.contains("256"), "{e}");
    let w = TensorDesc::new(DType::Q8_0, [8, 64]);
    let e = matmul_quant::kernels(caps, &TensorDesc::f32([2, 96]), &w, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("f32[2, 96]") && e.contains("q8_0[8, 64]") && e.contains("expected x [.., 64]"),
        "{e}"
    );
    let e = matmul_quant::kernels(caps, &x, &TensorDesc::new(DType::F16, [8, 300]), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dtype f16 is not supported"), "{e}");
}

/// Equal bit for bit; NaN (a poisoned, unwritten element) never matches a finite reference.
fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i} is {g:e} but expected {w:e}"
        );
    }
}

#[test]
fn embedding_gathers_quantized_rows_exactly_as_the_cpu_dequantizer() {
    // Exact: the gather is a dequantize, computed in the CPU's order of operations.
    let mut rng = Rng::new(30);
    let c = ctx();
    for (fi, &dtype) in embedding::TABLE_DTYPES
        .iter()
        .filter(|d| d.is_quantized())
        .enumerate()
    {
        // Ragged vocabularies and rows of one to three blocks.
        for (vocab, blocks) in [(1usize, 1usize), (7, 3), (130, 2)] {
            let n = blocks * dtype.block_len();
            let gguf = random_blocks(&mut rng, dtype, vocab, n);
            let table = quant::dequantize(dtype, &gguf, vocab * n).expect("dequantize");
            let tab = upload_weight(&c, dtype, vocab, n, &gguf);
            // Repeated ids, the last row, and an id past the vocabulary (zeros).
            for count in [1usize, 5, 67] {
                let mut ids: Vec<u32> = (0..count).map(|_| rng.below(vocab as u32)).collect();
                ids[0] = vocab as u32 - 1;
                if count > 1 {
                    ids[count - 1] = vocab as u32 + 11 + fi as u32;
                }
                let id_t = c
                    .upload(
                        "ids",
                        TensorDesc::new(DType::U32, [ids.len()]),
                        bytemuck::cast_slice(&ids),
                    )
                    .expect("upload ids");
                let want = embedding::cpu(&ids, &table, n);
                let got = run_op(embedding::Embedding, &[&id_t, &tab], Step::default());
                assert_bits_eq(
                    &format!("embedding {dtype} vocab={vocab} n={n} tokens={count}"),
                    &got[0],
                    &want,
                );
            }
        }
    }
}

#[test]
fn embedding_rejects_a_quantized_table_of_partial_blocks() {
    let mut g = Graph::new();
    let ids = g.external(
        "ids",
        &ctx()
            .upload("ids", TensorDesc::new(DType::U32, [1]), &[0u8; 4])
            .expect("upload"),
    );
    let table = g.external(
        "table",
        &ctx()
            .upload("t", TensorDesc::new(DType::Q8_0, [2, 48]), &[0u8; 104])
            .expect("upload"),
    );
    let e = g
        .add(embedding::Embedding, &[ids, table])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("embedding") && e.contains("q8_0[2, 48]") && e.contains("32"),
        "{e}"
    );
}
