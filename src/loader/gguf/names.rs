//! GGUF ↔ Hugging Face tensor names.

/// Whole-model tensor stems, (GGUF, Hugging Face).
const MODEL_STEMS: [(&str, &str); 3] = [
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// Per-layer tensor stems, (GGUF, Hugging Face), after `blk.{i}.` / `model.layers.{i}.`.
const LAYER_STEMS: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The layer prefixes, (GGUF, Hugging Face).
const LAYER_PREFIX: (&str, &str) = ("blk.", "model.layers.");

/// GGUF tensor name → Hugging Face name (`None` for names with no Llama counterpart, which
/// are kept as they are).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    map_name(name, true)
}

/// Hugging Face tensor name → GGUF name (`None` for names with no GGUF counterpart).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    map_name(name, false)
}

/// Map `name` through the tables, read GGUF → Hugging Face or the other way. Only `.weight`
/// and `.bias` tensors have counterparts.
fn map_name(name: &str, to_hf: bool) -> Option<String> {
    let side =
        |(gguf, hf): (&'static str, &'static str)| if to_hf { (gguf, hf) } else { (hf, gguf) };
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let lookup = |table: &[(&'static str, &'static str)], key: &str| {
        table
            .iter()
            .map(|&pair| side(pair))
            .find(|&(from, _)| from == key)
            .map(|(_, to)| to)
    };
    let mapped = match lookup(&MODEL_STEMS, stem) {
        Some(to) => to.to_string(),
        None => {
            let (from_prefix, to_prefix) = side(LAYER_PREFIX);
            let (layer, part) = stem.strip_prefix(from_prefix)?.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            format!("{to_prefix}{layer}.{}", lookup(&LAYER_STEMS, part)?)
        }
    };
    Some(format!("{mapped}.{suffix}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (gguf, hf) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.3.attn_q.weight",
                "model.layers.3.self_attn.q_proj.weight",
            ),
            (
                "blk.0.ffn_norm.bias",
                "model.layers.0.post_attention_layernorm.bias",
            ),
        ] {
            assert_eq!(gguf_to_hf_name(gguf).as_deref(), Some(hf));
            assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(gguf));
        }
        for odd in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.scale",
            "output",
        ] {
            assert_eq!(gguf_to_hf_name(odd), None, "{odd}");
        }
        assert_eq!(
            hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
    }
}
