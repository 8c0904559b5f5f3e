//! Row selection: [`TakeLastRow`] copies the last row of `[rows, n]` into `[1, n]`, so that the
//! final norm and the vocabulary projection of a prefill run only for the token that is sampled.

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;

/// `[rows, n]` → its last row `[1, n]`.
#[derive(Clone, Debug)]
pub struct TakeLastRow;

impl Op for TakeLastRow {
    fn name(&self) -> &'static str {
        "take_last_row"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        let x = inputs[0];
        expect_dtype(self.name(), "x", x, &[DType::F32])?;
        if x.rank() != 2 || x.shape[0] == 0 {
            return Err(Error::op(
                self.name(),
                format!("x is {x}: expected [rows ≥ 1, n]"),
            ));
        }
        Ok(vec![TensorDesc::f32([1, x.shape[1]])])
    }
    fn kernels(&self, _caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let x = inputs[0];
        let n = x.shape[1] as u32;
        let src = ((x.shape[0] - 1) * x.shape[1]) as u32;
        Ok(vec![KernelCall::new("elementwise.wgsl", "copy_rows")
            .define("COPY", 1)
            .define("WG", WORKGROUP)
            .params(&[n, n.div_ceil(WORKGROUP), src, 0])
            .args(&[Arg::In(0), Arg::Out(0)])
            .workgroups(n.div_ceil(WORKGROUP), 1, 1)])
    }
}

/// CPU reference.
pub fn cpu_last_row(x: &[f32], n: usize) -> Vec<f32> {
    x[x.len() - n..].to_vec()
}
