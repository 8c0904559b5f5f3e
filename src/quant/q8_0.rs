//! Q8_0: blocks of 32 values, `f16 d` then 32 signed bytes; value = `d · q`.

#![warn(missing_docs)]

use super::{f16_bytes, rd_f16, round};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the f16 scale and 32 quants.
pub const BYTES: usize = 34;

/// Dequantize one block: `b` holds at least [`BYTES`] bytes (panics otherwise); the values go
/// to the first [`BLOCK`] elements of `y` (fewer if `y` is shorter).
pub fn dequantize_block(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for (yi, q) in y.iter_mut().zip(&b[2..BYTES]) {
        *yi = d * (*q as i8) as f32;
    }
}

/// Symmetric absmax quantization as ggml's reference: `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    out.extend(x.iter().map(|v| round(v * id).clamp(-127, 127) as i8 as u8));
}
