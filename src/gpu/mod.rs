//! The GPU context: adapter choice, device with the features and limits the adapter offers,
//! capability flags that pick kernel variants, buffer helpers and the pipeline cache.

#![warn(missing_docs)]

mod context;
mod coopmat;
mod pipelines;
mod placement;
pub mod shader;
mod texels;

pub use crate::tensor::Texels;
pub use context::{adapter_has_int_dot, AdapterSummary, Caps, GpuContext, GpuOptions};
pub use coopmat::{coopmat_config, CoopMat};
pub use pipelines::{BindingKind, CachedPipeline, PipelineCache, PipelineKey};
pub use placement::{place_weight, reads_texels, rows_fit};
pub use texels::{extent as texel_extent, TEXEL_ROW};
