//! Deterministic pseudo-random words ([`Fill`]), generated on the GPU: the synthetic weights of
//! `fado bench --synthetic` (`crate::model::synthetic`), so nothing is uploaded.
//! Kernel: `shaders/fill.wgsl`. [`Fill::cpu`] states the words bit for bit.

#![warn(missing_docs)]

use super::{expect_addressable, expect_dtype, expect_inputs, expect_rank, grid_2d};
use super::{Arg, KernelCall, Op};
use crate::error::Result;
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;

/// What each word holds; the discriminant is the kernel's `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillKind {
    /// One f32, uniform in (−scale, scale).
    F32 = 0,
    /// Two bf16, uniform in (−scale, scale) (truncated from f32).
    BF16 = 1,
    /// Two f16, uniform in (−scale, scale).
    F16 = 2,
    /// Random bits (the quants of block formats).
    Bits = 3,
}

/// Overwrite every word of input 0 (`u32 [words]`, written in place; a view of the tensor to
/// fill) with pseudo-random values; no outputs.
#[derive(Clone, Debug)]
pub struct Fill {
    /// What each word holds.
    pub kind: FillKind,
    /// Seed: the same seed gives the same words.
    pub seed: u32,
    /// Half-width of the float kinds' uniform range.
    pub scale: f32,
    /// When > 0, words at multiples of `period` get [`Fill::header`] instead (block headers
    /// of quantized formats: sane f16 scales).
    pub period: u32,
    /// The word written at multiples of `period`.
    pub header: u32,
}

impl Op for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        expect_dtype(self.name(), "words", inputs[0], &[DType::U32])?;
        expect_rank(self.name(), "words", inputs[0], 1)?;
        expect_addressable(self.name(), "words", inputs[0])?;
        Ok(vec![])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let words = inputs[0].shape[0] as u32;
        let [gx, gy, _] = grid_2d(words.div_ceil(WORKGROUP), caps.max_workgroups_per_dim);
        let mode = self.kind as u32;
        let (seed, period, header) = (self.seed, self.period, self.header);
        let scale = self.scale.to_bits();
        Ok(vec![KernelCall::new("fill.wgsl", "fill")
            .define("WG", WORKGROUP)
            .params(&[words, seed, mode, period, header, scale, gx, 0])
            .args(&[Arg::InOut(0)])
            .workgroups(gx, gy, 1)])
    }
}

impl Fill {
    /// CPU reference: the `words` words the kernel writes.
    pub fn cpu(&self, words: usize) -> Vec<u32> {
        let unit = |bits: u32| (bits >> 8) as f32 / 8388608.0 - 1.0;
        let seed = hash(self.seed);
        (0..words as u32)
            .map(|w| {
                if self.period > 0 && w % self.period == 0 {
                    return self.header;
                }
                let a = hash(w ^ seed);
                let b = hash(a.wrapping_add(0x68e31da4));
                let (x, y) = (unit(a) * self.scale, unit(b) * self.scale);
                match self.kind {
                    FillKind::F32 => x.to_bits(),
                    FillKind::BF16 => (x.to_bits() >> 16) | (y.to_bits() & 0xffff0000),
                    FillKind::F16 => {
                        let h = |v: f32| half::f16::from_f32(v).to_bits() as u32;
                        h(x) | (h(y) << 16)
                    }
                    FillKind::Bits => a,
                }
            })
            .collect()
    }
}

/// The kernel's integer hash (`hash` in `shaders/fill.wgsl`).
fn hash(x: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9e3779b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85ebca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2ae35);
    h ^= h >> 16;
    h
}
