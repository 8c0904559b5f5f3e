//! RMSNorm with the weight multiply fused: `y = x / sqrt(mean(x²) + eps) · w`, row by row.
//!
//! Inputs: `x` f32 `[rows, n]`, `w` f32 `[n]`. Output: f32 `[rows, n]`.

#![warn(missing_docs)]

use super::{expect_dtype, expect_inputs, fbits, grid_2d, Arg, KernelCall, Op};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

/// RMSNorm over the last dimension, times a weight.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// Added to the mean square before the square root.
    pub eps: f32,
}

/// Threads per workgroup (one workgroup per row).
pub const WORKGROUP: u32 = 256;

impl Op for RmsNorm {
    fn name(&self) -> &'static str {
        "rmsnorm"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (x, w) = (inputs[0], inputs[1]);
        expect_dtype(self.name(), "x", x, &[DType::F32])?;
        expect_dtype(self.name(), "weight", w, &[DType::F32])?;
        if w.rank() != 1 || w.shape[0] != x.cols() || x.rank() == 0 {
            return Err(Error::op(
                self.name(),
                format!("x is {x} and weight is {w}: expected weight [{}]", x.cols()),
            ));
        }
        Ok(vec![x.clone()])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let x = inputs[0];
        let rows = x.rows() as u32;
        let [gx, gy, _] = grid_2d(rows, caps.max_workgroups_per_dim);
        // CPU devices: one subgroup per row, no barriers (see the shader).
        let sg = caps.subgroup_min;
        let one_subgroup = caps.cpu && caps.subgroups && sg > 0 && sg == caps.subgroup_max;
        Ok(vec![KernelCall::new("rmsnorm.wgsl", "rmsnorm")
            .define("WG", if one_subgroup { sg } else { WORKGROUP })
            .define("SG", one_subgroup as u32)
            .params(&[rows, x.cols() as u32, fbits(self.eps), gx])
            .args(&[Arg::In(0), Arg::In(1), Arg::Out(0)])
            .workgroups(gx, gy, 1)])
    }
}

/// CPU reference.
pub fn cpu(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(n).zip(y.chunks_mut(n)) {
        let ms = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / n as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..n {
            yr[i] = (xr[i] as f64 * inv) as f32 * w[i];
        }
    }
    y
}
