//! The Llama architecture as a graph, in the order the paper describes a block:
//! norm → qkv → rope (+ KV-cache write) → attention → o (+ residual) → norm → gate|up →
//! silu·mul → down (+ residual); SwiGLU is fused into the down projection
//! ([`SwiGluMatmulAddInto`]). Each norm is fused into the projection after it
//! ([`NormMatmul`]). AMALIA-9B, EuroLLM, Llama 2/3, Mistral, SmolLM2 and TinyLlama
//! all share it; they differ only in the numbers of [`LlamaConfig`].
//!
//! Weights are fused at load where it saves dispatches: q|k|v rows form one matrix, gate|up
//! another. File-format details (GGUF names, permuted rows) never reach this file.

#![warn(missing_docs)]

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::{
    attention::Attention,
    attention_decode::AttentionDecode,
    concat::ConcatCols,
    embedding::EmbeddingAt,
    matmul,
    matmul::norm::NormMatmul,
    matmul::swiglu::SwiGluMatmulAddInto,
    rmsnorm::RmsNorm,
    rope::RopeKv,
    sample::TopKSample,
    take_last_row::TakeLastRow,
    topk::{LogSumExp, Penalize, PenalizeHistory, TopK},
};
use crate::tensor::Tensor;

/// One decoder block's weights (Hugging Face names in comments).
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// `input_layernorm.weight`
    pub attn_norm: Tensor,
    /// `self_attn.{q,k,v}_proj.weight`, rows concatenated: `[q_dim + 2·kv_dim, hidden]`; or,
    /// when the three are in different block formats, one tensor each (see
    /// [`crate::model::weights`]).
    pub qkv: Vec<Tensor>,
    /// `self_attn.o_proj.weight`
    pub o: Tensor,
    /// `post_attention_layernorm.weight`
    pub mlp_norm: Tensor,
    /// `mlp.{gate,up}_proj.weight`, rows concatenated: `[2·intermediate, hidden]`; or one
    /// tensor each when their block formats differ.
    pub gate_up: Vec<Tensor>,
    /// `mlp.down_proj.weight`
    pub down: Tensor,
}

/// All weights of a Llama model, on the GPU.
#[derive(Clone, Debug)]
pub struct Weights {
    /// `model.embed_tokens.weight`
    pub embed: Tensor,
    /// The decoder blocks, in order.
    pub layers: Vec<LayerWeights>,
    /// `model.norm.weight`
    pub norm: Tensor,
    /// `lm_head.weight` (the embedding table itself when tied)
    pub lm_head: Tensor,
    /// RoPE inverse frequencies `[head_dim/2]`, from [`LlamaConfig::rope_inv_freq`].
    pub inv_freq: Tensor,
}

/// The KV cache of one sequence: per layer `[capacity, kv_heads, head_dim]`.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys per layer.
    pub k: Vec<Tensor>,
    /// Values per layer.
    pub v: Vec<Tensor>,
    /// Rows (token positions) each layer's cache holds.
    pub capacity: usize,
    /// u32 `[kv_heads]`, zero between dispatches: the counters with which the fused decode
    /// attention's last workgroup per kv head finds it is last ([`AttentionDecode`]); one buffer
    /// serves every layer, since the kernel leaves it zero.
    pub sync: Tensor,
}

/// What a built forward pass exposes.
pub struct Forward {
    /// The graph of the whole forward pass.
    pub graph: Graph,
    /// Logits of the last token, f32 `[1, vocab]`, or of every token (`[tokens, vocab]`) when
    /// the head asked for all rows.
    pub logits: TensorId,
    /// Top-k of those logits (`[2k]` u32: indices then f32 bits), when asked for.
    pub topk: Option<TensorId>,
    /// `log Σ exp(logits)` (f32 `[1]`), when asked for: the log-softmax normaliser.
    pub logsumexp: Option<TensorId>,
    /// The allowed-token mask's graph input, when the head reads one: the run can be cut
    /// before its first reader, so the host writes the mask while the forward pass runs.
    pub mask: Option<TensorId>,
}

/// What runs after the lm_head on the last token's logits (see [`forward_with`]).
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// Project every row to logits, not only the last (scoring a text: perplexity, prompt
    /// log-probabilities). The other head ops need one row, so this head has none of them.
    pub all_rows: bool,
    /// Return the top-k candidates.
    pub topk: Option<usize>,
    /// Apply penalties in place to the logits first, for the token ids in `ids` (u32 `[P]`)
    /// with the values in `counts` (f32 `[P]`); both are rewritten by the caller between steps.
    pub penalize: Option<(Penalize, Tensor, Tensor)>,
    /// Also reduce the (penalized) logits to their log-sum-exp.
    pub logsumexp: bool,
    /// The sampler's parameters (u32 `[16]`, [`crate::ops::sample::SamplerParams`]), read by
    /// `penalize_history` and `sample`.
    pub sampler: Option<Tensor>,
    /// Apply penalties to the logits first, from the token history and the sampler's amounts
    /// ([`PenalizeHistory`]).
    pub penalize_history: bool,
    /// Choose the next token from the top-k candidates ([`TopKSample`]) and write it into the
    /// history at `pos + tokens`.
    pub sample: bool,
    /// With `sample`: the allowed-token mask (u32 `[ceil(V / 32)]`) the sampler's first pass
    /// reads (constrained decoding); the host rewrites it before each step.
    pub mask: Option<Tensor>,
}

/// Build the forward pass for `tokens` tokens starting at the position `pos` given at run time
/// by the step uniform; their ids are read from `history` (u32 `[C]`, the sequence's tokens by
/// position) at `pos ..`.
pub fn forward(
    cfg: &LlamaConfig,
    w: &Weights,
    cache: &KvCache,
    history: &Tensor,
    tokens: usize,
    topk: Option<usize>,
) -> Result<Forward> {
    let head = Head {
        topk,
        ..Head::default()
    };
    forward_with(cfg, w, cache, history, tokens, &head)
}

/// The head's ops after the logits (and host-window penalties): history penalties, top-k or
/// the sampling top-k (reading the allowed-token mask when the head has one: constrained
/// decoding), log-sum-exp. Returns (top-k, log-sum-exp, the mask's input).
fn head_ops(
    g: &mut Graph,
    head: &Head,
    logits: TensorId,
    ids: TensorId,
) -> Result<(Option<TensorId>, Option<TensorId>, Option<TensorId>)> {
    let sampler = head.sampler.as_ref().map(|t| g.external("sampler", t));
    let need_sampler = || {
        sampler
            .ok_or_else(|| Error::op("forward", "the head samples but has no sampler parameters"))
    };
    if head.penalize_history {
        g.add0(PenalizeHistory, &[logits, need_sampler()?, ids])?;
    }
    let mut mask = None;
    let topk = match (head.topk, head.sample) {
        (Some(k), true) => {
            mask = head.mask.as_ref().map(|m| g.external("mask", m));
            let masked = mask.is_some();
            let ins = [logits, need_sampler()?, ids];
            let ins: Vec<TensorId> = ins.into_iter().chain(mask).collect();
            Some(g.add1(TopKSample { k, masked }, &ins)?)
        }
        (Some(k), false) => Some(g.add1(TopK { k }, &[logits])?),
        (None, true) => return Err(Error::op("forward", "sampling needs the top-k")),
        (None, false) => None,
    };
    let logsumexp = head
        .logsumexp
        .then(|| g.add1(LogSumExp, &[logits]))
        .transpose()?;
    Ok((topk, logsumexp, mask))
}

/// [`forward`] with penalties and the log-softmax normaliser on the logits ([`Head`]).
pub fn forward_with(
    cfg: &LlamaConfig,
    w: &Weights,
    cache: &KvCache,
    history: &Tensor,
    tokens: usize,
    head: &Head,
) -> Result<Forward> {
    if tokens == 0 {
        return Err(Error::Request("nothing to run: zero tokens".into()));
    }
    let mut g = Graph::new();
    let ids = g.external("history", history);
    let embed = g.external("embed_tokens", &w.embed);
    let inv_freq = g.external("rope_inv_freq", &w.inv_freq);
    let sync = g.external("attention_sync", &cache.sync);
    let eps = cfg.rms_norm_eps;

    let x = g.add1(EmbeddingAt { tokens }, &[ids, embed])?;
    for (i, l) in w.layers.iter().enumerate() {
        g.set_prefix(format!("blk.{i}."));
        let attn_norm = g.external("attn_norm", &l.attn_norm);
        let qkv_w = externals(&mut g, "qkv", &l.qkv);
        let o_w = g.external("o", &l.o);
        let mlp_norm = g.external("mlp_norm", &l.mlp_norm);
        let gate_up_w = externals(&mut g, "gate_up", &l.gate_up);
        let down_w = g.external("down", &l.down);
        let k_cache = g.external("k_cache", &cache.k[i]);
        let v_cache = g.external("v_cache", &cache.v[i]);

        // Attention.
        let qkv = norm_project(&mut g, eps, x, attn_norm, &qkv_w)?;
        let a = if tokens == 1 {
            // Decode: RoPE, the cache write and split attention in one op (one dispatch with
            // GPU-style kernels).
            g.add1(
                AttentionDecode {
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                    interleaved: false,
                },
                &[qkv, inv_freq, k_cache, v_cache, sync],
            )?
        } else {
            let q = g.add1(
                RopeKv {
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    interleaved: false,
                },
                &[qkv, inv_freq, k_cache, v_cache],
            )?;
            g.add1(
                Attention {
                    n_heads: cfg.num_attention_heads,
                    n_kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                    scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                },
                &[q, k_cache, v_cache],
            )?
        };
        g.add0(matmul::MatmulAddInto, &[a, o_w, x])?;

        // MLP.
        let gu = norm_project(&mut g, eps, x, mlp_norm, &gate_up_w)?;
        g.add0(SwiGluMatmulAddInto, &[gu, down_w, x])?;
    }
    g.set_prefix("");
    let norm = g.external("norm", &w.norm);
    let lm_head = g.external("lm_head", &w.lm_head);
    if head.all_rows && (head.topk.is_some() || head.penalize.is_some() || head.logsumexp) {
        return Err(Error::op(
            "forward",
            "a head returning every row's logits takes no top-k, penalties or log-sum-exp",
        ));
    }
    let last = if tokens > 1 && !head.all_rows {
        g.add1(TakeLastRow, &[x])?
    } else {
        x
    };
    let logits = g.add1(NormMatmul { eps }, &[last, norm, lm_head])?;
    if let Some((op, pen_ids, pen_counts)) = &head.penalize {
        let pen_ids = g.external("penalty_ids", pen_ids);
        let pen_counts = g.external("penalty_counts", pen_counts);
        g.add0(op.clone(), &[logits, pen_ids, pen_counts])?;
    }
    let (topk, logsumexp, mask) = head_ops(&mut g, head, logits, ids)?;

    Ok(Forward {
        graph: g,
        logits,
        topk,
        logsumexp,
        mask,
    })
}

/// The graph inputs of a stacked projection's tensors.
fn externals(g: &mut Graph, label: &str, ts: &[Tensor]) -> Vec<TensorId> {
    match ts {
        [one] => vec![g.external(label, one)],
        _ => ts
            .iter()
            .enumerate()
            .map(|(j, t)| g.external(format!("{label}.{j}"), t))
            .collect(),
    }
}

/// `rmsnorm(x, norm) · Wᵀ` for a stacked projection: one fused op ([`NormMatmul`]: a single
/// dispatch when decoding on a GPU), or, for parts in different block formats, the norm once
/// and [`project`].
fn norm_project(
    g: &mut Graph,
    eps: f32,
    x: TensorId,
    norm: TensorId,
    ws: &[TensorId],
) -> Result<TensorId> {
    if let [w] = ws {
        return g.add1(NormMatmul { eps }, &[x, norm, *w]);
    }
    let h = g.add1(RmsNorm { eps }, &[x, norm])?;
    project(g, h, ws)
}

/// `x · Wᵀ` for a stacked projection: one matmul, or one per part and their outputs side by
/// side (parts in different block formats).
fn project(g: &mut Graph, x: TensorId, ws: &[TensorId]) -> Result<TensorId> {
    if let [w] = ws {
        return g.add1(matmul::Matmul, &[x, *w]);
    }
    let parts = ws
        .iter()
        .map(|w| g.add1(matmul::Matmul, &[x, *w]))
        .collect::<Result<Vec<_>>>()?;
    g.add1(ConcatCols, &parts)
}
