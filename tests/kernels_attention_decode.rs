//! The fused decode attention (`AttentionDecode`: RoPE + KV-cache write + split attention +
//! reduce) against the CPU references of the ops it replaces (`rope_cpu` then `attention_cpu`),
//! in every kernel style, f32 and f16 caches, GQA 3 and 4 and none, head_dim 64 and 128, both
//! RoPE layouts; positions 0, 1, chunk boundaries, long caches, past the capacity; consecutive
//! steps reading each other's rows; the `sync` counters left zero; the dispatch counts.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::{Executable, Graph, TensorId};
use fado::ops::attention::{attention_cpu, Attention, DecodeSplit};
use fado::ops::attention_decode::{AttentionDecode, AttentionDecodeSplit};
use fado::ops::rope::{rope_cpu, RopeKv};
use fado::ops::{Op, Step};
use fado::tensor::{DType, Tensor, TensorDesc};

/// Attention on f32 data: max |error| relative to the largest output.
const ATTN_RTOL: f32 = 1e-4;
/// RoPE in f32 (the angle is rounded exactly as the reference does; sin/cos differ by ulps).
const ROPE_ATOL: f32 = 2e-5;

/// One layer's shape.
#[derive(Clone, Copy, Debug)]
struct Layer {
    hq: usize,
    hkv: usize,
    d: usize,
    cap: usize,
    dtype: DType,
    interleaved: bool,
}

impl Layer {
    fn width(&self) -> usize {
        (self.hq + 2 * self.hkv) * self.d
    }
    fn op(&self) -> AttentionDecode {
        AttentionDecode {
            n_heads: self.hq,
            n_kv_heads: self.hkv,
            head_dim: self.d,
            scale: 1.0 / (self.d as f32).sqrt(),
            interleaved: self.interleaved,
        }
    }
}

/// A compiled `AttentionDecode` over persistent inputs, run step after step, and the cache
/// contents it must leave (`k`, `v`: what the host wrote plus the rows the kernel wrote).
struct Rig {
    ctx: Arc<GpuContext>,
    l: Layer,
    exe: Executable,
    out: TensorId,
    qkv: Tensor,
    kc: Tensor,
    vc: Tensor,
    sync: Tensor,
    freqs: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Words of the shared `sync` buffer: more than the kv heads (as a buffer shared by layers of
/// different shapes would be); every word must stay zero.
fn sync_words(hkv: usize) -> usize {
    hkv + 3
}

impl Rig {
    fn new(ctx: &Arc<GpuContext>, l: Layer, split: Option<DecodeSplit>) -> Rig {
        let n = l.cap * l.hkv * l.d;
        let freqs = inv_freq(l.d, 10000.0);
        let up =
            |name: &str, desc: TensorDesc, bytes: &[u8]| ctx.upload(name, desc, bytes).unwrap();
        let nan = vec![f32::NAN; n];
        let cdesc = TensorDesc::new(l.dtype, [l.cap, l.hkv, l.d]);
        let qkv = up(
            "qkv",
            TensorDesc::f32([1, l.width()]),
            &vec![0; l.width() * 4],
        );
        let inv = up(
            "inv_freq",
            TensorDesc::f32([l.d / 2]),
            bytemuck::cast_slice(&freqs),
        );
        let kc = up("k", cdesc.clone(), &cache_bytes(&nan, l.dtype));
        let vc = up("v", cdesc, &cache_bytes(&nan, l.dtype));
        let words = sync_words(l.hkv);
        let sync = up(
            "sync",
            TensorDesc::new(DType::U32, [words]),
            &vec![0; words * 4],
        );
        let mut g = Graph::new();
        let ids: Vec<_> = [&qkv, &inv, &kc, &vc, &sync]
            .iter()
            .enumerate()
            .map(|(i, t)| g.external(format!("in{i}"), t))
            .collect();
        let out = match split {
            Some(split) => g.add1(AttentionDecodeSplit { op: l.op(), split }, &ids),
            None => g.add1(l.op(), &ids),
        }
        .expect("op rejected valid inputs");
        let exe = g.compile(ctx, &[out]).expect("compile");
        Rig {
            ctx: ctx.clone(),
            l,
            exe,
            out,
            qkv,
            kc,
            vc,
            sync,
            freqs,
            k: nan.clone(),
            v: nan,
        }
    }

    /// Fresh caches for a step at `pos`: rows before it random, the rest NaN (stale garbage
    /// that must never reach an output).
    fn fresh_cache(&mut self, rng: &mut Rng, pos: usize) {
        let (l, row) = (self.l, self.l.hkv * self.l.d);
        let valid = pos.min(l.cap) * row;
        for (i, (k, v)) in self.k.iter_mut().zip(self.v.iter_mut()).enumerate() {
            (*k, *v) = if i < valid {
                (rng.normal(), rng.normal())
            } else {
                (f32::NAN, f32::NAN)
            };
        }
        if l.dtype == DType::F16 {
            self.k = f16_round(&self.k);
            self.v = f16_round(&self.v);
        }
        self.ctx
            .write(&self.kc, 0, &cache_bytes(&self.k, l.dtype))
            .unwrap();
        self.ctx
            .write(&self.vc, 0, &cache_bytes(&self.v, l.dtype))
            .unwrap();
    }

    /// Run the token at `pos` with a random qkv row and check the output, both caches (row
    /// `pos` as RopeKv writes it, every other row unchanged) and `sync`.
    fn step(&mut self, rng: &mut Rng, pos: usize, what: &str) {
        let (l, ctx) = (self.l, self.ctx.clone());
        let (qw, kw) = (l.hq * l.d, l.hkv * l.d);
        let qkv = rng.vec(l.width(), 1.5);
        ctx.write(&self.qkv, 0, bytemuck::cast_slice(&qkv)).unwrap();
        ctx.poison(self.exe.tensor(self.out)).unwrap();
        self.exe.run(Step::new(pos as u32, 1)).unwrap();
        let got = self.exe.read_f32(self.out).unwrap();
        let (got_k, got_v) = (read_cache(&ctx, &self.kc), read_cache(&ctx, &self.vc));
        let what = format!("{what} pos {pos}");

        let p = [pos as u32];
        let q = rope_cpu(&qkv[..qw], &p, &self.freqs, l.d, l.interleaved);
        let k_row = rope_cpu(&qkv[qw..qw + kw], &p, &self.freqs, l.d, l.interleaved);
        let v_row = &qkv[qw + kw..];
        let (rtol, atol) = match l.dtype {
            DType::F16 => (F16_RTOL, 1e-3),
            _ => (F32_RTOL, ROPE_ATOL),
        };
        let written = pos < l.cap;
        let rows = |c: &[f32], skip: bool| -> Vec<u32> {
            c.iter()
                .enumerate()
                .filter(|(i, _)| !skip || i / kw != pos)
                .map(|(_, x)| if x.is_nan() { u32::MAX } else { x.to_bits() })
                .collect()
        };
        assert!(
            rows(&got_k, written) == rows(&self.k, written),
            "{what}: k_cache rows other than pos changed"
        );
        assert!(
            rows(&got_v, written) == rows(&self.v, written),
            "{what}: v_cache rows other than pos changed"
        );
        if written {
            let at = pos * kw..(pos + 1) * kw;
            assert_close(
                &format!("{what}: k row"),
                &got_k[at.clone()],
                &k_row,
                rtol,
                atol,
            );
            assert_close(
                &format!("{what}: v row"),
                &got_v[at.clone()],
                v_row,
                rtol,
                atol,
            );
            // The reference reads what the kernel wrote (f16-rounded in place): the row's own
            // accuracy is checked above, the attention's here.
            self.k[at.clone()].copy_from_slice(&got_k[at.clone()]);
            self.v[at.clone()].copy_from_slice(&got_v[at]);
        }
        // Past the capacity the keys are the cache's rows (Attention's clamp), nothing written.
        let last = pos.min(l.cap - 1);
        let want = attention_cpu(
            &q,
            &self.k,
            &self.v,
            1,
            last,
            l.hq,
            l.hkv,
            l.d,
            1.0 / (l.d as f32).sqrt(),
        );
        assert_close_rel_max(&format!("{what}: out"), &got, &want, ATTN_RTOL);
        let words = ctx
            .read_bytes(&self.sync, 0, (sync_words(l.hkv) * 4) as u64)
            .unwrap();
        assert!(words.iter().all(|b| *b == 0), "{what}: sync not all zero");
    }
}

/// Positions of one cache of 1100 rows (default split: 9 chunks of at least 32 rows) and
/// whether the step starts from a fresh cache (else it continues the previous step's). 31/32
/// and 63/64: the last chunk holds one row (the new one); 1099: the last row; 1100: past the
/// capacity; 5 after 1100: a short step after long ones (stale partials in scratch).
const STEPS: &[(usize, bool)] = &[
    (0, true),
    (1, false),
    (31, true),
    (32, false),
    (63, true),
    (64, false),
    (300, true),
    (301, false),
    (1000, true),
    (1098, true),
    (1099, false),
    (1100, true),
    (5, true),
];

#[test]
fn decode_matches_rope_then_attention_in_every_kernel_style() {
    for (style, ctx) in variant_contexts() {
        let mut rng = Rng::new(41);
        for (hq, hkv) in [(9, 3), (32, 8), (4, 4)] {
            for d in [64, 128] {
                for dtype in [DType::F32, DType::F16] {
                    let l = Layer {
                        hq,
                        hkv,
                        d,
                        cap: 1100,
                        dtype,
                        interleaved: (d == 128) != (dtype == DType::F16),
                    };
                    let mut rig = Rig::new(&ctx, l, None);
                    for &(pos, fresh) in STEPS {
                        if fresh {
                            rig.fresh_cache(&mut rng, pos);
                        }
                        rig.step(&mut rng, pos, &format!("{style} {l:?}"));
                    }
                }
            }
        }
    }
}

#[test]
fn decode_counts_and_merges_any_number_of_chunks() {
    // From one chunk to 64 one-row chunks: every workgroup counts itself in sync, the last
    // merges, and the counters go back to zero each time.
    let splits = [(1, 1), (3, 1), (7, 16), (64, 1), (64, 4)];
    for (style, ctx) in variant_contexts() {
        let mut rng = Rng::new(42);
        for (i, (chunks, min_chunk)) in splits.into_iter().enumerate() {
            let l = Layer {
                hq: 8,
                hkv: 2,
                d: 64,
                cap: 256,
                dtype: if i % 2 == 0 { DType::F32 } else { DType::F16 },
                interleaved: i % 2 == 1,
            };
            let split = DecodeSplit { chunks, min_chunk };
            let mut rig = Rig::new(&ctx, l, Some(split));
            for pos in [0, 10, 63, 64, 200, 255, 3] {
                rig.fresh_cache(&mut rng, pos);
                rig.step(&mut rng, pos, &format!("{style} {split:?} {l:?}"));
            }
        }
    }
}

#[test]
fn decode_equals_the_rope_kv_and_attention_ops_it_replaces() {
    // Same inputs through RopeKv → Attention (two caches) and AttentionDecode (two more): same
    // output, same cache rows.
    let (hq, hkv, d, cap, pos) = (12usize, 4usize, 128usize, 200usize, 150usize);
    for (style, ctx) in variant_contexts() {
        for dtype in [DType::F32, DType::F16] {
            let mut rng = Rng::new(43);
            let width = (hq + 2 * hkv) * d;
            // Rows from pos on are NaN: garbage neither path may read.
            let half = cap * hkv * d;
            let mut kv = rng.vec(2 * half, 1.0);
            for part in kv.chunks_mut(half) {
                part[pos * hkv * d..].fill(f32::NAN);
            }
            let desc = TensorDesc::new(dtype, [cap, hkv, d]);
            let caches: Vec<Tensor> = (0..4)
                .map(|i| {
                    let part = &kv[(i % 2) * half..(i % 2 + 1) * half];
                    ctx.upload("c", desc.clone(), &cache_bytes(part, dtype))
                        .unwrap()
                })
                .collect();
            let qkv = upload_on(&ctx, "qkv", &[1, width], &rng.vec(width, 1.5));
            let inv = upload_on(&ctx, "f", &[d / 2], &inv_freq(d, 500000.0));
            let sync = ctx
                .upload(
                    "sync",
                    TensorDesc::new(DType::U32, [hkv]),
                    &vec![0; hkv * 4],
                )
                .unwrap();
            let interleaved = dtype == DType::F16;
            let scale = 1.0 / (d as f32).sqrt();
            let mut g = Graph::new();
            let x: Vec<_> = [
                &qkv, &inv, &caches[0], &caches[1], &caches[2], &caches[3], &sync,
            ]
            .iter()
            .enumerate()
            .map(|(i, t)| g.external(format!("in{i}"), t))
            .collect();
            let rope = RopeKv {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                interleaved,
            };
            let q = g.add1(rope, &x[..4]).unwrap();
            let attn = Attention {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                scale,
            };
            let want = g.add1(attn, &[q, x[2], x[3]]).unwrap();
            let fused = AttentionDecode {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                scale,
                interleaved,
            };
            let got = g.add1(fused, &[x[0], x[1], x[4], x[5], x[6]]).unwrap();
            let exe = g.compile(&ctx, &[want, got]).unwrap();
            ctx.poison(exe.tensor(got)).unwrap();
            exe.run(Step::new(pos as u32, 1)).unwrap();
            let what = format!("{style} {dtype}");
            let (want, got) = (exe.read_f32(want).unwrap(), exe.read_f32(got).unwrap());
            assert_close_rel_max(&format!("{what}: out"), &got, &want, ATTN_RTOL);
            for (a, b, name) in [(0, 2, "k_cache"), (1, 3, "v_cache")] {
                let (a, b) = (read_cache(&ctx, &caches[a]), read_cache(&ctx, &caches[b]));
                let bits = |c: &[f32]| -> Vec<u32> {
                    c.iter()
                        .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
                        .collect()
                };
                let row = pos * hkv * d..(pos + 1) * hkv * d;
                let (mut a_rest, mut b_rest) = (bits(&a), bits(&b));
                a_rest.drain(row.clone());
                b_rest.drain(row.clone());
                assert!(a_rest == b_rest, "{what}: {name} rows other than pos");
                let tol = if dtype == DType::F16 { 1e-3 } else { ROPE_ATOL };
                assert_close(
                    &format!("{what}: {name} row"),
                    &b[row.clone()],
                    &a[row],
                    0.0,
                    tol,
                );
            }
        }
    }
}

fn upload_on(ctx: &GpuContext, name: &str, shape: &[usize], data: &[f32]) -> Tensor {
    ctx.upload_f32(name, shape, data).unwrap()
}

fn descs(hq: usize, hkv: usize, d: usize, cap: usize) -> Vec<TensorDesc> {
    vec![
        TensorDesc::f32([1, (hq + 2 * hkv) * d]),
        TensorDesc::f32([d / 2]),
        TensorDesc::new(DType::F16, [cap, hkv, d]),
        TensorDesc::new(DType::F16, [cap, hkv, d]),
        TensorDesc::new(DType::U32, [hkv]),
    ]
}

fn entries(op: &AttentionDecode, caps: &fado::gpu::Caps, d: &[TensorDesc]) -> Vec<&'static str> {
    let refs: Vec<&TensorDesc> = d.iter().collect();
    let calls = op.kernels(caps, &refs).expect("kernels");
    calls.iter().map(|c| c.entry).collect()
}

#[test]
fn gpu_style_decode_is_one_dispatch_and_cpu_style_three() {
    let op = Layer {
        hq: 32,
        hkv: 8,
        d: 128,
        cap: 4096,
        dtype: DType::F16,
        interleaved: false,
    }
    .op();
    let d = descs(32, 8, 128, 4096);
    for (style, ctx) in variant_contexts() {
        let got = entries(&op, &ctx.caps, &d);
        if ctx.caps.cpu {
            assert_eq!(got.len(), 3, "{style}: {got:?}");
            assert_eq!(got[0], "rope_kv", "{style}");
            assert_eq!(got[2], "attn_reduce", "{style}");
        } else {
            assert_eq!(got, ["attn_decode"], "{style}");
        }
        // And the compiled graph records exactly that many dispatches.
        let l = Layer {
            hq: 4,
            hkv: 2,
            d: 64,
            cap: 8,
            dtype: DType::F32,
            interleaved: false,
        };
        let rig = Rig::new(&ctx, l, None);
        let want = if ctx.caps.cpu { 3 } else { 1 };
        assert_eq!(rig.exe.num_dispatches(), want, "{style}");
    }
    // A device whose workgroup storage holds the attention tiles but not the fused kernel's
    // extra flag: the multi-dispatch path (head_dim 4, one head: 96 bytes of tiles).
    let mut caps = ctx_variant(false, true).caps.clone();
    caps.max_workgroup_storage = 100;
    let tiny = AttentionDecode {
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 4,
        scale: 1.0,
        interleaved: false,
    };
    let got = entries(&tiny, &caps, &descs(1, 1, 4, 16));
    assert_eq!(got, ["rope_kv", "attn", "attn_reduce"]);
    caps.max_workgroup_storage = 4096;
    assert_eq!(entries(&tiny, &caps, &descs(1, 1, 4, 16)), ["attn_decode"]);
}

#[test]
fn decode_rejects_bad_inputs_with_named_errors() {
    let op = AttentionDecode {
        n_heads: 8,
        n_kv_heads: 4,
        head_dim: 64,
        scale: 0.125,
        interleaved: false,
    };
    let mut d = descs(8, 4, 64, 16);
    let err = |d: &[TensorDesc]| {
        let refs: Vec<&TensorDesc> = d.iter().collect();
        op.infer(&refs).unwrap_err().to_string()
    };
    assert!(op.infer(&d.iter().collect::<Vec<_>>()).is_ok());
    d[0] = TensorDesc::f32([2, 16 * 64]);
    let e = err(&d);
    assert!(
        e.contains("attention_decode") && e.contains("one token"),
        "{e}"
    );
    d[0] = TensorDesc::f32([1, 16 * 64]);
    d[4] = TensorDesc::new(DType::U32, [3]);
    let e = err(&d);
    assert!(e.contains("sync") && e.contains("at least 4"), "{e}");
    d[4] = TensorDesc::f32([4]);
    let e = err(&d);
    assert!(e.contains("sync") && e.contains("dtype"), "{e}");
    d[4] = TensorDesc::new(DType::U32, [4]);
    d[2] = TensorDesc::f32([16, 2, 64]);
    let e = err(&d);
    assert!(e.contains("k_cache"), "{e}");
    assert!(err(&d[..4]).contains("expected 5 inputs"));
}

#[test]
fn fused_kernel_variants_validate_and_translate_to_msl_and_hlsl() {
    // No model graph builds AttentionDecode yet, so tests/shaders_backends.rs does not see its
    // variants: the atomics and workgroupUniformLoad go through naga's back ends here.
    let caps = ctx_variant(false, true).caps.clone();
    for (hq, hkv, d) in [(9, 3, 64), (32, 8, 128), (4, 4, 36)] {
        for (dtype, interleaved) in [(DType::F32, false), (DType::F16, true)] {
            let mut ds = descs(hq, hkv, d, 300);
            ds[2] = TensorDesc::new(dtype, [300, hkv, d]);
            ds[3] = ds[2].clone();
            let op = AttentionDecode {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                scale: 0.1,
                interleaved,
            };
            let refs: Vec<&TensorDesc> = ds.iter().collect();
            let calls = op.kernels(&caps, &refs).unwrap();
            let c = &calls[0];
            let src = fado::gpu::shader::preprocess(c.shader, &c.defines).unwrap();
            let what = format!("{hq}/{hkv} d {d} {dtype}");
            translate_to(&src, c.entry, true).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}
