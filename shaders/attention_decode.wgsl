// attention_decode.wgsl — one decode step (T = 1) of a layer's attention in ONE dispatch: RoPE on
// the fused q|k|v row, the new token's K/V written into the cache, split-K flash attention over
// the cache and the merge of the chunks. Equals rope.wgsl `rope_kv` followed by attention.wgsl
// `attn` (SPLIT) and `attn_reduce`, without the two dispatch gaps.
//
// Layouts: qkv f32 [1, (HQ + 2·HKV)·D] (Q heads, K heads, V heads, un-rotated); inv_freq f32
//   [D/2]; k_cache, v_cache [C, HKV, D] (f32, or f16 packed two per u32 with KV_F16); sync u32
//   [≥ HKV], zero before and after the dispatch; out f32 [1, HQ·D]; part f32 [S, HQ, D]
//   (unnormalized O per chunk and query head); ml vec2 [S, HQ] (running max m, sum l).
// Bindings: 0 params {hq, hkv, scale, chunks S, min_chunk, cap}; 1 step {pos, kv_len}; 2 qkv;
//   3 inv_freq; 4 k_cache; 5 v_cache; 6 sync (atomic); 7 out; 8 part; 9 ml (8, 9: scratch).
// Dispatch: (S, HKV, 1) workgroups of WG threads. Workgroup (c, hk) takes chunk c of the keys
//   0 .. kv_len — chunks of clen = max(min_chunk, ceil(kv_len / S)) rows, as attention.wgsl's
//   SPLIT — for the G query heads of kv head hk; a chunk starting at or past kv_len does nothing.
//
// A workgroup:
// 1. loads its G query heads from qkv rotated to step.pos (the pairs and formula of rope.wgsl)
//    and pre-scaled;
// 2. walks its chunk in K/V tiles of BK rows. Row step.pos (only in the last non-empty chunk)
//    is not read from the cache: that workgroup rotates K and copies V from qkv, writes them into
//    the cache row (rounded to f16 with KV_F16, and uses the rounded values, as a later read
//    would) and puts them in the tile. No other workgroup reads that row, so none waits for it;
//    rows at or past the capacity lie in no chunk and are never written;
// 3. scores, online softmax and O = O·α + P·V as attention.wgsl `attn` with BQ = 1;
// 4. writes its partial (O, m, l), then counts itself done in sync[hk]; the workgroup whose count
//    reaches n (the number of non-empty chunks) merges the n partials of the G heads into out —
//    out = Σ_c e^(m_c − M)·O_c / Σ_c e^(m_c − M)·l_c — and sets sync[hk] back to 0.
//
// Memory ordering of step 4. naga emits storageBarrier() as OpControlBarrier(Workgroup, Device,
// AcquireRelease | UniformMemory) — a device-scope fence on storage memory for every thread of
// the workgroup — and atomics as relaxed device-scope operations. A writer: all threads store
// part/ml → storageBarrier (release) → thread 0 atomicAdd(sync[hk]). The reader's thread 0 reads
// the count n − 1 through the chain of atomicAdds (read-modify-writes continue each writer's
// release sequence) → workgroupUniformLoad (a workgroup barrier that also makes the verdict
// uniform) → storageBarrier (acquire) → loads of part/ml. Release fence, atomic, acquire fence:
// every writer's partials happen-before the reader's loads. No workgroup ever waits on another
// (no spinning), so nothing depends on workgroups being resident together. The reset is safe:
// every workgroup of hk has added before the count reaches n, and the next dispatch (the next
// layer, sharing the buffer) starts after this one ends.
// Features: none (workgroup memory, storage atomics). D a multiple of 4; the host sizes BK to the
// device's workgroup storage (else it uses the multi-dispatch path).
#include "common.wgsl"

struct Params { hq: u32, hkv: u32, scale: f32, chunks: u32, min_chunk: u32, cap: u32, _a: u32, _b: u32 }

const D4: u32 = {{D4}}u;      // head_dim / 4
const D: u32 = 4u * D4;
const G: u32 = {{G}}u;        // query heads per kv head
const BK: u32 = {{BK}}u;      // keys per tile
const WG: u32 = {{WG}}u;
const ACC: u32 = {{ACC}}u;    // ceil(G·D4 / WG) output vec4s per thread
const DS: u32 = D4 + 1u;      // padded row stride (vec4s) of the Q and K tiles
const RG: u32 = WG / BK;      // row groups of the score step (BK divides WG)
const RB: u32 = (G + RG - 1u) / RG; // score rows per thread
const NEG: f32 = -3.0e38;     // masked score

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
#if KV_F16
@group(0) @binding(4) var<storage, read_write> k_cache: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<vec2<u32>>;
fn widen4(w: vec2<u32>) -> vec4<f32> { return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }
fn load_k(i: u32) -> vec4<f32> { return widen4(k_cache[i]); }
fn load_v(i: u32) -> vec4<f32> { return widen4(v_cache[i]); }
// Store into the cache; returns what a later load of it gives.
fn store_k(i: u32, x: vec4<f32>) -> vec4<f32> {
    let w = vec2<u32>(pack2x16float(x.xy), pack2x16float(x.zw));
    k_cache[i] = w;
    return widen4(w);
}
fn store_v(i: u32, x: vec4<f32>) -> vec4<f32> {
    let w = vec2<u32>(pack2x16float(x.xy), pack2x16float(x.zw));
    v_cache[i] = w;
    return widen4(w);
}
#else
@group(0) @binding(4) var<storage, read_write> k_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<vec4<f32>>;
fn load_k(i: u32) -> vec4<f32> { return k_cache[i]; }
fn load_v(i: u32) -> vec4<f32> { return v_cache[i]; }
fn store_k(i: u32, x: vec4<f32>) -> vec4<f32> { k_cache[i] = x; return x; }
fn store_v(i: u32, x: vec4<f32>) -> vec4<f32> { v_cache[i] = x; return x; }
#endif
@group(0) @binding(6) var<storage, read_write> sync: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> ml: array<vec2<f32>>;

var<workgroup> qs: array<vec4<f32>, {{QS_LEN}}>;  // G · DS
var<workgroup> ks: array<vec4<f32>, {{KS_LEN}}>;  // BK · DS
var<workgroup> vs: array<vec4<f32>, {{VS_LEN}}>;  // BK · D4
var<workgroup> ss: array<f32, {{SS_LEN}}>;        // G · BK: scores, then probabilities
var<workgroup> m_sh: array<f32, {{G}}>;
var<workgroup> l_sh: array<f32, {{G}}>;
var<workgroup> a_sh: array<f32, {{G}}>;
#include "attention_softmax.wgsl"
var<workgroup> last_sh: u32;

// Valid cache rows; never past the capacity, even for a step the host should have refused.
fn kv_len() -> u32 { return min(step.kv_len, p.cap); }

// cos/sin as rope.wgsl computes them (reduced to about [-π, π] first), so K rows match RopeKv's.
fn cos_sin(a: f32) -> vec2<f32> {
    let n = round(a * 0.15915494309189535);
    let r = (a - n * 6.28125) - n * 0.0019353071795864769;
    return vec2<f32>(cos(r), sin(r));
}

// Element e of the head starting at qkv[src], rotated by position pf: pair (a, b) becomes
// (a cos θ − b sin θ, b cos θ + a sin θ), pairs (i, i + D/2) or, INTERLEAVED, (2i, 2i+1).
// Per element rather than per vec4 because D/2 need not be a multiple of 4.
fn rope1(src: u32, e: u32, pf: f32) -> f32 {
#if INTERLEAVED
    let i = e / 2u;
    let first = e % 2u == 0u;
    let a = qkv[src + 2u * i];
    let b = qkv[src + 2u * i + 1u];
#else
    let half = D / 2u;
    let first = e < half;
    let i = select(e - half, e, first);
    let a = qkv[src + i];
    let b = qkv[src + i + half];
#endif
    let cs = cos_sin(pf * inv_freq[i]);
    return select(b * cs.x + a * cs.y, a * cs.x - b * cs.y, first);
}

fn rope4(src: u32, c: u32, pf: f32) -> vec4<f32> {
    let e = 4u * c;
    return vec4<f32>(rope1(src, e, pf), rope1(src, e + 1u, pf), rope1(src, e + 2u, pf),
                     rope1(src, e + 3u, pf));
}

@compute @workgroup_size({{WG}})
fn attn_decode(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let chunk = wg.x;
    let hk = wg.y;
    let n_keys = kv_len();
    let clen = max(p.min_chunk, (n_keys + p.chunks - 1u) / p.chunks);
    let k_begin = chunk * clen;
    if (k_begin >= n_keys) {
        return;
    }
    let k_end = min(n_keys, k_begin + clen);
    let pos = step.pos;
    let pf = f32(pos);

    // (1) Q heads hk·G .. of qkv, rotated and pre-scaled.
    for (var i = li; i < G * D4; i += WG) {
        let row = i / D4;
        let c = i % D4;
        qs[row * DS + c] = rope4((hk * G + row) * D, c, pf) * p.scale;
    }
    if (li < G) {
        m_sh[li] = NEG;
        l_sh[li] = 0.0;
    }
    var acc: array<vec4<f32>, ACC>;
    for (var a = 0u; a < ACC; a++) {
        acc[a] = vec4<f32>(0.0);
    }

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        let nk = min(BK, k_end - k0);
        // (2) K and V tiles; rows past nk are zero (their scores are masked). Row pos comes
        // from qkv and goes into the cache.
        for (var i = li; i < BK * D4; i += WG) {
            let j = i / D4;
            let c = i % D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (j < nk) {
                let row = k0 + j;
                let g = (row * p.hkv + hk) * D4 + c;
                if (row == pos) {
                    kv = store_k(g, rope4((p.hq + hk) * D, c, pf));
                    let v0 = (p.hq + p.hkv + hk) * D + 4u * c;
                    vv = store_v(g, vec4<f32>(qkv[v0], qkv[v0 + 1u], qkv[v0 + 2u], qkv[v0 + 3u]));
                } else {
                    kv = load_k(g);
                    vv = load_v(g);
                }
            }
            ks[j * DS + c] = kv;
            vs[j * D4 + c] = vv;
        }
        workgroupBarrier();
        // (3) Scores: thread li takes key j = li % BK for rows li / BK + RG·m (m < RB). Every key
        // of the chunk is ≤ pos, so the causal mask is only the tile's end.
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
                    let row = min(rg + RG * m, G - 1u);
                    s[m] += dot(qs[row * DS + c], kv);
                }
            }
            for (var m = 0u; m < RB; m++) {
                let row = rg + RG * m;
                if (row < G) {
                    ss[row * BK + j] = select(NEG, s[m], j < nk);
                }
            }
        }
        workgroupBarrier();
        // Online softmax, one thread per query head.
        online_softmax(li, G);
        workgroupBarrier();
        // O = O·α + P·V.
        for (var a = 0u; a < ACC; a++) {
            let i = li + a * WG;
            if (i < G * D4) {
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

    // (4) This chunk's partial.
    for (var a = 0u; a < ACC; a++) {
        let i = li + a * WG;
        if (i < G * D4) {
            let row = i / D4;
            let c = i % D4;
            let slot = chunk * p.hq + hk * G + row;
            part[slot * D4 + c] = acc[a];
            if (c == 0u) {
                ml[slot] = vec2<f32>(m_sh[row], l_sh[row]);
            }
        }
    }
    // The last of the n non-empty chunks of hk to get here merges them (ordering: see the top).
    let n = min(p.chunks, (n_keys + clen - 1u) / clen);
    storageBarrier();
    if (li == 0u) {
        last_sh = select(0u, 1u, atomicAdd(&sync[hk], 1u) + 1u == n);
    }
    if (workgroupUniformLoad(&last_sh) == 0u) {
        return;
    }
    storageBarrier();
    if (li < G) {
        let h = hk * G + li;
        var mx = NEG;
        for (var c = 0u; c < n; c++) {
            mx = max(mx, ml[c * p.hq + h].x);
        }
        var l = 0.0;
        for (var c = 0u; c < n; c++) {
            let v = ml[c * p.hq + h];
            l += exp(v.x - mx) * v.y;
        }
        m_sh[li] = mx;
        l_sh[li] = l;
    }
    workgroupBarrier();
    for (var i = li; i < G * D4; i += WG) {
        let row = i / D4;
        let e = i % D4;
        let h = hk * G + row;
        var o = vec4<f32>(0.0);
        for (var c = 0u; c < n; c++) {
            o += exp(ml[c * p.hq + h].x - m_sh[row]) * part[(c * p.hq + h) * D4 + e];
        }
        out[h * D4 + e] = o / l_sh[row];
    }
    if (li == 0u) {
        atomicStore(&sync[hk], 0u);
    }
}
