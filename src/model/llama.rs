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
    attention::{Attention, AttentionRows},
    attention_decode::AttentionDecode,
    concat::ConcatCols,
    embedding::{EmbeddingAt, EmbeddingRows},
    matmul,
    matmul::norm::NormMatmul,
    matmul::swiglu::SwiGluMatmulAddInto,
    rmsnorm::RmsNorm,
    rope::{RopeKv, RopeKvRows},
    sample::{TopKSample, TopKSampleRows},
    take_last_row::TakeLastRow,
    topk::{LogSumExp, LogSumExpRows, Penalize, PenalizeHistory, PenalizeHistoryRows, TopK},
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
    let eps = cfg.rms_norm_eps;

    let x = g.add1(EmbeddingAt { tokens }, &[ids, embed])?;
    blocks(&mut g, cfg, w, cache, x, tokens == 1, None)?;
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

/// The decoder blocks over the residual stream `x`, in place. `decode`: one token (RoPE, the
/// cache write and attention fused); `batched`: a batched step over pooled caches whose
/// sequences hold that many rows each (each row its own sequence, [`RopeKvRows`],
/// [`AttentionRows`]); otherwise a prefill chunk.
fn blocks(
    g: &mut Graph,
    cfg: &LlamaConfig,
    w: &Weights,
    cache: &KvCache,
    x: TensorId,
    decode: bool,
    batched: Option<(usize, usize)>,
) -> Result<()> {
    let eps = cfg.rms_norm_eps;
    let inv_freq = g.external("rope_inv_freq", &w.inv_freq);
    let sync = g.external("attention_sync", &cache.sync);
    let rope = RopeKv {
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        interleaved: false,
    };
    let attention = Attention {
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        scale: 1.0 / (cfg.head_dim as f32).sqrt(),
    };
    for (i, l) in w.layers.iter().enumerate() {
        g.set_prefix(format!("blk.{i}."));
        let attn_norm = g.external("attn_norm", &l.attn_norm);
        let qkv_w = externals(g, "qkv", &l.qkv);
        let o_w = g.external("o", &l.o);
        let mlp_norm = g.external("mlp_norm", &l.mlp_norm);
        let gate_up_w = externals(g, "gate_up", &l.gate_up);
        let down_w = g.external("down", &l.down);
        let k_cache = g.external("k_cache", &cache.k[i]);
        let v_cache = g.external("v_cache", &cache.v[i]);

        // Attention.
        let qkv = norm_project(g, eps, x, attn_norm, &qkv_w)?;
        let a = if let Some((capacity, split_for)) = batched {
            let rope = RopeKvRows {
                rope: rope.clone(),
                capacity,
            };
            let q = g.add1(rope, &[qkv, inv_freq, k_cache, v_cache])?;
            let attn = AttentionRows {
                attn: attention.clone(),
                capacity,
                split_for,
            };
            g.add1(attn, &[q, k_cache, v_cache])?
        } else if decode {
            // Decode: RoPE, the cache write and split attention in one op (one dispatch with
            // GPU-style kernels).
            g.add1(
                AttentionDecode {
                    n_heads: attention.n_heads,
                    n_kv_heads: attention.n_kv_heads,
                    head_dim: attention.head_dim,
                    scale: attention.scale,
                    interleaved: false,
                },
                &[qkv, inv_freq, k_cache, v_cache, sync],
            )?
        } else {
            let q = g.add1(rope.clone(), &[qkv, inv_freq, k_cache, v_cache])?;
            g.add1(attention.clone(), &[q, k_cache, v_cache])?
        };
        g.add0(matmul::MatmulAddInto, &[a, o_w, x])?;

        // MLP.
        let gu = norm_project(g, eps, x, mlp_norm, &gate_up_w)?;
        g.add0(SwiGluMatmulAddInto, &[gu, down_w, x])?;
    }
    g.set_prefix("");
    Ok(())
}

/// What a batched step's head does after the lm_head, on every row ([`forward_rows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowsHead {
    /// Candidates per row (the most any row's sampler or log-probabilities need: the top-k
    /// of a larger k begins with the top-k of a smaller one).
    pub k: usize,
    /// Apply each row's history penalties first (rows without penalties have a window of 0).
    pub penalize: bool,
    /// Also reduce each row's logits to their log-sum-exp.
    pub logsumexp: bool,
}

/// The forward pass of a batched decode step: `rows` sequences of the pool (`cache` and
/// `history` pooled, `sampler` the pooled sampler parameters, at most `capacity` rows per
/// sequence, attention split for sequences of `split_for` rows)
/// each advance by one token — row `t` is `Step::rows[t]`'s sequence at its position. Every
/// row's logits go through [`RowsHead`] and its sampler, which writes the row's next token
/// into its history. Returns the logits `[rows, vocab]`, top-k `[rows, 2k]` and log-sum-exp
/// `[rows]` ([`Forward`]).
pub fn forward_rows(
    cfg: &LlamaConfig,
    w: &Weights,
    cache: &KvCache,
    (history, sampler): (&Tensor, &Tensor),
    rows: usize,
    (capacity, split_for): (usize, usize),
    head: RowsHead,
) -> Result<Forward> {
    let mut g = Graph::new();
    let ids = g.external("history", history);
    let sampler = g.external("sampler", sampler);
    let embed = g.external("embed_tokens", &w.embed);
    let x = g.add1(EmbeddingRows { rows }, &[ids, embed])?;
    blocks(&mut g, cfg, w, cache, x, false, Some((capacity, split_for)))?;
    let norm = g.external("norm", &w.norm);
    let lm_head = g.external("lm_head", &w.lm_head);
    let logits = g.add1(
        NormMatmul {
            eps: cfg.rms_norm_eps,
        },
        &[x, norm, lm_head],
    )?;
    let history_len = capacity + 1;
    if head.penalize {
        g.add0(PenalizeHistoryRows { history_len }, &[logits, sampler, ids])?;
    }
    let topk = TopKSampleRows {
        k: head.k,
        history_len,
    };
    let topk = g.add1(topk, &[logits, sampler, ids])?;
    let logsumexp = head
        .logsumexp
        .then(|| g.add1(LogSumExpRows, &[logits]))
        .transpose()?;
    Ok(Forward {
        graph: g,
        logits,
        topk: Some(topk),
        logsumexp,
        mask: None,
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
