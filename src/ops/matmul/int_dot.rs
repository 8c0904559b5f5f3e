//! The integer path of the streaming quantized GEMV (issue 17, item 4): on GPU-style decode
//! (m = 1) each GEMV thread quantizes the x values of its work unit to int8, 32 at a time, with
//! one f32 scale `d = max|x| / 127` per 32 (q8_1-style; `q = round(x / d)`, ties to even), and
//! computes the unit's products with WGSL's `dot4I8Packed` (4 int8 lanes per call), scaled once
//! per scale group by `d_w · d_x` (and the offsets by `b · d_x · Σq_x`). The quantization runs in
//! the GEMV's own workgroups, in registers: no extra dispatch and no x buffer, so the decode
//! dispatch count is unchanged (and the NORM / X_SWIGLU fusions keep working: x is quantized
//! after they apply). Formats: [`FORMATS`]; the others (and m ≥ 2, and CPU devices) keep the
//! float kernels.
//!
//! Support in wgpu 30 / naga 30: `dot4I8Packed` is part of the WGSL language extension
//! `packed_4x8_integer_dot_product`, which naga always implements, so
//! `wgpu::Instance::wgsl_language_features()` reports it on every adapter and says nothing
//! about the hardware. naga's SPIR-V backend emits a native `OpSDot` (capabilities `DotProduct`
//! and `DotProductInput4x8BitPacked`) when the device allows them — wgpu-hal's Vulkan backend
//! does where the device has `VK_KHR_shader_integer_dot_product` (core in Vulkan 1.3) with
//! `shaderIntegerDotProduct` — and otherwise a polyfill of four bit-field extracts and
//! multiply-adds, so the kernels are correct everywhere; only their speed depends on the driver.
//!
//! Whether the adapter has packed integer dot products: wgpu exposes no feature for it, so
//! [`crate::gpu::adapter_has_int_dot`] asks the Vulkan driver facts wgpu-hal keeps (API
//! version ≥ 1.3, or the extension) and [`Caps::int_dot`] carries the answer (on by default
//! there, `FADO_INT_DOT=1|0` or `GpuOptions::int_dot` overriding). [`enabled`] decides per call.

use crate::gpu::Caps;
use crate::tensor::DType;

/// The formats with an integer GEMV.
pub const FORMATS: &[DType] = &[
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

/// Values per x quantization group (one f32 scale each).
pub const X_GROUP: usize = 32;

/// Whether the quantized GEMV takes the integer path on this device: [`Caps::int_dot`] (GPU-style
/// kernels on an adapter with packed integer dot products, `FADO_INT_DOT=1|0` overriding).
pub fn enabled(caps: &Caps) -> bool {
    caps.int_dot && !caps.cpu
}

/// x quantized as the integer GEMV does: per [`X_GROUP`] values, `d = max|x| / 127` and
/// `q = round(x · (1 / d))` (ties to even, clamped to ±127; 0 where `d` is 0). Returns the
/// int8 values and one scale per group.
pub fn quantize_x(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut d = Vec::with_capacity(x.len().div_ceil(X_GROUP));
    for g in x.chunks(X_GROUP) {
        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dg = amax / 127.0;
        let id = if dg > 0.0 { 1.0 / dg } else { 0.0 };
        q.extend(
            g.iter()
                .map(|v| (v * id).round_ties_even().clamp(-127.0, 127.0) as i8),
        );
        d.push(dg);
    }
    (q, d)
}

/// The values the integer GEMV multiplies: x quantized by [`quantize_x`], dequantized.
pub fn quantized_x_values(x: &[f32]) -> Vec<f32> {
    let (q, d) = quantize_x(x);
    q.iter()
        .enumerate()
        .map(|(i, v)| f32::from(*v) * d[i / X_GROUP])
        .collect()
}

/// CPU reference of the integer GEMV: `y = xq · Wᵀ` with x quantized as the kernel does and W
/// given as dequantized f32 `[n, k]` (f64 accumulation).
pub fn cpu(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    super::quant::cpu(&quantized_x_values(x), w, k)
}
