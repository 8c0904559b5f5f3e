//! Column concatenation: f32 `[.., n_0]`, `[.., n_1]`, … with equal leading dimensions give
//! `[.., Σ n_i]`, each row the inputs' rows side by side. The model uses it where stacked
//! projections (q|k|v, gate|up) come in different block formats and so run as separate matmuls.

#![warn(missing_docs)]

use super::{expect_dtype, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// Threads per workgroup.
pub const WORKGROUP: u32 = 256;
/// Output rows are at most this wide (the kernel packs width and offset in one u32).
pub const MAX_COLS: usize = 1 << 16;

/// `y = [x_0 | x_1 | …]` along the last dimension.
#[derive(Clone, Debug)]
pub struct ConcatCols;

impl Op for ConcatCols {
    fn name(&self) -> &'static str {
        "concat_cols"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let first = inputs
            .first()
            .ok_or_else(|| Error::op(self.name(), "no inputs: expected at least one tensor"))?;
        let mut cols = 0usize;
        for (i, x) in inputs.iter().enumerate() {
            expect_dtype(self.name(), &format!("input {i}"), x, &[DType::F32])?;
            if x.rank() == 0 || x.shape[..x.rank() - 1] != first.shape[..first.rank() - 1] {
                return Err(Error::op(
                    self.name(),
                    format!("input {i} is {x} and input 0 is {first}: expected equal leading dimensions"),
                ));
            }
            cols += x.cols();
        }
        if cols >= MAX_COLS {
            return Err(Error::op(
                self.name(),
                format!("{cols} columns in all: expected fewer than {MAX_COLS}"),
            ));
        }
        let mut shape = first.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = cols;
        }
        Ok(vec![TensorDesc::f32(shape)])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let out: usize = inputs.iter().map(|x| x.cols()).sum();
        let mut off = 0usize;
        let mut calls = Vec::with_capacity(inputs.len());
        for (i, x) in inputs.iter().enumerate() {
            let n = x.numel() as u32;
            let [gx, gy, _] = grid_2d(n.div_ceil(WORKGROUP).max(1), caps.max_workgroups_per_dim);
            calls.push(
                KernelCall::new("elementwise.wgsl", "copy_cols")
                    .define("COPY_COLS", 1)
                    .define("WG", WORKGROUP)
                    .params(&[n, gx, x.cols() as u32, ((out << 16) | off) as u32])
                    .args(&[Arg::In(i), Arg::Out(0)])
                    .workgroups(gx, gy, 1),
            );
            off += x.cols();
        }
        Ok(calls)
    }
}

/// CPU reference: rows of `parts` (each `(data, cols)`) side by side.
pub fn cpu(parts: &[(&[f32], usize)]) -> Vec<f32> {
    let rows = parts.first().map_or(0, |(d, c)| d.len() / c.max(&1));
    let mut y = Vec::new();
    for r in 0..rows {
        for (d, c) in parts {
            y.extend_from_slice(&d[r * c..(r + 1) * c]);
        }
    }
    y
}
