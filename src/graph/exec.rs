//! Compiling a graph (buffers, pipelines, bind groups — all created once) and running it
//! (one compute pass, one submission; only the [`Step`] uniform is written per run).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::plan::{assign, Lifetime};
use super::{Graph, Storage, TensorId};
use crate::error::{Error, Result};
use crate::gpu::{BindingKind, GpuContext, PipelineKey};
use crate::ops::{Arg, Step};
use crate::tensor::{Place, Tensor, TensorDesc};

struct Dispatch {
    pipeline: Arc<crate::gpu::CachedPipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    label: String,
    /// The kernel's entry point (profiles group by it).
    entry: &'static str,
}

/// Time per op label, from timestamp queries (`run_profiled`).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (node label, kernel entry, seconds), in execution order.
    pub entries: Vec<(String, String, f64)>,
}

impl Profile {
    /// Total seconds per op kind (the label's last component), largest first.
    pub fn by_kind(&self) -> Vec<(String, f64)> {
        let mut m: HashMap<String, f64> = HashMap::new();
        for (label, _, s) in &self.entries {
            let kind = label.rsplit('.').next().unwrap_or(label).to_string();
            *m.entry(kind).or_default() += s;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// A compiled graph.
pub struct Executable {
    ctx: Arc<GpuContext>,
    tensors: Vec<Tensor>,
    dispatches: Vec<Dispatch>,
    step: wgpu::Buffer,
    _params: wgpu::Buffer,
    staging: Mutex<HashMap<Vec<TensorId>, wgpu::Buffer>>,
    /// Queue submissions made so far (see [`Executable::submissions`]).
    submissions: AtomicU64,
    /// Bytes of the intermediate buffers the planner allocated.
    pub intermediate_bytes: u64,
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Graph {
    /// Plan memory, create pipelines and bind groups. `keep` lists intermediates the caller will
    /// read after a run (they live until the end of the graph).
    pub fn compile(self, ctx: &Arc<GpuContext>, keep: &[TensorId]) -> Result<Executable> {
        let n_nodes = self.nodes.len();
        // Lifetimes of intermediates (and of each node's scratch buffers).
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
            let descs: Vec<&TensorDesc> = node
                .inputs
                .iter()
                .map(|t| &self.tensors[t.0].desc)
                .collect();
            let s = node.op.scratch(&descs);
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
        let intermediate_bytes = plan.slots.iter().sum();

        // Resolve every tensor and scratch buffer to a place.
        let mut tensors: Vec<Tensor> = Vec::with_capacity(self.tensors.len());
        let placeholder = ctx.storage_buffer("unused", 4)?;
        for t in &self.tensors {
            tensors.push(match &t.storage {
                Storage::External(x) => x.clone(),
                Storage::Intermediate => Tensor::in_buffer(t.desc.clone(), placeholder.clone(), 0),
            });
        }
        let mut scratch: HashMap<(usize, usize), Tensor> = HashMap::new();
        for (k, o) in owner.iter().enumerate() {
            let buf = slot_bufs[plan.slot_of[k]].clone();
            match o {
                Ok(i) => {
                    tensors[*i].place = Place::Buffer {
                        buffer: buf,
                        offset: 0,
                    }
                }
                Err((n, j)) => {
                    scratch.insert(
                        (*n, *j),
                        Tensor::in_buffer(
                            TensorDesc::f32([(node_scratch[*n][*j] / 4) as usize]),
                            buf,
                            0,
                        ),
                    );
                }
            }
        }

        // Kernel calls of every node.
        let mut calls = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let descs: Vec<&TensorDesc> = node
                .inputs
                .iter()
                .map(|t| &self.tensors[t.0].desc)
                .collect();
            for c in node.op.kernels(&ctx.caps, &descs)? {
                calls.push((i, c));
            }
        }

        // One uniform buffer holds every call's params at aligned offsets.
        let ualign = ctx.device.limits().min_uniform_buffer_offset_alignment as u64;
        let mut offsets = Vec::with_capacity(calls.len());
        let mut total = 0u64;
        for (_, c) in &calls {
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
        let step = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: std::mem::size_of::<Step>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        // Texel images made here from buffer tensors that a kernel reads as texels (models
        // upload their weights as images already; tests and ad-hoc graphs pass buffers).
        let mut mirrors: HashMap<usize, Tensor> = HashMap::new();
        for (ni, c) in &calls {
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

        let mut dispatches = Vec::with_capacity(calls.len());
        for ((ni, c), off) in calls.into_iter().zip(offsets) {
            let node = &self.nodes[ni];
            let mut kinds = vec![BindingKind::Uniform, BindingKind::Uniform];
            let mut bound: Vec<(&Tensor, u64, u64)> = Vec::new();
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
                    Arg::Scratch(i) => (scratch.get(&(ni, i)), false),
                    Arg::ScratchIn(i) | Arg::ScratchUniformRange(i, ..) => {
                        (scratch.get(&(ni, i)), true)
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
                if t.buffer().is_none() {
                    return Err(Error::op(
                        node.op.name(),
                        format!(
                            "kernel `{}` binds {a:?} ({}) as a buffer, but it lives in a texel \
                             image; this op has no kernel that reads it there",
                            c.entry, t.desc
                        ),
                    ));
                }
                if size > ctx.caps.max_storage_binding {
                    return Err(Error::OutOfMemory {
                        what: format!("binding {} of `{}`", t.desc, node.label),
                        needed: size,
                        available: ctx.caps.max_storage_binding,
                        hint: " (the adapter's max_storage_buffer_binding_size); use a quantized model or a smaller --ctx".into(),
                    });
                }
                let (from, len) = match *a {
                    Arg::UniformRange(_, from, len) | Arg::ScratchUniformRange(_, from, len) => {
                        (from, len)
                    }
                    _ => (0, size),
                };
                // Uniform inputs are bound as one fixed window (`Caps::uniform_window`) from
                // the start of their bytes; the kernel reads only the first `len`.
                let (from, len) = if let Arg::Uniform(_)
                | Arg::UniformRange(..)
                | Arg::ScratchUniformRange(..) = a
                {
                    let ualign = ctx.device.limits().min_uniform_buffer_offset_alignment as u64;
                    let window = ctx.caps.uniform_window;
                    let (buffer, offset) = t.buffer().expect("checked above");
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
                                "kernel `{}` binds bytes {from}..{} of {} (at buffer offset {}) as \
                                 a uniform window of {window} bytes: it needs offsets aligned to \
                                 {ualign}, the bytes within the tensor's {size}, and {window} \
                                 bytes of buffer from the offset (buffer of {} bytes)",
                                c.entry,
                                from + len,
                                t.desc,
                                offset,
                                buffer.size()
                            ),
                        ));
                    }
                    kinds.push(BindingKind::Uniform);
                    (from, window)
                } else {
                    kinds.push(BindingKind::Storage { read_only });
                    (from, len)
                };
                bound.push((t, from, len));
            }
            let key = PipelineKey {
                shader: c.shader,
                entry: c.entry,
                defines: c.defines.clone(),
                bindings: kinds,
            };
            let pipeline = ctx.pipelines.get(&ctx.device, &key)?;
            let psize = (c.params.len() as u64 * 4).max(16);
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: off,
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
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&node.label),
                layout: &pipeline.layout,
                entries: &entries,
            });
            dispatches.push(Dispatch {
                pipeline,
                bind_group,
                workgroups: c.workgroups,
                label: node.label.clone(),
                entry: c.entry,
            });
        }
        Ok(Executable {
            ctx: ctx.clone(),
            tensors,
            dispatches,
            step,
            _params: params,
            staging: Mutex::new(HashMap::new()),
            submissions: AtomicU64::new(0),
            intermediate_bytes,
        })
    }
}

impl Executable {
    /// The GPU tensor behind a graph tensor (valid while the executable lives; an intermediate's
    /// contents are only meaningful if it was kept).
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.0]
    }

    /// Number of compute dispatches one run records.
    pub fn num_dispatches(&self) -> usize {
        self.dispatches.len()
    }

    /// Queue submissions this executable has made. Each `run*` call records the whole graph
    /// and submits once, so after `n` runs this is `n`; tests use it to check that a forward
    /// pass really is one submission.
    pub fn submissions(&self) -> u64 {
        self.submissions.load(Ordering::Relaxed)
    }

    fn submit(&self, enc: wgpu::CommandEncoder) {
        self.ctx.queue.submit(Some(enc.finish()));
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }

    fn encode(&self, enc: &mut wgpu::CommandEncoder) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("forward"),
            timestamp_writes: None,
        });
        for d in &self.dispatches {
            pass.set_pipeline(&d.pipeline.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Run once: write the step uniform, record every dispatch into one pass, submit.
    pub fn run(&self, step: Step) -> Result<()> {
        self.ctx
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc);
        self.submit(enc);
        Ok(())
    }

    /// Run once and read back the first `len` bytes of `id`, in the same submission.
    pub fn run_read(&self, step: Step, id: TensorId, len: u64) -> Result<Vec<u8>> {
        let mut out = self.run_read_many(step, &[(id, len)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Run once and read back the first `len` bytes of each listed tensor, in the same
    /// submission and through one staging buffer (one map, one wait).
    pub fn run_read_many(&self, step: Step, reads: &[(TensorId, u64)]) -> Result<Vec<Vec<u8>>> {
        self.ctx
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        // (tensor, bytes to read, bytes copied: a multiple of 4, offset in the staging buffer)
        let mut plan = Vec::with_capacity(reads.len());
        let mut total = 0u64;
        for &(id, len) in reads {
            let t = &self.tensors[id.0];
            let len = len.min(t.size_bytes());
            let len4 = len.div_ceil(4) * 4;
            plan.push((t, len, len4, total));
            total += len4;
        }
        let key: Vec<TensorId> = reads.iter().map(|r| r.0).collect();
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| Error::gpu("reading back", "lock poisoned"))?;
        // Sized for whole tensors so later reads of the same list fit.
        let full: u64 = reads
            .iter()
            .map(|r| self.tensors[r.0 .0].size_bytes().div_ceil(4) * 4)
            .sum();
        let buf = staging.entry(key).or_insert_with(|| {
            self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: full.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc);
        for &(t, _, len4, at) in &plan {
            let Some((src, offset)) = t.buffer() else {
                return Err(Error::op(
                    "read",
                    format!(
                        "{} lives in a texel image: read it with GpuContext::read_bytes",
                        t.desc
                    ),
                ));
            };
            if len4 > 0 {
                enc.copy_buffer_to_buffer(src, offset, buf, at, len4);
            }
        }
        self.submit(enc);
        let bytes = self.ctx.map_read(buf, total)?;
        Ok(plan
            .iter()
            .map(|&(_, len, _, at)| bytes[at as usize..(at + len) as usize].to_vec())
            .collect())
    }

    /// Read a tensor after a run (waits for the GPU).
    pub fn read_f32(&self, id: TensorId) -> Result<Vec<f32>> {
        self.ctx.read_f32(&self.tensors[id.0])
    }

    /// Run with a timestamp around every dispatch (one pass per dispatch). Slower; for `--profile`.
    pub fn run_profiled(&self, step: Step) -> Result<Profile> {
        if !self.ctx.caps.timestamps {
            return Err(Error::gpu(
                "profiling",
                "the adapter has no TIMESTAMP_QUERY feature",
            ));
        }
        self.ctx
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        let n = self.dispatches.len() as u32;
        let qs = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * n,
        });
        let bytes = 16 * n as u64;
        let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile-resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile-read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        for (i, d) in self.dispatches.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            pass.set_pipeline(&d.pipeline.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            let [x, y, z] = d.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        enc.resolve_query_set(&qs, 0..2 * n, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        self.submit(enc);
        let raw = self.ctx.map_read(&read, bytes)?;
        let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
        let mut p = Profile::default();
        for (i, d) in self.dispatches.iter().enumerate() {
            let dt = ts[2 * i + 1].saturating_sub(ts[2 * i]) as f64 * period;
            p.entries.push((d.label.clone(), d.entry.to_string(), dt));
        }
        Ok(p)
    }
}
