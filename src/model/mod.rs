//! A loaded model: hyperparameters, GPU weights, tokenizer and chat template.

#![warn(missing_docs)]

pub mod batch;
pub mod llama;
pub mod regions;
pub mod step;
pub mod synthetic;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::chat_template::ChatTemplate;
use crate::constrain::{Constraint, GrammarSpec, TokenEnv};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuOptions};
use crate::loader::{self, WeightSource};
use crate::tensor::DType;
use crate::tokenizer::Tokenizer;

pub use crate::config::LlamaConfig;
/// Per-dispatch timings of one step ([`StepGraph::profile`]).
pub use crate::graph::Profile;
pub use crate::ops::sample::SamplerParams;
/// Most sequences one batched step advances.
pub use crate::ops::MAX_ROWS;
pub use batch::{BatchGraph, Pool};
pub use llama::{KvCache, RowsHead};
pub use regions::{Held, Region};
pub use step::{KvType, Penalty, Sequence, StepGraph, StepOut, StepSpec, NO_TOKEN, PREFILL_CHUNK};
pub use weights::WeightPolicy;

/// How to load a model.
#[derive(Default)]
pub struct ModelOptions {
    /// Which adapter to open and with what features.
    pub gpu: GpuOptions,
    /// Re-quantize float weights to this block format while loading.
    pub quant: Option<DType>,
    /// Called with (bytes done, bytes total) while weights stream to the GPU.
    pub progress: Option<Box<dyn Fn(u64, u64) + Send + Sync>>,
}

/// A model ready to run: weights on the GPU, its tokenizer and chat template.
pub struct Model {
    /// The GPU the weights live on.
    pub ctx: Arc<GpuContext>,
    /// Hyperparameters (with tokenizer-provided BOS/EOS ids merged in).
    pub config: LlamaConfig,
    /// The weights, on the GPU.
    pub weights: llama::Weights,
    /// Text ↔ token ids.
    pub tokenizer: Tokenizer,
    /// Renders conversations into prompts.
    pub chat_template: ChatTemplate,
    /// File or folder name, for reports.
    pub name: String,
    /// The file or folder it was loaded from (empty for synthetic models).
    pub path: PathBuf,
    /// Bytes of weights resident on the GPU.
    pub weights_bytes: u64,
    /// The vocabulary as the grammar engine sees it, built on the first constraint
    /// ([`Model::constraint`]): ~150 ms that a model without constraints never pays.
    token_env: OnceLock<Arc<TokenEnv>>,
}

fn text_side(src: &dyn WeightSource) -> Result<(Tokenizer, ChatTemplate)> {
    if let Some(meta) = src.gguf_metadata() {
        let tok = loader::gguf::vocab::tokenizer_from_map(meta)?;
        let tpl = match meta.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(s) => ChatTemplate::with_origin(
                s,
                format!("{}: tokenizer.chat_template", src.path().display()),
            )?,
            None => ChatTemplate::chatml(),
        };
        return Ok((tok, tpl));
    }
    let dir = src
        .hf_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| src.path().parent().unwrap_or(Path::new(".")).to_path_buf());
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        return Err(Error::model(
            &dir,
            "no tokenizer.json in the model folder; copy the model's tokenizer.json next to config.json",
        ));
    }
    let tok = Tokenizer::from_file(&tj)?;
    let tpl = match ChatTemplate::from_model_dir(&dir)? {
        Some(t) => t,
        None => match tok.chat_template() {
            Some(s) => ChatTemplate::with_origin(
                s,
                format!(
                    "{}: chat_template",
                    dir.join("tokenizer_config.json").display()
                ),
            )?,
            None => ChatTemplate::chatml(),
        },
    };
    Ok((tok, tpl))
}

impl Model {
    /// Open the adapter and load a model (Hugging Face folder, safetensors file or GGUF file).
    pub fn load(path: impl AsRef<Path>, opts: &ModelOptions) -> Result<Arc<Model>> {
        let ctx = GpuContext::new(&opts.gpu)?;
        Self::load_on(ctx, path, opts)
    }

    /// Load onto an existing GPU context.
    pub fn load_on(
        ctx: Arc<GpuContext>,
        path: impl AsRef<Path>,
        opts: &ModelOptions,
    ) -> Result<Arc<Model>> {
        let path = path.as_ref();
        let t0 = std::time::Instant::now();
        let src = loader::open(path)?;
        let mut config = src.config().clone();
        let (tokenizer, chat_template) = text_side(src.as_ref())?;
        for id in tokenizer.eos_ids() {
            if !config.eos_token_ids.contains(id) {
                config.eos_token_ids.push(*id);
            }
        }
        if config.bos_token_id.is_none() {
            config.bos_token_id = tokenizer.bos_id();
        }
        if let Some(q) = opts.quant {
            if !matches!(q, DType::Q8_0 | DType::Q4_0 | DType::Q4K) {
                return Err(Error::Config(format!(
                    "--quant {q} is not supported (use q8_0, q4_0 or q4_k)"
                )));
            }
            // Only float matrices are quantized at load; say so rather than ignore the option.
            let tensors = src.tensors();
            let float_matrices = tensors
                .iter()
                .filter(|e| e.shape.len() == 2 && e.dtype.is_float())
                .count();
            if float_matrices == 0 {
                tracing::warn!(
                    "--quant {q}: the model's matrices are already block-quantized; they are \
                     used as stored (re-quantize with `fado quantize` instead)"
                );
            }
        }
        let progress = opts.progress.as_deref().map(|p| p as &dyn Fn(u64, u64));
        let (weights, weights_bytes) = weights::upload(
            &ctx,
            src.as_ref(),
            &config,
            WeightPolicy { quant: opts.quant },
            progress,
        )?;
        tracing::debug!(
            "loaded {} ({}): {} layers, {} bytes of weights on the GPU in {:.2} s",
            path.display(),
            src.format(),
            config.num_hidden_layers,
            weights_bytes,
            t0.elapsed().as_secs_f64()
        );
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Arc::new(Model {
            ctx,
            config,
            weights,
            tokenizer,
            chat_template,
            name,
            path: path.to_path_buf(),
            weights_bytes,
            token_env: OnceLock::new(),
        }))
    }
}

impl Model {
    /// A model of `cfg`'s exact shapes with random weights of `dtype` generated on the GPU
    /// (`fado bench --synthetic`). Its tokenizer is a 256-token byte tokenizer. Matrices whose
    /// rows are not whole blocks of `dtype` get the format `fado quantize` falls back to, said
    /// in one warning. `progress` gets (matrices done, matrices in all).
    pub fn synthetic(
        ctx: Arc<GpuContext>,
        name: &str,
        cfg: LlamaConfig,
        dtype: DType,
        progress: Option<&dyn Fn(u64, u64)>,
    ) -> Result<Arc<Model>> {
        let w = synthetic::weights(&ctx, &cfg, dtype, progress)?;
        if let Some(line) = crate::quant::fallback_summary(&w.fallbacks, dtype) {
            tracing::warn!("synthetic {name}: {line}");
        }
        Ok(Arc::new(Model {
            ctx,
            config: cfg,
            weights: w.weights,
            tokenizer: synthetic::byte_tokenizer()?,
            chat_template: ChatTemplate::chatml(),
            name: format!("synthetic {name} ({dtype})"),
            path: PathBuf::new(),
            weights_bytes: w.bytes,
            token_env: OnceLock::new(),
        }))
    }
}

impl Model {
    /// The token environment for constraints over this model's logits (built once).
    pub fn token_env(&self) -> Result<Arc<TokenEnv>> {
        if let Some(env) = self.token_env.get() {
            return Ok(env.clone());
        }
        let env = Arc::new(TokenEnv::new(
            &self.tokenizer,
            self.config.vocab_size,
            &self.config.eos_token_ids,
        )?);
        // Two threads may build it at once; both results are equal, the first one is kept.
        Ok(self.token_env.get_or_init(|| env).clone())
    }

    /// Compile `spec` for this model's vocabulary: the constraint a request's
    /// [`crate::sampling::SamplingParams::constraint`] holds. Errors name the problem in the
    /// schema or grammar.
    pub fn constraint(&self, spec: GrammarSpec) -> Result<Arc<Constraint>> {
        Ok(Arc::new(self.token_env()?.compile(spec)?))
    }
}
