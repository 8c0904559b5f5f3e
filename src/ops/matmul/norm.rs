//! RMSNorm fused into the product that follows it: `y = rmsnorm(x, g) · Wᵀ`, the attention's
//! `norm → qkv`, the MLP's `norm → gate|up` and the final `norm → lm_head` of a Llama block.
//!
//! Inputs: `x` f32 `[m, k]`, `g` f32 `[k]` (the norm weight), `w` `[n, k]` (any weight dtype of
//! [`super::Matmul`]). Output: f32 `[m, n]`.
//!
//! Decode on GPUs (m = 1, GPU-style kernels) is one dispatch: the GEMV's workgroups sum x²
//! themselves (x is a few KiB, read from cache), read x·g in their dot products and scale the
//! row sums by 1/rms — on an H200 every dispatch costs ~6.7 µs of gap, so this saves two per
//! layer. Elsewhere (prefill, CPU-style kernels) it is the two ops' own kernels through a
//! scratch buffer, exactly as if they were separate nodes.

#![warn(missing_docs)]

use super::{quant as matmul_quant, Plan};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::ops::matmul;
use crate::ops::rmsnorm::{self, RmsNorm};
use crate::ops::{expect_inputs, fbits, Arg, KernelCall, Op};
use crate::tensor::TensorDesc;

/// `rmsnorm(x, g) · Wᵀ` (inputs `[x, g, w]`, one output).
#[derive(Clone, Debug)]
pub struct NormMatmul {
    /// Added to the mean square before the square root.
    pub eps: f32,
}

impl NormMatmul {
    /// Whether this device and shape get the single fused dispatch.
    pub fn fuses(caps: &Caps, x: &TensorDesc) -> bool {
        x.rows() == 1 && !caps.cpu
    }
}

/// Input `i` of the product (`[x, w]`) as an input or scratch of this op (`[x, g, w]`): x is
/// the normalized scratch buffer, w input 2.
fn unfused(a: Arg) -> Arg {
    match a {
        Arg::In(0) => Arg::ScratchIn(0),
        Arg::UniformRange(0, from, len) => Arg::ScratchUniformRange(0, from, len),
        Arg::In(1) => Arg::In(2),
        Arg::Texels(1) => Arg::Texels(2),
        other => other,
    }
}

impl Op for NormMatmul {
    fn name(&self) -> &'static str {
        "norm_matmul"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 3)?;
        let (x, g, w) = (inputs[0], inputs[1], inputs[2]);
        RmsNorm { eps: self.eps }
            .infer(&[x, g])
            .map_err(|e| rename(e, self.name()))?;
        let (_, _, _, y) = matmul::check(self.name(), x, w, None)?;
        Ok(vec![y])
    }

    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        // The normalized x of the unfused path (unused when fused; a decode row is a few KiB).
        vec![inputs[0].size_bytes()]
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (x, g, w) = (inputs[0], inputs[1], inputs[2]);
        let (m, n, _, _) = matmul::check(self.name(), x, w, None)?;
        if Self::fuses(caps, x) {
            let call = if w.dtype.is_quantized() {
                // With the integer path the kernel quantizes g∘x per 32 and scales the sums
                // by 1/rms when it stores them: per-group quantization is scale-invariant.
                let mut calls = matmul_quant::kernels(caps, x, w, false)?;
                let mut c = calls.remove(0);
                c.params.extend([fbits(self.eps), 0, 0, 0]);
                c
            } else {
                let plan = matmul::plan(caps, m, n);
                if !matches!(plan, Plan::Gemv { .. }) {
                    return Err(Error::op(self.name(), format!("x is {x}: no GEMV plan")));
                }
                let mut c = matmul::kernels_with(self.name(), caps, x, w, None, plan)?.remove(0);
                c.params[4] = fbits(self.eps);
                c
            };
            debug_assert_eq!(call.entry, "gemv");
            let mut call = call.define("NORM", 1);
            call.args = vec![Arg::In(0), Arg::In(2), Arg::Out(0), Arg::In(1)];
            return Ok(vec![call]);
        }
        let mut calls = RmsNorm { eps: self.eps }.kernels(caps, &[x, g])?;
        for c in &mut calls {
            for a in &mut c.args {
                if *a == Arg::Out(0) {
                    *a = Arg::Scratch(0);
                }
            }
        }
        for mut c in matmul::kernels_for(self.name(), caps, x, w, None)? {
            c.args = c.args.into_iter().map(unfused).collect();
            calls.push(c);
        }
        Ok(calls)
    }
}

/// An error of a constituent op, named as this op's.
fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Op { msg, .. } => Error::op(op, msg),
        other => other,
    }
}

/// CPU reference: RMSNorm then the product (f32 weights, `w` `[n, k]`).
pub fn cpu(x: &[f32], g: &[f32], w: &[f32], eps: f32, n: usize) -> Vec<f32> {
    let k = g.len();
    let h = rmsnorm::cpu(x, g, eps);
    matmul::cpu(&h, w, x.len() / k, n, k)
}
