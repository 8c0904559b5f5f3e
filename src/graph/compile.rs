//! Compiling a graph into an [`Executable`]: every GPU object a run needs is created here, once.
//!
//! The steps, in order: plan memory (intermediates and per-node scratch share pooled buffers by
//! lifetime), ask each node's op for its kernel calls, pack every call's parameters into one
//! uniform buffer, make texel images for buffer tensors a kernel reads as texels, then bind each
//! call's arguments and create its pipeline (from the cache) and bind group.

use std::collections::HashMap;
use std::sync::Arc;

use super::exec::{Dispatch, Executable};
use super::plan::{assign, Lifetime};
use super::{Graph, Node, Storage, TensorId};
use crate::error::{Error, Result};
use crate::gpu::{BindingKind, GpuContext, PipelineKey};
use crate::ops::{Arg, KernelCall, Step};
use crate::tensor::{Place, Tensor, TensorDesc};

/// Where every tensor and scratch buffer of a compiled graph lives.
struct Memory {
    /// Every graph tensor, intermediates placed in their pooled buffers.
    tensors: Vec<Tensor>,
    /// Scratch buffers by (node, scratch index).
    scratch: HashMap<(usize, usize), Tensor>,
    /// Bytes of the pooled buffers.
    intermediate_bytes: u64,
}

/// One kernel call of one node (by index).
type Call = (usize, KernelCall);

/// A bound argument: the tensor, byte offset into it and bytes bound.
type Bound<'a> = (&'a Tensor, u64, u64);

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Graph {
    /// Plan memory, create pipelines and bind groups. `keep` lists intermediates the caller will
    /// read after a run (they live until the end of the graph).
    pub fn compile(self, ctx: &Arc<GpuContext>, keep: &[TensorId]) -> Result<Executable> {
        let mem = self.plan_memory(ctx, keep)?;
        let calls = self.kernel_calls(ctx)?;
        let (params, offsets) = upload_params(ctx, &calls);
        let step = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: std::mem::size_of::<Step>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mirrors = self.texel_mirrors(ctx, &calls, &mem.tensors)?;
        let mut dispatches = Vec::with_capacity(calls.len());
        for ((ni, c), off) in calls.into_iter().zip(offsets) {
            let node = &self.nodes[ni];
            let (kinds, bound) = bind_args(ctx, node, ni, &c, &mem, &mirrors)?;
            let key = PipelineKey {
                shader: c.shader,
                entry: c.entry,
                defines: c.defines.clone(),
                bindings: kinds,
            };
            let pipeline = ctx.pipelines.get(&ctx.device, &key)?;
            let psize = (c.params.len() as u64 * 4).max(16);
            let bind_group = bind_group(
                ctx,
                node,
                &pipeline.layout,
                &params,
                off,
                psize,
                &step,
                &bound,
            );
            dispatches.push(Dispatch {
                pipeline,
                bind_group,
                workgroups: c.workgroups,
                label: node.label.clone(),
                entry: c.entry,
                inputs: node.inputs.clone(),
            });
        }
        tracing::debug!(
            "compiled a graph: {} nodes, {} dispatches, {} intermediate bytes",
            self.nodes.len(),
            dispatches.len(),
            mem.intermediate_bytes
        );
        Ok(Executable::new(
            ctx.clone(),
            mem.tensors,
            dispatches,
            step,
            params,
            mem.intermediate_bytes,
        ))
    }

    /// The input descriptions of node `i`.
    fn input_descs(&self, i: usize) -> Vec<&TensorDesc> {
        self.nodes[i]
            .inputs
            .iter()
            .map(|t| &self.tensors[t.0].desc)
            .collect()
    }

    /// Lifetimes of intermediates (first and last node using them; `keep` ones to the end) and
    /// of each node's scratch buffers (that node only), packed into pooled buffers.
    fn plan_memory(&self, ctx: &Arc<GpuContext>, keep: &[TensorId]) -> Result<Memory> {
        let n_nodes = self.nodes.len();
        let mut first = vec![usize::MAX; self.tensors.len()];
        let mut last = vec![0usize; self.tensors.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for t in node.inputs.iter().chain(&node.outputs) {
                first[t.0] = first[t.0].min(i);
                last[t.0] = last[t.0].max(i);
            }
        }
        for k in keep {
            last[k.0] = n_nodes;
        }
        let mut lifetimes = Vec::new();
        let mut owner = Vec::new(); // Ok(tensor) or Err((node, scratch index))
        for (i, t) in self.tensors.iter().enumerate() {
            if matches!(t.storage, Storage::Intermediate) && first[i] != usize::MAX {
                lifetimes.push(Lifetime {
                    first: first[i],
                    last: last[i],
                    bytes: t.desc.size_bytes(),
                });
                owner.push(Ok(i));
            }
        }
        let mut node_scratch: Vec<Vec<u64>> = Vec::with_capacity(n_nodes);
        for (i, node) in self.nodes.iter().enumerate() {
            let s = node.op.scratch(&self.input_descs(i));
            for (j, bytes) in s.iter().enumerate() {
                lifetimes.push(Lifetime {
                    first: i,
                    last: i,
                    bytes: (*bytes).max(4),
                });
                owner.push(Err((i, j)));
            }
            node_scratch.push(s);
        }
        let plan = assign(&lifetimes);
        let mut slot_bufs = Vec::with_capacity(plan.slots.len());
        for (s, bytes) in plan.slots.iter().enumerate() {
            slot_bufs.push(ctx.storage_buffer(&format!("pool{s}"), *bytes)?);
        }

        // Resolve every tensor and scratch buffer to a place.
        let placeholder = ctx.storage_buffer("unused", 4)?;
        let mut tensors: Vec<Tensor> = self
            .tensors
            .iter()
            .map(|t| match &t.storage {
                Storage::External(x) => x.clone(),
                Storage::Intermediate => Tensor::in_buffer(t.desc.clone(), placeholder.clone(), 0),
            })
            .collect();
        let mut scratch = HashMap::new();
        for (k, o) in owner.iter().enumerate() {
            let buffer = slot_bufs[plan.slot_of[k]].clone();
            match *o {
                Ok(i) => tensors[i].place = Place::Buffer { buffer, offset: 0 },
                Err((n, j)) => {
                    let desc = TensorDesc::f32([(node_scratch[n][j] / 4) as usize]);
                    scratch.insert((n, j), Tensor::in_buffer(desc, buffer, 0));
                }
            }
        }
        Ok(Memory {
            tensors,
            scratch,
            intermediate_bytes: plan.slots.iter().sum(),
        })
    }

    /// Every node's kernel calls, in execution order.
    fn kernel_calls(&self, ctx: &GpuContext) -> Result<Vec<Call>> {
        let mut calls = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for c in node.op.kernels(&ctx.caps, &self.input_descs(i))? {
                calls.push((i, c));
            }
        }
        Ok(calls)
    }

    /// Texel images made from buffer tensors that a kernel reads as texels (models upload their
    /// weights as images already; tests and ad-hoc graphs pass buffers).
    fn texel_mirrors(
        &self,
        ctx: &GpuContext,
        calls: &[Call],
        tensors: &[Tensor],
    ) -> Result<HashMap<usize, Tensor>> {
        let mut mirrors = HashMap::new();
        for (ni, c) in calls {
            for a in &c.args {
                if let Arg::Texels(i) = *a {
                    if let Some(t) = self.nodes[*ni].inputs.get(i) {
                        if tensors[t.0].texels().is_none() && !mirrors.contains_key(&t.0) {
                            mirrors.insert(t.0, ctx.to_texels(&tensors[t.0])?);
                        }
                    }
                }
            }
        }
        Ok(mirrors)
    }
}

/// One uniform buffer holding every call's params at aligned offsets; returns it and the
/// offsets.
fn upload_params(ctx: &GpuContext, calls: &[Call]) -> (wgpu::Buffer, Vec<u64>) {
    let ualign = ctx.device.limits().min_uniform_buffer_offset_alignment as u64;
    let mut offsets = Vec::with_capacity(calls.len());
    let mut total = 0u64;
    for (_, c) in calls {
        offsets.push(total);
        total += align((c.params.len() as u64 * 4).max(16), ualign);
    }
    let params = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: total.max(16),
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut bytes = vec![0u8; total as usize];
    for ((_, c), off) in calls.iter().zip(&offsets) {
        let b: &[u8] = bytemuck::cast_slice(&c.params);
        bytes[*off as usize..*off as usize + b.len()].copy_from_slice(b);
    }
    ctx.queue.write_buffer(&params, 0, &bytes);
    (params, offsets)
}

/// The tensor each argument of call `c` (of node `ni`) binds, with its binding kind; the first
/// two bindings are always the params and step uniforms.
fn bind_args<'a>(
    ctx: &GpuContext,
    node: &Node,
    ni: usize,
    c: &KernelCall,
    mem: &'a Memory,
    mirrors: &'a HashMap<usize, Tensor>,
) -> Result<(Vec<BindingKind>, Vec<Bound<'a>>)> {
    let tensors = &mem.tensors;
    let mut kinds = vec![BindingKind::Uniform, BindingKind::Uniform];
    let mut bound = Vec::new();
    for a in &c.args {
        let (t, read_only) = match *a {
            Arg::In(i) | Arg::Uniform(i) | Arg::UniformRange(i, ..) => {
                (node.inputs.get(i).map(|t| &tensors[t.0]), true)
            }
            Arg::Texels(i) => (
                node.inputs
                    .get(i)
                    .map(|t| mirrors.get(&t.0).unwrap_or(&tensors[t.0])),
                true,
            ),
            Arg::InOut(i) => (node.inputs.get(i).map(|t| &tensors[t.0]), false),
            Arg::Out(i) => (node.outputs.get(i).map(|t| &tensors[t.0]), false),
            Arg::Scratch(i) => (mem.scratch.get(&(ni, i)), false),
            Arg::ScratchIn(i) | Arg::ScratchUniformRange(i, ..) => {
                (mem.scratch.get(&(ni, i)), true)
            }
        };
        let t = t.ok_or_else(|| {
            Error::op(
                node.op.name(),
                format!(
                    "kernel `{}` binds {a:?}, which the node does not have",
                    c.entry
                ),
            )
        })?;
        let size = t.size_bytes();
        if let Arg::Texels(_) = a {
            kinds.push(BindingKind::Texels);
            bound.push((t, 0, size));
            continue;
        }
        check_buffer_binding(ctx, node, c, a, t)?;
        let (from, len) = match *a {
            Arg::UniformRange(_, from, len) | Arg::ScratchUniformRange(_, from, len) => (from, len),
            _ => (0, size),
        };
        if let Arg::Uniform(_) | Arg::UniformRange(..) | Arg::ScratchUniformRange(..) = a {
            let window = uniform_window(ctx, node, c, t, from, len)?;
            kinds.push(BindingKind::Uniform);
            bound.push((t, from, window));
        } else {
            kinds.push(BindingKind::Storage { read_only });
            bound.push((t, from, len));
        }
    }
    Ok((kinds, bound))
}

/// A buffer argument must be in a buffer (not a texel image) and within the adapter's storage
/// binding limit.
fn check_buffer_binding(
    ctx: &GpuContext,
    node: &Node,
    c: &KernelCall,
    a: &Arg,
    t: &Tensor,
) -> Result<()> {
    if t.buffer().is_none() {
        return Err(Error::op(
            node.op.name(),
            format!(
                "kernel `{}` binds {a:?} ({}) as a buffer, but it lives in a texel image; this \
                 op has no kernel that reads it there",
                c.entry, t.desc
            ),
        ));
    }
    let size = t.size_bytes();
    if size > ctx.caps.max_storage_binding {
        return Err(Error::OutOfMemory {
            what: format!("binding {} of `{}`", t.desc, node.label),
            needed: size,
            available: ctx.caps.max_storage_binding,
            hint: " (the adapter's max_storage_buffer_binding_size); use a quantized model or a smaller --ctx".into(),
        });
    }
    Ok(())
}

/// Uniform inputs are bound as one fixed window (`Caps::uniform_window`) from the start of
/// their bytes `from..from + len`; the kernel reads only the first `len`. Returns the window.
fn uniform_window(
    ctx: &GpuContext,
    node: &Node,
    c: &KernelCall,
    t: &Tensor,
    from: u64,
    len: u64,
) -> Result<u64> {
    let ualign = ctx.device.limits().min_uniform_buffer_offset_alignment as u64;
    let window = ctx.caps.uniform_window;
    let size = t.size_bytes();
    let Some((buffer, offset)) = t.buffer() else {
        return Err(Error::op(
            node.op.name(),
            "a uniform binding must be a buffer",
        ));
    };
    let at = offset + from;
    if len == 0
        || from + len > size
        || len > window
        || !at.is_multiple_of(ualign)
        || at + window > buffer.size()
    {
        return Err(Error::op(
            node.op.name(),
            format!(
                "kernel `{}` binds bytes {from}..{} of {} (at buffer offset {}) as a uniform \
                 window of {window} bytes: it needs offsets aligned to {ualign}, the bytes within \
                 the tensor's {size}, and {window} bytes of buffer from the offset (buffer of {} \
                 bytes)",
                c.entry,
                from + len,
                t.desc,
                offset,
                buffer.size()
            ),
        ));
    }
    Ok(window)
}

/// The bind group of one call: params (its slice), step, then its bound arguments.
#[allow(clippy::too_many_arguments)]
fn bind_group(
    ctx: &GpuContext,
    node: &Node,
    layout: &wgpu::BindGroupLayout,
    params: &wgpu::Buffer,
    offset: u64,
    psize: u64,
    step: &wgpu::Buffer,
    bound: &[Bound<'_>],
) -> wgpu::BindGroup {
    let mut entries = vec![
        wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params,
                offset,
                size: wgpu::BufferSize::new(psize),
            }),
        },
        wgpu::BindGroupEntry {
            binding: 1,
            resource: step.as_entire_binding(),
        },
    ];
    for (k, (t, from, len)) in bound.iter().enumerate() {
        let resource = match &t.place {
            Place::Texels(img) => wgpu::BindingResource::TextureView(&img.view),
            Place::Buffer { buffer, offset } => {
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: offset + from,
                    size: wgpu::BufferSize::new(*len),
                })
            }
        };
        entries.push(wgpu::BindGroupEntry {
            binding: 2 + k as u32,
            resource,
        });
    }
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(&node.label),
        layout,
        entries: &entries,
    })
}
