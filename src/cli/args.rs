//! Arguments shared by several subcommands.

use std::path::PathBuf;

use clap::Args;
use fado::sampling::SamplingParams;
use fado::session::{KvType, SessionOptions};
use fado::tensor::DType;
use fado::{Error, Result};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a Hugging Face folder (config.json + safetensors), a .safetensors file or a .gguf
    /// file. Default: SmolLM2-135M-Instruct Q4_1 (fetched by scripts/fetch-default-model.sh).
    #[arg(long, short = 'm', env = "FADO_MODEL")]
    pub model: Option<PathBuf>,
    /// Context size in tokens (default: min(model maximum, 4096)).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Quantize float weights while loading: q8_0, q4_0 or q4_k.
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<DType>,
    /// KV-cache storage: f16 (half the memory and attention reads) or f32.
    #[arg(long, value_parser = KvType::parse, default_value = "f16")]
    pub kv_type: KvType,
}

/// `--quant`/`--type` values: `q8_0`, `q4_0` or `q4_k` (any case).
pub fn parse_quant(s: &str) -> std::result::Result<DType, String> {
    match s.to_ascii_lowercase().as_str() {
        "q8_0" => Ok(DType::Q8_0),
        "q4_0" => Ok(DType::Q4_0),
        "q4_k" => Ok(DType::Q4K),
        _ => Err(format!(
            "unknown quantization `{s}` (use q8_0, q4_0 or q4_k)"
        )),
    }
}

/// Where the default model lives.
pub fn default_model_path() -> PathBuf {
    if let Ok(p) = std::env::var("FADO_DEFAULT_MODEL") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let cache = std::env::var("FADO_CACHE")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("fado")))
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/fado")
        });
    cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

impl ModelArgs {
    /// `--model`, else the default model when it is on disk ([`default_model_path`]).
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                let p = default_model_path();
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::Config(format!(
                        "no --model given and the default model is not at {}; \
                         run scripts/fetch-default-model.sh (or scripts/run.sh) to fetch it",
                        p.display()
                    )))
                }
            }
        }
    }

    /// `--ctx`, else the model's maximum clamped to 1..=4096.
    pub fn ctx_for(&self, max_positions: usize) -> usize {
        self.ctx.unwrap_or(max_positions.clamp(1, 4096))
    }

    /// Session options from `--ctx` (see [`ModelArgs::ctx_for`]) and `--kv-type`.
    pub fn session_for(&self, max_positions: usize) -> SessionOptions {
        SessionOptions {
            ctx: self.ctx_for(max_positions),
            kv_type: self.kv_type,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    // Negative values parse (and then fail validation with a message naming the range)
    // instead of being taken for a flag.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the best one (0 = off).
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalize repeats of the last 64 tokens (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Random seed (default: from the clock). The same seed gives the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum new tokens (at least 1, as the server's max_tokens).
    #[arg(long, short = 'n', default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The flags as validated [`SamplingParams`]; without `--seed`, a seed from the clock.
    pub fn params(&self) -> Result<SamplingParams> {
        let seed = self.seed.unwrap_or_else(fado::sampling::clock_seed);
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed,
            ..Default::default()
        };
        p.validate().map_err(Error::Request)?;
        Ok(p)
    }
}
