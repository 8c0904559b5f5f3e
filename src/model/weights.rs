//! Moving a model's tensors from its files to the GPU, one fused matrix at a time.
//!
//! Host memory stays near one tensor: each matrix is read from the memory map, converted only
//! when it must be (norms to f32, `--quant` re-quantization, formats without a GPU kernel), and
//! uploaded before the next is touched.

use std::borrow::Cow;

use super::llama::{LayerWeights, Weights};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::loader::{TensorEntry, WeightSource};
use crate::quant;
use crate::tensor::{DType, Tensor, TensorDesc};

/// How weights are stored on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightPolicy {
    /// Re-quantize float matrices to this block format while loading (`--quant`).
    pub quant: Option<DType>,
}

/// Whether the matmul kernels read `dtype` directly (every float and GGUF block format here).
pub fn gpu_matmul_supports(dtype: DType) -> bool {
    dtype.is_float() || dtype.is_quantized()
}

/// A tensor's values as f32 (floats widened, blocks dequantized).
fn widen(e: &TensorEntry, b: &[u8]) -> Result<Vec<f32>> {
    quant::widen(&e.name, e.dtype, b, e.numel())
}

pub(crate) struct Uploader<'a> {
    pub ctx: &'a GpuContext,
    pub src: &'a dyn WeightSource,
    pub policy: WeightPolicy,
    pub bytes: u64,
    pub done: u64,
    pub total: u64,
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

impl Uploader<'_> {
    fn entry(&self, name: &str, shape: &[usize]) -> Result<TensorEntry> {
        let e = self.src.get(name)?;
        if e.shape != shape {
            return Err(Error::model(
                self.src.path(),
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} from the config; \
                     the file does not match its config",
                    e.shape
                ),
            ));
        }
        Ok(e)
    }

    fn tick(&mut self, e: &TensorEntry) {
        self.done += e.nbytes() as u64;
        if let Some(p) = self.progress {
            p(self.done, self.total);
        }
    }

    fn put(&mut self, label: &str, desc: TensorDesc, bytes: &[u8]) -> Result<Tensor> {
        // Weights the kernels read as texels (CPU devices) are uploaded as texel images.
        let t = if crate::gpu::reads_texels(&self.ctx.caps, &desc) {
            self.ctx.upload_texels(label, desc, bytes)?
        } else {
            self.ctx.upload(label, desc, bytes)?
        };
        self.bytes += t.size_bytes();
        Ok(t)
    }

    /// A 1-D weight (norm) as f32.
    pub fn vector(&mut self, name: &str, n: usize) -> Result<Tensor> {
        let e = self.entry(name, &[n])?;
        let v = widen(&e, &self.src.bytes(name)?)?;
        self.tick(&e);
        self.put(name, TensorDesc::f32([n]), bytemuck::cast_slice(&v))
    }

    /// Matrices stacked by rows (q|k|v, gate|up): one `[Σ rows, cols]` GPU tensor, or — when
    /// the parts are in different block formats, as Q4_K_M files keep v in Q6_K and q, k in
    /// Q4_K — one tensor per part in its own format (the model multiplies each and
    /// concatenates the results), so no quantized part is widened.
    pub fn stacked(
        &mut self,
        label: &str,
        parts: &[(String, usize)],
        cols: usize,
    ) -> Result<Vec<Tensor>> {
        let entries: Vec<TensorEntry> = parts
            .iter()
            .map(|(n, r)| self.entry(n, &[*r, cols]))
            .collect::<Result<_>>()?;
        let mixed = entries.iter().any(|e| e.dtype != entries[0].dtype);
        let each_kept = entries
            .iter()
            .all(|e| e.dtype.is_quantized() && cols.is_multiple_of(e.dtype.block_len()));
        if parts.len() > 1 && mixed && each_kept && self.policy.quant.is_none() {
            return parts
                .iter()
                .map(|(n, r)| self.matrix(n, &[(n.clone(), *r)], cols))
                .collect();
        }
        Ok(vec![self.matrix(label, parts, cols)?])
    }

    /// Matrices stacked by rows into one `[Σ rows, cols]` GPU tensor (or one matrix).
    pub fn matrix(
        &mut self,
        label: &str,
        parts: &[(String, usize)],
        cols: usize,
    ) -> Result<Tensor> {
        let entries: Vec<TensorEntry> = parts
            .iter()
            .map(|(n, r)| self.entry(n, &[*r, cols]))
            .collect::<Result<_>>()?;
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let same = entries.iter().all(|e| e.dtype == entries[0].dtype);
        let src_dtype = entries[0].dtype;
        let target = match self.policy.quant {
            Some(q) if src_dtype.is_float() && cols.is_multiple_of(q.block_len()) => q,
            _ if same && gpu_matmul_supports(src_dtype) => src_dtype,
            // Mixed formats (e.g. Q4_K_M's q/k in Q4_K, v in Q6_K) or a format without a
            // kernel: widen to f32, which keeps the dequantized values exact.
            _ => DType::F32,
        };
        let mut data: Vec<u8> = Vec::new();
        if same && target == src_dtype {
            for e in &entries {
                data.extend_from_slice(&self.src.bytes(&e.name)?);
                self.tick(e);
            }
            if target.is_quantized() {
                data = quant::gpu_layout(target, rows, cols, &data)?;
            }
        } else {
            let mut vals: Vec<f32> = Vec::with_capacity(rows * cols);
            for e in &entries {
                let b: Cow<[u8]> = self.src.bytes(&e.name)?;
                vals.extend(widen(e, &b)?);
                self.tick(e);
            }
            data = if target.is_quantized() {
                let q = quant::quantize(target, &vals)?;
                quant::gpu_layout(target, rows, cols, &q)?
            } else {
                bytemuck::cast_slice(&vals).to_vec()
            };
        }
        self.put(label, TensorDesc::new(target, [rows, cols]), &data)
    }

    /// The embedding table as stored: floats as they are, GGUF blocks in their GPU layout (the
    /// gather kernel dequantizes the rows it reads, so a table tied with the lm_head is one
    /// buffer). Formats the kernels do not read, or rows that are not whole blocks, are
    /// widened to f32.
    pub fn embedding(&mut self, name: &str, vocab: usize, hidden: usize) -> Result<Tensor> {
        let e = self.entry(name, &[vocab, hidden])?;
        let b = self.src.bytes(name)?;
        let t = if e.dtype.is_float() {
            self.put(name, e.desc(), &b)?
        } else if e.dtype.is_quantized() && hidden.is_multiple_of(e.dtype.block_len()) {
            let data = quant::gpu_layout(e.dtype, vocab, hidden, &b)?;
            self.put(name, e.desc(), &data)?
        } else {
            let v = widen(&e, &b)?;
            self.put(
                name,
                TensorDesc::f32([vocab, hidden]),
                bytemuck::cast_slice(&v),
            )?
        };
        self.tick(&e);
        Ok(t)
    }
}

/// Upload every weight of a Llama model.
pub fn upload(
    ctx: &GpuContext,
    src: &dyn WeightSource,
    cfg: &LlamaConfig,
    policy: WeightPolicy,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<(Weights, u64)> {
    let mut u = Uploader {
        ctx,
        src,
        policy,
        bytes: 0,
        done: 0,
        total: src.total_bytes(),
        progress,
    };
    let (h, i_dim) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let embed = u.embedding("model.embed_tokens.weight", cfg.vocab_size, h)?;
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        let n = |s: &str| format!("{p}{s}");
        layers.push(LayerWeights {
            attn_norm: u.vector(&n("input_layernorm.weight"), h)?,
            qkv: u.stacked(
                &n("self_attn.qkv"),
                &[
                    (n("self_attn.q_proj.weight"), qd),
                    (n("self_attn.k_proj.weight"), kvd),
                    (n("self_attn.v_proj.weight"), kvd),
                ],
                h,
            )?,
            o: u.matrix(
                &n("self_attn.o_proj.weight"),
                &[(n("self_attn.o_proj.weight"), h)],
                qd,
            )?,
            mlp_norm: u.vector(&n("post_attention_layernorm.weight"), h)?,
            gate_up: u.stacked(
                &n("mlp.gate_up"),
                &[
                    (n("mlp.gate_proj.weight"), i_dim),
                    (n("mlp.up_proj.weight"), i_dim),
                ],
                h,
            )?,
            down: u.matrix(
                &n("mlp.down_proj.weight"),
                &[(n("mlp.down_proj.weight"), h)],
                i_dim,
            )?,
        });
    }
    let norm = u.vector("model.norm.weight", h)?;
    let lm_head = if cfg.tie_word_embeddings && src.get("lm_head.weight").is_err() {
        // Tied: the vocabulary GEMV reads the embedding table's own buffer (float or blocks).
        embed.clone()
    } else {
        u.matrix(
            "lm_head.weight",
            &[("lm_head.weight".into(), cfg.vocab_size)],
            h,
        )?
    };
    let inv = cfg.rope_inv_freq();
    let inv_freq = u.put(
        "rope_inv_freq",
        TensorDesc::f32([inv.len()]),
        bytemuck::cast_slice(&inv),
    )?;
    Ok((
        Weights {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        },
        u.bytes,
    ))
}
