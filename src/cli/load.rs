//! Loading a model with a progress bar.

use std::sync::Arc;

use fado::gpu::GpuOptions;
use fado::model::{Model, ModelOptions};
use fado::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::ModelArgs;

/// Load the model `args` names (quantizing on load with `--quant`) on the adapter `adapter`
/// picks (`None`: the default choice), with a progress bar on standard error.
pub fn load(args: &ModelArgs, adapter: Option<String>) -> Result<Arc<Model>> {
    let path = args.path()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let b = bar.clone();
    let opts = ModelOptions {
        gpu: GpuOptions {
            adapter,
            ..GpuOptions::from_env()
        },
        quant: args.quant,
        progress: Some(Box::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        })),
    };
    let m = Model::load(&path, &opts);
    bar.finish_and_clear();
    m
}
