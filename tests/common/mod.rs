//! Shared test support: one GPU context per test binary, seeded data, tolerance checks and
//! poisoned single-op runs (here); fixtures, the default model and scratch folders
//! (`fixtures.rs`); models on the test device and the checks against the transformers
//! references (`reference.rs`); KV caches and RoPE frequencies (`kv.rs`); naga's validator and back ends (`naga_check.rs`). The server tests add `common/server.rs`.
#![allow(dead_code)]

mod fixtures;
mod kv;
mod naga_check;
mod reference;
#[allow(unused_imports)]
pub use fixtures::*;
#[allow(unused_imports)]
pub use kv::*;
#[allow(unused_imports)]
pub use naga_check::*;
#[allow(unused_imports)]
pub use reference::*;

use std::sync::{Arc, OnceLock};

use fado::gpu::{GpuContext, GpuOptions};
use fado::graph::Graph;
use fado::ops::{Op, Step};
use fado::tensor::Tensor;

#[allow(unused_imports)]
pub use fado::rng::Rng;

/// Relative tolerance of the f32 compute path.
pub const F32_RTOL: f32 = 1e-4;
/// Tolerance when 16-bit values are involved on the GPU side (f16 arithmetic, f16 KV cache).
pub const F16_RTOL: f32 = 1e-2;

/// The test device: the machine's Vulkan adapter (lavapipe without a GPU). Never skips.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new(&GpuOptions::from_env()) {
        Ok(c) => c,
        Err(e) => panic!(
            "kernel tests need a Vulkan adapter and found none: {e}\n\
             On Debian/Ubuntu: sudo apt-get install -y mesa-vulkan-drivers libvulkan1 (or run .ci/run)"
        ),
    })
    .clone()
}

/// Assert `got ≈ want` element-wise: |g − w| ≤ atol + rtol·|w|; NaN (an unwritten, poisoned
/// element) always fails. Reports the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() {
            panic!("{what}: element {i} is NaN (unwritten?), expected {w}");
        }
        let err = (g - w).abs();
        let lim = atol + rtol * w.abs();
        if err > lim && worst.is_none_or(|(_, e)| err - lim > e) {
            worst = Some((i, err - lim));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} but expected {} (rtol {rtol}, atol {atol}); {} elements",
            got[i],
            want[i],
            got.len()
        );
    }
}

/// Scale-aware check used for reductions: max |g − w| ≤ rtol · max |w| (+ tiny), NaN fails.
pub fn assert_close_rel_max(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    assert_close(what, got, want, 0.0, rtol * scale);
}

/// Run a single op on GPU tensors through the graph executor, with outputs poisoned first.
pub fn run_op(op: impl Op + 'static, inputs: &[&Tensor], step: Step) -> Vec<Vec<f32>> {
    run_op_on(&ctx(), op, inputs, step)
}

/// [`run_op`] on a given context (inputs must live on it).
pub fn run_op_on(
    ctx: &Arc<GpuContext>,
    op: impl Op + 'static,
    inputs: &[&Tensor],
    step: Step,
) -> Vec<Vec<f32>> {
    let mut g = Graph::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.external(format!("in{i}"), t))
        .collect();
    let outs = g.add(op, &ids).expect("op rejected valid inputs");
    let exe = g.compile(ctx, &outs).expect("compile");
    for o in &outs {
        ctx.poison(exe.tensor(*o)).expect("poison");
    }
    exe.run(step).expect("run");
    outs.iter()
        .map(|o| exe.read_f32(*o).expect("read"))
        .collect()
}

pub fn upload(name: &str, shape: &[usize], data: &[f32]) -> Tensor {
    ctx().upload_f32(name, shape, data).expect("upload")
}

/// The test device again with its kernel variants forced: `cpu` picks the CPU-device kernels
/// (one thread per output row, uniform x), otherwise the GPU ones, with or without subgroups.
/// Kernels choose their variant from the device, so on lavapipe only these reach the GPU-style
/// kernels, and on a GPU only these reach the CPU-style ones.
pub fn ctx_variant(cpu: bool, subgroups: bool) -> Arc<GpuContext> {
    ctx_with(cpu, subgroups, false)
}

/// The GPU-style context with subgroups and the integer GEMV path on (what a real GPU with
/// packed integer dot products decodes with), whatever the adapter reports.
#[allow(dead_code)]
pub fn ctx_int_dot() -> Arc<GpuContext> {
    ctx_with(false, true, true)
}

/// A context with the kernel style, subgroups and integer GEMV path forced: [`ctx_variant`]
/// keeps the integer path off, so the float kernels' tests test the float kernels.
pub fn ctx_with(cpu: bool, subgroups: bool, int_dot: bool) -> Arc<GpuContext> {
    type Cache = std::sync::Mutex<Vec<((bool, bool, bool), Arc<GpuContext>)>>;
    static CTXS: OnceLock<Cache> = OnceLock::new();
    let m = CTXS.get_or_init(Default::default);
    let mut m = m.lock().expect("context cache");
    let key = (cpu, subgroups, int_dot);
    if let Some((_, c)) = m.iter().find(|(k, _)| *k == key) {
        return c.clone();
    }
    let mut o = GpuOptions::from_env();
    o.cpu_kernels = Some(cpu);
    o.disable_subgroups |= !subgroups;
    o.int_dot = Some(int_dot);
    // The cooperative-matrix prefill has its own tests (kernels_matmul_coopmat.rs): these
    // contexts test the SIMT kernels wherever they run.
    o.coopmat = Some(false);
    let c = GpuContext::new(&o).expect("kernel tests need a Vulkan adapter");
    m.push((key, c.clone()));
    c
}

/// Every kernel-variant context, labelled: CPU-style, GPU-style, GPU-style without subgroups.
pub fn variant_contexts() -> Vec<(&'static str, Arc<GpuContext>)> {
    vec![
        ("cpu-style", ctx_variant(true, true)),
        ("gpu-style", ctx_variant(false, true)),
        ("gpu-style-no-subgroups", ctx_variant(false, false)),
    ]
}

/// A weight `[rows, k]` from f32 values, in `dtype`: its GPU bytes and the values the kernels
/// see (16-bit floats rounded; block formats through Fado's quantizer and dequantizer).
#[allow(dead_code)]
pub fn weight_bytes(dtype: fado::tensor::DType, w: &[f32], k: usize) -> (Vec<u8>, Vec<f32>) {
    use fado::ops::matmul;
    use fado::quant;
    use fado::tensor::DType;
    match dtype {
        DType::F32 => (bytemuck::cast_slice(w).to_vec(), w.to_vec()),
        DType::F16 => (
            matmul::to_f16_bytes(w),
            w.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        ),
        DType::BF16 => (
            matmul::to_bf16_bytes(w),
            w.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect(),
        ),
        q => {
            let gguf = quant::quantize(q, w).expect("quantize");
            let v = quant::dequantize(q, &gguf, w.len()).expect("dequantize");
            let gpu = quant::gpu_layout(q, w.len() / k, k, &gguf).expect("layout");
            (gpu, v)
        }
    }
}

/// Random GGUF blocks of `dtype` for a `[rows, cols]` weight: random quant bytes, the f16
/// scale fields finite and small (as real models have them).
#[allow(dead_code)]
pub fn random_blocks(
    rng: &mut fado::rng::Rng,
    dtype: fado::tensor::DType,
    rows: usize,
    cols: usize,
) -> Vec<u8> {
    use fado::tensor::DType;
    let bb = dtype.block_bytes();
    let nb = rows * cols / dtype.block_len();
    let f16_at: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q4_1 | DType::Q4K | DType::Q5K => &[0, 2],
        _ => &[208],
    };
    let mut out = Vec::with_capacity(nb * bb);
    for _ in 0..nb {
        let mut b: Vec<u8> = (0..bb).map(|_| rng.below(256) as u8).collect();
        for &o in f16_at {
            let v = half::f16::from_f32(rng.uniform(-0.05, 0.05)).to_le_bytes();
            b[o..o + 2].copy_from_slice(&v);
        }
        out.extend(b);
    }
    out
}

/// What [`assert_close_rel_max`] checks, as a bool: max |g − w| ≤ rtol · max |w|, no NaN (for
/// the checks that a wrong reference fails).
#[allow(dead_code)]
pub fn within_rel_max(got: &[f32], want: &[f32], rtol: f32) -> bool {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .all(|(g, w)| !g.is_nan() && (g - w).abs() <= rtol * scale)
}

/// A random `[n, k]` weight of block format `dtype` ([`random_blocks`]): its GPU layout and
/// its dequantized values (what the kernels should compute with).
#[allow(dead_code)]
pub fn random_quant_weight(
    rng: &mut fado::rng::Rng,
    dtype: fado::tensor::DType,
    n: usize,
    k: usize,
) -> (Vec<u8>, Vec<f32>) {
    let gguf = random_blocks(rng, dtype, n, k);
    let wv = fado::quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
    let bytes = fado::quant::gpu_layout(dtype, n, k, &gguf).expect("layout");
    (bytes, wv)
}

/// The GPU sampler's parameters for a draw (no penalties).
#[allow(dead_code)]
pub fn sampler_params(
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    seed: u64,
) -> fado::ops::sample::SamplerParams {
    fado::ops::sample::SamplerParams {
        temperature,
        top_k,
        top_p,
        min_p,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        inv_temperature: if temperature > 0.0 {
            1.0 / temperature
        } else {
            0.0
        },
        repeat_penalty: 1.0,
        ..Default::default()
    }
}

/// A u32 tensor holding `words`.
pub fn upload_u32(ctx: &Arc<GpuContext>, name: &str, words: &[u32]) -> Tensor {
    ctx.upload(
        name,
        fado::tensor::TensorDesc::new(fado::tensor::DType::U32, [words.len()]),
        bytemuck::cast_slice(words),
    )
    .expect("upload")
}

/// A tensor's words.
pub fn read_u32(ctx: &Arc<GpuContext>, t: &Tensor) -> Vec<u32> {
    let bytes = ctx.read_bytes(t, 0, t.size_bytes()).expect("read");
    bytemuck::pod_collect_to_vec(&bytes)
}
