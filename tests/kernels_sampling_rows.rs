//! Batched decode's sampling head (`PenalizeHistoryRows`, `TopKSampleRows`, `LogSumExpRows`):
//! logits `[B, V]`, one row per sequence, each row placed in pooled sampler params and a pooled
//! token history by `Step::rows`. Each row must match the CPU references and, bit for bit, the
//! single-sequence ops (`PenalizeHistory`, `TopKSample`, `LogSumExp`) run on that row alone.
//! Every kernel variant; rows with shuffled slots and history bases, distinct positions (one at
//! the end of its history, which must not be written), unused `Step::rows` entries poisoned,
//! outputs poisoned, history words past each row's write checked unchanged.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::GpuContext;
use fado::graph::Graph;
use fado::ops::sample::{
    sample_cpu, topk_sample_rows_cpu, SamplerParams, TopKSample, TopKSampleRows,
};
use fado::ops::topk::{
    logsumexp_cpu, penalize_history_rows_cpu, topk_cpu, LogSumExp, LogSumExpRows, PenalizeHistory,
    PenalizeHistoryRows,
};
use fado::ops::{Op, RowStep, Step, MAX_ROWS};
use fado::tensor::{DType, TensorDesc};

/// Marks history words that must be written (the row's token) or never touched (the pool's
/// tail, the word after a full history).
const SENTINEL: u32 = 0xdead_beef;

/// A random permutation of `0 .. n`.
fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u32 + 1) as usize);
    }
    v
}

/// Random sampler settings: greedy, or a temperature with top-k/top-p/min-p cuts; penalties
/// on about half, with short and long windows.
fn random_params(rng: &mut Rng) -> SamplerParams {
    let (t, top_k, top_p, min_p) = match rng.below(5) {
        0 => (0.0, 0, 1.0, 0.0),
        1 => (1.0, 0, 1.0, 0.0),
        2 => (0.7, 40, 0.95, 0.05),
        3 => (1.5, 5, 0.9, 0.0),
        _ => (3.0, 0, 1.0, 0.01),
    };
    let mut p = sampler_params(t, top_k, top_p, min_p, rng.next_u64());
    if rng.below(2) == 0 {
        p.repeat_penalty = [1.3, 0.8, 1.0][rng.below(3) as usize];
        p.presence = rng.uniform(-0.5, 0.5);
        p.frequency = rng.uniform(0.0, 1.5);
        p.window = [1, 16, 64, 1000][rng.below(4) as usize];
    }
    p
}

/// One batched step's data: B rows over V logits, S > B slots, a pooled history of S
/// sequences of `history_len` words and a poisoned tail.
struct Batch {
    v: usize,
    history_len: usize,
    logits: Vec<f32>,
    params: Vec<SamplerParams>,
    history: Vec<u32>,
    rows: Vec<RowStep>,
}

impl Batch {
    fn new(rng: &mut Rng, b: usize, v: usize, history_len: usize) -> Batch {
        let s = b + 3;
        let params: Vec<SamplerParams> = (0..s).map(|_| random_params(rng)).collect();
        // Few distinct ids so windows repeat them; some past the vocabulary.
        let mut history: Vec<u32> = (0..s * history_len + 7)
            .map(|_| match rng.below(10) {
                0 => v as u32 + rng.below(5),
                _ => rng.below(40),
            })
            .collect();
        for w in &mut history[s * history_len..] {
            *w = SENTINEL;
        }
        // Slots and history bases in independent shuffled orders; distinct positions, the
        // first row's at the end of its history (nothing to write).
        let (slots, seqs) = (shuffled(rng, s), shuffled(rng, s));
        let positions = shuffled(rng, history_len);
        let rows: Vec<RowStep> = (0..b)
            .map(|t| RowStep {
                pos: if t == 0 && b > 1 {
                    history_len as u32 - 1
                } else {
                    positions[t] as u32
                },
                cache_base: 0,
                history_base: (seqs[t] * history_len) as u32,
                slot: slots[t] as u32,
            })
            .collect();
        for r in &rows {
            let at = (r.history_base + r.pos + 1) as usize;
            if r.pos as usize + 1 < history_len {
                history[at] = SENTINEL;
            }
        }
        let mut logits = rng.vec(b * v, 4.0);
        // Ties in one row (a coarse grid), NaN and -inf in another.
        for x in &mut logits[..v] {
            *x = (*x * 2.0).round() / 2.0;
        }
        let last = (b - 1) * v;
        logits[last + v / 3] = f32::NAN;
        logits[last + v / 2] = f32::NEG_INFINITY;
        Batch {
            v,
            history_len,
            logits,
            params,
            history,
            rows,
        }
    }

    fn param_words(&self) -> Vec<u32> {
        self.params.iter().flat_map(|p| p.words()).collect()
    }

    /// The step: `Step::batch` of the rows, and the unused entries poisoned with rows that
    /// would write into the pool's tail (a kernel reading past B shows there).
    fn step(&self) -> Step {
        let mut step = Step::batch(&self.rows).expect("step");
        let tail = (self.history.len() - 7) as u32;
        for r in &mut step.rows[self.rows.len()..] {
            *r = [0, 0, tail - 1, 0];
        }
        step
    }
}

/// What the batched head computed: penalised logits, candidates, log-sum-exps, history.
struct HeadOut {
    logits: Vec<f32>,
    cands: Vec<u32>,
    lse: Vec<f32>,
    history: Vec<u32>,
}

/// The head as a batched decode step chains it: penalties in place, top-k + sampler, LSE.
fn run_batched(ctx: &Arc<GpuContext>, bt: &Batch, k: usize) -> HeadOut {
    let b = bt.rows.len();
    let lt = ctx.upload_f32("logits", &[b, bt.v], &bt.logits).unwrap();
    let pt = upload_u32(ctx, "params", &bt.param_words());
    let ht = upload_u32(ctx, "history", &bt.history);
    let mut g = Graph::new();
    let ins = [
        g.external("logits", &lt),
        g.external("params", &pt),
        g.external("history", &ht),
    ];
    let history_len = bt.history_len;
    g.add0(PenalizeHistoryRows { history_len }, &ins).unwrap();
    let cands = g.add1(TopKSampleRows { k, history_len }, &ins).unwrap();
    let lse = g.add1(LogSumExpRows, &ins[..1]).unwrap();
    let exe = g.compile(ctx, &[cands, lse]).expect("compile");
    ctx.poison(exe.tensor(cands)).expect("poison");
    ctx.poison(exe.tensor(lse)).expect("poison");
    exe.run(bt.step()).expect("run");
    HeadOut {
        logits: ctx.read_f32(&lt).unwrap(),
        cands: read_u32(ctx, exe.tensor(cands)),
        lse: exe.read_f32(lse).unwrap(),
        history: read_u32(ctx, &ht),
    }
}

/// The single-sequence head on row `t` alone (its logits, its slot's params, a copy of its
/// sequence's history) at `kv_len = pos + 1`.
fn run_single(ctx: &Arc<GpuContext>, bt: &Batch, k: usize, t: usize) -> HeadOut {
    let r = bt.rows[t];
    let v = bt.v;
    let base = r.history_base as usize;
    let lt = ctx
        .upload_f32("logits", &[1, v], &bt.logits[t * v..(t + 1) * v])
        .unwrap();
    let pt = upload_u32(ctx, "params", &bt.params[r.slot as usize].words());
    let ht = upload_u32(ctx, "history", &bt.history[base..base + bt.history_len]);
    let mut g = Graph::new();
    let ins = [
        g.external("logits", &lt),
        g.external("params", &pt),
        g.external("history", &ht),
    ];
    g.add0(PenalizeHistory, &ins).unwrap();
    let masked = false;
    let cands = g.add1(TopKSample { k, masked }, &ins).unwrap();
    let lse = g.add1(LogSumExp, &ins[..1]).unwrap();
    let exe = g.compile(ctx, &[cands, lse]).expect("compile");
    ctx.poison(exe.tensor(cands)).expect("poison");
    ctx.poison(exe.tensor(lse)).expect("poison");
    exe.run(Step::new(r.pos, 1)).expect("run");
    HeadOut {
        logits: ctx.read_f32(&lt).unwrap(),
        cands: read_u32(ctx, exe.tensor(cands)),
        lse: exe.read_f32(lse).unwrap(),
        history: read_u32(ctx, &ht),
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Check the batched head against the CPU references and each row's single-sequence run.
fn check(ctx: &Arc<GpuContext>, bt: &Batch, k: usize, what: &str) -> usize {
    let (b, v, hl) = (bt.rows.len(), bt.v, bt.history_len);
    let got = run_batched(ctx, bt, k);
    // Penalties: the CPU reference (f32 division may differ by an ulp on the GPU).
    let mut want = bt.logits.clone();
    penalize_history_rows_cpu(&mut want, &bt.rows, &bt.params, &bt.history, hl);
    for (i, (g, w)) in got.logits.iter().zip(&want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g - w).abs() <= 1e-6 * (1.0 + w.abs());
        assert!(same, "{what}: penalised logit {i} is {g}, expected {w}");
    }
    // Candidates and tokens: the references on the logits the GPU penalised.
    let mut want_history = bt.history.clone();
    let want_cands =
        topk_sample_rows_cpu(&got.logits, k, &bt.rows, &bt.params, &mut want_history, hl);
    assert_eq!(got.cands, want_cands, "{what}: candidates");
    assert_eq!(got.history, want_history, "{what}: history");
    let mut explored = 0;
    for (t, r) in bt.rows.iter().enumerate() {
        let row = &got.logits[t * v..(t + 1) * v];
        let lse = logsumexp_cpu(row);
        let w = format!("{what}: row {t} {r:?}");
        assert_close(&format!("{w}: lse"), &got.lse[t..t + 1], &[lse], 1e-4, 1e-6);
        let at = (r.history_base + r.pos + 1) as usize;
        if r.pos as usize + 1 < hl {
            assert_ne!(got.history[at], SENTINEL, "{w}: token not written");
            let c = &got.cands[t * 2 * k..(t + 1) * 2 * k];
            explored += (got.history[at] != c[0]) as usize;
        } else {
            assert_eq!(
                got.history[at], bt.history[at],
                "{w}: wrote past its history"
            );
        }
        // Bit for bit the single-sequence ops on this row alone.
        let one = run_single(ctx, bt, k, t);
        assert_eq!(bits(&one.logits), bits(row), "{w}: penalised vs single");
        assert_eq!(
            one.cands,
            got.cands[t * 2 * k..(t + 1) * 2 * k],
            "{w}: vs single"
        );
        assert_eq!(
            one.lse[0].to_bits(),
            got.lse[t].to_bits(),
            "{w}: lse vs single"
        );
        let base = r.history_base as usize;
        assert_eq!(
            one.history,
            got.history[base..base + hl],
            "{w}: history vs single"
        );
    }
    assert_eq!(got.lse.len(), b);
    explored
}

#[test]
fn batched_head_matches_reference_and_single_sequence_ops_on_every_variant() {
    let mut rng = Rng::new(4242);
    let mut explored = 0;
    for (name, ctx) in variant_contexts() {
        for b in [1usize, 3, MAX_ROWS] {
            for v in [1000usize, 49_152 + 7] {
                let bt = Batch::new(&mut rng, b, v, 96);
                for k in [1usize, 40] {
                    let what = format!("{name}, B {b}, V {v}, k {k}");
                    explored += check(&ctx, &bt, k, &what);
                }
            }
        }
    }
    // Enough draws left the best candidate to test that each row used its own params.
    assert!(
        explored > 20,
        "only {explored} draws left the best candidate"
    );
}

#[test]
fn logsumexp_rows_matches_reference_per_row() {
    let mut rng = Rng::new(4243);
    for (b, v) in [(1usize, 7usize), (5, 4097), (MAX_ROWS, 1000)] {
        let mut x = rng.vec(b * v, 12.0);
        x[v - 1] = f32::NAN;
        if b > 1 {
            for l in &mut x[v..2 * v] {
                *l = f32::NEG_INFINITY; // a row of -inf: -inf, not NaN
            }
        }
        let got = run_op(LogSumExpRows, &[&upload("x", &[b, v], &x)], Step::default());
        let want: Vec<f32> = x.chunks(v).map(logsumexp_cpu).collect();
        assert_eq!(got[0].len(), b);
        for (t, (g, w)) in got[0].iter().zip(&want).enumerate() {
            if w.is_finite() {
                assert_close(&format!("B {b} V {v} row {t}"), &[*g], &[*w], 1e-4, 1e-6);
            } else {
                assert_eq!(g, w, "B {b} V {v} row {t}");
            }
        }
    }
}

#[test]
fn rows_ops_reject_bad_shapes_and_masks() {
    let u32s = |n: usize| TensorDesc::new(DType::U32, [n]);
    let (l, p, h) = (TensorDesc::f32([3, 100]), u32s(4 * 16), u32s(40));
    let (k, history_len) = (4, 10);
    let topk = TopKSampleRows { k, history_len };
    let pen = PenalizeHistoryRows { history_len };
    let out = topk.infer(&[&l, &p, &h]).expect("valid inputs");
    assert_eq!(out[0].shape, [3, 8]);
    assert!(pen.infer(&[&l, &p, &h]).is_ok());
    assert_eq!(LogSumExpRows.infer(&[&l]).unwrap()[0].shape, [3]);
    let err = |r: fado::error::Result<Vec<TensorDesc>>| r.unwrap_err().to_string();
    let too_many = TensorDesc::f32([MAX_ROWS + 1, 100]);
    for bad in [
        &too_many,
        &TensorDesc::f32([100]),
        &TensorDesc::f32([3, 2, 100]),
    ] {
        let e = err(topk.infer(&[bad, &p, &h]));
        assert!(
            e.contains("topk_sample_rows") && e.contains("logits"),
            "{e}"
        );
        let e = err(pen.infer(&[bad, &p, &h]));
        assert!(
            e.contains("penalize_history_rows") && e.contains("logits"),
            "{e}"
        );
        let e = err(LogSumExpRows.infer(&[bad]));
        assert!(e.contains("logsumexp_rows") && e.contains("16"), "{e}");
    }
    for bad in [u32s(15), u32s(24), u32s(0), TensorDesc::f32([16])] {
        let e = err(topk.infer(&[&l, &bad, &h]));
        assert!(e.contains("sampler params"), "{e}");
        assert!(pen.infer(&[&l, &bad, &h]).is_err());
    }
    for history_len in [0, 41] {
        let e = err(TopKSampleRows { k, history_len }.infer(&[&l, &p, &h]));
        assert!(e.contains("history_len"), "{e}");
        assert!(PenalizeHistoryRows { history_len }
            .infer(&[&l, &p, &h])
            .is_err());
    }
    for k in [0, 65] {
        let e = err(TopKSampleRows { k, history_len }.infer(&[&l, &p, &h]));
        assert!(e.contains(&format!("k = {k}")), "{e}");
    }
    let e = err(topk.infer(&[&l, &p, &h, &u32s(4)]));
    assert!(e.contains("masked") && e.contains("batched"), "{e}");
}

#[test]
fn the_row_check_sees_a_row_sampled_with_another_rows_params() {
    // The reference itself distinguishes rows: sampling row 1 with row 0's params at row 0's
    // position gives another token for at least one of a few seeds (so a kernel that mixed up
    // slots or positions could not pass `check`).
    let mut rng = Rng::new(4244);
    let v = 1000;
    let differs = (0..8).any(|_| {
        let bt = Batch::new(&mut rng, 3, v, 96);
        let (a, b) = (bt.rows[1], bt.rows[2]);
        let (ids, vals) = topk_cpu(&bt.logits[v..2 * v], 40);
        let words: Vec<u32> = ids.into_iter().chain(bits(&vals)).collect();
        let pa = &bt.params[a.slot as usize];
        let pb = &bt.params[b.slot as usize];
        sample_cpu(&words, pa, a.pos + 1) != sample_cpu(&words, pb, b.pos + 1)
    });
    assert!(differs);
}
