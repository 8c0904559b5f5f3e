//! Row-wise softmax over the last dimension: `x` f32 `[rows, n]` → f32 `[rows, n]`.

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup (one workgroup per row).
pub const WORKGROUP: u32 = 256;

/// Softmax over the last dimension.
#[derive(Clone, Debug)]
pub struct Softmax;

impl Op for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        let x = inputs[0];
        expect_dtype(self.name(), "x", x, &[DType::F32])?;
        if x.rank() == 0 || x.cols() == 0 {
            return Err(Error::op(
                self.name(),
                format!("x is {x}: expected at least one dimension and a non-empty last one"),
            ));
        }
        Ok(vec![x.clone()])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let x = inputs[0];
        let rows = x.rows() as u32;
        let [gx, gy, _] = grid_2d(rows, caps.max_workgroups_per_dim);
        Ok(vec![KernelCall::new("softmax.wgsl", "softmax")
            .define("WG", WORKGROUP)
            .params(&[rows, x.cols() as u32, gx, 0])
            .args(&[Arg::In(0), Arg::Out(0)])
            .workgroups(gx, gy, 1)])
    }
}

/// CPU reference (f64 inside), rows of length `n`.
pub fn cpu(x: &[f32], n: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let m = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
        let e: Vec<f64> = row.iter().map(|v| (*v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        y.extend(e.iter().map(|v| (v / s) as f32));
    }
    y
}
