//! Hugging Face `config.json` (+ optional `generation_config.json`) → [`LlamaConfig`].
//!
//! Accepts both transformers-4 keys (top-level `rope_theta`, `rope_scaling` with `type` or
//! `rope_type`) and transformers-5 `rope_parameters {rope_type, rope_theta, factor, …}`.
//! `eos_token_id` may be an integer, a list or null in either file; the ids of both are merged
//! (config first). Defaults follow transformers' `LlamaConfig` where it has one.

#![warn(missing_docs)]

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};

use super::{head_dim, HeadKeys};

/// `architectures` values of `config.json` that Fado can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

/// How `config.json` names the attention geometry, for messages.
const HEAD_KEYS: HeadKeys = HeadKeys {
    hidden: "hidden_size",
    heads: "num_attention_heads",
    kv_heads: "num_key_value_heads",
    head_dim_absent: "head_dim is not given",
};

/// Read `config.json` and, if present, `generation_config.json` next to it.
pub fn load_dir(dir: &Path) -> Result<LlamaConfig> {
    let gen = dir.join("generation_config.json");
    load(
        &dir.join("config.json"),
        if gen.is_file() {
            Some(gen.as_path())
        } else {
            None
        },
    )
}

/// Read a `config.json` and an optional `generation_config.json`.
pub fn load(config_path: &Path, generation_path: Option<&Path>) -> Result<LlamaConfig> {
    let cfg = read_json(config_path)?;
    let gen = match generation_path {
        Some(p) => Some((read_json(p)?, p)),
        None => None,
    };
    parse(&cfg, config_path, gen.as_ref().map(|(v, p)| (v, *p)))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(path, format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::model(
            path,
            "expected a JSON object at the top level",
        ));
    }
    Ok(v)
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    /// Prefix for nested objects in messages, e.g. "rope_scaling.".
    prefix: &'a str,
}

impl Fields<'_> {
    fn present(&self, k: &str) -> Option<&Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn bad(&self, k: &str, v: &Value, want: &str) -> Error {
        Error::model(
            self.path,
            format!("field '{}{k}' is {v}; expected {want}", self.prefix),
        )
    }

    fn missing(&self, k: &str) -> Error {
        Error::model(
            self.path,
            format!(
                "required field '{}{k}' is missing; add it from the model's original config.json",
                self.prefix
            ),
        )
    }

    fn usize_opt(&self, k: &str) -> Result<Option<usize>> {
        match self.present(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
                _ => Err(self.bad(k, v, "a non-negative integer")),
            },
        }
    }

    fn usize_req(&self, k: &str) -> Result<usize> {
        self.usize_opt(k)?.ok_or_else(|| self.missing(k))
    }

    fn f32_opt(&self, k: &str) -> Result<Option<f32>> {
        match self.present(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.bad(k, v, "a number")),
        }
    }

    fn f32_req(&self, k: &str) -> Result<f32> {
        self.f32_opt(k)?.ok_or_else(|| self.missing(k))
    }

    fn bool_opt(&self, k: &str) -> Result<Option<bool>> {
        match self.present(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(k, v, "true or false")),
        }
    }

    /// A token id or a list of them.
    fn ids(&self, k: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .filter(|&x| x <= u32::MAX as u64)
                .map(|x| x as u32)
        };
        match self.present(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| one(v).ok_or_else(|| self.bad(k, v, "a token id")))
                .collect(),
            Some(v) => one(v)
                .map(|x| vec![x])
                .ok_or_else(|| self.bad(k, v, "a token id or a list of token ids")),
        }
    }
}

/// Parse already-read JSON. `config_path` and the generation config's path are used in messages.
pub fn parse(
    config: &Value,
    config_path: &Path,
    generation: Option<(&Value, &Path)>,
) -> Result<LlamaConfig> {
    let empty = Map::new();
    let map = config.as_object().unwrap_or(&empty);
    let f = Fields {
        map,
        path: config_path,
        prefix: "",
    };

    let archs = check_architecture(&f)?;
    let vocab_size = f.usize_req("vocab_size")?;
    let hidden_size = f.usize_req("hidden_size")?;
    let intermediate_size = f.usize_req("intermediate_size")?;
    let num_hidden_layers = f.usize_req("num_hidden_layers")?;
    let num_attention_heads = f.usize_req("num_attention_heads")?;
    let num_key_value_heads = f
        .usize_opt("num_key_value_heads")?
        .unwrap_or(num_attention_heads);
    if num_attention_heads == 0 || num_key_value_heads == 0 {
        return Err(Error::model(
            config_path,
            "num_attention_heads and num_key_value_heads must be non-zero",
        ));
    }
    let head_dim = head_dim(
        config_path,
        &HEAD_KEYS,
        (hidden_size, num_attention_heads, num_key_value_heads),
        || f.usize_opt("head_dim"),
    )?;
    let rms_norm_eps = f.f32_opt("rms_norm_eps")?.unwrap_or(1e-6);
    let max_position_embeddings = f.usize_opt("max_position_embeddings")?.unwrap_or(2048);
    let tie_word_embeddings = f.bool_opt("tie_word_embeddings")?.unwrap_or(false);

    let (rope_theta, rope_scaling) = rope(&f)?;
    let (bos_token_id, eos_token_ids) = special_ids(&f, generation)?;
    if archs.contains(&"MistralForCausalLM") {
        warn_sliding_window(&f, max_position_embeddings)?;
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
        tie_word_embeddings,
        bos_token_id,
        eos_token_ids,
    })
}

/// The architecture must be one Fado runs, with the Llama block Fado builds (SiLU-gated MLP,
/// no biases). Returns the `architectures` list.
fn check_architecture<'a>(f: &'a Fields<'a>) -> Result<Vec<&'a str>> {
    let config_path = f.path;
    let archs: Vec<&str> = match f.present("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        Some(v) => return Err(f.bad("architectures", v, "a list of class names")),
        None => return Err(f.missing("architectures")),
    };
    if !archs.iter().any(|a| SUPPORTED_ARCHITECTURES.contains(a)) {
        return Err(Error::model(
            config_path,
            format!(
                "architectures {archs:?} are not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }

    if let Some(act) = f.present("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(Error::model(
                config_path,
                format!("hidden_act {act} is not supported (supported: \"silu\")"),
            ));
        }
    }
    for k in ["attention_bias", "mlp_bias"] {
        if f.bool_opt(k)? == Some(true) {
            return Err(Error::model(
                config_path,
                format!("{k}: true is not supported (Llama layers without biases only)"),
            ));
        }
    }

    Ok(archs)
}

/// RoPE: transformers-5 `rope_parameters` or transformers-4 `rope_theta` + `rope_scaling`.
fn rope(f: &Fields<'_>) -> Result<(f32, RopeScaling)> {
    let config_path = f.path;
    Ok(match f.present("rope_parameters") {
        Some(Value::Object(p)) => {
            let pf = Fields {
                map: p,
                path: config_path,
                prefix: "rope_parameters.",
            };
            let theta = match pf.f32_opt("rope_theta")? {
                Some(t) => t,
                None => f.f32_opt("rope_theta")?.unwrap_or(10000.0),
            };
            (theta, rope_scaling(&pf)?)
        }
        Some(v) => return Err(f.bad("rope_parameters", v, "an object")),
        None => {
            let theta = f.f32_opt("rope_theta")?.unwrap_or(10000.0);
            let scaling = match f.present("rope_scaling") {
                None => RopeScaling::None,
                Some(Value::Object(s)) => rope_scaling(&Fields {
                    map: s,
                    path: config_path,
                    prefix: "rope_scaling.",
                })?,
                Some(v) => return Err(f.bad("rope_scaling", v, "an object or null")),
            };
            (theta, scaling)
        }
    })
}

/// BOS (config first) and every end id of both files (config first, each once).
fn special_ids(
    f: &Fields<'_>,
    generation: Option<(&Value, &Path)>,
) -> Result<(Option<u32>, Vec<u32>)> {
    let empty = Map::new();
    let mut bos_token_id = f.ids("bos_token_id")?.first().copied();
    let mut eos_token_ids = f.ids("eos_token_id")?;
    if let Some((g, gpath)) = generation {
        let gmap = g.as_object().unwrap_or(&empty);
        let gf = Fields {
            map: gmap,
            path: gpath,
            prefix: "",
        };
        if bos_token_id.is_none() {
            bos_token_id = gf.ids("bos_token_id")?.first().copied();
        }
        for id in gf.ids("eos_token_id")? {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }

    Ok((bos_token_id, eos_token_ids))
}

/// Mistral's sliding window is not implemented: attention stays exact, so say where that
/// differs from the original model.
fn warn_sliding_window(f: &Fields<'_>, max_position_embeddings: usize) -> Result<()> {
    let config_path = f.path;
    if let Some(w) = f.usize_opt("sliding_window")? {
        if w < max_position_embeddings {
            tracing::warn!(
                "{}: sliding_window {w} is ignored; attention is exact up to {w} tokens of context",
                config_path.display()
            );
        }
    }
    Ok(())
}

/// `rope_scaling` / `rope_parameters` object → [`RopeScaling`]. The type is under `rope_type`
/// or (older configs) `type`; absent or "default" means plain RoPE.
fn rope_scaling(s: &Fields<'_>) -> Result<RopeScaling> {
    let ty = match s.present("rope_type").or_else(|| s.present("type")) {
        None => "default".to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(v) => return Err(s.bad("rope_type", v, "a string")),
    };
    match ty.as_str() {
        "default" => Ok(RopeScaling::None),
        "linear" | "llama3" if s.f32_req("factor")? <= 0.0 => Err(Error::model(
            s.path,
            format!("field '{}factor' must be positive", s.prefix),
        )),
        "llama3" => {
            let low_freq_factor = s.f32_req("low_freq_factor")?;
            let high_freq_factor = s.f32_req("high_freq_factor")?;
            if !(low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                return Err(Error::model(
                    s.path,
                    format!(
                        "llama3 rope scaling needs 0 < {p}low_freq_factor < {p}high_freq_factor, got {low_freq_factor} and {high_freq_factor}",
                        p = s.prefix
                    ),
                ));
            }
            Ok(RopeScaling::Llama3 {
                factor: s.f32_req("factor")?,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: s
                    .usize_req("original_max_position_embeddings")?,
            })
        }
        "linear" => Ok(RopeScaling::Linear {
            factor: s.f32_req("factor")?,
        }),
        other => Err(Error::model(
            s.path,
            format!("unsupported rope scaling type {other} (supported: linear, llama3)"),
        )),
    }
}
