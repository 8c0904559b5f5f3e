//! GGUF ↔ Hugging Face tensor names.

/// GGUF tensor name → Hugging Face name (`None` for names with no Llama counterpart, which
/// are kept as they are).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{hf}.{suffix}"))
}

/// Hugging Face tensor name → GGUF name (`None` for names with no GGUF counterpart).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let g = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{layer}.{part}")
        }
    };
    Some(format!("{g}.{suffix}"))
}

/// Which Q/K permutation a tensor carries in GGUF: the head count used by llama.cpp.
pub(super) fn qk_heads(
    gguf_name: &str,
    n_head: usize,
    n_head_kv: usize,
) -> Option<(usize, &'static str)> {
    let stem = gguf_name.strip_suffix(".weight")?;
    if !stem.starts_with("blk.") {
        return None;
    }
    if stem.ends_with(".attn_q") {
        Some((n_head, "attention.head_count"))
    } else if stem.ends_with(".attn_k") {
        Some((n_head_kv, "attention.head_count_kv"))
    } else {
        None
    }
}
