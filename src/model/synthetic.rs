//! Random, well-formed weights of a model's exact shapes, generated on the GPU (no file, no
//! download), so that anyone can time AMALIA-9B on their card: `fado bench --synthetic amalia-9b`.
//! The graph and kernels are the same as for a real model.

use std::sync::Arc;

use super::llama::{LayerWeights, Weights};
use crate::config::{LlamaConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::graph::Graph;
use crate::ops::fill::{Fill, FillKind};
use crate::ops::Step;
use crate::quant;
use crate::tensor::{DType, Tensor, TensorDesc};

/// AMALIA-9B (Llama architecture from EuroLLM-9B).
pub fn amalia_9b() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 128000,
        hidden_size: 4096,
        intermediate_size: 12288,
        num_hidden_layers: 42,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-5,
        rope_theta: 1e6,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 32768,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// SmolLM2-135M.
pub fn smollm2_135m() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 1e5,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// A named preset or a `config.json` path.
pub fn config_by_name(name: &str) -> Result<LlamaConfig> {
    match name {
        "amalia-9b" => Ok(amalia_9b()),
        "smollm2-135m" => Ok(smollm2_135m()),
        path => {
            let p = std::path::Path::new(path);
            if p.is_file() {
                crate::loader::hf_config::load(p, None)
            } else {
                Err(Error::Config(format!(
                    "--synthetic `{name}`: expected amalia-9b, smollm2-135m or a config.json path"
                )))
            }
        }
    }
}

fn f16_bits(x: f32) -> u32 {
    half::f16::from_f32(x).to_bits() as u32
}

/// Fill `words` u32 words of `t` starting at `word_offset` on the GPU ([`Fill`]).
fn fill(
    ctx: &Arc<GpuContext>,
    t: &Tensor,
    (word_offset, words): (u64, u64),
    kind: FillKind,
    seed: u32,
    (period, header): (u32, u32),
    scale: f32,
) -> Result<()> {
    // One dispatch covers at most max_workgroups² · 256 words; chunk by binding size too, in
    // whole block periods so that every chunk starts at a block header.
    let unit = 256 * period.max(1) as u64;
    let chunk_words = (ctx.caps.max_storage_binding / 4).min(1 << 28) / unit * unit;
    let (buffer, offset) = t
        .buffer()
        .ok_or_else(|| Error::gpu("filling synthetic weights", "the tensor is a texel image"))?;
    let mut done = 0u64;
    while done < words {
        let n = (words - done).min(chunk_words);
        // Words of a block header stay aligned across chunks: chunks are multiples of 256 words
        // and the offset enters the hash, so only `period` alignment needs care.
        let start = word_offset + done;
        if period != 0 && !start.is_multiple_of(period as u64) {
            return Err(Error::gpu(
                "filling synthetic weights",
                "misaligned block header",
            ));
        }
        let op = Fill {
            kind,
            seed: seed.wrapping_add((start / chunk_words.max(1)) as u32 * 7919),
            scale,
            period,
            header,
        };
        // The chunk as a tensor of its own: bound alone, as the kernel indexes it from 0.
        let desc = TensorDesc::new(DType::U32, [n as usize]);
        let chunk = Tensor::in_buffer(desc, buffer.clone(), offset + start * 4);
        let mut g = Graph::new();
        let id = g.external("words", &chunk);
        g.add0(op, &[id])?;
        g.compile(ctx, &[])?.run(Step::default())?;
        done += n;
    }
    Ok(())
}

/// A random tensor of `dtype` and shape `[rows, cols]` in Fado's GPU layout.
pub fn random_matrix(
    ctx: &Arc<GpuContext>,
    label: &str,
    dtype: DType,
    rows: usize,
    cols: usize,
    seed: u32,
) -> Result<Tensor> {
    let t = ctx.empty(label, TensorDesc::new(dtype, [rows, cols]))?;
    let words = t.size_bytes() / 4;
    // Uniform(−s, s) with s = sqrt(3/cols): unit-variance outputs for unit-variance inputs.
    let s = (3.0 / cols as f32).sqrt();
    match dtype {
        DType::F32 => fill(ctx, &t, (0, words), FillKind::F32, seed, (0, 0), s)?,
        DType::BF16 => fill(ctx, &t, (0, words), FillKind::BF16, seed, (0, 0), s)?,
        DType::F16 => fill(ctx, &t, (0, words), FillKind::F16, seed, (0, 0), s)?,
        q if q.is_quantized() => {
            let nb = rows * cols / q.block_len();
            let sec = quant::gpu_sections(q, nb);
            // A block scale that gives values of about ±s.
            let d = s / 8.0;
            match sec.scales_offset {
                None => {
                    // Whole GGUF blocks (Q4_K, Q5_K): word 0 of each block is (d, dmin).
                    let period = (q.block_bytes() / 4) as u32;
                    let header = f16_bits(d) | (f16_bits(d * 4.0) << 16);
                    let bits = FillKind::Bits;
                    fill(ctx, &t, (0, words), bits, seed, (period, header), 0.0)?;
                }
                Some(off) => {
                    let body_words = (off / 4) as u64;
                    let body = (0, body_words);
                    fill(ctx, &t, body, FillKind::Bits, seed, (0, 0), 0.0)?;
                    let header = match q {
                        // (d, m) per block
                        DType::Q4_1 => f16_bits(d) | (f16_bits(-s) << 16),
                        // two blocks' d per word
                        _ => f16_bits(d) | (f16_bits(d) << 16),
                    };
                    let scales = (body_words, words - body_words);
                    fill(ctx, &t, scales, FillKind::Bits, seed, (1, header), 0.0)?;
                }
            }
        }
        d => {
            return Err(Error::Config(format!(
                "synthetic weights cannot be {d} (use bf16, f16, f32, q8_0, q4_0 or q4_k)"
            )))
        }
    }
    Ok(t)
}

fn ones(ctx: &GpuContext, label: &str, n: usize) -> Result<Tensor> {
    ctx.upload_f32(label, &[n], &vec![1.0; n])
}

/// Synthetic weights and what they hold.
pub struct Synthetic {
    /// The weights, on the GPU.
    pub weights: Weights,
    /// Their GPU bytes.
    pub bytes: u64,
    /// Matrices that are not in the requested block format, with the one they got
    /// ([`quant::block_format_for`], as `fado quantize` picks; bf16 where no block format
    /// fits).
    pub fallbacks: Vec<(String, DType)>,
}

/// Random weights for `cfg`, with every matrix (and the embedding table; tied, it is also the
/// lm_head, as when loading a file) in `dtype`, or — when its rows are not whole blocks of
/// `dtype` — in the format `fado quantize` would fall back to; norms are f32 ones.
/// `progress` gets (matrices done, matrices in all) after each one.
pub fn weights(
    ctx: &Arc<GpuContext>,
    cfg: &LlamaConfig,
    dtype: DType,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<Synthetic> {
    let n_mats = 2 + 4 * cfg.num_hidden_layers as u64 - u64::from(cfg.tie_word_embeddings);
    let mut done = 0u64;
    let mut bytes = 0u64;
    let mut seed = 1u32;
    let mut fallbacks = Vec::new();
    let mut mat = |label: &str, want: DType, r: usize, c: usize| -> Result<Tensor> {
        seed += 1;
        let d = if want.is_quantized() {
            quant::block_format_for(want, c).unwrap_or(DType::BF16)
        } else {
            want
        };
        if d != want {
            fallbacks.push((label.to_string(), d));
        }
        // Where kernels read weights as texels (CPU devices), they live as texels.
        let t = crate::gpu::place_weight(ctx, random_matrix(ctx, label, d, r, c, seed)?)?;
        bytes += t.size_bytes();
        done += 1;
        if let Some(p) = progress {
            p(done, n_mats);
        }
        Ok(t)
    };
    let (h, i_dim, qd, kvd) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    let embed = mat("embed_tokens", dtype, cfg.vocab_size, h)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        layers.push(LayerWeights {
            attn_norm: ones(ctx, "attn_norm", h)?,
            qkv: vec![mat(&format!("blk.{l}.qkv"), dtype, qd + 2 * kvd, h)?],
            o: mat(&format!("blk.{l}.o"), dtype, h, qd)?,
            mlp_norm: ones(ctx, "mlp_norm", h)?,
            gate_up: vec![mat(&format!("blk.{l}.gate_up"), dtype, 2 * i_dim, h)?],
            down: mat(&format!("blk.{l}.down"), dtype, h, i_dim)?,
        });
    }
    let lm_head = if cfg.tie_word_embeddings {
        embed.clone()
    } else {
        mat("lm_head", dtype, cfg.vocab_size, h)?
    };
    let inv = cfg.rope_inv_freq();
    let inv_freq = ctx.upload_f32("rope_inv_freq", &[inv.len()], &inv)?;
    bytes += (2 * cfg.num_hidden_layers + 1) as u64 * h as u64 * 4;
    ctx.sync()?;
    Ok(Synthetic {
        weights: Weights {
            embed,
            layers,
            norm: ones(ctx, "norm", h)?,
            lm_head,
            inv_freq,
        },
        bytes,
        fallbacks,
    })
}

/// A byte-level tokenizer (256 tokens, no merges) for synthetic models: benchmarks feed token
/// ids directly, but a [`super::Model`] always carries a tokenizer.
pub fn byte_tokenizer() -> Result<crate::tokenizer::Tokenizer> {
    use crate::loader::MetaValue;
    // GPT-2's byte → printable character table.
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    let tokens: Vec<MetaValue> = (0u32..256)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            MetaValue::String(char::from_u32(c).unwrap_or('?').to_string())
        })
        .collect();
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("gpt2".into()),
    );
    m.insert("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens));
    m.insert("tokenizer.ggml.merges".into(), MetaValue::Array(vec![]));
    crate::loader::gguf::vocab::tokenizer_from_map(&m)
}
