//! One whole Llama decoder block, built with the graph API from the same op structs the model
//! builder uses (`src/model/llama.rs`), compiled to one `Executable` and run as one submission,
//! against the ops' CPU references chained by hand:
//!
//! rmsnorm → fused q|k|v matmul → RoPE + KV-cache write → causal GQA attention →
//! o-proj + residual → rmsnorm → fused gate|up matmul → SwiGLU → down-proj + residual.
//!
//! A ragged prefill (7 and 33 tokens) then one decode step that continues the same cache, with
//! f32, f16 and bf16 weights (the f16 case also keeps an f16 KV cache).

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::attention::{attention_cpu, Attention};
use fado::ops::matmul::{self, Matmul, MatmulAddInto};
use fado::ops::rmsnorm::{self, RmsNorm};
use fado::ops::rope::{rope_cpu, RopeKv};
use fado::ops::swiglu::{self, SwiGluCat};
use fado::ops::Step;
use fado::tensor::{DType, Tensor, TensorDesc};

/// Ragged dimensions: hidden ≠ heads·head_dim, odd intermediate size, 3 query heads per kv head.
const HIDDEN: usize = 76;
const INTER: usize = 93;
const HQ: usize = 6;
const HKV: usize = 2;
const D: usize = 16;
const CAP: usize = 48;
const EPS: f32 = 1e-5;
/// Ops of a block.
const NODES: usize = 9;

/// One block's weights, as f32 values already rounded through the weight dtype (what the GPU
/// sees), so the reference differs from the GPU only in arithmetic.
struct BlockWeights {
    attn_norm: Vec<f32>,
    qkv: Vec<f32>,
    o: Vec<f32>,
    mlp_norm: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
    inv_freq: Vec<f32>,
}

fn qkv_rows() -> usize {
    (HQ + 2 * HKV) * D
}

fn weights(rng: &mut Rng, dtype: DType) -> BlockWeights {
    // Scaled like trained weights (≈ 1/sqrt(fan_in)) so activations stay O(1).
    let lin = |rng: &mut Rng, n: usize, k: usize| {
        matmul::round_to(dtype, &rng.vec(n * k, 1.0 / (k as f32).sqrt()))
    };
    let norm = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.uniform(0.5, 1.5)).collect();
    BlockWeights {
        attn_norm: norm(rng, HIDDEN),
        qkv: lin(rng, qkv_rows(), HIDDEN),
        o: lin(rng, HIDDEN, HQ * D),
        mlp_norm: norm(rng, HIDDEN),
        gate_up: lin(rng, 2 * INTER, HIDDEN),
        down: lin(rng, HIDDEN, INTER),
        inv_freq: (0..D / 2)
            .map(|i| (1.0 / 10000f64.powf(2.0 * i as f64 / D as f64)) as f32)
            .collect(),
    }
}

fn upload_as(ctx: &GpuContext, name: &str, dtype: DType, shape: &[usize], v: &[f32]) -> Tensor {
    let bytes = match dtype {
        DType::F32 => bytemuck::cast_slice(v).to_vec(),
        DType::F16 => matmul::to_f16_bytes(v),
        DType::BF16 => matmul::to_bf16_bytes(v),
        other => panic!("no upload for {other}"),
    };
    ctx.upload(name, TensorDesc::new(dtype, shape.to_vec()), &bytes)
        .expect("upload")
}

fn read_as(ctx: &GpuContext, t: &Tensor) -> Vec<f32> {
    match t.dtype() {
        DType::F16 => {
            let b = ctx
                .read_bytes(t, 0, (t.desc.numel() * 2) as u64)
                .expect("read");
            b.chunks(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        }
        _ => ctx.read_f32(t).expect("read"),
    }
}

/// The GPU side: weights and KV cache resident, residual stream `x` updated in place.
struct GpuBlock {
    ctx: Arc<GpuContext>,
    attn_norm: Tensor,
    qkv: Tensor,
    o: Tensor,
    mlp_norm: Tensor,
    gate_up: Tensor,
    down: Tensor,
    inv_freq: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
}

impl GpuBlock {
    fn new(w: &BlockWeights, wdtype: DType, kv_dtype: DType) -> Self {
        let ctx = ctx();
        let nan = vec![f32::NAN; CAP * HKV * D];
        GpuBlock {
            attn_norm: upload_as(&ctx, "attn_norm", DType::F32, &[HIDDEN], &w.attn_norm),
            qkv: upload_as(&ctx, "qkv", wdtype, &[qkv_rows(), HIDDEN], &w.qkv),
            o: upload_as(&ctx, "o", wdtype, &[HIDDEN, HQ * D], &w.o),
            mlp_norm: upload_as(&ctx, "mlp_norm", DType::F32, &[HIDDEN], &w.mlp_norm),
            gate_up: upload_as(&ctx, "gate_up", wdtype, &[2 * INTER, HIDDEN], &w.gate_up),
            down: upload_as(&ctx, "down", wdtype, &[HIDDEN, INTER], &w.down),
            inv_freq: upload_as(&ctx, "inv_freq", DType::F32, &[D / 2], &w.inv_freq),
            k_cache: upload_as(&ctx, "k_cache", kv_dtype, &[CAP, HKV, D], &nan),
            v_cache: upload_as(&ctx, "v_cache", kv_dtype, &[CAP, HKV, D], &nan),
            ctx,
        }
    }

    /// Build the block over `x` (`[t, HIDDEN]`, updated in place) exactly as
    /// `model::llama::forward` wires one layer, compile it to one executable and run it once.
    fn run(&self, x: &Tensor, pos: usize) {
        let t = x.shape()[0];
        let mut g = Graph::new();
        g.set_prefix("blk.0.");
        let xi = g.external("x", x);
        let attn_norm = g.external("attn_norm", &self.attn_norm);
        let qkv_w = g.external("qkv", &self.qkv);
        let o_w = g.external("o", &self.o);
        let mlp_norm = g.external("mlp_norm", &self.mlp_norm);
        let gate_up_w = g.external("gate_up", &self.gate_up);
        let down_w = g.external("down", &self.down);
        let inv = g.external("inv_freq", &self.inv_freq);
        let kc = g.external("k_cache", &self.k_cache);
        let vc = g.external("v_cache", &self.v_cache);

        let h = g.add1(RmsNorm { eps: EPS }, &[xi, attn_norm]).unwrap();
        let qkv = g.add1(Matmul, &[h, qkv_w]).unwrap();
        let rope = RopeKv {
            n_heads: HQ,
            n_kv_heads: HKV,
            head_dim: D,
            interleaved: false,
        };
        let q = g.add1(rope, &[qkv, inv, kc, vc]).unwrap();
        let attn = Attention {
            n_heads: HQ,
            n_kv_heads: HKV,
            head_dim: D,
            scale: 1.0 / (D as f32).sqrt(),
        };
        let a = g.add1(attn, &[q, kc, vc]).unwrap();
        g.add0(MatmulAddInto, &[a, o_w, xi]).unwrap();
        let h = g.add1(RmsNorm { eps: EPS }, &[xi, mlp_norm]).unwrap();
        let gu = g.add1(Matmul, &[h, gate_up_w]).unwrap();
        let act = g.add1(SwiGluCat, &[gu]).unwrap();
        g.add0(MatmulAddInto, &[act, down_w, xi]).unwrap();
        assert_eq!(g.num_nodes(), NODES);

        let exe = g.compile(&self.ctx, &[]).expect("compile the block");
        // Each op is at least one dispatch (more on CPU devices, whose matmul walks x in
        // windows of rows, and for decode attention: split + reduce), all in this executable.
        assert!(
            exe.num_dispatches() >= NODES,
            "t {t}: {} dispatches for {NODES} ops",
            exe.num_dispatches()
        );
        assert_eq!(exe.submissions(), 0);
        exe.run(Step::new(pos as u32, t as u32)).expect("run");
        assert_eq!(
            exe.submissions(),
            1,
            "t {t}: the whole block should be one queue submission"
        );
    }
}

/// The CPU side: the ops' references chained in the same order; `x` is updated in place and
/// the caches `[CAP, HKV, D]` hold what the GPU caches should.
struct CpuBlock {
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
    /// The cache's storage rounding (f16 caches store rounded K/V).
    kv_dtype: DType,
}

impl CpuBlock {
    fn run(&mut self, w: &BlockWeights, x: &mut [f32], pos: usize) {
        let t = x.len() / HIDDEN;
        let (qw, kw) = (HQ * D, HKV * D);
        let h = rmsnorm::cpu(x, &w.attn_norm, EPS);
        let qkv = matmul::cpu(&h, &w.qkv, t, qkv_rows(), HIDDEN);
        let part = |lo: usize, hi: usize| -> Vec<f32> {
            qkv.chunks(qkv_rows())
                .flat_map(|r| r[lo..hi].to_vec())
                .collect()
        };
        let positions: Vec<u32> = (pos..pos + t).map(|p| p as u32).collect();
        let q = rope_cpu(&part(0, qw), &positions, &w.inv_freq, D, false);
        let k = rope_cpu(&part(qw, qw + kw), &positions, &w.inv_freq, D, false);
        let v = part(qw + kw, qkv_rows());
        self.k_cache[pos * kw..(pos + t) * kw]
            .copy_from_slice(&matmul::round_to(self.kv_dtype, &k));
        self.v_cache[pos * kw..(pos + t) * kw]
            .copy_from_slice(&matmul::round_to(self.kv_dtype, &v));
        let scale = 1.0 / (D as f32).sqrt();
        let a = attention_cpu(&q, &self.k_cache, &self.v_cache, t, pos, HQ, HKV, D, scale);
        let o = matmul::cpu(&a, &w.o, t, HIDDEN, qw);
        for (xi, oi) in x.iter_mut().zip(&o) {
            *xi += oi;
        }
        let h = rmsnorm::cpu(x, &w.mlp_norm, EPS);
        let gu = matmul::cpu(&h, &w.gate_up, t, 2 * INTER, HIDDEN);
        let (gate, up): (Vec<f32>, Vec<f32>) = (
            gu.chunks(2 * INTER)
                .flat_map(|r| r[..INTER].to_vec())
                .collect(),
            gu.chunks(2 * INTER)
                .flat_map(|r| r[INTER..].to_vec())
                .collect(),
        );
        let act = swiglu::cpu(&gate, &up);
        let d = matmul::cpu(&act, &w.down, t, HIDDEN, INTER);
        for (xi, di) in x.iter_mut().zip(&d) {
            *xi += di;
        }
    }
}

/// Prefill `prefill` tokens, then decode one token on the same cache; compare the residual
/// stream after each step and the cache rows written.
fn check_block(seed: u64, wdtype: DType, kv_dtype: DType, prefill: usize, rtol: f32) {
    let mut rng = Rng::new(seed);
    let w = weights(&mut rng, wdtype);
    let gpu = GpuBlock::new(&w, wdtype, kv_dtype);
    let mut cpu = CpuBlock {
        k_cache: vec![f32::NAN; CAP * HKV * D],
        v_cache: vec![f32::NAN; CAP * HKV * D],
        kv_dtype,
    };
    let mut pos = 0;
    for t in [prefill, 1] {
        let what = format!("{wdtype} weights, {kv_dtype} cache, {t} tokens at {pos}");
        let mut x = rng.vec(t * HIDDEN, 1.0);
        let xt = upload(&format!("x{pos}"), &[t, HIDDEN], &x);
        gpu.run(&xt, pos);
        cpu.run(&w, &mut x, pos);
        let got = gpu.ctx.read_f32(&xt).expect("read x");
        assert_close_rel_max(&format!("{what}: block output"), &got, &x, rtol);
        let rows = (pos + t) * HKV * D;
        for (name, tensor, want) in [
            ("k cache", &gpu.k_cache, &cpu.k_cache),
            ("v cache", &gpu.v_cache, &cpu.v_cache),
        ] {
            let got = read_as(&gpu.ctx, tensor);
            assert_close_rel_max(
                &format!("{what}: {name} rows 0..{}", pos + t),
                &got[..rows],
                &want[..rows],
                rtol,
            );
        }
        pos += t;
    }
}

#[test]
fn llama_block_f32_weights_matches_chained_references_prefill_7_and_decode() {
    check_block(1, DType::F32, DType::F32, 7, F32_RTOL);
}

#[test]
fn llama_block_f32_weights_matches_chained_references_prefill_33_and_decode() {
    check_block(2, DType::F32, DType::F32, 33, F32_RTOL);
}

#[test]
fn llama_block_bf16_weights_matches_chained_references_prefill_33_and_decode() {
    check_block(3, DType::BF16, DType::F32, 33, F16_RTOL);
}

#[test]
fn llama_block_f16_weights_and_f16_cache_match_chained_references_prefill_7_and_decode() {
    check_block(4, DType::F16, DType::F16, 7, F16_RTOL);
}
