//! The K-quants: super-blocks of 256 values made of 8 sub-blocks of 32 (Q4_K, Q5_K) or 16
//! sub-blocks of 16 (Q6_K), each with its own small scale, under one or two f16 super-scales.
//!
//! **Q4_K** (144 bytes): `f16 d, f16 dmin, u8 scales[12], u8 qs[128]`. Sub-block `s` (elements
//! `32s .. 32s+32`) reads the bytes `qs[32·(s/2) ..][..32]`, low nibbles for even `s`, high
//! nibbles for odd `s` (so each 64-value group shares 32 bytes). Its 6-bit scale `sc_s` and
//! min `m_s` are packed in `scales` ([`scale_min`]):
//! - `s < 4`: `sc = scales[s] & 63`, `m = scales[s + 4] & 63`;
//! - `s ≥ 4`: the low 4 bits in `scales[s + 4]` (scale low nibble, min high nibble), the top 2
//!   bits in the top 2 bits of `scales[s − 4]` (scale) and `scales[s]` (min).
//!
//! Value = `d·sc_s · q − dmin·m_s`.
//!
//! **Q5_K** (176 bytes): `f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]`: as Q4_K, plus
//! a fifth bit: element `l` of sub-block `s` adds `16` when bit `s` of `qh[l]` is set.
//!
//! **Q6_K** (210 bytes): `u8 ql[128], u8 qh[64], i8 scales[16], f16 d`. Two halves of 128
//! values (`h`), each of four 32-value quarters (`t`). Element `l < 32` of quarter `t` of half
//! `h`: low 4 bits from `ql[64h + 32·(t & 1) + l]` (low nibble for `t < 2`, high otherwise),
//! high 2 bits from `(qh[32h + l] >> 2t) & 3`; scale `scales[8h + 2t + l/16]`.
//! Value = `d · scale · (q − 32)`.

#![warn(missing_docs)]

use super::{f16_bytes, rd_f16, round};

/// Values per super-block, for all three formats.
pub const QK: usize = 256;

/// Scale and min of sub-block `s` (0..8) from the 12 packed bytes.
pub fn scale_min(s: usize, q: &[u8]) -> (u8, u8) {
    if s < 4 {
        (q[s] & 63, q[s + 4] & 63)
    } else {
        (
            (q[s + 4] & 0xf) | ((q[s - 4] >> 6) << 4),
            (q[s + 4] >> 4) | ((q[s] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min`]: pack eight 6-bit scales and mins into 12 bytes.
pub fn pack_scale_min(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4);
    }
    q
}

/// Dequantize one Q4_K super-block: `b` holds at least 144 bytes and `y` at least [`QK`]
/// elements (panics otherwise); writes `y[..256]`.
pub fn dequantize_block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let dmin = rd_f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for s in 0..8 {
        let (sc, m) = scale_min(s, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let shift = 4 * (s & 1);
        for l in 0..32 {
            let q = (qs[32 * (s / 2) + l] >> shift) & 0xf;
            y[32 * s + l] = d1 * q as f32 - m1;
        }
    }
}

/// Dequantize one Q5_K super-block: `b` holds at least 176 bytes and `y` at least [`QK`]
/// elements (panics otherwise); writes `y[..256]`.
pub fn dequantize_block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = rd_f16(b, 0);
    let dmin = rd_f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for s in 0..8 {
        let (sc, m) = scale_min(s, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let shift = 4 * (s & 1);
        for l in 0..32 {
            let q = ((qs[32 * (s / 2) + l] >> shift) & 0xf) + 16 * ((qh[l] >> s) & 1);
            y[32 * s + l] = d1 * q as f32 - m1;
        }
    }
}

/// Dequantize one Q6_K super-block: `b` holds at least 210 bytes and `y` at least [`QK`]
/// elements (panics otherwise); writes `y[..256]`.
pub fn dequantize_block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = rd_f16(b, 208);
    for h in 0..2 {
        for t in 0..4 {
            for l in 0..32 {
                let lo = (ql[64 * h + 32 * (t & 1) + l] >> (4 * (t >> 1))) & 0xf;
                let hi = (qh[32 * h + l] >> (2 * t)) & 3;
                let q = (lo | (hi << 4)) as i32 - 32;
                let sc = scales[8 * h + 2 * t + l / 16] as i8;
                y[128 * h + 32 * t + l] = d * sc as f32 * q as f32;
            }
        }
    }
}

/// Fit `x ≈ a·q + b` with `q ∈ 0..=15` and `b ≤ 0` for one 32-value sub-block: try a few grid
/// steps around the min–max step, refit `(a, b)` by least squares for each assignment, keep
/// the assignment of least squared error. Returns `(a, −b)`, both ≥ 0.
fn fit_sub_block(x: &[f32]) -> (f32, f32) {
    let xmin = x.iter().fold(0f32, |m, v| m.min(*v));
    let xmax = x.iter().fold(f32::MIN, |m, v| m.max(*v));
    if xmax <= xmin {
        return (0.0, -xmin);
    }
    let n = x.len() as f32;
    let err_of = |a: f32, b: f32| -> f32 {
        x.iter()
            .map(|v| {
                let q = if a > 0.0 {
                    round((v - b) / a).clamp(0, 15)
                } else {
                    0
                };
                let e = a * q as f32 + b - v;
                e * e
            })
            .sum()
    };
    let mut best = ((xmax - xmin) / 15.0, xmin);
    let mut best_err = err_of(best.0, best.1);
    for k in -8..=8 {
        let iscale = (15.0 + 0.1 * k as f32) / (xmax - xmin);
        let qs: Vec<f32> = x
            .iter()
            .map(|v| round(iscale * (v - xmin)).clamp(0, 15) as f32)
            .collect();
        let (sq, sqq) = (
            qs.iter().sum::<f32>(),
            qs.iter().map(|q| q * q).sum::<f32>(),
        );
        let (sx, sqx) = (
            x.iter().sum::<f32>(),
            qs.iter().zip(x).map(|(q, v)| q * v).sum::<f32>(),
        );
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            continue;
        }
        let mut a = (n * sqx - sq * sx) / det;
        let mut b = (sqq * sx - sq * sqx) / det;
        if b > 0.0 {
            b = 0.0;
            a = if sqq > 0.0 { sqx / sqq } else { 0.0 };
        }
        if a <= 0.0 {
            continue;
        }
        let e = err_of(a, b);
        if e < best_err {
            best_err = e;
            best = (a, b);
        }
    }
    (best.0, -best.1)
}

/// Quantize 256 values into one Q4_K block: fit each sub-block's scale and min, quantize those
/// to 6 bits under the super-scales `d = max scale / 63`, `dmin = max min / 63`, then quantize
/// the values against the scales as stored.
pub fn quantize_block_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for s in 0..8 {
        (scales[s], mins[s]) = fit_sub_block(&x[32 * s..32 * s + 32]);
    }
    let max_scale = scales.iter().fold(0f32, |m, v| m.max(*v));
    let max_min = mins.iter().fold(0f32, |m, v| m.max(*v));
    let inv_s = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_m = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for s in 0..8 {
        sc[s] = round(inv_s * scales[s]).clamp(0, 63) as u8;
        m[s] = round(inv_m * mins[s]).clamp(0, 63) as u8;
    }
    let dh = f16_bytes(max_scale / 63.0);
    let dminh = f16_bytes(max_min / 63.0);
    let d = half::f16::from_le_bytes(dh).to_f32();
    let dmin = half::f16::from_le_bytes(dminh).to_f32();
    let mut l = [0u8; QK];
    for s in 0..8 {
        let ds = d * sc[s] as f32;
        let dm = dmin * m[s] as f32;
        for i in 0..32 {
            l[32 * s + i] = if ds > 0.0 {
                round((x[32 * s + i] + dm) / ds).clamp(0, 15) as u8
            } else {
                0
            };
        }
    }
    out.extend_from_slice(&dh);
    out.extend_from_slice(&dminh);
    out.extend_from_slice(&pack_scale_min(&sc, &m));
    for j in 0..4 {
        for i in 0..32 {
            out.push(l[64 * j + i] | (l[64 * j + 32 + i] << 4));
        }
    }
}
