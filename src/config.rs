//! The hyperparameters of a Llama-family model, whatever file they came from
//! (Hugging Face `config.json` + `generation_config.json`, or GGUF `llama.*` metadata).

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters` in Hugging Face configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (all frequencies scaled).
    Linear {
        /// Position divisor.
        factor: f32,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        /// Context scale factor.
        factor: f32,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length the model was trained with before scaling.
        original_max_position_embeddings: usize,
    },
}

/// Everything the graph builder needs to know about a Llama-architecture model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary (rows of the embedding table).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (fewer than query heads with grouped-query attention).
    pub num_key_value_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base θ.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// `lm_head` is the embedding table.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id, if the model uses one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (config and generation_config may list several, e.g. `<|im_end|>`).
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Inverse frequencies `θ^(−2i/d)` for i in 0..d/2, with the configured scaling applied.
    /// Computed once on the host; the RoPE kernel only multiplies positions by them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base.iter().map(|f| *f as f32).collect(),
            RopeScaling::Linear { factor } => {
                base.iter().map(|f| (*f / *factor as f64) as f32).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, lff, hff) = (
                    *factor as f64,
                    *low_freq_factor as f64,
                    *high_freq_factor as f64,
                );
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / lff;
                let high_wavelen = old / hff;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let v = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lff) / (hff - lff);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        v as f32
                    })
                    .collect()
            }
        }
    }

    /// Width of all query heads: `num_attention_heads · head_dim`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of all key (or value) heads: `num_key_value_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}
