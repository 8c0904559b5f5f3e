// rope.wgsl — RoPE on the fused QKV rows, with K and V written straight into the KV cache.
//
// For token t (position p = step.pos + t) of qkv f32[T, (HQ + 2·HKV)·D] (Q heads, K heads,
// V heads; D contiguous values per head):
//   Q heads, rotated        -> q[t, h, :]                       (f32 [T, HQ·D])
//   K heads, rotated        -> k_cache[p, h, :]  if p < cap     ([C, HKV, D])
//   V heads, copied         -> v_cache[p, h, :]  if p < cap
// A rotation pair (a, b) with frequency f = inv_freq[i] at angle θ = f32(p)·f (rounded in f32
// like the reference implementation) becomes (a cos θ − b sin θ, b cos θ + a sin θ). Pair i is
// (i, i + D/2) in the Hugging Face rotate-half layout and (2i, 2i+1) with INTERLEAVED (GGUF/GPT-J).
//
// Bindings: 0 params {t, hq, hkv, d, cap, gx}; 1 step {pos}; 2 qkv f32; 3 inv_freq f32[D/2];
//           4 k_cache, 5 v_cache (f32, or f16 packed two per u32 with KV_F16); 6 q f32.
// Dispatch: one thread per 4 values of a head (two rotation pairs, so an f16 cache gets whole
//           u32 words), T·(HQ+2·HKV)·D/4 threads in workgroups of WG, spread over (gx, gy).
// ROWS (a batched step, ops::RowStep): token t sits at position p = step.rows[t].x of its own
//   sequence, whose cache rows start at step.rows[t].y of the pooled cache: K and V go to row
//   step.rows[t].y + p, written when p < cap (one sequence's capacity).
// Features: KV_F16 uses pack2x16float only (no shader-f16 needed). D must be a multiple of 4.
#include "common.wgsl"

struct Params { t: u32, hq: u32, hkv: u32, d: u32, cap: u32, gx: u32, _a: u32, _b: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
#if KV_F16
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;
#else
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;
#endif
@group(0) @binding(6) var<storage, read_write> q: array<f32>;

// cos/sin of an angle after reducing it to about [-π, π] (GPU sin/cos lose accuracy far
// from 0). 2π = C1 + C2 with C1 = 201/32 exact in 8 bits, so n·C1 is exact for |n| < 2^16.
fn cos_sin(a: f32) -> vec2<f32> {
    let n = round(a * 0.15915494309189535);
    let r = (a - n * 6.28125) - n * 0.0019353071795864769;
    return vec2<f32>(cos(r), sin(r));
}

fn rot(a: f32, b: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a * cs.x - b * cs.y, b * cs.x + a * cs.y);
}

// Store 4 values of one head row: elements (e0, e0+1) = v.xy and (e1, e1+1) = v.zw.
fn store(cache_k: bool, base: u32, e0: u32, e1: u32, v: vec4<f32>) {
#if KV_F16
    let w0 = pack2x16float(v.xy);
    let w1 = pack2x16float(v.zw);
    if (cache_k) {
        k_cache[(base + e0) / 2u] = w0;
        k_cache[(base + e1) / 2u] = w1;
    } else {
        v_cache[(base + e0) / 2u] = w0;
        v_cache[(base + e1) / 2u] = w1;
    }
#else
    if (cache_k) {
        k_cache[base + e0] = v.x;
        k_cache[base + e0 + 1u] = v.y;
        k_cache[base + e1] = v.z;
        k_cache[base + e1 + 1u] = v.w;
    } else {
        v_cache[base + e0] = v.x;
        v_cache[base + e0 + 1u] = v.y;
        v_cache[base + e1] = v.z;
        v_cache[base + e1 + 1u] = v.w;
    }
#endif
}

@compute @workgroup_size({{WG}})
fn rope_kv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    let d = p.d;
    let quads = d / 4u;
    let heads = p.hq + 2u * p.hkv;
    let per_token = heads * quads;
    let t = i / per_token;
    if (t >= p.t) {
        return;
    }
    let r = i % per_token;
    let head = r / quads;
    let m = r % quads;
    let src = t * heads * d + head * d;
#if ROWS
    // A batched step: token t is the next one of its own sequence, whose cache rows start at
    // step.rows[t].y of the pooled cache (cap is then one sequence's capacity).
    let pos = step.rows[t].x;
    let row = step.rows[t].y + pos;
#else
    let pos = step.pos + t;
    let row = pos;
#endif
    let row_ok = pos < p.cap;

    if (head >= p.hq + p.hkv) {
        // V: copied unchanged.
        if (row_ok) {
            let kvh = head - p.hq - p.hkv;
            let e = 4u * m;
            let v = vec4<f32>(qkv[src + e], qkv[src + e + 1u], qkv[src + e + 2u], qkv[src + e + 3u]);
            store(false, (row * p.hkv + kvh) * d, e, e + 2u, v);
        }
        return;
    }

    // Two rotation pairs: (a0, b0) with frequency 2m and (a1, b1) with frequency 2m+1.
#if INTERLEAVED
    let a0 = 4u * m;
    let b0 = a0 + 1u;
    let a1 = a0 + 2u;
    let b1 = a0 + 3u;
#else
    let hd = d / 2u;
    let a0 = 2u * m;
    let a1 = a0 + 1u;
    let b0 = a0 + hd;
    let b1 = a1 + hd;
#endif
    let pf = f32(pos);
    let r0 = rot(qkv[src + a0], qkv[src + b0], cos_sin(pf * inv_freq[2u * m]));
    let r1 = rot(qkv[src + a1], qkv[src + b1], cos_sin(pf * inv_freq[2u * m + 1u]));
    if (head < p.hq) {
        let dst = t * p.hq * d + head * d;
        q[dst + a0] = r0.x;
        q[dst + b0] = r0.y;
        q[dst + a1] = r1.x;
        q[dst + b1] = r1.y;
    } else if (row_ok) {
        let base = (row * p.hkv + head - p.hq) * d;
#if INTERLEAVED
        // Elements a0, b0, a1, b1 are 4m .. 4m+3.
        store(true, base, a0, a1, vec4<f32>(r0.x, r0.y, r1.x, r1.y));
#else
        // Elements (a0, a1) and (b0, b1) are adjacent.
        store(true, base, a0, b0, vec4<f32>(r0.x, r1.x, r0.y, r1.y));
#endif
    }
}
