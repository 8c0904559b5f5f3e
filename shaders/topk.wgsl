// topk.wgsl — top-k of one logits row (sorted by value descending, ties: lower index first), as
// a two-stage reduction, and the repetition/presence/frequency penalty applied in place.
//
// Candidates are (key, index) with key an order-preserving u32 image of the f32 value (larger
// float ↔ larger key; -inf is a valid key > 0); key 0 with index NONE means "no candidate"
// (NaN logits are never candidates). In each stage a thread reads ITEMS candidates once and keeps
// them sorted in private memory (for K = 1 only its best: a one-pass argmax); then K rounds each
// pick the best head of all threads' lists (a workgroup reduction) and the owner of the winner
// advances its head, so the winners come out sorted.
//
// Entry `topk_partial` — bindings 2 logits f32 [V]; 3 cand vec2<u32> [NB·K] (scratch) as
//   (index, key). Workgroup b takes logits [b·SEG, min(V, (b+1)·SEG)), SEG = WG·ITEMS, and writes
//   its K best to cand[b·K ..]. Dispatch (NB = ceil(V / SEG)) spread over (gx, gy).
//   MASK: binding 4 mask u32 [≥ ceil(V / 32)]; logit i is a candidate only where bit i & 31 of
//   mask[i >> 5] is set (constrained decoding), so disallowed tokens never reach the sampler.
// Entry `topk_final` (FINAL) — bindings 2 cand [n_cand ≤ WG·ITEMS]; 3 out u32 [2K]: K indices, then K
//   values as f32 bits (-inf bits and index 0xFFFFFFFF where fewer than K candidates exist).
//   Dispatch (1, 1, 1). SAMPLE (ops::sample::TopKSample): 4 sp SamplerParams; 5 history u32
//   [C] (C in p._a); thread 0 chooses among the K (sampler_choose.wgsl) and writes the token
//   at history[kv_len] when kv_len < C.
// Entry `penalize` (PENALIZE) — bindings 2 logits f32 [V] (in place); 3 ids u32 [P]; 4 counts
//   f32 [P]. One thread per entry; id 0xFFFFFFFF (or ≥ V) is an unused slot. Ids must be distinct.
// Entry `penalize_history` (PENALIZE_HISTORY) — bindings 2 logits f32 [V] (in place); 3 sp
//   SamplerParams (u32 [16], src/ops/sample.rs); 4 history u32 [C] (C in p.n). The same rule as
//   `penalize` for each distinct id of history[max(0, end − window) .. end), end = min(kv_len, C),
//   with its count there; ids ≥ V are skipped. Dispatch (1, 1, 1): WG threads stride over the
//   window (its length is a run-time value, the grid is static); the thread at the last
//   occurrence of an id applies it, so each id is penalised once and no two threads write one logit.
// Entry `logsumexp` (LOGSUMEXP) — bindings 2 logits f32 [V]; 3 out f32 [1] = log Σ exp(logits),
//   NaN skipped, -inf when nothing but -inf/NaN, +inf when any logit is +inf. Dispatch (1, 1, 1).
// Features: SUBGROUPS reduces each round with subgroupMax/Min, else through workgroup memory.
// ROWS (batched decode: ops::topk::{PenalizeHistoryRows, LogSumExpRows},
//   ops::sample::TopKSampleRows): logits are [B, V] and each entry's grid gets z = B, row
//   t = workgroup_id.z; step.rows[t] = (pos, _, base, slot) places row t in its own sequence.
//   topk_partial reads logits[t·V ..] and writes cand[t·n ..] (n = p.n = NB·K; the padding
//   workgroups of a grid split over (gx, gy) return); topk_final reads cand[t·n ..], writes
//   out[t·2K ..] and with SAMPLE binds 4 sp as array<SamplerParams> (the pooled params, slot s
//   at words 16·s) and 5 the pooled history, writing history[base + pos + 1] when
//   pos + 1 < p._a (the per-sequence history length) at u = uniform_at(seed, pos + 1).
//   penalize_history: logits[t·V ..], params sp[slot], history[base .. base + p.n) with
//   end = min(pos + 1, p.n). logsumexp: logits[t·V ..] → out[t].
#include "common.wgsl"

struct Params { v: u32, n: u32, gx: u32, seg: u32, repeat: f32, presence: f32, frequency: f32, _a: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;

const NONE: u32 = 0xffffffffu;

#if PENALIZE
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read> counts: array<f32>;

@compute @workgroup_size({{WG}})
fn penalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.n) {
        return;
    }
    let id = ids[i];
    if (id >= p.v) {
        return;
    }
    var l = logits[id];
    l = select(l * p.repeat, l / p.repeat, l > 0.0);
    logits[id] = l - (p.presence + p.frequency * counts[i]);
}
#else
#if PENALIZE_HISTORY
#include "sampler_params.wgsl"

@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
#if ROWS
@group(0) @binding(3) var<storage, read> sp_pool: array<SamplerParams>;
#else
@group(0) @binding(3) var<storage, read> sp: SamplerParams;
#endif
@group(0) @binding(4) var<storage, read> history: array<u32>;

@compute @workgroup_size({{WG}})
fn penalize_history(@builtin(local_invocation_index) li: u32,
                    @builtin(workgroup_id) wg: vec3<u32>) {
#if ROWS
    let rs = step.rows[wg.z];
    let sp = sp_pool[rs.w];
    let h0 = rs.z;           // the sequence's history: history[h0 .. h0 + p.n)
    let l0 = wg.z * p.v;     // the row's logits
    let end = min(rs.x + 1u, p.n);
#else
    let h0 = 0u;
    let l0 = 0u;
    let end = min(step.kv_len, p.n);
#endif
    let start = end - min(end, sp.window);
    for (var i = start + li; i < end; i += {{WG}}u) {
        let id = history[h0 + i];
        if (id >= p.v) {
            continue;
        }
        var count = 0u;
        var last = true;
        for (var j = start; j < end; j++) {
            if (history[h0 + j] == id) {
                if (j > i) {
                    last = false;
                    break;
                }
                count += 1u;
            }
        }
        if (last) {
            var l = logits[l0 + id];
            l = select(l * sp.repeat_penalty, l / sp.repeat_penalty, l > 0.0);
            logits[l0 + id] = l - (sp.presence + sp.frequency * f32(count));
        }
    }
}
#else
#if LOGSUMEXP
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<vec2<f32>, {{WG}}>; // (max, Σ exp(l − max))

// Start value of the running max: finite, so (-inf) − (-inf) never makes a NaN; a -inf logit
// adds exp(-inf) = 0. Logits above HUGE (only +inf in practice) make the result the max itself.
const LOW: f32 = -3.0e38;
const HUGE: f32 = 3.0e38;

fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    if (m > HUGE) {
        return vec2<f32>(m, 1.0);
    }
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size({{WG}})
fn logsumexp(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
#if ROWS
    let row = wg.z;
#else
    let row = 0u;
#endif
    var acc = vec2<f32>(LOW, 0.0);
    for (var i = li; i < p.v; i += {{WG}}u) {
        let l = logits[row * p.v + i];
        if ((bitcast<u32>(l) & 0x7fffffffu) <= 0x7f800000u) { // not NaN
            acc = merge(acc, vec2<f32>(l, 1.0));
        }
    }
    red[li] = acc;
    workgroupBarrier();
    for (var off = {{WG}}u / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            red[li] = merge(red[li], red[li + off]);
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let r = red[0];
        // Sum 0 (every logit -inf or NaN): log(0) = -inf.
        out[row] = r.x + log(r.y);
    }
}
#else

const K: u32 = {{K}}u;
const WG: u32 = {{WG}}u;
const ITEMS: u32 = {{ITEMS}}u;

#if FINAL
@group(0) @binding(2) var<storage, read_write> cand: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
#if SAMPLE
// The sampler on the merged candidates (ops::sample::TopKSample): one dispatch fewer per step.
#include "sampler_params.wgsl"
#if ROWS
// The row's params and candidates, set by thread 0 before it calls choose().
@group(0) @binding(4) var<storage, read> sp_pool: array<SamplerParams>;
var<private> sp: SamplerParams;
var<private> out_base: u32;
#else
@group(0) @binding(4) var<storage, read> sp: SamplerParams;
const out_base = 0u;
#endif
@group(0) @binding(5) var<storage, read_write> history: array<u32>;
fn cand_count() -> u32 { return K; }
fn cand_word(i: u32) -> u32 { return out[out_base + i]; }
#include "sampler_choose.wgsl"
#endif
#else
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> cand: array<vec2<u32>>;
#if MASK
// Constrained decoding: bit (i & 31) of mask[i >> 5] set = token i allowed.
@group(0) @binding(4) var<storage, read> mask: array<u32>;
#endif
#endif
var<workgroup> red: array<vec2<u32>, {{WG}}>; // (key, index)
var<workgroup> win: vec2<u32>;

fn okey(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0u; // NaN: never a candidate
    }
    return select(b ^ 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn unkey(k: u32) -> u32 {
    if (k == 0u) {
        return 0xff800000u; // -inf for "no candidate"
    }
    return select(~k, k ^ 0x80000000u, (k & 0x80000000u) != 0u);
}

// (key a, index a) ranks above (key b, index b); "no candidate" (0, NONE) ranks below all.
fn above(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

@compute @workgroup_size({{WG}})
#if SUBGROUPS
#if FINAL
fn topk_final(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) sg_lane: u32,
              @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    let b = 0u;
#else
fn topk_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
                @builtin(subgroup_invocation_id) sg_lane: u32,
                @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32) {
    let b = wg_linear(wg, p.gx);
#endif
#else
#if FINAL
fn topk_final(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = 0u;
#else
fn topk_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let b = wg_linear(wg, p.gx);
#endif
#endif
#if ROWS
    let row = wg.z;
#else
    let row = 0u;
#endif
    // This row's candidates in the scratch (p.n = NB·K per row), and (FINAL) its output.
    let c0 = row * p.n;
#if FINAL
    let o0 = row * 2u * K;
    let begin = 0u;
    let n = p.n;
#else
#if ROWS
    // Padding workgroups of a grid split over (gx, gy) would write the next row's candidates.
    if (b * K >= p.n) {
        return;
    }
#endif
    let l0 = row * p.v;
    let begin = b * p.seg;
    let n = min(p.v, begin + p.seg) - min(p.v, begin);
#endif
    // This thread's candidates (strided, so loads coalesce), best first.
#if K1
    var best = vec2<u32>(0u, NONE);
#else
    var mine: array<vec2<u32>, ITEMS>;
#endif
    for (var it = 0u; it < ITEMS; it++) {
        let i = li + it * WG;
        var cnd = vec2<u32>(0u, NONE);
        if (i < n) {
#if FINAL
            let c = cand[c0 + i];
            cnd = vec2<u32>(c.y, c.x);
#else
            cnd = vec2<u32>(okey(logits[l0 + begin + i]), begin + i);
#if MASK
            // A disallowed token is no candidate at all (not -inf): the sampler never sees it.
            if (((mask[(begin + i) >> 5u] >> ((begin + i) & 31u)) & 1u) == 0u) {
                cnd.x = 0u;
            }
#endif
#endif
            if (cnd.x == 0u) {
                cnd = vec2<u32>(0u, NONE);
            }
        }
#if K1
        if (above(cnd, best)) {
            best = cnd;
        }
#else
        var j = it;
        while (j > 0u && above(cnd, mine[j - 1u])) {
            mine[j] = mine[j - 1u];
            j -= 1u;
        }
        mine[j] = cnd;
#endif
    }
    var head = 0u;
    for (var r = 0u; r < K; r++) {
#if !K1
        var best = vec2<u32>(0u, NONE);
        if (head < ITEMS) {
            best = mine[head];
        }
#endif
#if SUBGROUPS
        let km = subgroupMax(best.x);
        let im = subgroupMin(select(NONE, best.y, best.x == km));
        if (sg_lane == 0u) {
            red[sg_id] = vec2<u32>(km, im);
        }
        workgroupBarrier();
        if (li == 0u) {
            var w = red[0];
            for (var s = 1u; s < n_sg; s++) {
                if (above(red[s], w)) {
                    w = red[s];
                }
            }
            win = w;
        }
#else
        red[li] = best;
        workgroupBarrier();
        for (var off = WG / 2u; off > 0u; off >>= 1u) {
            if (li < off && above(red[li + off], red[li])) {
                red[li] = red[li + off];
            }
            workgroupBarrier();
        }
        if (li == 0u) {
            win = red[0];
        }
#endif
        workgroupBarrier();
        let w = win;
        if (li == 0u) {
#if FINAL
            out[o0 + r] = w.y;
            out[o0 + K + r] = unkey(w.x);
#else
            cand[c0 + b * K + r] = vec2<u32>(w.y, w.x);
#endif
        }
        // Indices are unique, so exactly one thread owns a real winner.
        if (w.x != 0u && w.y == best.y) {
            head += 1u;
        }
        workgroupBarrier();
    }
#if SAMPLE
    // Thread 0 wrote every `out` word itself, so it reads them back without a barrier; the
    // token at position kv_len goes where the next step's embedding reads it (p._a = C).
#if ROWS
    // Row t samples the token after its own position, into its own sequence's history (p._a
    // words each); the pooled buffer's end is checked too, as an out-of-range write may be
    // clamped onto another sequence's last word rather than dropped.
    let rs = step.rows[row];
    let at = rs.x + 1u;
    if (li == 0u && at < p._a && rs.z + at < arrayLength(&history)) {
        sp = sp_pool[rs.w];
        out_base = o0;
        history[rs.z + at] = choose(uniform_at(sp.seed_lo, sp.seed_hi, at));
    }
#else
    if (li == 0u && step.kv_len < p._a) {
        history[step.kv_len] = choose(uniform_at(sp.seed_lo, sp.seed_hi, step.kv_len));
    }
#endif
#endif
}
#endif
#endif
#endif
