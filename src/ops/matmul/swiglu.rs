//! The MLP's SwiGLU fused into the down projection: `y += (silu(gate) ∘ up) · Wᵀ`, where `gu`
//! holds gate and up side by side (the fused gate|up projection's output).
//!
//! Inputs: `gu` f32 `[m, 2k]`, `w` `[n, k]` (any weight dtype of [`super::Matmul`]), `y` f32
//! `[m, n]`, added into in place. No outputs.
//!
//! Decode on GPUs (m = 1, GPU-style kernels) is one dispatch: the GEMV reads silu(gate)·up
//! where it would read x (`X_SWIGLU`), so the activation never goes through memory and a
//! decode layer saves a dispatch (~6.7 µs each on an H200). Elsewhere (prefill, CPU-style
//! kernels) it is SwiGLU's own kernel into a scratch buffer, then the product.

#![warn(missing_docs)]

use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::ops::matmul;
use crate::ops::swiglu::SwiGluCat;
use crate::ops::{expect_inputs, Arg, KernelCall, Op};
use crate::tensor::TensorDesc;

/// `y += swiglu(gu) · Wᵀ` (inputs `[gu, w, y]`, in place).
#[derive(Clone, Debug)]
pub struct SwiGluMatmulAddInto;

impl SwiGluMatmulAddInto {
    /// Whether this device and shape get the single fused dispatch.
    pub fn fuses(caps: &Caps, gu: &TensorDesc) -> bool {
        gu.rows() == 1 && !caps.cpu
    }
}

/// The activation's description: `[m, k]` for `gu` `[m, 2k]`.
fn half(gu: &TensorDesc) -> TensorDesc {
    let mut h = gu.clone();
    if let Some(last) = h.shape.last_mut() {
        *last /= 2;
    }
    h
}

impl Op for SwiGluMatmulAddInto {
    fn name(&self) -> &'static str {
        "swiglu_matmul_add_into"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        expect_inputs(self.name(), inputs, 3)?;
        let gu = inputs[0];
        SwiGluCat.infer(&[gu]).map_err(|e| match e {
            Error::Op { msg, .. } => Error::op(self.name(), msg),
            other => other,
        })?;
        matmul::check(self.name(), &half(gu), inputs[1], Some(inputs[2]))?;
        Ok(Vec::new())
    }

    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        // The activation of the unfused path (unused when fused).
        vec![half(inputs[0]).size_bytes()]
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (gu, w, y) = (inputs[0], inputs[1], inputs[2]);
        let act = half(gu);
        let product = matmul::kernels_for(self.name(), caps, &act, w, Some(y))?;
        if Self::fuses(caps, gu) {
            if let [call] = product.as_slice() {
                // With the integer path the kernel quantizes silu(gate)·up as it reads it.
                if call.entry == "gemv" && call.args.first() == Some(&Arg::In(0)) {
                    return Ok(vec![call.clone().define("X_SWIGLU", 1)]);
                }
            }
        }
        let mut calls = SwiGluCat.kernels(caps, &[gu])?;
        for c in &mut calls {
            for a in &mut c.args {
                if *a == Arg::Out(0) {
                    *a = Arg::Scratch(0);
                }
            }
        }
        for mut c in product {
            for a in &mut c.args {
                *a = match *a {
                    Arg::In(0) => Arg::ScratchIn(0),
                    Arg::UniformRange(0, from, len) => Arg::ScratchUniformRange(0, from, len),
                    Arg::Uniform(0) => Arg::ScratchUniformRange(0, 0, act.size_bytes()),
                    other => other,
                };
            }
            calls.push(c);
        }
        Ok(calls)
    }
}

/// CPU reference: `y + (silu(gate) ∘ up) · Wᵀ` (f32 weights, `w` `[n, k]`).
pub fn cpu(gu: &[f32], w: &[f32], y: &[f32], n: usize) -> Vec<f32> {
    let m = y.len() / n.max(1);
    let k = gu.len() / m.max(1) / 2;
    let act: Vec<f32> = gu
        .chunks(2 * k)
        .flat_map(|row| crate::ops::swiglu::cpu(&row[..k], &row[k..]))
        .collect();
    let p = matmul::cpu(&act, w, m, n, k);
    y.iter().zip(p).map(|(a, b)| a + b).collect()
}
