//! Where weights live on this device: the one rule for which tensors kernels read as texel
//! images (CPU devices) and which stay in storage buffers. Loaders, synthetic weights and the
//! kernels (the ops) all ask here, so they cannot disagree.

use super::{Caps, GpuContext};
use crate::error::Result;
use crate::tensor::{DType, Tensor, TensorDesc};

/// Whether the CPU-device kernel takes this product: whole vec4 (f32) or 8-value (16-bit) weight
/// loads per row, and a row of x within one uniform binding.
pub fn rows_fit(caps: &Caps, k: usize, w: DType) -> bool {
    let per_load = if w == DType::F32 { 4 } else { 8 };
    k.is_multiple_of(per_load) && (k as u64) * 4 <= caps.uniform_window
}

/// Whether kernels on this device read the weight `w` (a matmul's right side, or an
/// embedding table — tied, they are one tensor) as a texel image ([`crate::tensor::Texels`]):
/// on CPU devices, where the CPU-style kernels take every product with it (whatever the rows
/// of x) and the image fits. Lavapipe fetches texels as one vector gather but loops over the
/// lanes for a storage load, so this doubles weight bandwidth there. Loaders put such weights
/// in texel images ([`place_weight`]); kernels given a buffer get an image made at compile.
pub fn reads_texels(caps: &Caps, w: &TensorDesc) -> bool {
    if !caps.cpu || w.rank() != 2 {
        return false;
    }
    let k = w.shape[1];
    let row_bytes = k as u64 * 4;
    let rows_kernel = if w.dtype.is_quantized() {
        k.is_multiple_of(w.dtype.block_len()) && row_bytes <= caps.uniform_window
    } else {
        w.dtype.is_float() && rows_fit(caps, k, w.dtype)
    };
    let (_, h) = super::texel_extent(w.size_bytes());
    rows_kernel
        && row_bytes.is_multiple_of(caps.uniform_offset_align.max(1) as u64)
        && h <= caps.max_texture_2d as u64
}

/// `t` where this device's kernels read it: a texel image when [`reads_texels`], else as is.
pub fn place_weight(ctx: &GpuContext, t: Tensor) -> Result<Tensor> {
    if reads_texels(&ctx.caps, &t.desc) {
        ctx.to_texels(&t)
    } else {
        Ok(t)
    }
}
