//! Embedding gather: token ids `u32 [t]` and a table `[vocab, n]` (f32, f16 or bf16) give f32 `[t, n]`.

use super::{
    expect_addressable, expect_dtype, expect_inputs, expect_rank, grid_2d, Arg, KernelCall, Op,
};
use crate::error::Result;
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

pub const WORKGROUP: u32 = 256;

#[derive(Clone, Debug)]
pub struct Embedding;

pub(crate) fn weight_define(d: DType) -> &'static str {
    match d {
        DType::F16 => "W_F16",
        DType::BF16 => "W_BF16",
        _ => "W_F32",
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
        expect_dtype(
            self.name(),
            "table",
            table,
            &[DType::F32, DType::F16, DType::BF16],
        )?;
        expect_rank(self.name(), "table", table, 2)?;
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
        let [gx, gy, _] = grid_2d((t * n).div_ceil(WORKGROUP), caps.max_workgroups_per_dim);
        Ok(vec![KernelCall::new("embedding.wgsl", "embedding")
            .define(weight_define(table.dtype), 1)
            .define("WG", WORKGROUP)
            .params(&[t, n, vocab, gx])
            .args(&[Arg::In(0), Arg::In(1), Arg::Out(0)])
            .workgroups(gx, gy, 1)])
    }
}

/// CPU reference over an f32 table.
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
