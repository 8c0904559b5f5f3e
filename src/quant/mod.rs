//! GGUF block-quantized formats: exact CPU dequantizers (the specification the GPU kernels are
//! tested against), quantizers, and the layout the blocks take on the GPU.
//!
//! | dtype | elems | bytes | block (GGUF, little-endian)                                     | value                       |
//! |-------|-------|-------|-----------------------------------------------------------------|-----------------------------|
//! | Q8_0  | 32    | 34    | `f16 d, i8 q[32]`                                               | d·q                         |
//! | Q4_0  | 32    | 18    | `f16 d, u8 qs[16] (elem j: low nibble of qs[j], j+16: high)`    | d·(q − 8)                   |
//! | Q4_1  | 32    | 20    | `f16 d, f16 m, u8 qs[16] (as Q4_0)`                             | d·q + m                     |
//! | Q4_K  | 256   | 144   | `f16 d, f16 dmin, u8 scales[12], u8 qs[128]`                    | d·sc_s·q − dmin·m_s         |
//! | Q5_K  | 256   | 176   | `f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]`         | d·sc_s·(q + 16·h) − dmin·m_s |
//! | Q6_K  | 256   | 210   | `u8 ql[128], u8 qh[64], i8 scales[16], f16 d`                   | d·sc_16·(q − 32)            |
//!
//! The K-quant element order is documented in [`kquants`].
//!
//! # GPU layout
//!
//! [`gpu_layout()`] splits a tensor's GGUF blocks into a section of quant words (16-byte aligned
//! per block, a row's contiguous) and a section of scales decoded into whole words, in exactly
//! the file's size; `src/quant/gpu_layout.rs` has the table of layouts.

#![warn(missing_docs)]

use std::collections::BTreeMap;

use half::f16;

use crate::error::{Error, Result};
use crate::tensor::DType;

mod gpu_layout;
pub mod kquants;
pub mod q4;
pub mod q8_0;
mod widen;

pub use gpu_layout::{
    gpu_layout, gpu_layout_bytes, gpu_layout_inverse, gpu_sections, GpuSections, BYTES_PER_256,
};
pub use widen::widen;

fn check_len(what: &'static str, dtype: DType, bytes: usize, n: usize) -> Result<()> {
    if !dtype.is_quantized() {
        return Err(Error::op(
            what,
            format!(
                "dtype {dtype} is not a block-quantized format (expected {})",
                DType::list(&DType::BLOCK_FORMATS)
            ),
        ));
    }
    let bl = dtype.block_len();
    if !n.is_multiple_of(bl) {
        return Err(Error::op(
            what,
            format!(
                "{n} elements of {dtype}: the count must be a multiple of the block length {bl}"
            ),
        ));
    }
    let want = n / bl * dtype.block_bytes();
    if bytes != want {
        return Err(Error::op(
            what,
            format!(
                "{n} elements of {dtype} take {want} bytes ({} blocks of {}), got {bytes}",
                n / bl,
                dtype.block_bytes()
            ),
        ));
    }
    Ok(())
}

/// Dequantize `n` elements of GGUF blocks of `dtype`.
pub fn dequantize(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    check_len("dequantize", dtype, bytes.len(), n)?;
    let mut out = vec![0f32; n];
    let bl = dtype.block_len();
    let bb = dtype.block_bytes();
    for (blk, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match dtype {
            DType::Q8_0 => q8_0::dequantize_block(blk, y),
            DType::Q4_0 => q4::dequantize_block_q4_0(blk, y),
            DType::Q4_1 => q4::dequantize_block_q4_1(blk, y),
            DType::Q4K => kquants::dequantize_block_q4_k(blk, y),
            DType::Q5K => kquants::dequantize_block_q5_k(blk, y),
            DType::Q6K => kquants::dequantize_block_q6_k(blk, y),
            _ => unreachable!("checked by check_len"),
        }
    }
    Ok(out)
}

/// The block format a matrix with rows of `cols` values gets when `want` is asked for: `want`
/// itself when the rows are whole blocks of it, else the 32-value format llama.cpp's
/// `llama-quantize` falls back to, in the formats Fado has (Q4_K → Q4_0, where llama.cpp
/// takes Q5_0 of nearly the same size; Q5_K → Q4_1, for its Q5_1; Q6_K → Q8_0), else `None`:
/// no block format fits and the matrix stays in floats. One rule for `fado quantize` and
/// synthetic weights, so a K-quant file is never larger than a Q8_0 one.
pub fn block_format_for(want: DType, cols: usize) -> Option<DType> {
    let fits = |d: DType| cols > 0 && cols.is_multiple_of(d.block_len());
    if !want.is_quantized() {
        return None;
    }
    if fits(want) {
        return Some(want);
    }
    let fallback = match want {
        DType::Q4K => DType::Q4_0,
        DType::Q5K => DType::Q4_1,
        _ => DType::Q8_0,
    };
    fits(fallback).then_some(fallback)
}

/// One line saying which matrices did not get `want` and what they got instead, e.g.
/// `150 matrices are q4_0: their rows are not whole q4_k blocks of 256`; `None` if all did.
pub fn fallback_summary(fallbacks: &[(String, DType)], want: DType) -> Option<String> {
    let mut by_type: BTreeMap<DType, usize> = BTreeMap::new();
    for (_, d) in fallbacks {
        *by_type.entry(*d).or_default() += 1;
    }
    if by_type.is_empty() {
        return None;
    }
    // A few are named (a small model's odd layers); many are only counted.
    let parts: Vec<String> = if fallbacks.len() <= 4 {
        fallbacks.iter().map(|(n, d)| format!("{n}: {d}")).collect()
    } else {
        by_type.iter().map(|(d, n)| format!("{n} {d}")).collect()
    };
    Some(format!(
        "{} of the matrices fell back to another format ({}): their rows are not whole {want} \
         blocks of {}",
        fallbacks.len(),
        parts.join(", "),
        want.block_len()
    ))
}

/// Quantize `values` into GGUF blocks of `dtype` (Q8_0, Q4_0 and Q4_K; the length must be a
/// multiple of the block length).
pub fn quantize(dtype: DType, values: &[f32]) -> Result<Vec<u8>> {
    let bl = dtype.block_len();
    if !matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4K) {
        return Err(Error::op(
            "quantize",
            format!("quantizing to {dtype} is not implemented (supported: q8_0, q4_0, q4_k)"),
        ));
    }
    if !values.len().is_multiple_of(bl) {
        return Err(Error::op(
            "quantize",
            format!(
                "{} values into {dtype}: the count must be a multiple of the block length {bl}",
                values.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(dtype.bytes_for(values.len()));
    for x in values.chunks_exact(bl) {
        match dtype {
            DType::Q8_0 => q8_0::quantize_block(x, &mut out),
            DType::Q4_0 => q4::quantize_block_q4_0(x, &mut out),
            DType::Q4K => kquants::quantize_block_q4_k(x, &mut out),
            _ => unreachable!("checked above"),
        }
    }
    Ok(out)
}

pub(crate) fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub(crate) fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

/// Round half away from zero, as C's `roundf`.
pub(crate) fn round(x: f32) -> i32 {
    x.round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_format_for_falls_back_as_llama_quantize_does() {
        assert_eq!(block_format_for(DType::Q4K, 4096), Some(DType::Q4K));
        assert_eq!(block_format_for(DType::Q4K, 576), Some(DType::Q4_0));
        assert_eq!(block_format_for(DType::Q5K, 576), Some(DType::Q4_1));
        assert_eq!(block_format_for(DType::Q6K, 576), Some(DType::Q8_0));
        assert_eq!(block_format_for(DType::Q4_0, 576), Some(DType::Q4_0));
        assert_eq!(block_format_for(DType::Q4K, 50), None);
        assert_eq!(block_format_for(DType::BF16, 576), None);
        // Never larger than Q8_0.
        for want in DType::BLOCK_FORMATS {
            let got = block_format_for(want, 96).expect("96 is whole 32-blocks");
            assert!(got.block_bytes() * 32 <= DType::Q8_0.block_bytes() * got.block_len());
        }
    }

    #[test]
    fn fallback_summary_is_one_line_naming_few_and_counting_many() {
        assert_eq!(fallback_summary(&[], DType::Q4K), None);
        let few = vec![("a.weight".to_string(), DType::Q4_0)];
        let line = fallback_summary(&few, DType::Q4K).expect("a line");
        assert!(
            line.contains("a.weight: q4_0") && !line.contains('\n'),
            "{line}"
        );
        let many: Vec<_> = (0..9).map(|i| (format!("m{i}"), DType::Q8_0)).collect();
        let line = fallback_summary(&many, DType::Q6K).expect("a line");
        assert!(line.contains("9 q8_0") && !line.contains("m3"), "{line}");
    }

    #[test]
    fn length_mismatch_names_dtype_and_sizes() {
        let e = dequantize(DType::Q4K, &[0u8; 100], 256)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("q4_k") && e.contains("144") && e.contains("100"),
            "{e}"
        );
        let e = dequantize(DType::Q8_0, &[0u8; 34], 31)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of the block length 32"), "{e}");
        let e = gpu_layout(DType::Q8_0, 2, 48, &[0u8; 102])
            .unwrap_err()
            .to_string();
        assert!(e.contains("q8_0[2, 48]"), "{e}");
    }
}
