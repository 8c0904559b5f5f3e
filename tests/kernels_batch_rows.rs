//! A batched decode step's per-row ops against their CPU references: the embedding gather from
//! a pooled history, RoPE + the KV write into a pooled cache, and split-K attention over each
//! row's own sequence. Rows take shuffled slots at distinct positions; every kernel style; the
//! rows no step writes (other slots, rows past a position) must keep their stale contents.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::attention::{attention_cpu, Attention, AttentionRows};
use fado::ops::embedding::{self, EmbeddingRows};
use fado::ops::rope::{rope_cpu, RopeKv, RopeKvRows};
use fado::ops::{RowStep, Step};
use fado::tensor::{DType, Tensor, TensorDesc};

/// `b` rows on distinct slots of `slots`, shuffled, at positions below `cap` (one at the last).
fn rows(rng: &mut Rng, b: usize, slots: usize, cap: usize, stride: usize) -> Vec<RowStep> {
    let mut order: Vec<u32> = (0..slots as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u32 + 1) as usize);
    }
    (0..b)
        .map(|i| {
            let slot = order[i];
            let pos = if i == 1 {
                cap - 1
            } else {
                rng.below(cap as u32) as usize
            };
            RowStep {
                pos: pos as u32,
                cache_base: slot * stride as u32,
                history_base: slot * (stride as u32 + 3),
                slot,
            }
        })
        .collect()
}

struct Case {
    hq: usize,
    hkv: usize,
    d: usize,
    b: usize,
    slots: usize,
    cap: usize,
    stride: usize,
}

const CASES: &[Case] = &[
    Case {
        hq: 9,
        hkv: 3,
        d: 64,
        b: 4,
        slots: 5,
        cap: 40,
        stride: 48,
    },
    Case {
        hq: 4,
        hkv: 4,
        d: 36,
        b: 1,
        slots: 2,
        cap: 7,
        stride: 7,
    },
    Case {
        hq: 8,
        hkv: 2,
        d: 128,
        b: 16,
        slots: 16,
        cap: 300,
        stride: 320,
    },
];

/// RoPE + KV write and attention of one batched step, as the batched graph chains them.
fn run_rope_attention(
    ctx: &Arc<GpuContext>,
    c: &Case,
    qkv: &Tensor,
    freqs: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    step: Step,
) -> (Vec<f32>, Vec<f32>) {
    let rope = RopeKv {
        n_heads: c.hq,
        n_kv_heads: c.hkv,
        head_dim: c.d,
        interleaved: false,
    };
    let attn = Attention {
        n_heads: c.hq,
        n_kv_heads: c.hkv,
        head_dim: c.d,
        scale: 1.0 / (c.d as f32).sqrt(),
    };
    let mut g = Graph::new();
    let ins = [
        g.external("qkv", qkv),
        g.external("f", freqs),
        g.external("k", kc),
        g.external("v", vc),
    ];
    let rope = RopeKvRows {
        rope,
        capacity: c.cap,
    };
    let q = g.add1(rope, &ins).expect("rope rows rejected valid inputs");
    let attn = AttentionRows {
        attn,
        capacity: c.cap,
        split_for: c.cap,
    };
    let out = g
        .add1(attn, &[q, ins[2], ins[3]])
        .expect("attention rows rejected valid inputs");
    let exe = g.compile(ctx, &[q, out]).expect("compile");
    ctx.poison(exe.tensor(q)).unwrap();
    ctx.poison(exe.tensor(out)).unwrap();
    exe.run(step).expect("run");
    (exe.read_f32(q).unwrap(), exe.read_f32(out).unwrap())
}

#[test]
fn batched_rope_and_attention_use_each_rows_own_sequence() {
    let mut rng = Rng::new(41);
    for (style, ctx) in variant_contexts() {
        for c in CASES {
            for dtype in [DType::F32, DType::F16] {
                let what = format!(
                    "{style} {dtype} hq {} hkv {} d {} b {} cap {}",
                    c.hq, c.hkv, c.d, c.b, c.cap
                );
                let (qw, kw) = (c.hq * c.d, c.hkv * c.d);
                let width = qw + 2 * kw;
                let pool = c.slots * c.stride;
                let rs = rows(&mut rng, c.b, c.slots, c.cap, c.stride);
                let stale_k = rng.vec(pool * kw, 1.0);
                let stale_v = rng.vec(pool * kw, 1.0);
                let kc = upload_cache(&ctx, "cache", [pool, c.hkv, c.d], &stale_k, dtype);
                let vc = upload_cache(&ctx, "cache", [pool, c.hkv, c.d], &stale_v, dtype);
                let qkv = rng.vec(c.b * width, 1.0);
                let freqs = inv_freq(c.d, 10000.0);
                let (got_q, got_out) = run_rope_attention(
                    &ctx,
                    c,
                    &ctx.upload_f32("qkv", &[c.b, width], &qkv).unwrap(),
                    &ctx.upload_f32("f", &[c.d / 2], &freqs).unwrap(),
                    &kc,
                    &vc,
                    Step::batch(&rs).unwrap(),
                );

                let (mut want_k, mut want_v) = (stale_k.clone(), stale_v.clone());
                if dtype == DType::F16 {
                    want_k = f16_round(&want_k);
                    want_v = f16_round(&want_v);
                }
                let mut want_q = Vec::new();
                for (i, r) in rs.iter().enumerate() {
                    let row = &qkv[i * width..(i + 1) * width];
                    let pos = [r.pos];
                    want_q.extend(rope_cpu(&row[..qw], &pos, &freqs, c.d, false));
                    let k = rope_cpu(&row[qw..qw + kw], &pos, &freqs, c.d, false);
                    let at = (r.cache_base + r.pos) as usize * kw;
                    want_k[at..at + kw].copy_from_slice(&k);
                    want_v[at..at + kw].copy_from_slice(&row[qw + kw..]);
                }
                if dtype == DType::F16 {
                    want_k = f16_round(&want_k);
                    want_v = f16_round(&want_v);
                }
                assert_close(&format!("{what}: q"), &got_q, &want_q, F32_RTOL, 2e-5);
                let got_k = read_cache(&ctx, &kc);
                let got_v = read_cache(&ctx, &vc);
                assert_close(&format!("{what}: k pool"), &got_k, &want_k, F32_RTOL, 2e-5);
                assert_close(&format!("{what}: v pool"), &got_v, &want_v, F32_RTOL, 2e-5);

                for (i, r) in rs.iter().enumerate() {
                    let base = r.cache_base as usize * kw;
                    let n = (r.pos as usize + 1) * kw;
                    let want = attention_cpu(
                        &want_q[i * qw..(i + 1) * qw],
                        &want_k[base..base + n],
                        &want_v[base..base + n],
                        1,
                        r.pos as usize,
                        c.hq,
                        c.hkv,
                        c.d,
                        1.0 / (c.d as f32).sqrt(),
                    );
                    assert_close_rel_max(
                        &format!("{what}: attention row {i} (slot {} pos {})", r.slot, r.pos),
                        &got_out[i * qw..(i + 1) * qw],
                        &want,
                        1e-4,
                    );
                }
            }
        }
    }
}

#[test]
fn batched_embedding_reads_each_rows_token_from_its_own_history() {
    let mut rng = Rng::new(42);
    let (vocab, n, slots, cap, stride) = (300usize, 40usize, 6usize, 20usize, 24usize);
    let table = rng.vec(vocab * n, 1.0);
    for (style, ctx) in variant_contexts() {
        for b in [1usize, 5] {
            let rs = rows(&mut rng, b, slots, cap, stride);
            let words = slots * (stride + 3);
            let history: Vec<u32> = (0..words).map(|_| rng.below(vocab as u32)).collect();
            let hist = ctx
                .upload(
                    "history",
                    TensorDesc::new(DType::U32, [words]),
                    bytemuck::cast_slice(&history),
                )
                .unwrap();
            let t = ctx.upload_f32("table", &[vocab, n], &table).unwrap();
            let got = run_op_on(
                &ctx,
                EmbeddingRows { rows: b },
                &[&hist, &t],
                Step::batch(&rs).unwrap(),
            );
            let ids: Vec<u32> = rs
                .iter()
                .map(|r| history[(r.history_base + r.pos) as usize])
                .collect();
            let want = embedding::cpu(&ids, &table, n);
            assert_close(&format!("{style} b {b}"), &got[0], &want, 0.0, 0.0);
        }
    }
}

#[test]
fn batched_ops_refuse_more_rows_than_a_step_holds() {
    let ctx = ctx();
    let hist = ctx
        .upload("h", TensorDesc::new(DType::U32, [64]), &[0u8; 256])
        .unwrap();
    let table = ctx.upload_f32("t", &[4, 8], &[0.0; 32]).unwrap();
    let mut g = Graph::new();
    let ins = [g.external("h", &hist), g.external("t", &table)];
    let err = g
        .add1(EmbeddingRows { rows: 17 }, &ins)
        .expect_err("17 rows accepted");
    assert!(err.to_string().contains("1 ..= 16"), "{err}");
    assert!(Step::batch(&[RowStep::default(); 17]).is_err());
}
