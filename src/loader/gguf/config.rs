//! Hyperparameters: `llama.*` metadata → [`LlamaConfig`] and back, and Llama 3 RoPE scaling,
//! which llama.cpp stores as a `rope_freqs.weight` tensor instead of metadata.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::loader::{head_dim, HeadKeys, TensorEntry};
use crate::tensor::DType;

use super::{GgufFile, GgufTensorInfo, MetaValue};

/// Architectures whose GGUF files Fado loads (llama.cpp writes Mistral 7B and friends as `llama`).
const SUPPORTED_ARCHS: &[&str] = &["llama"];

/// How GGUF names the attention geometry, for messages.
const HEAD_KEYS: HeadKeys = HeadKeys {
    hidden: "embedding_length",
    heads: "attention.head_count",
    kv_heads: "attention.head_count_kv",
    head_dim_absent: "attention.key_length is missing",
};

/// `llama.*` metadata (+ tokenizer ids, + the presence of `output.weight` and `rope_freqs.weight`)
/// → [`LlamaConfig`].
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let path = file.path();
    let keys = ArchKeys::new(file)?;
    let hidden_size = keys.req("embedding_length")?;
    let num_hidden_layers = keys.req("block_count")?;
    let num_attention_heads = keys.req("attention.head_count")?;
    let num_key_value_heads = keys
        .uint("attention.head_count_kv")?
        .unwrap_or(num_attention_heads);
    let intermediate_size = feed_forward_length(&keys)?;
    if num_attention_heads == 0 || num_key_value_heads == 0 || hidden_size == 0 {
        return Err(Error::model(
            path,
            "embedding_length, attention.head_count and attention.head_count_kv must be non-zero",
        ));
    }
    let head_dim = head_dim(
        path,
        &HEAD_KEYS,
        (hidden_size, num_attention_heads, num_key_value_heads),
        || keys.uint("attention.key_length"),
    )?;
    let rms_norm_eps = keys
        .float("attention.layer_norm_rms_epsilon")?
        .unwrap_or(1e-5);
    let rope_theta = keys.float("rope.freq_base")?.unwrap_or(10000.0);
    let max_position_embeddings = keys.uint("context_length")?.unwrap_or(2048);
    let rope_scaling = rope_scaling(&keys, rope_theta, head_dim)?;
    let vocab_size = vocab_size(&keys)?;
    let (bos_token_id, eos_token_ids) = special_ids(file)?;
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

/// Lookups of `{arch}.*` hyperparameters, with messages naming the key.
struct ArchKeys<'a> {
    file: &'a GgufFile,
    arch: &'a str,
}

impl<'a> ArchKeys<'a> {
    /// The file's `general.architecture`, which must be one Fado runs.
    fn new(file: &'a GgufFile) -> Result<Self> {
        let path = file.path();
        let arch = file
            .meta("general.architecture")
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
        Ok(ArchKeys { file, arch })
    }

    fn path(&self) -> &'a Path {
        self.file.path()
    }

    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn get(&self, k: &str) -> Option<&'a MetaValue> {
        self.file.meta(&self.key(k))
    }

    fn uint(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
                _ => Err(Error::model(
                    self.path(),
                    format!(
                        "metadata '{}' is {v:?}; expected a non-negative integer",
                        self.key(k)
                    ),
                )),
            },
        }
    }

    fn req(&self, k: &str) -> Result<usize> {
        self.uint(k)?.ok_or_else(|| {
            Error::model(
                self.path(),
                format!(
                    "metadata '{}' is missing; the file is not a complete model",
                    self.key(k)
                ),
            )
        })
    }

    fn float(&self, k: &str) -> Result<Option<f32>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| {
                Error::model(
                    self.path(),
                    format!("metadata '{}' is {v:?}; expected a number", self.key(k)),
                )
            }),
        }
    }
}

/// `feed_forward_length`: one value, or one per layer (some converters) that must all agree.
fn feed_forward_length(keys: &ArchKeys<'_>) -> Result<usize> {
    match keys.get("feed_forward_length") {
        Some(MetaValue::Array(a)) => {
            let vals: Vec<Option<u64>> = a.iter().map(|v| v.as_u64()).collect();
            match vals.first() {
                Some(Some(first)) if vals.iter().all(|v| *v == Some(*first)) => Ok(*first as usize),
                _ => Err(Error::model(
                    keys.path(),
                    format!(
                        "metadata '{}' varies per layer; Fado needs one feed-forward size",
                        keys.key("feed_forward_length")
                    ),
                )),
            }
        }
        _ => keys.req("feed_forward_length"),
    }
}

/// RoPE scaling from `rope.scaling.*` (or the older `rope.scale_linear`), or Llama 3's from a
/// `rope_freqs.weight` tensor.
fn rope_scaling(keys: &ArchKeys<'_>, rope_theta: f32, head_dim: usize) -> Result<RopeScaling> {
    let path = keys.path();
    let mut rope_scaling = RopeScaling::None;
    let scaling_type = keys.get("rope.scaling.type").and_then(|v| v.as_str());
    let factor = keys.float("rope.scaling.factor")?;
    match scaling_type {
        None | Some("none") => {
            // Older files carry only `rope.scale_linear`.
            if let Some(f) = keys.float("rope.scale_linear")? {
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
                        keys.key("rope.scaling.factor")
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
    if let Some(info) = keys.file.tensor_info("rope_freqs.weight") {
        if rope_scaling != RopeScaling::None {
            return Err(Error::model(
                path,
                "file has both rope.scaling metadata and a rope_freqs.weight tensor",
            ));
        }
        rope_scaling = llama3_from_rope_freqs(keys.file, info, rope_theta, head_dim)?;
    }
    Ok(rope_scaling)
}

/// The vocabulary size: the tokenizer's token count, else `{arch}.vocab_size`, else the
/// embedding table's rows.
fn vocab_size(keys: &ArchKeys<'_>) -> Result<usize> {
    let file = keys.file;
    match file.meta("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(t) => Ok(t.len()),
        None => match keys.uint("vocab_size")? {
            Some(v) => Ok(v),
            None => file
                .tensor_info("token_embd.weight")
                .map(|t| t.ne.get(1).copied().unwrap_or(0) as usize)
                .ok_or_else(|| {
                    Error::model(
                        keys.path(),
                        "vocabulary size unknown: no tokenizer.ggml.tokens, llama.vocab_size or token_embd.weight",
                    )
                }),
        },
    }
}

/// The BOS id and the ids that end generation (eos, eot, eom; each once).
fn special_ids(file: &GgufFile) -> Result<(Option<u32>, Vec<u32>)> {
    let tok_id = |k: &str| -> Result<Option<u32>> {
        match file.meta(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as u32)),
                _ => Err(Error::model(
                    file.path(),
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
    Ok((bos_token_id, eos_token_ids))
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
    let sizes = [
        ("llama.context_length", cfg.max_position_embeddings),
        ("llama.embedding_length", cfg.hidden_size),
        ("llama.block_count", cfg.num_hidden_layers),
        ("llama.feed_forward_length", cfg.intermediate_size),
        ("llama.attention.head_count", cfg.num_attention_heads),
        ("llama.attention.head_count_kv", cfg.num_key_value_heads),
        ("llama.attention.key_length", cfg.head_dim),
        ("llama.attention.value_length", cfg.head_dim),
        ("llama.rope.dimension_count", cfg.head_dim),
        ("llama.vocab_size", cfg.vocab_size),
    ];
    for (k, v) in sizes {
        put(k, MetaValue::U32(v as u32));
    }
    put(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(cfg.rms_norm_eps),
    );
    put("llama.rope.freq_base", MetaValue::F32(cfg.rope_theta));
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
