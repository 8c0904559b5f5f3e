//! Running a compiled graph (`compile.rs` creates its buffers, pipelines and bind groups once):
//! one compute pass, one submission; only the [`Step`] uniform is written per run.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::TensorId;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::ops::Step;
use crate::tensor::Tensor;

/// One recorded compute dispatch.
pub(super) struct Dispatch {
    pub(super) pipeline: Arc<crate::gpu::CachedPipeline>,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) workgroups: [u32; 3],
    pub(super) label: String,
    /// The kernel's entry point (profiles group by it).
    pub(super) entry: &'static str,
    /// The graph tensors its node reads.
    pub(super) inputs: Vec<TensorId>,
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

impl Executable {
    /// An executable of compiled dispatches over `tensors` (see `compile.rs`).
    pub(super) fn new(
        ctx: Arc<GpuContext>,
        tensors: Vec<Tensor>,
        dispatches: Vec<Dispatch>,
        step: wgpu::Buffer,
        params: wgpu::Buffer,
        intermediate_bytes: u64,
    ) -> Self {
        Executable {
            ctx,
            tensors,
            dispatches,
            step,
            _params: params,
            staging: Mutex::new(HashMap::new()),
            submissions: AtomicU64::new(0),
            intermediate_bytes,
        }
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

    fn encode(&self, enc: &mut wgpu::CommandEncoder, range: std::ops::Range<usize>) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("forward"),
            timestamp_writes: None,
        });
        for d in &self.dispatches[range] {
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
        self.encode(&mut enc, 0..self.dispatches.len());
        self.submit(enc);
        Ok(())
    }

    /// The index of the first dispatch that reads `t`: where a run can be cut in two when the
    /// host writes `t` late (see [`Executable::submit_part`]).
    pub fn first_dispatch_reading(&self, t: TensorId) -> Option<usize> {
        self.dispatches.iter().position(|d| d.inputs.contains(&t))
    }

    /// Run once and, in the same submission, copy a few bytes of external tensors into
    /// buffers the caller maps later (`copies`: source tensor, its byte offset, destination,
    /// its byte offset, length; offsets and lengths multiples of 4). Nothing waits: the
    /// returned index lets the caller wait for this submission alone, while later ones run.
    pub fn submit_with_copies(
        &self,
        step: Step,
        copies: &[(&Tensor, u64, &wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        self.submit_part(Some(step), 0..self.dispatches.len(), copies)
    }

    /// [`Executable::submit_with_copies`] of the dispatches in `range` only; `step` None keeps
    /// the step uniform as the previous part wrote it. Parts of one run must be submitted in
    /// order with no other part of this executable between them: the uniform is shared, and
    /// a write made with `write_buffer` lands before the next submission, so data the host
    /// writes between two parts (e.g. a mask the second part reads) is seen by the second.
    pub fn submit_part(
        &self,
        step: Option<Step>,
        range: std::ops::Range<usize>,
        copies: &[(&Tensor, u64, &wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        if range.end > self.dispatches.len() || range.start > range.end {
            return Err(Error::op(
                "submit",
                format!(
                    "dispatches {range:?} of a graph of {}",
                    self.dispatches.len()
                ),
            ));
        }
        if let Some(step) = step {
            self.ctx
                .queue
                .write_buffer(&self.step, 0, bytemuck::bytes_of(&step));
        }
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc, range);
        for &(t, at, dst, dst_at, len) in copies {
            let Some((src, offset)) = t.buffer() else {
                return Err(Error::op(
                    "read",
                    format!("{} lives in a texel image: it cannot be copied", t.desc),
                ));
            };
            if at + len > t.size_bytes() {
                return Err(Error::op(
                    "read",
                    format!(
                        "bytes {at}..{} of {}: past its {} bytes",
                        at + len,
                        t.desc,
                        t.size_bytes()
                    ),
                ));
            }
            enc.copy_buffer_to_buffer(src, offset + at, dst, dst_at, len);
        }
        let idx = self.ctx.queue.submit(Some(enc.finish()));
        self.submissions.fetch_add(1, Ordering::Relaxed);
        Ok(idx)
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
        self.encode(&mut enc, 0..self.dispatches.len());
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
