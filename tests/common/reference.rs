//! Models on the test device and the checks against the transformers references
//! (tests/fixtures/*-expected.json): last-position logits and greedy tokens.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use fado::gpu::GpuContext;
use fado::model::{Model, ModelOptions};
use fado::session::{KvType, Session, SessionOptions};
use serde_json::Value;

use super::{assert_close_rel_max, ctx, fixture, json_f32s, json_f64s, json_ids};

/// A model file or folder loaded with default options on the shared test device.
pub fn load(path: impl AsRef<Path>) -> Arc<Model> {
    load_on(ctx(), path)
}

/// [`load`] on a given device.
pub fn load_on(ctx: Arc<GpuContext>, path: impl AsRef<Path>) -> Arc<Model> {
    let path = path.as_ref();
    Model::load_on(ctx, path, &ModelOptions::default())
        .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()))
}

/// The tiny random Llama fixture (bf16 safetensors shards) on the shared test device, loaded
/// once per test binary.
pub fn tiny_model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| load(fixture("tiny-llama"))).clone()
}

/// How much an f16 KV cache may add to the relative logit error of [`assert_reference_logits`]
/// (measured: 2.3e-4 on the tiny fixture, up to 1.8e-3 on the 256-vocabulary quantized ones:
/// keys and values round to 11 significant bits).
pub const KV_F16_RTOL: f32 = 4e-3;

/// The top-2 logit gap below which an f16 KV cache may flip a greedy token (its logit error
/// reaches ~0.03 on the quantized fixtures, whose logits span ±16).
pub const KV_F16_TIE: f64 = 0.1;

/// How much the integer GEMV path (`Caps::int_dot`: x quantized to int8 per 32 in the
/// GEMVs, m = 1 only) may add to the relative logit error of [`assert_reference_logits`]
/// (measured: up to 2.3e-2 on the quantized tiny fixtures, whose hidden size of 64 leaves
/// little averaging; per-group int8 rounding is ~0.4 % of each group's largest value).
pub const INT_DOT_RTOL: f32 = 3e-2;

/// The top-2 logit gap below which the integer GEMV path may flip a greedy token (its logit
/// error reaches ~0.4 on the quantized tiny fixtures, whose logits span ±16).
pub const INT_DOT_TIE: f64 = 1.0;

/// Last-position logits of `prompt` from a fresh session of `ctx_len` tokens (default KV type).
pub fn last_logits(m: &Arc<Model>, prompt: &[u32], ctx_len: usize) -> Vec<f32> {
    last_logits_kv(m, prompt, ctx_len, KvType::default())
}

/// [`last_logits`] with a KV cache of type `kv`.
pub fn last_logits_kv(m: &Arc<Model>, prompt: &[u32], ctx_len: usize, kv: KvType) -> Vec<f32> {
    let opts = SessionOptions {
        ctx: ctx_len,
        kv_type: kv,
    };
    let mut s = Session::with_options(m.clone(), opts).expect("session");
    s.prefill(prompt, 1).expect("prefill");
    s.last_logits().expect("last logits")
}

/// `n` greedy tokens after `prompt` from a fresh session with a `kv` cache, each fed back
/// through `prefill`: EOS does not end it, as in the references (transformers ran with EOS
/// disabled).
pub fn greedy_by_prefill(
    m: &Arc<Model>,
    prompt: &[u32],
    n: usize,
    ctx_len: usize,
    kv: KvType,
) -> Vec<u32> {
    let opts = SessionOptions {
        ctx: ctx_len,
        kv_type: kv,
    };
    let mut s = Session::with_options(m.clone(), opts).expect("session");
    let mut got = Vec::with_capacity(n);
    let mut cands = s.prefill(prompt, 1).expect("prefill");
    for _ in 0..n {
        let t = cands[0].0;
        got.push(t);
        cands = s.prefill(&[t], 1).expect("prefill");
    }
    got
}

/// A reference prompt's `last_logits` against Fado's: max |g − w| ≤ rtol · max |w| (printing
/// the measured ratio) with an f32 KV cache, and within `rtol` or [`KV_F16_RTOL`], whichever is
/// larger, with the default f16 one.
/// With the integer GEMV path on (`Caps::int_dot`) the tolerance is at least [`INT_DOT_RTOL`]
/// (a one-token step is all GEMVs; a longer prompt's last-row logits are one).
pub fn assert_reference_logits(m: &Arc<Model>, prompt: &[u32], p: &Value, rtol: f32, what: &str) {
    let want = json_f32s(&p["last_logits"]);
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let rtol = if m.ctx.caps.int_dot {
        rtol.max(INT_DOT_RTOL)
    } else {
        rtol
    };
    for (kv, tol) in [(KvType::F32, rtol), (KvType::F16, rtol.max(KV_F16_RTOL))] {
        let got = last_logits_kv(m, prompt, 128, kv);
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        eprintln!(
            "{what} ({kv} KV): max |Δlogit| / max |logit| = {:.2e}",
            err / scale
        );
        assert_close_rel_max(&format!("{what}: last logits, {kv} KV"), &got, &want, tol);
    }
}

/// A reference prompt's `greedy_tokens`, compared up to and including the first step whose
/// top-2 logit margin (`greedy_margins`) is below `tie` (smaller gaps are within the numerical
/// noise at hand): Fado's greedy tokens by [`greedy_by_prefill`] with an f32 KV cache must
/// equal them, and with the default f16 cache up to (not including) the first gap below `tie`
/// or [`KV_F16_TIE`], whichever is larger. With the integer GEMV path on (`Caps::int_dot`),
/// both stop before the first gap below [`INT_DOT_TIE`]. Returns how many were compared with
/// f32.
pub fn assert_reference_greedy(
    m: &Arc<Model>,
    prompt: &[u32],
    p: &Value,
    tie: f64,
    ctx_len: usize,
    what: &str,
) -> usize {
    let want = json_ids(&p["greedy_tokens"]);
    let margins = json_f64s(&p["greedy_margins"]);
    let upto = |tie: f64| {
        margins
            .iter()
            .position(|g| *g < tie)
            .map(|i| i + 1)
            .unwrap_or(want.len())
    };
    let before = |tie: f64| margins.iter().position(|g| *g < tie).unwrap_or(want.len());
    let int_dot = m.ctx.caps.int_dot;
    let n = if int_dot {
        before(tie.max(INT_DOT_TIE))
    } else {
        upto(tie)
    };
    // With f16 the step at the first gap below KV_F16_TIE is not compared: it may flip.
    let n16 = before(
        tie.max(KV_F16_TIE)
            .max(if int_dot { INT_DOT_TIE } else { 0.0 }),
    );
    for (kv, n) in [(KvType::F32, n), (KvType::F16, n16)] {
        let got = greedy_by_prefill(m, prompt, n, ctx_len, kv);
        assert_eq!(
            got,
            want[..n],
            "{what}: greedy tokens, {kv} KV (compared {n} of {})",
            want.len()
        );
    }
    n
}
