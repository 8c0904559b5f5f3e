//! The GPU layout of the block formats: GGUF blocks split at load into a section of quant words
//! and a section of scales, so that a kernel streams a row's quants as 16-byte-aligned
//! `vec4<u32>` runs and reads a block's scales as whole words (no byte unpacking across
//! unaligned 34/18/210-byte blocks, no 6-bit scale unpacking).
//!
//! A tensor of `nb` blocks (rows of blocks, row-major) becomes `[quants: nb × Q][scales]`, the
//! quants of block `i` at byte `i·Q` (so a row's quants are one contiguous aligned run, and
//! every block's are 16-byte aligned), the scale section right after:
//!
//! | dtype | Q (quant bytes per block, as in GGUF)   | scale section, per block                                         | bytes / 256 weights (GGUF) |
//! |-------|------------------------------------------|------------------------------------------------------------------|----------------------------|
//! | Q8_0  | 32: `i8 q[32]`                           | f16 `d`, two blocks per word (block 2i in the low half)          | 272 (272)                  |
//! | Q4_0  | 16: `qs[16]`                             | f16 `d`, as Q8_0                                                 | 144 (144)                  |
//! | Q4_1  | 16: `qs[16]`                             | one word `(d, m)`, d in the low half                             | 160 (160)                  |
//! | Q4_K  | 128: `qs[128]`                           | 4 words `[d|dmin] [A] [B] [C]`: the 6-bit scales/mins re-packed  | 144 (144)                  |
//! | Q5_K  | 160: `qh[32] qs[128]`                    | as Q4_K                                                          | 176 (176)                  |
//! | Q6_K  | 192: `ql[128] qh[64]`                    | 4 words of `i8 scales[16]`; then, after all blocks' scales, f16 `d` two per word | 210 (210) |
//!
//! So the GPU copy is exactly the file size rounded up to 4 bytes (`TensorDesc::size_bytes`),
//! 0 % over the 5 % budget, and the quant bytes keep their GGUF order inside a block (the
//! kernels' shifts and the CPU-style kernel's 8-word chunk loads depend on it).
//!
//! K-quant scale record: `A` holds the low 4 bits of the 8 sub-block scales (`sc_s` at bits
//! `4s`), `B` those of the 8 mins, `C` their top 2 bits (`sc_s` at bits `2s`, `m_s` at `16 + 2s`):
//! a kernel gets `sc_s = (A >> 4s & 15) | (C >> 2s & 3) << 4` with the same shifts for every
//! `s`, instead of GGUF's two cases of byte unpacking. The 96 bits are GGUF's, re-ordered, so
//! [`gpu_layout_inverse`] gives the file's bytes back exactly. (Decoding them to f16 products
//! `d·sc_s`, `dmin·m_s` would take 32 bytes per block: 160 bytes per 256, 11 % over the file.)
//!
//! Q6_K's `d` offset follows from the scale section's: `scales_word + scales_word / 12`
//! (the quants are 48 words per block, the i8 scales 4).

use super::check_len;
use super::kquants::{pack_scale_min, scale_min};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Bytes per 256 weights of each format's GPU layout (tests hold it to the GGUF size).
pub const BYTES_PER_256: [(DType, usize); 6] = [
    (DType::Q8_0, 272),
    (DType::Q4_0, 144),
    (DType::Q4_1, 160),
    (DType::Q4K, 144),
    (DType::Q5K, 176),
    (DType::Q6K, 210),
];

/// Bytes the GPU copy of a `[rows, cols]` tensor of `dtype` takes: the GGUF size rounded up to 4
/// (equal to `TensorDesc::size_bytes`).
pub fn gpu_layout_bytes(dtype: DType, rows: usize, cols: usize) -> u64 {
    (dtype.bytes_for(rows * cols).div_ceil(4) * 4) as u64
}

/// Where the quants and the scales of a tensor live in its GPU layout (in bytes), see the module
/// docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuSections {
    /// Quant bytes per block in the first section (a multiple of 16).
    pub body_bytes: usize,
    /// Byte offset of the scale section (`nb × body_bytes`); `Some` for every format.
    pub scales_offset: Option<usize>,
}

/// The section geometry of `dtype`'s GPU layout for `blocks` blocks.
pub fn gpu_sections(dtype: DType, blocks: usize) -> GpuSections {
    let body = body_bytes(dtype);
    GpuSections {
        body_bytes: body,
        scales_offset: Some(blocks * body),
    }
}

fn body_bytes(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 => 32,
        DType::Q4_0 | DType::Q4_1 => 16,
        DType::Q4K => 128,
        DType::Q5K => 160,
        DType::Q6K => 192,
        d => d.block_bytes(),
    }
}

/// Where block `i`'s parts go: (GGUF byte range, layout byte offset) pairs.
fn parts(dtype: DType, nb: usize, i: usize) -> Vec<(std::ops::Range<usize>, usize)> {
    let soff = nb * body_bytes(dtype);
    let body = i * body_bytes(dtype);
    match dtype {
        DType::Q8_0 | DType::Q4_0 => vec![(2..dtype.block_bytes(), body), (0..2, soff + 2 * i)],
        DType::Q4_1 => vec![(4..20, body), (0..4, soff + 4 * i)],
        // The scale record's first word; A, B, C are written by `kquant_scales`.
        DType::Q4K | DType::Q5K => vec![(16..dtype.block_bytes(), body), (0..4, soff + 16 * i)],
        DType::Q6K => vec![
            (0..192, body),
            (192..208, soff + 16 * i),
            (208..210, soff + 16 * nb + 2 * i),
        ],
        _ => unreachable!("block formats only"),
    }
}

/// The words A, B, C of a K-quant scale record from GGUF's 12 packed bytes (module docs).
fn kquant_scales(packed: &[u8]) -> [u32; 3] {
    let mut w = [0u32; 3];
    for s in 0..8 {
        let (sc, m) = scale_min(s, packed);
        w[0] |= u32::from(sc & 15) << (4 * s);
        w[1] |= u32::from(m & 15) << (4 * s);
        w[2] |= (u32::from(sc >> 4) << (2 * s)) | (u32::from(m >> 4) << (16 + 2 * s));
    }
    w
}

/// Inverse of [`kquant_scales`]: GGUF's 12 bytes.
fn kquant_packed(w: [u32; 3]) -> [u8; 12] {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for s in 0..8 {
        sc[s] = (((w[0] >> (4 * s)) & 15) | (((w[2] >> (2 * s)) & 3) << 4)) as u8;
        m[s] = (((w[1] >> (4 * s)) & 15) | (((w[2] >> (16 + 2 * s)) & 3) << 4)) as u8;
    }
    pack_scale_min(&sc, &m)
}

fn check_shape(what: &'static str, dtype: DType, rows: usize, cols: usize) -> Result<()> {
    if dtype.is_quantized() && !cols.is_multiple_of(dtype.block_len()) {
        return Err(Error::op(
            what,
            format!(
                "tensor {dtype}[{rows}, {cols}]: rows of {cols} elements are not whole blocks of {}",
                dtype.block_len()
            ),
        ));
    }
    Ok(())
}

/// Rearrange the GGUF bytes of a `[rows, cols]` tensor into the GPU layout (module docs).
/// The result is [`gpu_layout_bytes`] long.
pub fn gpu_layout(dtype: DType, rows: usize, cols: usize, gguf_bytes: &[u8]) -> Result<Vec<u8>> {
    check_len("gpu_layout", dtype, gguf_bytes.len(), rows * cols)
        .map_err(|e| Error::op("gpu_layout", format!("tensor {dtype}[{rows}, {cols}]: {e}")))?;
    check_shape("gpu_layout", dtype, rows, cols)?;
    let bb = dtype.block_bytes();
    let nb = gguf_bytes.len() / bb;
    let mut out = vec![0u8; gpu_layout_bytes(dtype, rows, cols) as usize];
    let soff = nb * body_bytes(dtype);
    for (i, blk) in gguf_bytes.chunks_exact(bb).enumerate() {
        for (from, to) in parts(dtype, nb, i) {
            out[to..to + from.len()].copy_from_slice(&blk[from]);
        }
        if matches!(dtype, DType::Q4K | DType::Q5K) {
            let rec = soff + 16 * i + 4;
            for (j, w) in kquant_scales(&blk[4..16]).iter().enumerate() {
                out[rec + 4 * j..rec + 4 * j + 4].copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    Ok(out)
}

/// Inverse of [`gpu_layout`]: the GGUF bytes of a `[rows, cols]` tensor from its GPU layout
/// (`bytes` at least the layout's unpadded size). Tests dequantize through it.
pub fn gpu_layout_inverse(dtype: DType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Vec<u8>> {
    check_shape("gpu_layout_inverse", dtype, rows, cols)?;
    let n = dtype.bytes_for(rows * cols);
    if !dtype.is_quantized() || bytes.len() < n {
        return Err(Error::op(
            "gpu_layout_inverse",
            format!(
                "tensor {dtype}[{rows}, {cols}]: expected a block format's {n} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    let bb = dtype.block_bytes();
    let nb = n / bb;
    let soff = nb * body_bytes(dtype);
    let mut out = vec![0u8; n];
    for (i, blk) in out.chunks_exact_mut(bb).enumerate() {
        for (to, from) in parts(dtype, nb, i) {
            let len = to.len();
            blk[to].copy_from_slice(&bytes[from..from + len]);
        }
        if matches!(dtype, DType::Q4K | DType::Q5K) {
            let rec = soff + 16 * i + 4;
            let w = |j: usize| {
                u32::from_le_bytes(bytes[rec + 4 * j..rec + 4 * j + 4].try_into().expect("4"))
            };
            blk[4..16].copy_from_slice(&kquant_packed([w(0), w(1), w(2)]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn gpu_layout_keeps_the_file_size() {
        for dtype in DType::BLOCK_FORMATS {
            let (rows, cols) = (3, 2 * dtype.block_len());
            let n = dtype.bytes_for(rows * cols);
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let g = gpu_layout(dtype, rows, cols, &bytes).unwrap();
            assert_eq!(g.len() as u64, gpu_layout_bytes(dtype, rows, cols));
            assert!(g.len() < n + 4, "{dtype}: {} bytes for {n}", g.len());
        }
    }

    #[test]
    fn bytes_per_256_weights_are_within_5_percent_of_gguf() {
        for (dtype, per_256) in BYTES_PER_256 {
            let gguf = dtype.bytes_for(256 * 4);
            let gpu = gpu_layout_bytes(dtype, 4, 256) as usize;
            assert_eq!(gpu, 4 * per_256, "{dtype}");
            assert!(gpu * 100 <= gguf * 105, "{dtype}: {gpu} bytes for {gguf}");
        }
    }

    #[test]
    fn inverse_gives_the_gguf_bytes_back_for_every_format() {
        let mut rng = Rng::new(3);
        for dtype in DType::BLOCK_FORMATS {
            for (rows, blocks) in [(1, 1), (3, 3), (5, 2)] {
                let cols = blocks * dtype.block_len();
                let n = dtype.bytes_for(rows * cols);
                let gguf: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                let g = gpu_layout(dtype, rows, cols, &gguf).unwrap();
                let back = gpu_layout_inverse(dtype, rows, cols, &g).unwrap();
                assert!(back == gguf, "{dtype}[{rows}, {cols}]");
            }
        }
    }

    #[test]
    fn kquant_scale_record_decodes_with_uniform_shifts() {
        let mut rng = Rng::new(4);
        let packed: Vec<u8> = (0..12).map(|_| rng.below(256) as u8).collect();
        let [a, b, c] = kquant_scales(&packed);
        for s in 0..8 {
            let sc = ((a >> (4 * s)) & 15) | (((c >> (2 * s)) & 3) << 4);
            let m = ((b >> (4 * s)) & 15) | (((c >> (16 + 2 * s)) & 3) << 4);
            let (want_sc, want_m) = scale_min(s, &packed);
            assert_eq!((sc as u8, m as u8), (want_sc, want_m), "sub-block {s}");
        }
    }
}
