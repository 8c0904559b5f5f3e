//! The masked top-k + sampler (`TopKSample { masked: true }`, constrained decoding) against its
//! CPU reference: disallowed logits dropped (`mask_logits_cpu`), then `topk_cpu`, then
//! `sample_cpu`. Every kernel variant, ragged vocabularies, masks with one, few and many
//! allowed tokens and stray bits past the vocabulary; outputs poisoned first.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::sample::{mask_logits_cpu, sample_cpu, SamplerParams, TopKSample};
use fado::ops::topk::topk_cpu;
use fado::ops::{Op, Step};
use fado::tensor::{DType, TensorDesc};

fn upload_u32(ctx: &Arc<GpuContext>, name: &str, words: &[u32]) -> fado::tensor::Tensor {
    ctx.upload(
        name,
        TensorDesc::new(DType::U32, [words.len()]),
        bytemuck::cast_slice(words),
    )
    .expect("upload")
}

/// A mask over `v` tokens with each allowed with probability `p` (at least `min_one`: token
/// `forced` always allowed), plus every bit past `v` in the last word set (must be ignored).
fn random_mask(rng: &mut Rng, v: usize, p: f32, forced: Option<usize>) -> Vec<u32> {
    let mut m = vec![0u32; v.div_ceil(32)];
    for i in 0..v {
        if rng.uniform(0.0, 1.0) < p {
            m[i >> 5] |= 1 << (i & 31);
        }
    }
    if let Some(i) = forced {
        m[i >> 5] |= 1 << (i & 31);
    }
    if !v.is_multiple_of(32) {
        *m.last_mut().unwrap() |= !0u32 << (v % 32);
    }
    m
}

/// Run the masked TopKSample at `kv_len` and compare its candidates and the token it wrote.
fn check(
    ctx: &Arc<GpuContext>,
    logits: &[f32],
    mask: &[u32],
    k: usize,
    sp: &SamplerParams,
    what: &str,
) {
    let v = logits.len();
    let kv_len = 5u32;
    let lt = ctx.upload_f32("logits", &[1, v], logits).unwrap();
    let params = upload_u32(ctx, "params", &sp.words());
    let history = upload_u32(ctx, "history", &[0xdead_beef; 8]);
    let mt = upload_u32(ctx, "mask", mask);
    let mut g = Graph::new();
    let ins = [
        g.external("logits", &lt),
        g.external("params", &params),
        g.external("history", &history),
        g.external("mask", &mt),
    ];
    let out = g.add1(TopKSample { k, masked: true }, &ins).unwrap();
    let exe = g.compile(ctx, &[out]).expect("compile");
    ctx.poison(exe.tensor(out)).expect("poison");
    let step = Step {
        pos: kv_len - 1,
        kv_len,
        ..Step::default()
    };
    let bytes = exe.run_read(step, out, (8 * k) as u64).expect("run");
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
    let (ids, vals) = topk_cpu(&mask_logits_cpu(logits, mask), k);
    let mut want = ids;
    want.extend(vals.iter().map(|x| x.to_bits()));
    assert_eq!(words, want, "{what}: candidates (k {k}, V {v})");
    let h: Vec<u32> =
        bytemuck::pod_collect_to_vec(&ctx.read_bytes(&history, 0, 32).expect("read history"));
    assert_eq!(
        h[kv_len as usize],
        sample_cpu(&want, sp, kv_len),
        "{what}: sampled token"
    );
}

#[test]
fn masked_topk_sample_matches_reference_on_every_variant() {
    let mut rng = Rng::new(2020);
    for (name, ctx) in variant_contexts() {
        for v in [5003usize, 49_152] {
            let logits = rng.vec(v, 4.0);
            // The best logit disallowed on purpose: the mask, not the logits, decides.
            let best = topk_cpu(&logits, 1).0[0] as usize;
            let one = (best + 7) % v;
            let cases = [
                ("one allowed", random_mask(&mut rng, v, 0.0, Some(one))),
                ("few allowed", random_mask(&mut rng, v, 0.002, Some(one))),
                ("many allowed", random_mask(&mut rng, v, 0.9, None)),
            ];
            for (case, mask) in &cases {
                for (k, t) in [(1, 0.0), (40, 0.8)] {
                    let what = format!("{name}, {case}, V {v}, temperature {t}");
                    check(
                        &ctx,
                        &logits,
                        mask,
                        k,
                        &sampler_params(t, 0, 0.95, 0.0, 9),
                        &what,
                    );
                }
            }
        }
    }
}

#[test]
fn masked_topk_sample_rejects_a_short_mask() {
    let ctx = ctx();
    let v = 100;
    let lt = ctx.upload_f32("logits", &[1, v], &vec![0.0; v]).unwrap();
    let params = upload_u32(
        &ctx,
        "params",
        &sampler_params(0.0, 0, 0.95, 0.0, 1).words(),
    );
    let history = upload_u32(&ctx, "history", &[0; 4]);
    let short = upload_u32(&ctx, "mask", &[0; 3]); // needs ceil(100 / 32) = 4 words
    let descs = [&lt.desc, &params.desc, &history.desc, &short.desc];
    let err = TopKSample { k: 1, masked: true }
        .infer(&descs)
        .expect_err("a 3-word mask for 100 logits");
    assert!(format!("{err}").contains("mask"), "{err}");
}
