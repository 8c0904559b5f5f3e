//! The GPU context: adapter choice, device with the features and limits the adapter offers,
//! capability flags that pick kernel variants, buffer helpers and the pipeline cache.

mod context;
mod pipelines;
pub mod shader;

pub use context::{AdapterSummary, Caps, GpuContext, GpuOptions};
pub use pipelines::{BindingKind, CachedPipeline, PipelineCache, PipelineKey};
