//! Compute pipelines and bind-group layouts, created once per variant and shared.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::shader;

/// What sits at one binding slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindingKind {
    /// A `uniform` buffer (binding 0: params, binding 1: step).
    Uniform,
    /// A storage buffer.
    Storage {
        /// Bound `read` instead of `read_write`.
        read_only: bool,
    },
    /// A `texture_2d<u32>` texel image ([`crate::gpu::Texels`]).
    Texels,
}

/// A pipeline variant: shader file, entry point, preprocessor defines and binding layout.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// Shader file under `shaders/`.
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Preprocessor defines that select the variant.
    pub defines: BTreeMap<String, String>,
    /// Kind of each binding, in order.
    pub bindings: Vec<BindingKind>,
}

/// A built pipeline and the layout its bind groups must follow.
pub struct CachedPipeline {
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Its bind-group layout (group 0).
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines by [`PipelineKey`], built on first use and shared afterwards.
#[derive(Default)]
pub struct PipelineCache {
    map: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
}

impl PipelineCache {
    /// The pipeline for `key`, built (and its WGSL validated) the first time.
    pub fn get(&self, device: &wgpu::Device, key: &PipelineKey) -> Result<Arc<CachedPipeline>> {
        if let Some(p) = self.map.lock().expect("pipeline cache").get(key) {
            return Ok(p.clone());
        }
        let p = Arc::new(build(device, key)?);
        self.map
            .lock()
            .expect("pipeline cache")
            .insert(key.clone(), p.clone());
        Ok(p)
    }

    /// Number of pipelines built.
    pub fn len(&self) -> usize {
        self.map.lock().expect("pipeline cache").len()
    }

    /// The variants built so far (tests translate each one for the other backends).
    pub fn keys(&self) -> Vec<PipelineKey> {
        self.map
            .lock()
            .expect("pipeline cache")
            .keys()
            .cloned()
            .collect()
    }

    /// No pipeline built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn build(device: &wgpu::Device, key: &PipelineKey) -> Result<CachedPipeline> {
    let src = shader::preprocess(key.shader, &key.defines)?;
    let what = format!(
        "compiling `{}::{}` {:?}",
        key.shader, key.entry, key.defines
    );
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(key.shader),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = key
        .bindings
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match b {
                BindingKind::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                BindingKind::Storage { read_only } => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *read_only,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                BindingKind::Texels => wgpu::BindingType::Texture {
                    sample_type: wgpu::TextureSampleType::Uint,
                    view_dimension: wgpu::TextureViewDimension::D2,
                    multisampled: false,
                },
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(key.entry),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(key.entry),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(key.entry),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(key.entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::gpu(what, e));
    }
    Ok(CachedPipeline { pipeline, layout })
}
