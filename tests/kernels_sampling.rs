//! Top-k/argmax, log-sum-exp, the logit penalties (from a host window and from the token
//! history) and the GPU sampler against their CPU references.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::{GpuContext, GpuOptions};
use fado::graph::Graph;
use fado::ops::sample::{sample_cpu, Sample, SamplerParams, SAMPLER_PARAMS_WORDS};
use fado::ops::topk::{
    logsumexp_cpu, penalize_cpu, penalize_history_cpu, topk_cpu, LogSumExp, Penalize,
    PenalizeHistory, TopK, NO_TOKEN,
};
use fado::ops::{Op, Step};
use fado::tensor::{DType, TensorDesc};

/// Run TopK on `ctx`, output poisoned first; returns (ids, values).
fn gpu_topk(ctx: &Arc<GpuContext>, logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let t = ctx
        .upload_f32("logits", &[1, logits.len()], logits)
        .unwrap();
    let mut g = Graph::new();
    let x = g.external("logits", &t);
    let out = g
        .add1(TopK { k }, &[x])
        .expect("topk rejected valid inputs");
    let exe = g.compile(ctx, &[out]).expect("compile");
    ctx.poison(exe.tensor(out)).expect("poison");
    let bytes = exe
        .run_read(Step::default(), out, (8 * k) as u64)
        .expect("run");
    let words: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
    let vals = words[k..].iter().map(|w| f32::from_bits(*w)).collect();
    (words[..k].to_vec(), vals)
}

/// Logits with many exact ties (values on a coarse grid), a few NaNs and -inf.
fn tied_logits(rng: &mut Rng, v: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..v)
        .map(|_| (rng.uniform(-8.0, 8.0) * 4.0).round() / 4.0)
        .collect();
    for _ in 0..(v / 1000).max(1) {
        let i = rng.below(v as u32) as usize;
        x[i] = f32::NAN;
        let j = rng.below(v as u32) as usize;
        x[j] = f32::NEG_INFINITY;
    }
    x
}

fn check_topk(ctx: &Arc<GpuContext>, logits: &[f32], k: usize, what: &str) {
    let (gi, gv) = gpu_topk(ctx, logits, k);
    let (wi, wv) = topk_cpu(logits, k);
    assert_eq!(gi, wi, "{what}: ids (k {k}, V {})", logits.len());
    let gb: Vec<u32> = gv.iter().map(|v| v.to_bits()).collect();
    let wb: Vec<u32> = wv.iter().map(|v| v.to_bits()).collect();
    assert_eq!(gb, wb, "{what}: values (k {k}, V {})", logits.len());
}

#[test]
fn topk_matches_reference_with_ties_on_ragged_vocabularies() {
    let ctx = ctx();
    let mut rng = Rng::new(42);
    for &v in &[49152usize, 128000, 1000, 7] {
        let logits = tied_logits(&mut rng, v);
        for k in [1usize, 2, 5, 40, 64] {
            check_topk(&ctx, &logits, k, "tied logits");
        }
    }
}

#[test]
fn topk_without_subgroups_matches_reference() {
    let ctx = GpuContext::new(&GpuOptions {
        disable_subgroups: true,
        ..GpuOptions::from_env()
    })
    .unwrap();
    let mut rng = Rng::new(43);
    for &v in &[256000usize, 4097, 7] {
        let logits = tied_logits(&mut rng, v);
        for k in [1usize, 3, 64] {
            check_topk(&ctx, &logits, k, "no subgroups");
        }
    }
}

#[test]
fn argmax_finds_the_lowest_index_of_the_maximum_anywhere() {
    let ctx = ctx();
    let v = 151_937;
    for &(a, b) in &[
        (0usize, 5usize),
        (4095, 4096),
        (v - 2, v - 1),
        (77_777, 150_000),
    ] {
        let mut logits = vec![-1.0f32; v];
        logits[a] = 3.5;
        logits[b] = 3.5;
        let (ids, vals) = gpu_topk(&ctx, &logits, 1);
        assert_eq!((ids[0], vals[0]), (a as u32, 3.5), "maximum at {a} and {b}");
    }
    // All -inf: still a valid answer (index 0), not "no candidate".
    let (ids, vals) = gpu_topk(&ctx, &vec![f32::NEG_INFINITY; 1000], 1);
    assert_eq!((ids[0], vals[0]), (0, f32::NEG_INFINITY));
}

#[test]
fn topk_pads_when_k_exceeds_the_candidates() {
    let ctx = ctx();
    let logits = [0.5f32, f32::NAN, -2.0, 7.0, 0.5];
    let (ids, vals) = gpu_topk(&ctx, &logits, 6);
    assert_eq!(ids, vec![3, 0, 4, 2, NO_TOKEN, NO_TOKEN]);
    assert_eq!(vals[..4], [7.0, 0.5, 0.5, -2.0]);
    assert!(vals[4..].iter().all(|v| *v == f32::NEG_INFINITY));
}

#[test]
fn topk_rejects_bad_k_and_shapes() {
    let l = TensorDesc::f32([1, 100]);
    assert!(TopK { k: 0 }.infer(&[&l]).is_err());
    let err = TopK { k: 65 }.infer(&[&l]).unwrap_err().to_string();
    assert!(err.contains("topk") && err.contains("65"), "{err}");
    let err = TopK { k: 4 }
        .infer(&[&TensorDesc::f32([2, 100])])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("logits") && err.contains("[1, vocab]"),
        "{err}"
    );
}

#[test]
fn penalize_matches_reference_and_skips_unused_slots() {
    let ctx = ctx();
    let mut rng = Rng::new(44);
    let v = 1000;
    let logits = rng.vec(v, 5.0);
    let mut ids: Vec<u32> = vec![3, 999, 0, 512, 77];
    let mut counts = vec![1.0f32, 4.0, 2.0, 1.0, 9.0];
    ids.extend([NO_TOKEN, NO_TOKEN, 5000]); // unused slots and an id past the vocabulary
    counts.extend([3.0, 3.0, 3.0]);
    let (repeat, presence, frequency) = (1.3f32, 0.4f32, 0.25f32);
    let t = upload("logits", &[1, v], &logits);
    let idt = ctx
        .upload(
            "ids",
            TensorDesc::new(DType::U32, [ids.len()]),
            bytemuck::cast_slice(&ids),
        )
        .unwrap();
    let outs = run_op(
        Penalize {
            repeat,
            presence,
            frequency,
        },
        &[&t, &idt, &upload("counts", &[counts.len()], &counts)],
        Step::default(),
    );
    assert!(outs.is_empty());
    let mut want = logits.clone();
    penalize_cpu(&mut want, &ids, &counts, repeat, presence, frequency);
    assert_close("penalize", &ctx.read_f32(&t).unwrap(), &want, F32_RTOL, 0.0);
    assert_ne!(want[3], logits[3]);
    assert_eq!(want[4], logits[4]);
}

#[test]
fn topk_takes_many_winners_from_one_thread() {
    // The best values all sit at indices ≡ 3 (mod 256), descending with the index: in every
    // workgroup one thread holds all of them and the first workgroup's are the overall best, so
    // that thread's private list runs dry and the next winners come from other workgroups.
    let ctx = ctx();
    let mut rng = Rng::new(45);
    let v = 20000;
    let mut logits = rng.vec(v, 1.0);
    for i in (3..v).step_by(256) {
        logits[i] = 100.0 - (i / 256) as f32;
    }
    for k in [33usize, 64] {
        check_topk(&ctx, &logits, k, "strided maxima");
    }
}

#[test]
fn logsumexp_matches_reference_on_ragged_vocabularies_with_nan_and_infinities() {
    let mut rng = Rng::new(46);
    // run_op poisons the output with NaN first, so an unwritten result fails.
    for &v in &[1usize, 7, 255, 257, 1000, 4097, 32003] {
        let mut x = rng.vec(v, 12.0);
        if v > 10 {
            x[v / 3] = f32::NAN;
            x[v / 2] = f32::NEG_INFINITY;
            x[v - 1] = 30.0; // one dominant logit far from the rest
        }
        let want = logsumexp_cpu(&x);
        let got = run_op(LogSumExp, &[&upload("x", &[1, v], &x)], Step::default());
        assert_close(
            &format!("logsumexp v={v}"),
            &got[0],
            &[want],
            F32_RTOL,
            1e-6,
        );
    }
    let edge = |x: Vec<f32>| {
        let v = x.len();
        run_op(LogSumExp, &[&upload("x", &[1, v], &x)], Step::default())[0][0]
    };
    assert_eq!(edge(vec![f32::NEG_INFINITY; 300]), f32::NEG_INFINITY);
    assert_eq!(logsumexp_cpu(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    let mut x = vec![1.0f32; 600];
    x[599] = f32::INFINITY;
    assert_eq!(edge(x.clone()), f32::INFINITY);
    assert_eq!(logsumexp_cpu(&x), f32::INFINITY);
    // log(600 · e) for 600 equal logits of 1.
    let got = edge(vec![1.0; 600]);
    assert!((got - (1.0 + 600f32.ln())).abs() < 1e-5, "{got}");
}

/// The step whose last token sits at `kv_len − 1`: `kv_len` is what Sample and
/// PenalizeHistory read.
fn step_at(kv_len: u32) -> Step {
    Step {
        pos: kv_len.saturating_sub(1),
        kv_len,
        ..Step::default()
    }
}

/// A TopK-style candidate list of `k` slots: `valid` distinct ids with logits descending
/// (on a coarse grid when `tied`), then padding (NO_TOKEN, -inf).
fn candidate_words(rng: &mut Rng, k: usize, valid: usize, tied: bool) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    while ids.len() < valid {
        let id = rng.below(100_000);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut logits: Vec<f32> = (0..valid)
        .map(|_| {
            let x = rng.uniform(-4.0, 4.0);
            if tied {
                (x * 2.0).round() / 2.0
            } else {
                x
            }
        })
        .collect();
    logits.sort_by(|a, b| b.total_cmp(a));
    ids.resize(k, NO_TOKEN);
    logits.resize(k, f32::NEG_INFINITY);
    ids.extend(logits.iter().map(|l| l.to_bits()));
    ids
}

#[test]
fn sample_matches_reference_on_ragged_candidate_lists() {
    let ctx = ctx();
    let mut rng = Rng::new(47);
    let capacity = 40u32;
    // (temperature, top_k, top_p, min_p): greedy, plain, the defaults, and mixed cuts.
    let settings = [
        (0.0f32, 0u32, 1.0f32, 0.0f32),
        (1.0, 0, 1.0, 0.0),
        (0.7, 40, 0.95, 0.05),
        (1.5, 5, 1.0, 0.0),
        (0.3, 0, 0.9, 0.0),
        (4.0, 0, 0.5, 0.1),
        (1.0, 1, 1.0, 0.0),
        (2.0, 17, 0.8, 0.3),
        (3.0, 0, 1.0, 0.01),
    ];
    let (mut runs, mut explored) = (0, 0);
    for k in [1usize, 3, 17, 40, 64] {
        let cands = upload_u32(&ctx, "cands", &vec![0; 2 * k]);
        let params = upload_u32(&ctx, "params", &[0; SAMPLER_PARAMS_WORDS]);
        let history = upload_u32(&ctx, "history", &vec![0; capacity as usize]);
        let mut g = Graph::new();
        let ins = [
            g.external("cands", &cands),
            g.external("params", &params),
            g.external("history", &history),
        ];
        g.add0(Sample, &ins).expect("sample rejected valid inputs");
        let exe = g.compile(&ctx, &[]).expect("compile");
        for list in 0..3 {
            let valid = if list == 2 { (k * 2 / 3).max(1) } else { k };
            let words = candidate_words(&mut rng, k, valid, list == 1);
            ctx.write(&cands, 0, bytemuck::cast_slice(&words)).unwrap();
            for &(t, top_k, top_p, min_p) in &settings {
                let sp = sampler_params(t, top_k, top_p, min_p, rng.next_u64());
                ctx.write(&params, 0, bytemuck::cast_slice(&sp.words()))
                    .unwrap();
                for kv_len in [0u32, 1, 7, 38, 39, capacity] {
                    ctx.poison(&history).unwrap();
                    let before = read_u32(&ctx, &history);
                    exe.run(step_at(kv_len)).expect("run");
                    let got = read_u32(&ctx, &history);
                    let what = format!("k {k} list {list} {sp:?} kv_len {kv_len}");
                    let mut want = before.clone();
                    if kv_len < capacity {
                        want[kv_len as usize] = sample_cpu(&words, &sp, kv_len);
                        runs += 1;
                        explored += (want[kv_len as usize] != words[0]) as usize;
                    }
                    assert_eq!(got, want, "{what}");
                }
            }
        }
    }
    // The draws reached past the first candidate often enough to test the cuts and the draw.
    assert!(
        explored * 4 > runs,
        "{explored} of {runs} draws left the best"
    );
}

#[test]
fn sample_after_topk_in_one_graph_matches_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(48);
    let v = 5003;
    let k = 40;
    let logits = rng.vec(v, 3.0);
    let lt = ctx.upload_f32("logits", &[1, v], &logits).unwrap();
    let sp = sampler_params(1.2, 0, 0.95, 0.02, 77);
    let params = upload_u32(&ctx, "params", &sp.words());
    let history = upload_u32(&ctx, "history", &[0; 16]);
    let mut g = Graph::new();
    let l = g.external("logits", &lt);
    let c = g.add1(TopK { k }, &[l]).unwrap();
    let ins = [
        c,
        g.external("params", &params),
        g.external("history", &history),
    ];
    g.add0(Sample, &ins).unwrap();
    let exe = g.compile(&ctx, &[]).expect("compile");
    let (ids, vals) = topk_cpu(&logits, k);
    let mut words = ids;
    words.extend(vals.iter().map(|x| x.to_bits()));
    for kv_len in 0..16 {
        exe.run(step_at(kv_len)).expect("run");
    }
    let want: Vec<u32> = (0..16).map(|p| sample_cpu(&words, &sp, p)).collect();
    assert_eq!(read_u32(&ctx, &history), want);
}

#[test]
fn penalize_history_matches_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(49);
    let capacity = 300usize;
    for &v in &[7usize, 1000, 4099] {
        // Few distinct ids, so repeats are common; some past the vocabulary.
        let history: Vec<u32> = (0..capacity)
            .map(|_| match rng.below(10) {
                0 => v as u32 + rng.below(5),
                _ => rng.below(v.min(40) as u32),
            })
            .collect();
        let mut logits = rng.vec(v, 5.0);
        logits[0] = 0.0; // the l > 0 branch boundary
        let lt = ctx.upload_f32("logits", &[1, v], &logits).unwrap();
        let params = upload_u32(&ctx, "params", &[0; SAMPLER_PARAMS_WORDS]);
        let ht = upload_u32(&ctx, "history", &history);
        let mut g = Graph::new();
        let ins = [
            g.external("logits", &lt),
            g.external("params", &params),
            g.external("history", &ht),
        ];
        g.add0(PenalizeHistory, &ins)
            .expect("penalize_history rejected valid inputs");
        let exe = g.compile(&ctx, &[]).expect("compile");
        // (window, kv_len): one token, long windows, a window longer than kv_len, an empty
        // window, a full history and kv_len past the capacity (clamped).
        let cases = [
            (1u32, 1u32),
            (1, 150),
            (16, 150),
            (64, 300),
            (1000, 120),
            (300, 300),
            (5, 0),
            (0, 100),
            (50, 305),
        ];
        for (window, kv_len) in cases {
            for (repeat, presence, frequency) in [(1.3f32, 0.4f32, 0.25f32), (0.8, -0.5, 1.5)] {
                let sp = SamplerParams {
                    repeat_penalty: repeat,
                    presence,
                    frequency,
                    window,
                    ..Default::default()
                };
                ctx.write(&params, 0, bytemuck::cast_slice(&sp.words()))
                    .unwrap();
                ctx.write(&lt, 0, bytemuck::cast_slice(&logits)).unwrap();
                exe.run(step_at(kv_len)).expect("run");
                let got = ctx.read_f32(&lt).unwrap();
                let mut want = logits.clone();
                penalize_history_cpu(&mut want, &history, kv_len, &sp);
                let what = format!("v {v} window {window} kv_len {kv_len} {sp:?}");
                assert_close(&what, &got, &want, 1e-6, 1e-6);
                let end = (kv_len as usize).min(capacity);
                let seen = &history[end - end.min(window as usize)..end];
                for (i, (g, l)) in got.iter().zip(&logits).enumerate() {
                    if !seen.contains(&(i as u32)) {
                        assert_eq!(g.to_bits(), l.to_bits(), "{what}: logit {i} changed");
                    }
                }
            }
        }
    }
}

#[test]
fn sample_and_penalize_history_reject_bad_shapes() {
    let u32s = |n: usize| TensorDesc::new(DType::U32, [n]);
    let (c, p, h) = (u32s(8), u32s(SAMPLER_PARAMS_WORDS), u32s(10));
    assert!(Sample.infer(&[&c, &p, &h]).is_ok());
    for (bad, what) in [
        ([&u32s(7), &p, &h], "candidates"),
        ([&u32s(130), &p, &h], "candidates"),
        ([&c, &u32s(15), &h], "sampler params"),
        ([&c, &p, &u32s(0)], "history"),
        ([&c, &TensorDesc::f32([16]), &h], "sampler params"),
    ] {
        let err = Sample.infer(&bad).unwrap_err().to_string();
        assert!(err.contains("sample") && err.contains(what), "{err}");
    }
    let l = TensorDesc::f32([1, 100]);
    assert!(PenalizeHistory.infer(&[&l, &p, &h]).is_ok());
    let err = PenalizeHistory
        .infer(&[&TensorDesc::f32([2, 100]), &p, &h])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("penalize_history") && err.contains("logits"),
        "{err}"
    );
    let err = PenalizeHistory
        .infer(&[&l, &p, &TensorDesc::f32([10])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("history"), "{err}");
}
