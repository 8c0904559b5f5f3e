//! Embedding gather: token ids `u32 [t]` and a table `[vocab, n]` give f32 `[t, n]`.
//!
//! The table is f32, f16, bf16 (widened in the kernel) or one of the GGUF block formats in the
//! GPU layout of [`crate::quant`] (the gathered rows are dequantized in the kernel, bit-exactly
//! as [`crate::quant::dequantize`]), so a quantized table tied with the lm_head is one buffer.
//! An id outside the table (`id >= vocab`) yields a row of zeros, on the GPU as in [`cpu`].

#![warn(missing_docs)]

use super::{
    expect_addressable, expect_dtype, expect_inputs, expect_rank, format_define, grid_2d, Arg,
    KernelCall, Op,
};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::quant;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;

/// Table dtypes the gather reads.
pub const TABLE_DTYPES: &[DType] = &DType::WEIGHT_TYPES;

/// Gather rows of a table: inputs `[ids u32 [t], table [vocab, n]]`, output f32 `[t, n]`.
///
/// The table's dtype is one of [`TABLE_DTYPES`]; for a block format `n` must be a whole number
/// of blocks. Where [`crate::gpu::reads_texels`] holds for the table (CPU devices), the
/// kernel reads it as a texel image ([`super::Arg::Texels`]), the form weights are uploaded in
/// there.
#[derive(Clone, Debug)]
pub struct Embedding;

/// [`Embedding`] of the `tokens` tokens at positions `step.pos ..` of a sequence's token
/// history (inputs `[history u32 [C], table]`, output f32 `[tokens, n]`): the ids are read on
/// the GPU where the previous step's sampler wrote them, so the host need not see them first.
#[derive(Clone, Debug)]
pub struct EmbeddingAt {
    /// Tokens the step runs.
    pub tokens: usize,
}

impl Op for EmbeddingAt {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let mut out = Embedding.infer(inputs)?;
        let history = inputs[0];
        if self.tokens == 0 || self.tokens > history.shape[0] {
            return Err(Error::op(
                self.name(),
                format!(
                    "{} tokens from a history of {history}: expected 1 ..= {}",
                    self.tokens, history.shape[0]
                ),
            ));
        }
        out[0].shape[0] = self.tokens;
        Ok(out)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let ids = TensorDesc::new(DType::U32, [self.tokens]);
        let mut calls = Embedding.kernels(caps, &[&ids, inputs[1]])?;
        for c in &mut calls {
            c.defines.insert("AT_POS".into(), "1".into());
        }
        Ok(calls)
    }
}

/// [`Embedding`] of a batched step's rows (inputs `[history u32 [H], table]`, output f32
/// `[rows, n]`): row `t` reads its id from the pooled token history at
/// `step.rows[t].z + step.rows[t].x` (its sequence's first word plus its position; see
/// [`super::RowStep`]).
#[derive(Clone, Debug)]
pub struct EmbeddingRows {
    /// Rows of the step (sequences advanced at once), 1 ..= [`super::MAX_ROWS`].
    pub rows: usize,
}

impl Op for EmbeddingRows {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let mut out = Embedding.infer(inputs)?;
        if self.rows == 0 || self.rows > super::MAX_ROWS {
            return Err(Error::op(
                self.name(),
                format!(
                    "a batched step of {} rows: expected 1 ..= {}",
                    self.rows,
                    super::MAX_ROWS
                ),
            ));
        }
        out[0].shape[0] = self.rows;
        Ok(out)
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let ids = TensorDesc::new(DType::U32, [self.rows]);
        let mut calls = Embedding.kernels(caps, &[&ids, inputs[1]])?;
        for c in &mut calls {
            c.defines.insert("AT_POS".into(), "1".into());
            c.defines.insert("ROWS".into(), "1".into());
        }
        Ok(calls)
    }
}

impl Op for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (ids, table) = (inputs[0], inputs[1]);
        expect_dtype(self.name(), "ids", ids, &[DType::U32])?;
        expect_rank(self.name(), "ids", ids, 1)?;
        expect_dtype(self.name(), "table", table, TABLE_DTYPES)?;
        expect_rank(self.name(), "table", table, 2)?;
        let bl = table.dtype.block_len();
        if !table.shape[1].is_multiple_of(bl) {
            return Err(Error::op(
                self.name(),
                format!(
                    "table is {table}: its rows of {} values are not whole {} blocks of {bl}",
                    table.shape[1], table.dtype
                ),
            ));
        }
        let out = TensorDesc::f32([ids.shape[0], table.shape[1]]);
        // The output can be larger than either input; the kernel's grid is computed in u32.
        expect_addressable(self.name(), "the output", &out)?;
        Ok(vec![out])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (ids, table) = (inputs[0], inputs[1]);
        let (t, n, vocab) = (
            ids.shape[0] as u32,
            table.shape[1] as u32,
            table.shape[0] as u32,
        );
        let quantized = table.dtype.is_quantized();
        // Quantized tables: one thread per 4 values (rows are whole blocks, multiples of 32).
        let per_thread = if quantized { 4 } else { 1 };
        let threads = t * n / per_thread;
        let [gx, gy, _] = grid_2d(threads.div_ceil(WORKGROUP), caps.max_workgroups_per_dim);
        let (nbr, scales_word) = if quantized {
            let nbr = table.shape[1] / table.dtype.block_len();
            let sec = quant::gpu_sections(table.dtype, table.shape[0] * nbr);
            (nbr as u32, (sec.scales_offset.unwrap_or(0) / 4) as u32)
        } else {
            (0, 0)
        };
        let mut call = KernelCall::new("embedding.wgsl", "embedding")
            .define(format_define(table.dtype), 1)
            .define("WG", WORKGROUP)
            .params(&[t, n, vocab, gx, nbr, scales_word, 0, 0])
            .args(&[Arg::In(0), Arg::In(1), Arg::Out(0)])
            .workgroups(gx, gy, 1);
        if crate::gpu::reads_texels(caps, table) {
            call = call.define("TEX", 1);
            call.args[1] = Arg::Texels(1);
        }
        if quantized {
            call = call
                .define("QUANT", 1)
                .define("BL", table.dtype.block_len() as u32);
        }
        Ok(vec![call])
    }
}

/// CPU reference over an f32 table (for a quantized table, its [`crate::quant::dequantize`]).
pub fn cpu(ids: &[u32], table: &[f32], n: usize) -> Vec<f32> {
    let vocab = table.len() / n;
    let mut y = Vec::with_capacity(ids.len() * n);
    for &id in ids {
        if (id as usize) < vocab {
            y.extend_from_slice(&table[id as usize * n..(id as usize + 1) * n]);
        } else {
            y.extend(std::iter::repeat_n(0.0, n));
        }
    }
    y
}
