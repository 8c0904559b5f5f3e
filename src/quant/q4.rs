//! The legacy 4-bit formats, blocks of 32 values with 16 bytes of nibbles: element `j < 16` is
//! the low nibble of byte `j`, element `j + 16` the high nibble of byte `j`.
//!
//! - Q4_0 (18 bytes): `f16 d`, `qs[16]`; value = `d · (q − 8)`.
//! - Q4_1 (20 bytes): `f16 d`, `f16 m`, `qs[16]`; value = `d · q + m`.

#![warn(missing_docs)]

use super::{f16_bytes, rd_f16};

/// Dequantize one Q4_0 block: `b` holds at least 18 bytes and `y` at least 32 elements
/// (panics otherwise); writes `y[..32]`.
pub fn dequantize_block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    for (j, q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0xf) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

/// Dequantize one Q4_1 block: `b` holds at least 20 bytes and `y` at least 32 elements
/// (panics otherwise); writes `y[..32]`.
pub fn dequantize_block_q4_1(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let m = rd_f16(b, 2);
    for (j, q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0xf) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// As ggml's reference: the value of largest magnitude `v` maps to `−8`, so `d = v / −8`, and
/// `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_block_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    for j in 0..16 {
        out.push(q(x[j]) | (q(x[j + 16]) << 4));
    }
}
