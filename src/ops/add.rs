//! Residual add: `y = a + b` (new tensor) or `a += b` in place ([`AddInto`]).

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;

fn check(op: &'static str, a: &TensorDesc, b: &TensorDesc) -> Result<()> {
    expect_dtype(op, "a", a, &[DType::F32])?;
    expect_dtype(op, "b", b, &[DType::F32])?;
    if a.shape != b.shape {
        return Err(Error::op(
            op,
            format!("a is {a} and b is {b}: expected equal shapes"),
        ));
    }
    Ok(())
}

fn call(caps: &Caps, entry: &'static str, define: &str, n: usize, args: &[Arg]) -> KernelCall {
    let groups = (n as u32).div_ceil(WORKGROUP);
    let [gx, gy, _] = grid_2d(groups, caps.max_workgroups_per_dim);
    KernelCall::new("elementwise.wgsl", entry)
        .define(define, 1)
        .define("WG", WORKGROUP)
        .params(&[n as u32, gx, 0, 0])
        .args(args)
        .workgroups(gx, gy, 1)
}

/// `y = a + b`.
#[derive(Clone, Debug)]
pub struct Add;

impl Op for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        check(self.name(), inputs[0], inputs[1])?;
        Ok(vec![inputs[0].clone()])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        Ok(vec![call(
            caps,
            "add",
            "ADD",
            inputs[0].numel(),
            &[Arg::In(0), Arg::In(1), Arg::Out(0)],
        )])
    }
}

/// `a += b` (inputs: a, b); writes input 0 in place and has no outputs.
#[derive(Clone, Debug)]
pub struct AddInto;

impl Op for AddInto {
    fn name(&self) -> &'static str {
        "add_into"
    }
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        check(self.name(), inputs[0], inputs[1])?;
        Ok(vec![])
    }
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        Ok(vec![call(
            caps,
            "add_into",
            "ADD_INTO",
            inputs[0].numel(),
            &[Arg::In(1), Arg::InOut(0)],
        )])
    }
}

/// CPU reference.
pub fn cpu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}
