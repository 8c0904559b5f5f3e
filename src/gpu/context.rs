#![warn(missing_docs)]
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::coopmat::{coopmat_config, CoopMat};
use crate::gpu::pipelines::PipelineCache;
use crate::tensor::{Place, Tensor, TensorDesc};

/// How to pick and configure the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter index (as listed by `fado devices`) or a case-insensitive substring of its name.
    /// Falls back to the `FADO_ADAPTER` environment variable.
    pub adapter: Option<String>,
    /// Pretend the adapter lacks f16 arithmetic (tests the f32 fallbacks).
    pub disable_f16: bool,
    /// Pretend the adapter lacks subgroups (tests the workgroup-reduction fallbacks).
    pub disable_subgroups: bool,
    /// Kernel style: `Some(true)` forces the CPU-device variants (one thread per output row,
    /// no barriers), `Some(false)` the GPU ones; `None` picks by the adapter's device type.
    /// Also `FADO_KERNELS=cpu|gpu`.
    pub cpu_kernels: Option<bool>,
    /// The integer path of the quantized GEMVs (x quantized to int8 per 32 values,
    /// `dot4I8Packed` products; `ops::matmul::int_dot`): `Some(true|false)` forces it,
    /// `None` takes it where the adapter has packed integer dot products
    /// ([`adapter_has_int_dot`]). GPU-style kernels only. Also `FADO_INT_DOT=1|0`.
    pub int_dot: Option<bool>,
    /// Cooperative-matrix prefill matmuls ([`CoopMat`]): `Some(false)` forces the SIMT tiled
    /// kernels, `None` takes them where the adapter has a configuration Fado supports
    /// ([`coopmat_config`]). GPU-style kernels only. Also `FADO_COOPMAT=0|1`.
    pub coopmat: Option<bool>,
}

impl GpuOptions {
    /// Options from the environment: `FADO_ADAPTER`, and `FADO_DISABLE=f16,subgroups`.
    pub fn from_env() -> Self {
        let disable = std::env::var("FADO_DISABLE").unwrap_or_default();
        GpuOptions {
            adapter: std::env::var("FADO_ADAPTER").ok().filter(|s| !s.is_empty()),
            disable_f16: disable.contains("f16"),
            disable_subgroups: disable.contains("subgroup"),
            cpu_kernels: match std::env::var("FADO_KERNELS").as_deref() {
                Ok("cpu") => Some(true),
                Ok("gpu") => Some(false),
                _ => None,
            },
            int_dot: match std::env::var("FADO_INT_DOT").as_deref() {
                Ok("1") => Some(true),
                Ok("0") => Some(false),
                _ => None,
            },
            coopmat: match std::env::var("FADO_COOPMAT").as_deref() {
                Ok("1") => Some(true),
                Ok("0") => Some(false),
                _ => None,
            },
        }
    }
}

/// What the device can do; kernels choose variants from this.
#[derive(Clone, Debug)]
pub struct Caps {
    /// The device has `SHADER_F16` (f16 arithmetic in kernels).
    pub f16: bool,
    /// The device has subgroup operations.
    pub subgroups: bool,
    /// Smallest subgroup size the device may use.
    pub subgroup_min: u32,
    /// Largest subgroup size the device may use.
    pub subgroup_max: u32,
    /// The device has `TIMESTAMP_QUERY` (for `run_profiled`).
    pub timestamps: bool,
    /// Timestamps can be written inside compute passes.
    pub timestamps_in_passes: bool,
    /// The cooperative-matrix configuration prefill matmuls use (`shaders/matmul_coop.wgsl`),
    /// or `None` for the SIMT tiled kernels: GPU-style kernels on an adapter with
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX`, f16 and a fixed subgroup size, unless
    /// [`GpuOptions::coopmat`] says otherwise.
    pub coopmat: Option<CoopMat>,
    /// The quantized GEMVs take their integer path (int8 x, `dot4I8Packed`): GPU-style kernels
    /// on an adapter with packed integer dot products, unless [`GpuOptions::int_dot`] says
    /// otherwise. Never with CPU-style kernels.
    pub int_dot: bool,
    /// The device is a CPU rasterizer (lavapipe, SwiftShader, WARP): each workgroup runs on
    /// one core as SIMD lanes, barriers are context switches and memory is CPU cache, so
    /// kernels take variants with one thread per output row and no workgroup reductions.
    pub cpu: bool,
    /// `min_uniform_buffer_offset_alignment` in bytes.
    pub uniform_offset_align: u32,
    /// Bytes every CPU-style kernel's uniform input is declared and bound with (the same
    /// for all, ≤ 64 KiB): lavapipe 22.3 leaks memory on every dispatch that follows one whose
    /// uniform block at the same binding had a different declared size, so the kernels
    /// declare one size and bind that many bytes; on CPU devices every storage buffer is
    /// allocated this much larger (and usable as a uniform) so that any tensor's window fits.
    pub uniform_window: u64,
    /// `max_storage_buffer_binding_size`: the largest tensor one binding can hold.
    pub max_storage_binding: u64,
    /// `max_buffer_size`: the largest buffer.
    pub max_buffer: u64,
    /// `max_compute_workgroup_storage_size` in bytes.
    pub max_workgroup_storage: u32,
    /// `max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dim: u32,
    /// `min_storage_buffer_offset_alignment` in bytes.
    pub storage_offset_align: u32,
    /// `max_texture_dimension_2d`: bounds a texel image ([`crate::gpu::Texels`]).
    pub max_texture_2d: u32,
}

/// One line per adapter for `fado devices` and error messages.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Index for `--adapter`.
    pub index: usize,
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Vulkan, Metal, Dx12, …
    pub backend: String,
    /// Discrete, integrated, CPU, …
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// The optional features Fado uses that the adapter has.
    pub features: Vec<String>,
    /// Key limits, by wgpu name.
    pub limits: Vec<(String, u64)>,
    /// Smallest and largest subgroup size.
    pub subgroup_sizes: (u32, u32),
    /// The cooperative-matrix configurations the adapter reports, as `"8×8×8 F16→F32"`.
    pub cooperative_matrix: Vec<String>,
    /// The matmul kernel prefill takes on it with the kernel style and options of the
    /// environment (`FADO_KERNELS`, `FADO_COOPMAT`): `"coopmat"`, `"tiled"` or `"rows"`
    /// (`ops::matmul::coop::prefill_path`).
    pub prefill_matmul: &'static str,
}

/// A device and queue plus everything derived from them once.
pub struct GpuContext {
    /// The chosen adapter.
    pub adapter: wgpu::Adapter,
    /// The device opened on it.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// Name, backend and driver of the adapter.
    pub info: wgpu::AdapterInfo,
    /// What kernels may use on this device.
    pub caps: Caps,
    /// Every pipeline built so far, by variant.
    pub pipelines: PipelineCache,
    /// Why the device was lost, once it is (set by wgpu's device-lost callback or
    /// [`GpuContext::mark_lost`]). Work after that fails fast instead of waiting on a dead queue.
    lost: Arc<std::sync::Mutex<Option<String>>>,
}

/// Fado is headless: it needs no display, so it switches off Mesa's `VK_LAYER_MESA_device_select`
/// implicit layer, which connects to the Wayland display in `vkEnumeratePhysicalDevices` to
/// rank devices by the screen — and, where `XDG_RUNTIME_DIR` is unset (root shells, containers,
/// sudo, CI), makes libwayland print "error: XDG_RUNTIME_DIR is invalid or not set" twice.
/// Fado picks its adapter itself (`--adapter`). A user who sets `NODEVICE_SELECT` or Mesa's own
/// `MESA_VK_DEVICE_SELECT` keeps the layer as they configured it.
fn headless_vulkan_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let user_set = |k: &str| std::env::var_os(k).is_some();
        if !user_set("NODEVICE_SELECT") && !user_set("MESA_VK_DEVICE_SELECT") {
            // The layer's own off switch (its manifest's `disable_environment`), read by the
            // Vulkan loader when the instance is created.
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    });
}

fn instance() -> wgpu::Instance {
    headless_vulkan_env();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // Vulkan, Metal and DX12 only: the GL backend lacks the storage limits and features a model needs.
    desc.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(desc)
}

fn all_adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY))
}

const INSTALL_HINT: &str = "install a Vulkan driver (on Debian/Ubuntu without a GPU: \
`apt-get install -y mesa-vulkan-drivers libvulkan1` gives the lavapipe CPU device)";

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
}

fn summarize(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let l = a.limits();
    let f = a.features();
    let interesting = wanted_features() | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let mut features: Vec<String> = (f & interesting)
        .iter_names()
        .map(|(n, _)| n.to_string())
        .collect();
    if adapter_has_int_dot(a) {
        // Not a wgpu feature: the Vulkan fact the integer GEMV path is chosen by.
        features.push("INTEGER_DOT_PRODUCT".into());
    }
    AdapterSummary {
        index,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        features,
        limits: vec![
            ("max_buffer_size".into(), l.max_buffer_size),
            (
                "max_storage_buffer_binding_size".into(),
                l.max_storage_buffer_binding_size,
            ),
            (
                "max_uniform_buffer_binding_size".into(),
                l.max_uniform_buffer_binding_size,
            ),
            (
                "max_storage_buffers_per_shader_stage".into(),
                l.max_storage_buffers_per_shader_stage as u64,
            ),
            (
                "max_uniform_buffers_per_shader_stage".into(),
                l.max_uniform_buffers_per_shader_stage as u64,
            ),
            (
                "min_uniform_buffer_offset_alignment".into(),
                l.min_uniform_buffer_offset_alignment as u64,
            ),
            (
                "max_compute_workgroup_storage_size".into(),
                l.max_compute_workgroup_storage_size as u64,
            ),
            (
                "max_compute_invocations_per_workgroup".into(),
                l.max_compute_invocations_per_workgroup as u64,
            ),
            (
                "max_compute_workgroups_per_dimension".into(),
                l.max_compute_workgroups_per_dimension as u64,
            ),
        ],
        subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
        cooperative_matrix: a
            .cooperative_matrix_properties()
            .iter()
            .map(|p| {
                format!(
                    "{}×{}×{} {:?}→{:?}",
                    p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                )
            })
            .collect(),
        prefill_matmul: {
            let opts = GpuOptions::from_env();
            let cpu = opts
                .cpu_kernels
                .unwrap_or(info.device_type == wgpu::DeviceType::Cpu);
            if cpu {
                "rows"
            } else if opts.coopmat != Some(false) && coopmat_config(a).is_some() {
                "coopmat"
            } else {
                "tiled"
            }
        },
    }
}

impl GpuContext {
    /// Every adapter wgpu can see, in `fado devices` order.
    pub fn list_adapters() -> Vec<AdapterSummary> {
        all_adapters()
            .iter()
            .enumerate()
            .map(|(i, a)| summarize(i, a))
            .collect()
    }

    /// Open the chosen (or best) adapter with everything it offers that Fado uses.
    pub fn new(opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let adapters = all_adapters();
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!(
                "wgpu found no Vulkan/Metal/DX12 adapter; {INSTALL_HINT}"
            )));
        }
        let sel = opts
            .adapter
            .clone()
            .or_else(|| std::env::var("FADO_ADAPTER").ok().filter(|s| !s.is_empty()));
        let adapter = match sel {
            Some(s) => {
                let found = if let Ok(i) = s.parse::<usize>() {
                    adapters.get(i).cloned()
                } else {
                    let needle = s.to_lowercase();
                    adapters
                        .iter()
                        .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                        .cloned()
                };
                found.ok_or_else(|| {
                    let names: Vec<String> = adapters
                        .iter()
                        .enumerate()
                        .map(|(i, a)| format!("{i}: {}", a.get_info().name))
                        .collect();
                    Error::NoAdapter(format!(
                        "no adapter matches `{s}`; available: {}",
                        names.join(", ")
                    ))
                })?
            }
            None => adapters
                .iter()
                .min_by_key(|a| rank(a.get_info().device_type))
                .cloned()
                .expect("non-empty"),
        };
        Self::from_adapter(adapter, opts)
    }

    fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let info = adapter.get_info();
        tracing::debug!(
            "adapter: {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        let mut features = adapter.features() & wanted_features();
        if opts.disable_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        if opts.disable_subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let cpu = opts
            .cpu_kernels
            .unwrap_or(info.device_type == wgpu::DeviceType::Cpu);
        // Cooperative matrices: GPU-style kernels only (CPU-style prefill has its own row
        // kernel), with f16 and subgroups not switched off, unless the option says no.
        let coopmat = coopmat_config(&adapter).filter(|_| {
            !cpu && !opts.disable_f16 && !opts.disable_subgroups && opts.coopmat != Some(false)
        });
        if coopmat.is_some() {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // A 9B model needs storage bindings far above the WebGPU defaults: ask for all the adapter has.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fado"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: the experimental feature is cooperative matrices, requested only where
            // `coopmat_config` found a configuration the kernel is written for; its kernels are
            // tested against the CPU reference on Mesa 26's lavapipe (tests/kernels_matmul_coopmat.rs).
            experimental_features: if coopmat.is_some() {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::gpu(format!("opening adapter `{}`", info.name), e))?;
        let lost = Arc::new(std::sync::Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = flag.lock() {
                l.get_or_insert_with(|| format!("{reason:?}: {msg}"));
            }
        });
        let limits = device.limits();
        let caps = Caps {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            coopmat,
            int_dot: !cpu
                && opts
                    .int_dot
                    .unwrap_or_else(|| adapter_has_int_dot(&adapter)),
            cpu,
            uniform_offset_align: limits.min_uniform_buffer_offset_alignment,
            uniform_window: limits.max_uniform_buffer_binding_size.min(1 << 16) / 16 * 16,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            storage_offset_align: limits.min_storage_buffer_offset_alignment,
            max_texture_2d: limits.max_texture_dimension_2d,
        };
        Ok(Arc::new(GpuContext {
            pipelines: PipelineCache::default(),
            adapter,
            device,
            queue,
            info,
            caps,
            lost,
        }))
    }

    /// Why the device was lost, or `None` while it works.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|l| l.clone())
    }

    /// Record that the device is lost (wgpu's callback does this; also a hook for tests and
    /// for callers that detect a dead device another way).
    pub fn mark_lost(&self, reason: impl Into<String>) {
        if let Ok(mut l) = self.lost.lock() {
            l.get_or_insert_with(|| reason.into());
        }
    }

    /// An error when the device is lost: `what` is the work that cannot run.
    pub fn check_alive(&self, what: &str) -> Result<()> {
        match self.lost() {
            None => Ok(()),
            Some(why) => Err(Error::DeviceLost {
                what: what.to_string(),
                why,
            }),
        }
    }

    /// A short name for reports: `"llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)"`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// Allocate a storage buffer, turning an allocation the device refuses into an error.
    pub fn storage_buffer(&self, label: &str, size: u64) -> Result<Arc<wgpu::Buffer>> {
        let size = size.max(4).div_ceil(4) * 4;
        if size > self.caps.max_buffer {
            return Err(Error::OutOfMemory {
                what: format!("allocating `{label}`"),
                needed: size,
                available: self.caps.max_buffer,
                hint: " (the adapter's max_buffer_size); use a smaller --ctx or a quantized model"
                    .into(),
            });
        }
        // CPU devices: room for a uniform window starting anywhere in the data (see
        // `Caps::uniform_window`).
        let alloc = if self.caps.cpu {
            (size + self.caps.uniform_window).min(self.caps.max_buffer.max(size))
        } else {
            size
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: alloc,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC
                | if self.caps.cpu {
                    wgpu::BufferUsages::UNIFORM
                } else {
                    wgpu::BufferUsages::empty()
                },
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::OutOfMemory {
                what: format!("allocating `{label}`"),
                needed: size,
                available: self.caps.max_buffer,
                hint: format!(" ({e}); use a smaller --ctx or a quantized model"),
            });
        }
        Ok(Arc::new(buf))
    }

    /// A fresh tensor in its own buffer (contents undefined).
    pub fn empty(&self, label: &str, desc: TensorDesc) -> Result<Tensor> {
        let buffer = self.storage_buffer(label, desc.size_bytes())?;
        Ok(Tensor::in_buffer(desc, buffer, 0))
    }

    /// Bytes of memory this device can still allocate, where that is known: for a CPU device
    /// (lavapipe) the system's available memory; `None` for GPUs (wgpu does not report their
    /// memory; an allocation beyond it fails as an out-of-memory error).
    pub fn memory_budget(&self) -> Option<u64> {
        if self.info.device_type != wgpu::DeviceType::Cpu {
            return None;
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// A tensor holding `bytes` (already in the dtype's GPU layout).
    pub fn upload(&self, label: &str, desc: TensorDesc, bytes: &[u8]) -> Result<Tensor> {
        check_upload(label, &desc, bytes)?;
        let t = self.empty(label, desc)?;
        self.write(&t, 0, bytes)?;
        Ok(t)
    }

    /// Upload f32 values as an f32 tensor.
    pub fn upload_f32(&self, label: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let desc = TensorDesc::f32(shape.to_vec());
        if desc.numel() != data.len() {
            return Err(Error::op(
                "upload",
                format!(
                    "`{label}`: {} values for shape {shape:?} ({} elements)",
                    data.len(),
                    desc.numel()
                ),
            ));
        }
        self.upload(label, desc, bytemuck::cast_slice(data))
    }

    /// Write bytes into a tensor at a byte offset (padded to 4 bytes as wgpu requires). A
    /// texel image takes whole writes only (offset 0).
    pub fn write(&self, t: &Tensor, byte_offset: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (buffer, offset) = match &t.place {
            Place::Buffer { buffer, offset } => (buffer, *offset),
            Place::Texels(img) if byte_offset == 0 => {
                self.write_texels(img, bytes);
                return Ok(());
            }
            Place::Texels(_) => {
                return Err(Error::op(
                    "write",
                    format!(
                        "{}: a texel image takes whole writes (offset 0), got offset {byte_offset}",
                        t.desc
                    ),
                ))
            }
        };
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buffer, offset + byte_offset, bytes);
        } else {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(buffer, offset + byte_offset, &v);
        }
        Ok(())
    }

    /// Fill a tensor with NaN bit patterns so that elements a kernel fails to write show up.
    pub fn poison(&self, t: &Tensor) -> Result<()> {
        let n = (t.size_bytes() / 4) as usize;
        let v = vec![0x7fc0_0000u32; n];
        self.write(t, 0, bytemuck::cast_slice(&v))
    }

    /// Copy `len` bytes starting at `byte_offset` of a tensor back to the host (waits for the GPU).
    pub fn read_bytes(&self, t: &Tensor, byte_offset: u64, len: u64) -> Result<Vec<u8>> {
        let (buffer, offset) = match &t.place {
            Place::Buffer { buffer, offset } => (buffer, *offset),
            Place::Texels(img) => return self.read_texels(img, byte_offset, len),
        };
        let len4 = len.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: len4.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset + byte_offset, &staging, 0, len4);
        self.queue.submit(Some(enc.finish()));
        self.map_read(&staging, len)
    }

    /// Map a MAP_READ buffer and copy out its first `len` bytes.
    pub fn map_read(&self, staging: &wgpu::Buffer, len: u64) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::gpu("waiting for the GPU", e))?;
        rx.recv()
            .map_err(|e| Error::gpu("reading back", e))?
            .map_err(|e| Error::gpu("mapping a readback buffer", e))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::gpu("mapping a readback buffer", e))?;
            view[..len as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Read a whole f32 tensor.
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(t, 0, (t.desc.numel() * 4) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Wait until the queue is idle.
    pub fn sync(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::gpu("waiting for the GPU", e))
    }
}

/// An upload must not hold more bytes than its tensor (buffer or texel image).
pub(crate) fn check_upload(label: &str, desc: &TensorDesc, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > desc.size_bytes() {
        return Err(Error::op(
            "upload",
            format!(
                "`{label}`: {} bytes given for {desc} ({} bytes); give at most the tensor's bytes",
                bytes.len(),
                desc.size_bytes()
            ),
        ));
    }
    Ok(())
}

/// Whether the adapter runs WGSL's `dot4I8Packed` natively: naga's SPIR-V backend emits
/// `OpSDot` where wgpu-hal enabled the `DotProduct*` capabilities, which it does on a Vulkan
/// device of API 1.3 or later (where `shaderIntegerDotProduct` is core) or with
/// `VK_KHR_shader_integer_dot_product`; elsewhere naga writes a bit-extract polyfill, correct
/// but no faster than floats. wgpu has no feature flag for it, so this reads the Vulkan facts
/// wgpu-hal keeps. `false` off Vulkan.
pub fn adapter_has_int_dot(adapter: &wgpu::Adapter) -> bool {
    #[cfg(any(windows, target_os = "linux", target_os = "android"))]
    {
        // SAFETY: only reads the adapter's cached properties; nothing is created or destroyed.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() };
        if let Some(a) = hal {
            let caps = a.physical_device_capabilities();
            let v = caps.properties().api_version;
            let (major, minor) = ((v >> 22) & 0x7f, (v >> 12) & 0x3ff);
            return (major, minor) >= (1, 3)
                || caps.supports_extension(c"VK_KHR_shader_integer_dot_product");
        }
    }
    let _ = adapter;
    false
}
