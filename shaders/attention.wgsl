// attention.wgsl — causal attention over the KV cache, flash style (online softmax, K/V tiles in
// workgroup memory, the T×kv_len score matrix never materialized), with grouped-query heads
// sharing each K/V tile.
//
// q f32 [T, HQ, D] (already rotated and not yet scaled); k_cache, v_cache [C, HKV, D] (f32, or
// f16 packed two per u32 with KV_F16). Query token t sits at position step.pos + t and attends
// to cache rows 0 ..= step.pos + t (all < step.kv_len, clamped to the capacity C). Query head
// h uses kv head h / G.
//
// Entry `attn` — one workgroup per (block of BQ query tokens, kv head); its R = BQ·G rows are
// every (token, query head) pair of the block whose head belongs to the kv head. Per K/V tile of
// BK rows: (1) load K, V; (2) scores S = Q·Kᵀ (scale folded into Q; each thread one key for RB
// rows, so a K read serves RB rows), causal mask; (3) per row,
// online-softmax update of the running max m and sum l, S → P; (4) O = O·α + P·V, with O in
// registers (ACC vec4 per thread).
//   Bindings: 0 params {t, hq, hkv, scale, chunks, min_chunk, cap}; 1 step; 2 q; 3 k_cache; 4 v_cache; then
//     prefill: 5 out f32 [T, HQ·D]                      dispatch (ceil(T / BQ), HKV, 1)
//     SPLIT:   5 part f32 [S, HQ, D] (unnormalized O),   dispatch (S, HKV, 1), T = 1
//              6 ml vec2 [S, HQ] (m, l)
//   With SPLIT (decode) workgroup x handles chunk x of the keys 0 .. kv_len, chunks of
//   clen = max(min_chunk, ceil(kv_len / S)) rows; a chunk starting at or past kv_len writes
//   nothing, and the reduce pass does not read it.
// Entry `attn_reduce` (define REDUCE) — one workgroup per query head merges the non-empty chunks:
//   out = Σ_c e^(m_c − M)·O_c / Σ_c e^(m_c − M)·l_c.  Bindings: 2 part, 3 ml, 4 out f32 [1, HQ·D].
// BATCH (with SPLIT, `attn_rows` and `attn_reduce`): q and out are [B, HQ·D], one row per
//   sequence; grid z is the row b (dispatches (S, HKV, B), (S, 1, B), (HQ, 1, B)); part and ml
//   hold B·S slots, row b's at b·S·HQ ..; row b reads its own sequence's rows of the pooled
//   caches (kv_len_at, cache_base below).
// Features: none (workgroup memory only). D a multiple of 4; the host sizes BQ, BK to the
// device's workgroup storage.
#include "common.wgsl"

struct Params { t: u32, hq: u32, hkv: u32, scale: f32, chunks: u32, min_chunk: u32, cap: u32, _b: u32 }

const D4: u32 = {{D4}}u;      // head_dim / 4
const WG: u32 = {{WG}}u;
const NEG: f32 = -3.0e38;     // masked score

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;

// Valid cache rows of batch row b; never past the capacity, even for a step the host should
// have refused. BATCH (decode of several sequences, ops::RowStep): row b attends to rows
// 0 ..= step.rows[b].x of its own sequence, which start at row step.rows[b].y of the pooled
// caches; cap is one sequence's capacity. Otherwise b is 0 and the one sequence starts at row 0.
#if BATCH
fn kv_len_at(b: u32) -> u32 { return min(step.rows[b].x + 1u, p.cap); }
fn cache_base(b: u32) -> u32 { return step.rows[b].y; }
fn last_key(b: u32, tok: u32) -> u32 { return step.rows[b].x; }
#else
fn kv_len_at(b: u32) -> u32 { return min(step.kv_len, p.cap); }
fn cache_base(b: u32) -> u32 { return 0u; }
fn last_key(b: u32, tok: u32) -> u32 { return step.pos + tok; }
#endif

#if !REDUCE
#if ROWS
// K/V cache bindings of `attn_rows`: a lane reads 8 values of a row per load (`load8_*`, index
// i = the row's vec4 pair), f16 halves as one vec4<u32>.
struct V8 { a: vec4<f32>, b: vec4<f32> }
#if KV_F16
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<u32>>;
fn widen8(w: vec4<u32>) -> V8 {
    return V8(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
              vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}
fn load8_k(i: u32) -> V8 { return widen8(k_cache[i]); }
fn load8_v(i: u32) -> V8 { return widen8(v_cache[i]); }
#else
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
fn load8_k(i: u32) -> V8 { return V8(k_cache[2u * i], k_cache[2u * i + 1u]); }
fn load8_v(i: u32) -> V8 { return V8(v_cache[2u * i], v_cache[2u * i + 1u]); }
#endif
#else
// K/V cache bindings of `attn`.
#if KV_F16
@group(0) @binding(3) var<storage, read> k_cache: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec2<u32>>;
fn load_k(i: u32) -> vec4<f32> { let w = k_cache[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
fn load_v(i: u32) -> vec4<f32> { let w = v_cache[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
#else
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;
fn load_k(i: u32) -> vec4<f32> { return k_cache[i]; }
fn load_v(i: u32) -> vec4<f32> { return v_cache[i]; }
#endif
#endif
#endif

#if ROWS
// Entry `attn_rows` (CPU devices, decode, T = 1) — no workgroup memory, no barriers: workgroup x
// takes chunk x of the keys (as SPLIT); kv head hk gets the LH lanes of one subgroup (LH = the
// subgroup size) and serves its G query heads, so each K/V row is loaded once for all G (on
// lavapipe every storage load is a per-lane loop: loads are the cost). Lane l holds the ACC =
// D4 / LH consecutive vec4s l·ACC .. of each head's q (pre-scaled) and O, loaded 8 values at a
// time; a key's score for a head is one subgroupAdd; the online softmax runs in registers. q is
// a uniform array (its first HQ·D4 vec4): on lavapipe uniform loads are gathers.
//   Bindings: 0 params; 1 step; 2 q (uniform); 3 k_cache; 4 v_cache; 5 part; 6 ml (as SPLIT).
//   Defines: D4, G, LH (D4 a multiple of 2·LH), WG = HKV·LH, QU (Caps::uniform_window / 16 ≥
//   HQ·D4), KV_F16.   Dispatch (S, 1, 1).
const LH: u32 = {{LH}}u;
const G: u32 = {{G}}u;
const ACC: u32 = D4 / LH;

@group(0) @binding(2) var<uniform> q: array<vec4<f32>, {{QU}}>;
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> ml: array<vec2<f32>>;

@compute @workgroup_size({{WG}})
fn attn_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let chunk = wg.x;
    let b = wg.z;
    let hk = li / LH;
    let l = li % LH;
    let kvl = kv_len_at(b);
    let clen = max(p.min_chunk, (kvl + p.chunks - 1u) / p.chunks);
    let k_begin = chunk * clen;
    if (k_begin >= kvl) {
        return;
    }
    let k_end = min(kvl, k_begin + clen);
    var qv: array<vec4<f32>, G * ACC>;
    var acc: array<vec4<f32>, G * ACC>;
    var m: array<f32, G>;
    var sum: array<f32, G>;
    for (var g = 0u; g < G; g++) {
        for (var a = 0u; a < ACC; a++) {
            qv[g * ACC + a] = q[(b * p.hq + hk * G + g) * D4 + l * ACC + a] * p.scale;
            acc[g * ACC + a] = vec4<f32>(0.0);
        }
        m[g] = NEG;
        sum[g] = 0.0;
    }
    var kv: array<vec4<f32>, ACC>;
    var vv: array<vec4<f32>, ACC>;
    for (var j = k_begin; j < k_end; j++) {
        let base = (((cache_base(b) + j) * p.hkv + hk) * D4 + l * ACC) / 2u;
        for (var a = 0u; a < ACC / 2u; a++) {
            let k8 = load8_k(base + a);
            kv[2u * a] = k8.a;
            kv[2u * a + 1u] = k8.b;
            let v8 = load8_v(base + a);
            vv[2u * a] = v8.a;
            vv[2u * a + 1u] = v8.b;
        }
        for (var g = 0u; g < G; g++) {
            var s = 0.0;
            for (var a = 0u; a < ACC; a++) {
                s += dot(qv[g * ACC + a], kv[a]);
            }
            s = subgroupAdd(s);
            let mn = max(m[g], s);
            let alpha = exp(m[g] - mn);
            let pj = exp(s - mn);
            sum[g] = sum[g] * alpha + pj;
            for (var a = 0u; a < ACC; a++) {
                acc[g * ACC + a] = acc[g * ACC + a] * alpha + pj * vv[a];
            }
            m[g] = mn;
        }
    }
    for (var g = 0u; g < G; g++) {
        let slot = (b * p.chunks + chunk) * p.hq + hk * G + g;
        for (var a = 0u; a < ACC; a++) {
            part[slot * D4 + l * ACC + a] = acc[g * ACC + a];
        }
        if (l == 0u) {
            ml[slot] = vec2<f32>(m[g], sum[g]);
        }
    }
}

#else
#if REDUCE
@group(0) @binding(2) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> ml: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size({{WG}})
fn attn_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let b = wg.z;
    let kvl = kv_len_at(b);
    let clen = max(p.min_chunk, (kvl + p.chunks - 1u) / p.chunks);
    let n = min(p.chunks, (kvl + clen - 1u) / clen);
    let s0 = b * p.chunks * p.hq + h; // slot of (row b, chunk 0, head h)
    var mx = NEG;
    for (var c = 0u; c < n; c++) {
        mx = max(mx, ml[s0 + c * p.hq].x);
    }
    var l = 0.0;
    for (var c = 0u; c < n; c++) {
        let v = ml[s0 + c * p.hq];
        l += exp(v.x - mx) * v.y;
    }
    for (var i = li; i < D4; i += WG) {
        var o = vec4<f32>(0.0);
        for (var c = 0u; c < n; c++) {
            o += exp(ml[s0 + c * p.hq].x - mx) * part[(s0 + c * p.hq) * D4 + i];
        }
        out[(b * p.hq + h) * D4 + i] = o / l;
    }
}

#else

const DS: u32 = {{D4}}u + 1u; // padded row stride (vec4s) of the Q and K tiles
const G: u32 = {{G}}u;        // query heads per kv head
const BQ: u32 = {{BQ}}u;      // query tokens per workgroup
const R: u32 = {{BQ}}u * {{G}}u;
const BK: u32 = {{BK}}u;      // keys per tile
const ACC: u32 = {{ACC}}u;    // ceil(R·D4 / WG) output vec4s per thread
const RG: u32 = WG / BK;      // row groups of the score step (BK divides WG)
const RB: u32 = (R + RG - 1u) / RG; // score rows per thread

@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
#if SPLIT
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> ml: array<vec2<f32>>;
#else
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
#endif

var<workgroup> qs: array<vec4<f32>, {{QS_LEN}}>;  // R · DS
var<workgroup> ks: array<vec4<f32>, {{KS_LEN}}>;  // BK · DS
var<workgroup> vs: array<vec4<f32>, {{VS_LEN}}>;  // BK · D4
var<workgroup> ss: array<f32, {{SS_LEN}}>;        // R · BK: scores, then probabilities
var<workgroup> m_sh: array<f32, {{R}}>;
var<workgroup> l_sh: array<f32, {{R}}>;
var<workgroup> a_sh: array<f32, {{R}}>;
#include "attention_softmax.wgsl"

@compute @workgroup_size({{WG}})
fn attn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let hk = wg.y;
    let b = wg.z;
    let kvl = kv_len_at(b);
#if SPLIT
    let chunk = wg.x;
    let clen = max(p.min_chunk, (kvl + p.chunks - 1u) / p.chunks);
    let k_begin = chunk * clen;
    if (k_begin >= kvl) {
        return;
    }
    let k_end = min(kvl, k_begin + clen);
    let t0 = 0u;
#else
    let t0 = wg.x * BQ;
    let t_last = min(t0 + BQ, p.t) - 1u;
    let k_begin = 0u;
    let k_end = min(kvl, step.pos + t_last + 1u);
#endif

    // Q rows of this block, pre-scaled; rows past the last token are zero and never written.
    for (var i = li; i < R * D4; i += WG) {
        let row = i / D4;
        let c = i % D4;
        let tok = t0 + row / G;
        let h = hk * G + row % G;
        var v = vec4<f32>(0.0);
        if (tok < p.t) {
            v = q[((b + tok) * p.hq + h) * D4 + c] * p.scale;
        }
        qs[row * DS + c] = v;
    }
    if (li < R) {
        m_sh[li] = NEG;
        l_sh[li] = 0.0;
    }
    var acc: array<vec4<f32>, ACC>;
    for (var a = 0u; a < ACC; a++) {
        acc[a] = vec4<f32>(0.0);
    }

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        let nk = min(BK, k_end - k0);
        // (1) K and V tiles; rows past nk are zero (their scores are masked).
        for (var i = li; i < BK * D4; i += WG) {
            let j = i / D4;
            let c = i % D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (j < nk) {
                let g = ((cache_base(b) + k0 + j) * p.hkv + hk) * D4 + c;
                kv = load_k(g);
                vv = load_v(g);
            }
            ks[j * DS + c] = kv;
            vs[j * D4 + c] = vv;
        }
        workgroupBarrier();
        // (2) Scores with the causal mask. Thread li takes key j = li % BK for rows
        // li / BK + RG·m (m < RB): each K vec4 read serves RB rows.
        {
            let j = li % BK;
            let rg = li / BK;
            var s: array<f32, RB>;
            for (var m = 0u; m < RB; m++) {
                s[m] = 0.0;
            }
            for (var c = 0u; c < D4; c++) {
                let kv = ks[j * DS + c];
                for (var m = 0u; m < RB; m++) {
                    let row = min(rg + RG * m, R - 1u);
                    s[m] += dot(qs[row * DS + c], kv);
                }
            }
            for (var m = 0u; m < RB; m++) {
                let row = rg + RG * m;
                let tok = t0 + row / G;
                let ok = j < nk && tok < p.t && k0 + j <= last_key(b, tok);
                if (row < R) {
                    ss[row * BK + j] = select(NEG, s[m], ok);
                }
            }
        }
        workgroupBarrier();
        // (3) Online softmax, one thread per row.
        online_softmax(li, R);
        workgroupBarrier();
        // (4) O = O·α + P·V.
        for (var a = 0u; a < ACC; a++) {
            let i = li + a * WG;
            if (i < R * D4) {
                let row = i / D4;
                let c = i % D4;
                var o = acc[a] * a_sh[row];
                for (var j = 0u; j < nk; j++) {
                    o += ss[row * BK + j] * vs[j * D4 + c];
                }
                acc[a] = o;
            }
        }
        workgroupBarrier();
    }

    for (var a = 0u; a < ACC; a++) {
        let i = li + a * WG;
        if (i < R * D4) {
            let row = i / D4;
            let c = i % D4;
            let tok = t0 + row / G;
            let h = hk * G + row % G;
#if SPLIT
            let slot = (b * p.chunks + chunk) * p.hq + h;
            part[slot * D4 + c] = acc[a];
            if (c == 0u) {
                ml[slot] = vec2<f32>(m_sh[row], l_sh[row]);
            }
#else
            if (tok < p.t) {
                out[(tok * p.hq + h) * D4 + c] = acc[a] / l_sh[row];
            }
#endif
        }
    }
}

#endif
#endif
