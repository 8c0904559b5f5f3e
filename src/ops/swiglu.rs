//! SwiGLU activation, fused: `y = silu(gate) · up`.
//!
//! [`SwiGlu`] takes gate and up as two f32 tensors of equal shape; [`SwiGluCat`] takes one
//! `[rows, 2n]` tensor holding gate then up in each row (the output of one fused gate|up matmul)
//! and yields `[rows, n]`.

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;

/// `silu(gate) · up` over two tensors of the same shape.
#[derive(Clone, Debug)]
pub struct SwiGlu;

impl Op for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (g, u) = (inputs[0], inputs[1]);
        expect_dtype(self.name(), "gate", g, &[DType::F32])?;
        expect_dtype(self.name(), "up", u, &[DType::F32])?;
        if g.shape != u.shape {
            return Err(Error::op(
                self.name(),
                format!("gate is {g} and up is {u}: expected equal shapes"),
            ));
        }
        Ok(vec![g.clone()])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let n = inputs[0].numel() as u32;
        let [gx, gy, _] = grid_2d(n.div_ceil(WORKGROUP), caps.max_workgroups_per_dim);
        Ok(vec![KernelCall::new("elementwise.wgsl", "swiglu")
            .define("SWIGLU", 1)
            .define("WG", WORKGROUP)
            .params(&[n, gx, 0, 0])
            .args(&[Arg::In(0), Arg::In(1), Arg::Out(0)])
            .workgroups(gx, gy, 1)])
    }
}

/// `silu(gate) · up` over one `[rows, 2n]` tensor holding gate then up in each row.
#[derive(Clone, Debug)]
pub struct SwiGluCat;

impl Op for SwiGluCat {
    fn name(&self) -> &'static str {
        "swiglu_cat"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 1)?;
        let gu = inputs[0];
        expect_dtype(self.name(), "gate|up", gu, &[DType::F32])?;
        if gu.rank() == 0 || !gu.cols().is_multiple_of(2) {
            return Err(Error::op(
                self.name(),
                format!("gate|up is {gu}: expected an even last dimension (gate then up)"),
            ));
        }
        let mut shape = gu.shape.clone();
        *shape.last_mut().expect("rank >= 1") /= 2;
        Ok(vec![TensorDesc::f32(shape)])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let gu = inputs[0];
        let half = (gu.cols() / 2) as u32;
        let n = gu.rows() as u32 * half;
        let [gx, gy, _] = grid_2d(n.div_ceil(WORKGROUP), caps.max_workgroups_per_dim);
        Ok(vec![KernelCall::new("elementwise.wgsl", "swiglu_cat")
            .define("SWIGLU_CAT", 1)
            .define("WG", WORKGROUP)
            .params(&[n, gx, half, 0])
            .args(&[Arg::In(0), Arg::Out(0)])
            .workgroups(gx, gy, 1)])
    }
}

/// `x · sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// CPU reference.
pub fn cpu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| silu(*g) * u).collect()
}
