//! Any weight's values as f32: floats widened, blocks dequantized.

use crate::error::{Error, Result};
use crate::tensor::DType;

/// The `n` values of tensor `name`, stored as `dtype` in `bytes`, as f32 (floats widened,
/// blocks dequantized). `name` is for messages.
pub fn widen(name: &str, dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    Ok(match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..n * 4]),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d if d.is_quantized() => super::dequantize(d, bytes, n)?,
        d => {
            return Err(Error::Config(format!(
                "tensor `{name}` has dtype {d}, which cannot hold weights"
            )))
        }
    })
}
