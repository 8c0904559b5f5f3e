//! Ops: one module per op, each holding its shape rules, its kernel dispatch and its CPU
//! reference (the specification the GPU kernel is tested against).
//!
//! Every kernel is bound the same way:
//! - binding 0: `uniform` params of the dispatch (static, written once when the graph is built);
//! - binding 1: `uniform` [`Step`] (the few values that change between decode steps);
//! - binding 2…: storage buffers, in the order of the call's [`Arg`]s.

use std::collections::BTreeMap;
use std::fmt::Debug;

use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::tensor::{DType, TensorDesc};

pub mod add;
pub mod attention;
pub mod attention_decode;
pub mod concat;
pub mod embedding;
pub mod fill;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod swiglu;
pub mod take_last_row;
pub mod topk;

/// Values that change between executions of the same graph. Mirrors `struct Step` in
/// `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    /// Position (in the sequence) of the first token of this execution.
    pub pos: u32,
    /// Keys/values valid in the cache after this execution (`pos + tokens`).
    pub kv_len: u32,
    /// Padding to 16 bytes (uniform layout).
    pub _pad: [u32; 2],
    /// A batched step's rows ([`RowStep`]): row `t` is one token of its own sequence. Unused
    /// (zero) in single-sequence steps.
    pub rows: [[u32; 4]; MAX_ROWS],
}

/// Most rows (sequences) a batched step advances at once.
pub const MAX_ROWS: usize = 16;

/// Where one row of a batched step lives: each row is the next token of its own sequence, whose
/// buffers are slices of pooled ones (the KV cache, the token history, the sampler's
/// parameters). Mirrors `step.rows[t]` in `shaders/common.wgsl` (x, y, z, w).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowStep {
    /// The row's position in its sequence (it attends to cache rows `0 ..= pos`).
    pub pos: u32,
    /// The sequence's first row in the pooled KV cache.
    pub cache_base: u32,
    /// The sequence's first word in the pooled token history.
    pub history_base: u32,
    /// The sequence's index in the pooled sampler parameters.
    pub slot: u32,
}

impl Step {
    /// The step for `tokens` tokens starting at position `pos`.
    pub fn new(pos: u32, tokens: u32) -> Self {
        Step {
            pos,
            kv_len: pos + tokens,
            ..Step::default()
        }
    }

    /// A batched step of `rows.len()` (≤ [`MAX_ROWS`]) rows; `pos`/`kv_len` are unused.
    pub fn batch(rows: &[RowStep]) -> Result<Self> {
        if rows.len() > MAX_ROWS {
            return Err(Error::op(
                "step",
                format!("{} rows in one step: at most {MAX_ROWS}", rows.len()),
            ));
        }
        let mut s = Step::default();
        for (dst, r) in s.rows.iter_mut().zip(rows) {
            *dst = [r.pos, r.cache_base, r.history_base, r.slot];
        }
        Ok(s)
    }
}

/// A storage binding of a kernel call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Input `i`, read only.
    In(usize),
    /// Input `i`, written in place (KV cache, residual stream).
    InOut(usize),
    /// Output `i`.
    Out(usize),
    /// Scratch buffer `i` of [`Op::scratch`].
    Scratch(usize),
    /// Input `i`, read only, bound as a uniform buffer (CPU devices: uniform loads are
    /// vector gathers there, storage loads a per-lane loop). Only for inputs the op knows fit
    /// [`crate::gpu::Caps::uniform_window`] (the executor binds that window).
    Uniform(usize),
    /// Bytes `offset .. offset + size` of input `i` as a uniform buffer: a window of rows of
    /// an input too large for one uniform binding. `offset` must be a multiple of the
    /// device's uniform offset alignment.
    UniformRange(usize, u64, u64),
    /// Scratch buffer `i`, read only (a fused op's intermediate, written by an earlier
    /// kernel of the same op).
    ScratchIn(usize),
    /// Bytes `offset .. offset + size` of scratch buffer `i` as a uniform buffer (as
    /// [`Arg::UniformRange`]; a fused op's intermediate read by a CPU-style kernel).
    ScratchUniformRange(usize, u64, u64),
    /// Input `i`, read only, bound as its texel image (`texture_2d<u32>`, see
    /// [`crate::gpu::Texels`]); the executor makes one from a buffer tensor when needed.
    Texels(usize),
}

/// One dispatch of one pipeline.
#[derive(Clone, Debug)]
pub struct KernelCall {
    /// Shader file under `shaders/`.
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Preprocessor defines that select the variant.
    pub defines: BTreeMap<String, String>,
    /// Static uniform parameters (u32 words; floats as bits).
    pub params: Vec<u32>,
    /// Storage bindings 2…, in order.
    pub args: Vec<Arg>,
    /// Workgroup grid.
    pub workgroups: [u32; 3],
}

impl KernelCall {
    /// A call of `entry` in `shader`, no defines, params or bindings yet, one workgroup.
    pub fn new(shader: &'static str, entry: &'static str) -> Self {
        KernelCall {
            shader,
            entry,
            defines: BTreeMap::new(),
            params: Vec::new(),
            args: Vec::new(),
            workgroups: [1, 1, 1],
        }
    }
    /// Set a preprocessor define.
    pub fn define(mut self, k: &str, v: impl ToString) -> Self {
        self.defines.insert(k.to_string(), v.to_string());
        self
    }
    /// Set the static params.
    pub fn params(mut self, p: &[u32]) -> Self {
        self.params = p.to_vec();
        self
    }
    /// Set the storage bindings.
    pub fn args(mut self, a: &[Arg]) -> Self {
        self.args = a.to_vec();
        self
    }
    /// Set the workgroup grid.
    pub fn workgroups(mut self, x: u32, y: u32, z: u32) -> Self {
        self.workgroups = [x, y, z];
        self
    }
}

/// An operation over tensors. Ops validate shapes and dtypes when added to a graph, so a
/// built graph cannot fail for shape reasons at run time.
pub trait Op: Debug + Send + Sync {
    /// Short name used in errors and profiles (e.g. `rmsnorm`).
    fn name(&self) -> &'static str;
    /// Check the inputs and return the descriptions of the outputs.
    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>>;
    /// Bytes of each scratch buffer the kernels need.
    fn scratch(&self, _inputs: &[&TensorDesc]) -> Vec<u64> {
        Vec::new()
    }
    /// The dispatches that compute the op.
    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>>;
}

/// Shared shape checks with messages that name the op, the shapes and what was expected.
pub(crate) fn expect_inputs(op: &'static str, inputs: &[&TensorDesc], n: usize) -> Result<()> {
    if inputs.len() != n {
        let given: Vec<String> = inputs.iter().map(|t| t.to_string()).collect();
        return Err(Error::op(
            op,
            format!(
                "expected {n} inputs, got {} [{}]",
                inputs.len(),
                given.join(", ")
            ),
        ));
    }
    Ok(())
}

pub(crate) fn expect_dtype(
    op: &'static str,
    what: &str,
    t: &TensorDesc,
    allowed: &[DType],
) -> Result<()> {
    if !allowed.contains(&t.dtype) {
        let names: Vec<&str> = allowed.iter().map(|d| d.name()).collect();
        return Err(Error::op(
            op,
            format!(
                "{what} is {t}: dtype {} is not supported here (expected one of {})",
                t.dtype,
                names.join(", ")
            ),
        ));
    }
    expect_addressable(op, what, t)
}

/// Kernels index elements with 32-bit integers (WGSL has no 64-bit ones), so no tensor may
/// hold more than `u32::MAX` elements. Checked without overflow, so absurd shapes are errors
/// rather than panics.
pub(crate) fn expect_addressable(op: &'static str, what: &str, t: &TensorDesc) -> Result<()> {
    let n = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    match n {
        Some(n) if n <= u32::MAX as u64 => Ok(()),
        _ => Err(Error::op(
            op,
            format!(
                "{what} is {t}: more than 2^32 − 1 elements; kernels index tensors with 32-bit \
                 integers, so split the work into smaller tensors"
            ),
        )),
    }
}

pub(crate) fn expect_rank(op: &'static str, what: &str, t: &TensorDesc, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::op(
            op,
            format!(
                "{what} is {t}: expected {rank} dimension{}",
                if rank == 1 { "" } else { "s" }
            ),
        ));
    }
    Ok(())
}

/// Split a workgroup count that may exceed the per-dimension limit over x and y.
pub fn grid_2d(groups: u32, max_per_dim: u32) -> [u32; 3] {
    if groups <= max_per_dim {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(max_per_dim);
        [groups.div_ceil(y), y, 1]
    }
}

/// The preprocessor define that selects a weight format in the kernels that read weights
/// (`W_F32`, `W_F16`, `W_BF16`, or the block format's name as `shaders/quant_blocks.wgsl`
/// spells it).
pub(crate) fn format_define(d: DType) -> &'static str {
    match d {
        DType::F16 => "W_F16",
        DType::BF16 => "W_BF16",
        DType::Q8_0 => "Q8_0",
        DType::Q4_0 => "Q4_0",
        DType::Q4_1 => "Q4_1",
        DType::Q4K => "Q4K",
        DType::Q5K => "Q5K",
        DType::Q6K => "Q6K",
        DType::F32 | DType::U32 => "W_F32",
    }
}

/// f32 bits for the params uniform.
pub(crate) fn fbits(x: f32) -> u32 {
    x.to_bits()
}
