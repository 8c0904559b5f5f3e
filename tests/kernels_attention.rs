//! RoPE + KV-cache write and causal attention (prefill and split-K decode) against their CPU
//! references, with ragged shapes, GQA, continued caches and stale garbage past `kv_len`.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::attention::{attention_cpu, Attention, AttentionSplit, DecodeSplit};
use fado::ops::rope::{rope_cpu, RopeKv};
use fado::ops::{Op, Step};
use fado::tensor::{DType, Tensor, TensorDesc};

/// Attention on f32 data: max |error| relative to the largest output.
const ATTN_RTOL: f32 = 1e-4;
/// RoPE in f32 (the angle is rounded exactly as the reference does; sin/cos differ by ulps).
const ROPE_ATOL: f32 = 2e-5;

/// Compile `op` over `inputs`, poison its outputs, run `steps` in order (the outputs are
/// poisoned before each) and return the outputs of the last run.
fn run_steps(
    ctx: &Arc<GpuContext>,
    op: impl Op + 'static,
    inputs: &[&Tensor],
    steps: &[Step],
) -> Vec<f32> {
    let mut g = Graph::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.external(format!("in{i}"), t))
        .collect();
    let outs = g.add(op, &ids).expect("op rejected valid inputs");
    let exe = g.compile(ctx, &outs).expect("compile");
    for s in steps {
        for o in &outs {
            ctx.poison(exe.tensor(*o)).expect("poison");
        }
        exe.run(*s).expect("run");
    }
    exe.read_f32(outs[0]).expect("read")
}

struct RopeCase {
    hq: usize,
    hkv: usize,
    d: usize,
    t: usize,
    pos: usize,
    cap: usize,
}

const ROPE_CASES: &[RopeCase] = &[
    RopeCase {
        hq: 4,
        hkv: 4,
        d: 64,
        t: 7,
        pos: 0,
        cap: 16,
    },
    RopeCase {
        hq: 6,
        hkv: 2,
        d: 128,
        t: 33,
        pos: 5,
        cap: 64,
    },
    RopeCase {
        hq: 3,
        hkv: 1,
        d: 64,
        t: 1,
        pos: 199,
        cap: 300,
    },
    RopeCase {
        hq: 8,
        hkv: 2,
        d: 36,
        t: 5,
        pos: 1000,
        cap: 1003,
    }, // 2 tokens past the cache
];

#[test]
fn rope_kv_matches_reference_in_both_layouts_and_fills_only_its_cache_rows() {
    let ctx = ctx();
    let mut rng = Rng::new(11);
    for c in ROPE_CASES {
        for interleaved in [false, true] {
            for dtype in [DType::F32, DType::F16] {
                let what = format!(
                    "rope hq {} hkv {} d {} t {} pos {} cap {} interleaved {interleaved} {dtype}",
                    c.hq, c.hkv, c.d, c.t, c.pos, c.cap
                );
                let (qw, kw) = (c.hq * c.d, c.hkv * c.d);
                let width = qw + 2 * kw;
                let qkv = rng.vec(c.t * width, 2.0);
                let freqs = inv_freq(c.d, 10000.0);
                let stale_k = rng.vec(c.cap * kw, 9.0);
                let stale_v = rng.vec(c.cap * kw, 9.0);
                let kc = upload_cache(&ctx, "k", [c.cap, c.hkv, c.d], &stale_k, dtype);
                let vc = upload_cache(&ctx, "v", [c.cap, c.hkv, c.d], &stale_v, dtype);
                let op = RopeKv {
                    n_heads: c.hq,
                    n_kv_heads: c.hkv,
                    head_dim: c.d,
                    interleaved,
                };
                let got_q = run_steps(
                    &ctx,
                    op,
                    &[
                        &upload("qkv", &[c.t, width], &qkv),
                        &upload("inv_freq", &[c.d / 2], &freqs),
                        &kc,
                        &vc,
                    ],
                    &[Step::new(c.pos as u32, c.t as u32)],
                );
                let positions: Vec<u32> = (0..c.t).map(|i| (c.pos + i) as u32).collect();
                let part = |lo: usize, hi: usize| -> Vec<f32> {
                    qkv.chunks(width).flat_map(|r| r[lo..hi].to_vec()).collect()
                };
                let want_q = rope_cpu(&part(0, qw), &positions, &freqs, c.d, interleaved);
                assert_close(&format!("{what}: q"), &got_q, &want_q, F32_RTOL, ROPE_ATOL);

                let want_k_rows =
                    rope_cpu(&part(qw, qw + kw), &positions, &freqs, c.d, interleaved);
                let v_rows = part(qw + kw, width);
                let (mut want_k, mut want_v) = (stale_k.clone(), stale_v.clone());
                if dtype == DType::F16 {
                    want_k = f16_round(&want_k);
                    want_v = f16_round(&want_v);
                }
                for i in 0..c.t {
                    let row = c.pos + i;
                    if row < c.cap {
                        want_k[row * kw..(row + 1) * kw]
                            .copy_from_slice(&want_k_rows[i * kw..(i + 1) * kw]);
                        want_v[row * kw..(row + 1) * kw]
                            .copy_from_slice(&v_rows[i * kw..(i + 1) * kw]);
                    }
                }
                let (rtol, atol) = if dtype == DType::F16 {
                    (F16_RTOL, 1e-3)
                } else {
                    (F32_RTOL, ROPE_ATOL)
                };
                assert_close(
                    &format!("{what}: k_cache"),
                    &read_cache(&ctx, &kc),
                    &want_k,
                    rtol,
                    atol,
                );
                assert_close(
                    &format!("{what}: v_cache"),
                    &read_cache(&ctx, &vc),
                    &want_v,
                    rtol,
                    atol,
                );
            }
        }
    }
}

#[test]
fn rope_layouts_agree_up_to_the_pair_permutation() {
    // The interleaved kernel on a head permuted as GGUF stores it equals the permuted output
    // of the rotate-half kernel: the two layouts are the same rotation.
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let (hq, hkv, d, t) = (2usize, 1usize, 64usize, 9usize);
    let width = (hq + 2 * hkv) * d;
    let x = rng.vec(t * width, 1.0);
    let perm = |row: &[f32]| -> Vec<f32> {
        row.chunks(d)
            .flat_map(|h| (0..d / 2).flat_map(move |i| [h[i], h[i + d / 2]]))
            .collect()
    };
    let xp: Vec<f32> = x.chunks(width).flat_map(perm).collect();
    let freqs = inv_freq(d, 500000.0);
    let run = |data: &[f32], interleaved: bool| {
        let kc = upload_cache(&ctx, "k", [t, hkv, d], &vec![0.0; t * hkv * d], DType::F32);
        let vc = upload_cache(&ctx, "v", [t, hkv, d], &vec![0.0; t * hkv * d], DType::F32);
        run_steps(
            &ctx,
            RopeKv {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                interleaved,
            },
            &[
                &upload("qkv", &[t, width], data),
                &upload("f", &[d / 2], &freqs),
                &kc,
                &vc,
            ],
            &[Step::new(3, t as u32)],
        )
    };
    let half = run(&x, false);
    let inter = run(&xp, true);
    let half_permuted: Vec<f32> = half.chunks(hq * d).flat_map(perm).collect();
    assert_close(
        "interleaved vs permuted rotate-half",
        &inter,
        &half_permuted,
        F32_RTOL,
        ROPE_ATOL,
    );
}

struct AttnCase {
    hq: usize,
    hkv: usize,
    d: usize,
    t: usize,
    pos: usize,
    cap: usize,
}

/// Prefill cases: head_dim 64 and 128 (and an odd multiple of 4), GQA ratios 1, 3 and 4,
/// T of 7, 33 and 200, caches continued at pos > 0, capacity past kv_len.
const PREFILL_CASES: &[AttnCase] = &[
    AttnCase {
        hq: 4,
        hkv: 4,
        d: 64,
        t: 7,
        pos: 0,
        cap: 7,
    },
    AttnCase {
        hq: 6,
        hkv: 2,
        d: 64,
        t: 33,
        pos: 0,
        cap: 40,
    },
    AttnCase {
        hq: 8,
        hkv: 2,
        d: 128,
        t: 33,
        pos: 17,
        cap: 64,
    },
    AttnCase {
        hq: 3,
        hkv: 1,
        d: 128,
        t: 200,
        pos: 0,
        cap: 211,
    },
    AttnCase {
        hq: 4,
        hkv: 1,
        d: 64,
        t: 200,
        pos: 45,
        cap: 256,
    },
    AttnCase {
        hq: 2,
        hkv: 2,
        d: 36,
        t: 7,
        pos: 3,
        cap: 12,
    },
    AttnCase {
        hq: 8,
        hkv: 2,
        d: 256,
        t: 9,
        pos: 30,
        cap: 50,
    },
];

/// Caches `[cap, hkv, d]`: valid rows random, rows at and past `kv_len` NaN (stale garbage that
/// must never reach an output).
fn garbage_caches(
    rng: &mut Rng,
    cap: usize,
    hkv: usize,
    d: usize,
    kv_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut k = rng.vec(cap * hkv * d, 1.0);
    let mut v = rng.vec(cap * hkv * d, 1.0);
    for x in k[kv_len * hkv * d..]
        .iter_mut()
        .chain(v[kv_len * hkv * d..].iter_mut())
    {
        *x = f32::NAN;
    }
    (k, v)
}

fn check_attention(
    ctx: &Arc<GpuContext>,
    rng: &mut Rng,
    c: &AttnCase,
    dtype: DType,
    split: Option<DecodeSplit>,
    steps_before: &[Step],
) {
    let kv_len = c.pos + c.t;
    let (mut k, mut v) = garbage_caches(rng, c.cap, c.hkv, c.d, kv_len);
    // Sharper scores than uniform: softmax far from flat.
    let q = rng.vec(c.t * c.hq * c.d, 1.5);
    let kc = upload_cache(ctx, "k", [c.cap, c.hkv, c.d], &k, dtype);
    let vc = upload_cache(ctx, "v", [c.cap, c.hkv, c.d], &v, dtype);
    if dtype == DType::F16 {
        k = f16_round(&k);
        v = f16_round(&v);
    }
    let scale = 1.0 / (c.d as f32).sqrt();
    let attn = Attention {
        n_heads: c.hq,
        n_kv_heads: c.hkv,
        head_dim: c.d,
        scale,
    };
    let qt = ctx.upload_f32("q", &[c.t, c.hq * c.d], &q).unwrap();
    let inputs = [&qt, &kc, &vc];
    let mut steps = steps_before.to_vec();
    steps.push(Step::new(c.pos as u32, c.t as u32));
    let got = match split {
        Some(split) => run_steps(ctx, AttentionSplit { attn, split }, &inputs, &steps),
        None => run_steps(ctx, attn, &inputs, &steps),
    };
    let want = attention_cpu(&q, &k, &v, c.t, c.pos, c.hq, c.hkv, c.d, scale);
    let what = format!(
        "attention hq {} hkv {} d {} t {} pos {} cap {} {dtype} split {split:?}",
        c.hq, c.hkv, c.d, c.t, c.pos, c.cap
    );
    assert_close_rel_max(&what, &got, &want, ATTN_RTOL);
}

#[test]
fn prefill_attention_matches_reference_with_gqa_and_continued_caches() {
    let ctx = ctx();
    let mut rng = Rng::new(21);
    for c in PREFILL_CASES {
        check_attention(&ctx, &mut rng, c, DType::F32, None, &[]);
    }
}

#[test]
fn prefill_attention_reads_f16_caches() {
    let ctx = ctx();
    let mut rng = Rng::new(22);
    for c in &PREFILL_CASES[1..3] {
        check_attention(&ctx, &mut rng, c, DType::F16, None, &[]);
    }
}

/// Decode at kv_len 1, 7, 33 and 200 (pos = kv_len − 1), GQA 1, 3, 4, head_dim 64 and 128.
const DECODE_CASES: &[AttnCase] = &[
    AttnCase {
        hq: 4,
        hkv: 4,
        d: 64,
        t: 1,
        pos: 0,
        cap: 5,
    },
    AttnCase {
        hq: 6,
        hkv: 2,
        d: 128,
        t: 1,
        pos: 6,
        cap: 7,
    },
    AttnCase {
        hq: 8,
        hkv: 2,
        d: 64,
        t: 1,
        pos: 32,
        cap: 100,
    },
    AttnCase {
        hq: 3,
        hkv: 1,
        d: 128,
        t: 1,
        pos: 199,
        cap: 333,
    },
    AttnCase {
        hq: 4,
        hkv: 1,
        d: 36,
        t: 1,
        pos: 199,
        cap: 200,
    },
    AttnCase {
        hq: 8,
        hkv: 2,
        d: 256,
        t: 1,
        pos: 70,
        cap: 80,
    },
];

#[test]
fn decode_attention_matches_reference_for_every_chunking() {
    // The CPU-style decode kernel (subgroup per head, no workgroup memory) where head_dim
    // allows, and the tiled one.
    for (label, ctx) in &variant_contexts()[..2] {
        let calls = Attention {
            n_heads: 8,
            n_kv_heads: 2,
            head_dim: 64,
            scale: 1.0,
        }
        .kernels(
            &ctx.caps,
            &[
                &TensorDesc::f32([1, 8 * 64]),
                &TensorDesc::f32([16, 2, 64]),
                &TensorDesc::f32([16, 2, 64]),
            ],
        )
        .unwrap();
        let rows = ctx.caps.subgroups && ctx.caps.subgroup_min == ctx.caps.subgroup_max;
        assert_eq!(calls[0].entry == "attn_rows", *label == "cpu-style" && rows);
        decode_attention_cases(ctx);
    }
}

fn decode_attention_cases(ctx: &Arc<GpuContext>) {
    let mut rng = Rng::new(31);
    let splits = [
        DecodeSplit {
            chunks: 1,
            min_chunk: 1,
        },
        DecodeSplit {
            chunks: 3,
            min_chunk: 1,
        },
        DecodeSplit {
            chunks: 8,
            min_chunk: 16,
        },
        DecodeSplit {
            chunks: 32,
            min_chunk: 4,
        },
    ];
    for c in DECODE_CASES {
        for split in splits {
            check_attention(ctx, &mut rng, c, DType::F32, Some(split), &[]);
        }
        // The default split for the capacity.
        check_attention(ctx, &mut rng, c, DType::F32, None, &[]);
    }
}

#[test]
fn decode_attention_ignores_stale_chunks_from_a_longer_earlier_step() {
    // A first run at full capacity fills every chunk's scratch; the second, shorter run leaves
    // most chunks empty and must not read them.
    for (_, ctx) in &variant_contexts()[..2] {
        stale_chunks_case(ctx);
    }
}

fn stale_chunks_case(ctx: &Arc<GpuContext>) {
    let mut rng = Rng::new(32);
    let c = AttnCase {
        hq: 4,
        hkv: 2,
        d: 64,
        t: 1,
        pos: 9,
        cap: 256,
    };
    let split = DecodeSplit {
        chunks: 16,
        min_chunk: 1,
    };
    let first = Step::new(255, 1);
    check_attention(ctx, &mut rng, &c, DType::F32, Some(split), &[first]);
    check_attention(ctx, &mut rng, &c, DType::F16, Some(split), &[first]);
}

#[test]
fn attention_matches_reference_on_a_device_without_subgroups() {
    let ctx = GpuContext::new(&fado::gpu::GpuOptions {
        disable_subgroups: true,
        ..fado::gpu::GpuOptions::from_env()
    })
    .unwrap();
    let mut rng = Rng::new(33);
    check_attention(
        &ctx,
        &mut rng,
        &DECODE_CASES[2],
        DType::F32,
        Some(DecodeSplit {
            chunks: 4,
            min_chunk: 2,
        }),
        &[],
    );
    check_attention(&ctx, &mut rng, &PREFILL_CASES[2], DType::F32, None, &[]);
}

#[test]
fn attention_rejects_mismatched_shapes_with_named_errors() {
    let attn = Attention {
        n_heads: 6,
        n_kv_heads: 4,
        head_dim: 64,
        scale: 0.125,
    };
    let q = TensorDesc::f32([3, 384]);
    let kc = TensorDesc::f32([16, 4, 64]);
    let err = attn.infer(&[&q, &kc, &kc]).unwrap_err().to_string();
    assert!(
        err.contains("attention") && err.contains("kv heads"),
        "{err}"
    );
    let attn = Attention {
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 64,
        scale: 0.125,
    };
    let bad_cache = TensorDesc::f32([16, 2, 64]);
    let err = attn
        .infer(&[&TensorDesc::f32([3, 512]), &bad_cache, &bad_cache])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("k_cache") && err.contains("[capacity, 4, 64]"),
        "{err}"
    );
    let rope = RopeKv {
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 64,
        interleaved: false,
    };
    let err = rope
        .infer(&[
            &TensorDesc::f32([3, 1000]),
            &TensorDesc::f32([32]),
            &kc,
            &kc,
        ])
        .unwrap_err()
        .to_string();
    assert!(err.contains("qkv") && err.contains("1024"), "{err}");
}

#[test]
fn rope_then_attention_prefill_and_decode_steps_continue_one_cache() {
    // The layer's real sequence: fused QKV rows → RopeKv (q out, K/V into the cache) → Attention,
    // in one graph; a prefill of 13 tokens, then decode steps reusing the same cache.
    let ctx = ctx();
    let mut rng = Rng::new(51);
    let (hq, hkv, d, cap) = (6usize, 2usize, 64usize, 40usize);
    let width = (hq + 2 * hkv) * d;
    let freqs = inv_freq(d, 10000.0);
    let scale = 1.0 / (d as f32).sqrt();
    let nan = vec![f32::NAN; cap * hkv * d];
    let kc = upload_cache(&ctx, "k", [cap, hkv, d], &nan, DType::F32);
    let vc = upload_cache(&ctx, "v", [cap, hkv, d], &nan, DType::F32);
    let inv = upload("inv_freq", &[d / 2], &freqs);
    let (mut ref_k, mut ref_v) = (nan.clone(), nan.clone());
    let mut pos = 0usize;
    for t in [13usize, 1, 1, 1, 5, 1] {
        let qkv = rng.vec(t * width, 1.5);
        let qkv_t = upload("qkv", &[t, width], &qkv);
        let mut g = Graph::new();
        let ins: Vec<_> = [&qkv_t, &inv, &kc, &vc]
            .iter()
            .enumerate()
            .map(|(i, x)| g.external(format!("in{i}"), x))
            .collect();
        let rope = RopeKv {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            interleaved: false,
        };
        let q = g.add1(rope, &ins).unwrap();
        let attn = Attention {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            scale,
        };
        let out = g.add1(attn, &[q, ins[2], ins[3]]).unwrap();
        let exe = g.compile(&ctx, &[out]).unwrap();
        ctx.poison(exe.tensor(out)).expect("poison");
        exe.run(Step::new(pos as u32, t as u32)).unwrap();
        let got = exe.read_f32(out).unwrap();

        let positions: Vec<u32> = (pos..pos + t).map(|p| p as u32).collect();
        let part = |lo: usize, hi: usize| -> Vec<f32> {
            qkv.chunks(width).flat_map(|r| r[lo..hi].to_vec()).collect()
        };
        let (qw, kw) = (hq * d, hkv * d);
        let q_ref = rope_cpu(&part(0, qw), &positions, &freqs, d, false);
        let k_rows = rope_cpu(&part(qw, qw + kw), &positions, &freqs, d, false);
        ref_k[pos * kw..(pos + t) * kw].copy_from_slice(&k_rows);
        ref_v[pos * kw..(pos + t) * kw].copy_from_slice(&part(qw + kw, width));
        let want = attention_cpu(&q_ref, &ref_k, &ref_v, t, pos, hq, hkv, d, scale);
        assert_close_rel_max(
            &format!("rope→attention t {t} at pos {pos}"),
            &got,
            &want,
            ATTN_RTOL,
        );
        pos += t;
    }
}

/// Run a compiled single-op graph a few times and report the best time per kernel entry
/// (GPU timestamps when the device has them, else wall clock around a synced run).
fn time_op(
    ctx: &Arc<GpuContext>,
    op: impl Op + 'static,
    inputs: &[&Tensor],
    step: Step,
) -> Vec<(String, f64)> {
    let mut g = Graph::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.external(format!("in{i}"), t))
        .collect();
    let outs = g.add(op, &ids).unwrap();
    let exe = g.compile(ctx, &outs).unwrap();
    exe.run(step).unwrap();
    ctx.sync().unwrap();
    let mut best: Vec<(String, f64)> = Vec::new();
    for _ in 0..5 {
        let entries = if ctx.caps.timestamps {
            exe.run_profiled(step)
                .unwrap()
                .entries
                .into_iter()
                .map(|(_, e, s)| (e, s))
                .collect()
        } else {
            let t0 = std::time::Instant::now();
            exe.run(step).unwrap();
            ctx.sync().unwrap();
            vec![("total".to_string(), t0.elapsed().as_secs_f64())]
        };
        if best.is_empty() {
            best = entries;
        } else {
            for (b, (_, s)) in best.iter_mut().zip(entries) {
                b.1 = b.1.min(s);
            }
        }
    }
    best
}

/// Timings of one Llama-3-8B layer's RoPE and attention (Hq 32, Hkv 8, D 128, f32 and f16
/// caches of 4096 rows): `cargo test --release --test kernels_attention -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_timings_llama3_8b_layer() {
    let ctx = ctx();
    let mut rng = Rng::new(99);
    let (hq, hkv, d, cap) = (32usize, 8usize, 128usize, 4096usize);
    println!("device: {}", ctx.adapter_name());
    for dtype in [DType::F32, DType::F16] {
        let kv = rng.vec(cap * hkv * d, 1.0);
        let kc = upload_cache(&ctx, "k", [cap, hkv, d], &kv, dtype);
        let vc = upload_cache(&ctx, "v", [cap, hkv, d], &kv, dtype);
        let scale = 1.0 / (d as f32).sqrt();
        let attn = Attention {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            scale,
        };
        for &(t, pos) in &[(512usize, 0usize), (1, 511), (1, 4095)] {
            let q = upload("q", &[t, hq * d], &rng.vec(t * hq * d, 1.0));
            let r = time_op(
                &ctx,
                attn.clone(),
                &[&q, &kc, &vc],
                Step::new(pos as u32, t as u32),
            );
            println!("attention {dtype} T {t} kv_len {}: {r:?}", pos + t);
        }
        let t = 512;
        let qkv = upload(
            "qkv",
            &[t, (hq + 2 * hkv) * d],
            &rng.vec(t * (hq + 2 * hkv) * d, 1.0),
        );
        let inv = upload("inv_freq", &[d / 2], &inv_freq(d, 500000.0));
        let rope = RopeKv {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            interleaved: false,
        };
        let r = time_op(&ctx, rope, &[&qkv, &inv, &kc, &vc], Step::new(0, t as u32));
        println!("rope_kv {dtype} T {t}: {r:?}");
    }
}
