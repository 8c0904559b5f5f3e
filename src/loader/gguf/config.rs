//! Hyperparameters: `llama.*` metadata → [`LlamaConfig`] and back, and Llama 3 RoPE scaling,
//! which llama.cpp stores as a `rope_freqs.weight` tensor instead of metadata.

use std::collections::BTreeMap;

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::loader::TensorEntry;
use crate::tensor::DType;

use super::{GgufFile, GgufTensorInfo, MetaValue};

/// Architectures whose GGUF files Fado loads (llama.cpp writes Mistral 7B and friends as `llama`).
const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// `llama.*` metadata (+ tokenizer ids, + the presence of `output.weight` and `rope_freqs.weight`)
/// → [`LlamaConfig`].
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let path = file.path();
    let md = file.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            Error::model(
                path,
                "metadata 'general.architecture' is missing or not a string",
            )
        })?;
    if !SUPPORTED_ARCHS.contains(&arch) {
        return Err(Error::model(
            path,
            format!(
                "architecture '{arch}' is not supported (supported: {})",
                SUPPORTED_ARCHS.join(", ")
            ),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let get = |k: &str| md.get(&key(k));
    let uint = |k: &str| -> Result<Option<usize>> {
        match get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
                _ => Err(Error::model(
                    path,
                    format!(
                        "metadata '{}' is {v:?}; expected a non-negative integer",
                        key(k)
                    ),
                )),
            },
        }
    };
    let req = |k: &str| -> Result<usize> {
        uint(k)?.ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "metadata '{}' is missing; the file is not a complete model",
                    key(k)
                ),
            )
        })
    };
    let float = |k: &str| -> Result<Option<f32>> {
        match get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                Error::model(
                    path,
                    format!("metadata '{}' is {v:?}; expected a number", key(k)),
                )
            }),
        }
    };

    let hidden_size = req("embedding_length")?;
    let num_hidden_layers = req("block_count")?;
    let num_attention_heads = req("attention.head_count")?;
    let num_key_value_heads = uint("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let intermediate_size = match get("feed_forward_length") {
        // Some converters write one value per layer.
        Some(MetaValue::Array(a)) => {
            let vals: Vec<Option<u64>> = a.iter().map(|v| v.as_u64()).collect();
            match vals.first() {
                Some(Some(first)) if vals.iter().all(|v| *v == Some(*first)) => *first as usize,
                _ => {
                    return Err(Error::model(
                        path,
                        format!(
                            "metadata '{}' varies per layer; Fado needs one feed-forward size",
                            key("feed_forward_length")
                        ),
                    ))
                }
            }
        }
        _ => req("feed_forward_length")?,
    };
    if num_attention_heads == 0 || num_key_value_heads == 0 || hidden_size == 0 {
        return Err(Error::model(
            path,
            "embedding_length, attention.head_count and attention.head_count_kv must be non-zero",
        ));
    }
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(Error::model(
            path,
            format!(
                "attention.head_count {num_attention_heads} is not a multiple of attention.head_count_kv {num_key_value_heads}"
            ),
        ));
    }
    let head_dim = match uint("attention.key_length")? {
        Some(d) => d,
        None => {
            if hidden_size % num_attention_heads != 0 {
                return Err(Error::model(
                    path,
                    format!(
                        "embedding_length {hidden_size} is not a multiple of attention.head_count {num_attention_heads} \
                         and attention.key_length is missing"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    let rms_norm_eps = float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    let rope_theta = float("rope.freq_base")?.unwrap_or(10000.0);
    let max_position_embeddings = uint("context_length")?.unwrap_or(2048);

    let mut rope_scaling = RopeScaling::None;
    let scaling_type = get("rope.scaling.type").and_then(|v| v.as_str());
    let factor = float("rope.scaling.factor")?;
    match scaling_type {
        None | Some("none") => {
            // Older files carry only `rope.scale_linear`.
            if let Some(f) = float("rope.scale_linear")? {
                if f != 1.0 {
                    rope_scaling = RopeScaling::Linear { factor: f };
                }
            }
        }
        Some("linear") => {
            let f = factor.ok_or_else(|| {
                Error::model(
                    path,
                    format!(
                        "rope.scaling.type is linear but '{}' is missing",
                        key("rope.scaling.factor")
                    ),
                )
            })?;
            rope_scaling = RopeScaling::Linear { factor: f };
        }
        Some(other) => {
            return Err(Error::model(
                path,
                format!("unsupported rope scaling type {other} (supported: linear, llama3)"),
            ))
        }
    }
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        if rope_scaling != RopeScaling::None {
            return Err(Error::model(
                path,
                "file has both rope.scaling metadata and a rope_freqs.weight tensor",
            ));
        }
        rope_scaling = llama3_from_rope_freqs(file, info, rope_theta, head_dim)?;
    }

    let vocab_size = match md.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(t) => t.len(),
        None => match uint("vocab_size")? {
            Some(v) => v,
            None => file
                .tensor_info("token_embd.weight")
                .map(|t| t.ne.get(1).copied().unwrap_or(0) as usize)
                .ok_or_else(|| {
                    Error::model(
                        path,
                        "vocabulary size unknown: no tokenizer.ggml.tokens, llama.vocab_size or token_embd.weight",
                    )
                })?,
        },
    };

    let tok_id = |k: &str| -> Result<Option<u32>> {
        match md.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as u32)),
                _ => Err(Error::model(
                    path,
                    format!("metadata '{k}' is {v:?}; expected a token id"),
                )),
            },
        }
    };
    let bos_token_id = tok_id("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = tok_id(k)? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    Ok(LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        bos_token_id,
        eos_token_ids,
    })
}

/// The per-frequency divisors llama.cpp stores in `rope_freqs.weight` for Llama 3 scaling.
pub fn llama3_rope_factors(
    theta: f32,
    head_dim: usize,
    factor: f32,
    low_freq_factor: f32,
    high_freq_factor: f32,
    original_max_position_embeddings: usize,
) -> Vec<f32> {
    let base = LlamaConfig {
        head_dim,
        rope_theta: theta,
        rope_scaling: RopeScaling::None,
        ..dummy_config()
    };
    let scaled = LlamaConfig {
        rope_scaling: RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        },
        ..base.clone()
    };
    base.rope_inv_freq()
        .iter()
        .zip(scaled.rope_inv_freq())
        .map(|(b, s)| b / s)
        .collect()
}

fn dummy_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 0,
        num_key_value_heads: 0,
        head_dim: 0,
        rms_norm_eps: 0.0,
        rope_theta: 0.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 0,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// llama.cpp bakes Llama 3's RoPE scaling into a `rope_freqs.weight` tensor of per-frequency
/// divisors instead of metadata. Recover the parameters by matching the tensor against the
/// Llama 3 formula for the usual parameter values (only the two wavelength thresholds
/// `original / low_freq_factor` and `original / high_freq_factor` matter).
fn llama3_from_rope_freqs(
    file: &GgufFile,
    info: &GgufTensorInfo,
    theta: f32,
    head_dim: usize,
) -> Result<RopeScaling> {
    let path = file.path();
    if info.dtype != DType::F32 || info.ne.len() != 1 || info.ne[0] as usize != head_dim / 2 {
        return Err(Error::model(
            path,
            format!(
                "rope_freqs.weight is {} ne = {:?}; expected f32 [{}] (head_dim / 2)",
                info.dtype,
                info.ne,
                head_dim / 2
            ),
        ));
    }
    let got: Vec<f32> = file
        .tensor_data(info)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if got.iter().all(|&f| (f - 1.0).abs() < 1e-6) {
        return Ok(RopeScaling::None);
    }
    let factor = got.iter().fold(0f32, |m, &v| m.max(v));
    let matches = |want: &[f32]| {
        want.iter()
            .zip(&got)
            .all(|(w, g)| (w - g).abs() <= 1e-4 * w.abs().max(1.0))
    };
    for orig in [8192usize, 4096, 2048, 16384, 32768, 65536, 131072] {
        for (lff, hff) in [(1.0f32, 4.0f32), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)] {
            let want = llama3_rope_factors(theta, head_dim, factor, lff, hff, orig);
            if matches(&want) {
                return Ok(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: lff,
                    high_freq_factor: hff,
                    original_max_position_embeddings: orig,
                });
            }
        }
    }
    Err(Error::model(
        path,
        "rope_freqs.weight does not match Llama 3 RoPE scaling with the usual parameters; \
         unsupported rope scaling (supported: linear, llama3)",
    ))
}

/// [`LlamaConfig`] → `llama.*` and tokenizer-id metadata, as llama.cpp writes it. Llama 3 RoPE
/// scaling is not metadata in GGUF: pass the tensor from [`rope_freqs_tensor`] to the writer.
pub fn config_metadata(cfg: &LlamaConfig) -> BTreeMap<String, MetaValue> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: MetaValue| {
        m.insert(k.to_string(), v);
    };
    put("general.architecture", "llama".into());
    put(
        "llama.context_length",
        MetaValue::U32(cfg.max_position_embeddings as u32),
    );
    put(
        "llama.embedding_length",
        MetaValue::U32(cfg.hidden_size as u32),
    );
    put(
        "llama.block_count",
        MetaValue::U32(cfg.num_hidden_layers as u32),
    );
    put(
        "llama.feed_forward_length",
        MetaValue::U32(cfg.intermediate_size as u32),
    );
    put(
        "llama.attention.head_count",
        MetaValue::U32(cfg.num_attention_heads as u32),
    );
    put(
        "llama.attention.head_count_kv",
        MetaValue::U32(cfg.num_key_value_heads as u32),
    );
    put(
        "llama.attention.key_length",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.attention.value_length",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.rope.dimension_count",
        MetaValue::U32(cfg.head_dim as u32),
    );
    put(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(cfg.rms_norm_eps),
    );
    put("llama.rope.freq_base", MetaValue::F32(cfg.rope_theta));
    put("llama.vocab_size", MetaValue::U32(cfg.vocab_size as u32));
    if let RopeScaling::Linear { factor } = cfg.rope_scaling {
        put("llama.rope.scaling.type", "linear".into());
        put("llama.rope.scaling.factor", MetaValue::F32(factor));
    }
    if let Some(b) = cfg.bos_token_id {
        put("tokenizer.ggml.bos_token_id", MetaValue::U32(b));
    }
    if let Some(&e) = cfg.eos_token_ids.first() {
        put("tokenizer.ggml.eos_token_id", MetaValue::U32(e));
    }
    if let Some(&e) = cfg.eos_token_ids.get(1) {
        put("tokenizer.ggml.eot_token_id", MetaValue::U32(e));
    }
    m
}

/// The `rope_freqs.weight` tensor llama.cpp writes for Llama 3 RoPE scaling (f32 bytes), if the
/// config uses it.
pub fn rope_freqs_tensor(cfg: &LlamaConfig) -> Option<(TensorEntry, Vec<u8>)> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = cfg.rope_scaling
    else {
        return None;
    };
    let f = llama3_rope_factors(
        cfg.rope_theta,
        cfg.head_dim,
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    );
    let entry = TensorEntry {
        name: "rope_freqs.weight".into(),
        dtype: DType::F32,
        shape: vec![f.len()],
    };
    Some((entry, f.iter().flat_map(|v| v.to_le_bytes()).collect()))
}
