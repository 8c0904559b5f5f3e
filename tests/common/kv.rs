//! KV-cache and RoPE helpers of the attention kernel tests: caches uploaded and read back in
//! f32 or f16, f16 rounding, RoPE frequencies.

use fado::gpu::GpuContext;
use fado::ops::matmul;
use fado::tensor::{DType, Tensor, TensorDesc};

/// RoPE inverse frequencies of a head of `d` dimensions with base `theta`.
pub fn inv_freq(d: usize, theta: f64) -> Vec<f32> {
    (0..d / 2)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / d as f64)) as f32)
        .collect()
}

/// f32 values as little-endian f16 bytes.
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    matmul::to_f16_bytes(v)
}

/// f32 values rounded through f16.
pub fn f16_round(v: &[f32]) -> Vec<f32> {
    matmul::round_to(DType::F16, v)
}

/// A cache's bytes: f16-packed or f32.
pub fn cache_bytes(v: &[f32], dtype: DType) -> Vec<u8> {
    if dtype == DType::F16 {
        f16_bytes(v)
    } else {
        bytemuck::cast_slice(v).to_vec()
    }
}

/// A KV cache `shape` (`[cap, hkv, d]`) holding `data`, f32 or f16-packed.
pub fn upload_cache(
    ctx: &GpuContext,
    name: &str,
    shape: [usize; 3],
    data: &[f32],
    dtype: DType,
) -> Tensor {
    ctx.upload(
        name,
        TensorDesc::new(dtype, shape),
        &cache_bytes(data, dtype),
    )
    .expect("upload cache")
}

/// A tensor of f16 values, widened.
pub fn read_f16(ctx: &GpuContext, t: &Tensor) -> Vec<f32> {
    let bytes = ctx
        .read_bytes(t, 0, (t.desc.numel() * 2) as u64)
        .expect("read");
    bytes
        .chunks(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// A cache's values (f16 widened).
pub fn read_cache(ctx: &GpuContext, t: &Tensor) -> Vec<f32> {
    if t.dtype() == DType::F16 {
        read_f16(ctx, t)
    } else {
        ctx.read_f32(t).expect("read")
    }
}
