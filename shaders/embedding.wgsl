// embedding.wgsl — token embedding gather: y[t, j] = table[ids[t], j] widened (float tables) or
// dequantized (GGUF block tables) to f32.
//
// Bindings: 0 params {tokens, n, vocab, gx, nbr (blocks per table row), scales_word, _, _};
//           1 step; 2 ids: u32[tokens], or with AT_POS the sequence's token history u32[C]
//             read at positions step.pos .. step.pos + tokens (a position ≥ C yields zeros);
//           3 table: f32[vocab*n] (W_F32), u32[vocab*n/2] packed f16 (W_F16) / bf16 (W_BF16),
//             or u32[] block-quantized in the GPU layout of src/quant/mod.rs (QUANT plus one of
//             Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K, decoded by quant_blocks.wgsl; BL = values per block);
//             or with ROWS the pooled token history, row t's id at step.rows[t].z + step.rows[t].x
//             (a batched step: each row the next token of its own sequence);
//           4 y: f32[tokens*n]. With TEX (CPU devices) binding 3 is the table's texel image
//             `wt: texture_2d<u32>` (src/gpu/texels.rs), the same words 4 to a texel.
// Dispatch: float tables: one thread per output value, ceil(tokens*n / WG) workgroups;
//           quantized: one thread per 4 values (n is whole blocks, so a multiple of 32),
//           ceil(tokens*n/4 / WG) workgroups; both over (gx, gy). An id >= vocab yields zeros
//           (ids are validated on the host; this keeps a bad id from reading out of bounds).
// Features: none.
#include "common.wgsl"

struct Params { tokens: u32, n: u32, vocab: u32, gx: u32, nbr: u32, scales_word: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// The id of the step's token t (an out-of-range position reads as an invalid id).
fn token_id(t: u32) -> u32 {
#if AT_POS
#if ROWS
    let at = step.rows[t].z + step.rows[t].x;
#else
    let at = step.pos + t;
#endif
    if (at >= arrayLength(&ids)) {
        return 0xffffffffu;
    }
    return ids[at];
#else
    return ids[t];
#endif
}

#if QUANT
#if TEX
@group(0) @binding(3) var wt: texture_2d<u32>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#include "quant_blocks.wgsl"

@compute @workgroup_size({{WG}})
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    let n4 = p.n / 4u;
    if (i >= p.tokens * n4) {
        return;
    }
    let t = i / n4;
    let e = 4u * (i % n4);
    let id = token_id(t);
    var v = vec4<f32>(0.0);
    if (id < p.vocab) {
        let in_blk = e % {{BL}}u;
        let c = chunk_at(id * p.nbr + e / {{BL}}u, in_blk / 32u);
        // Bit-exact with src/quant's dequantizers: an f16 scale times a small integer is exact
        // in f32, and the roundings left (Q6_K's (d·sc)·q, the K-quants' `− min`) happen in
        // the same order there.
        v = chunk_vec4(c, (in_blk % 32u) / 4u);
    }
    let o = t * p.n + e;
    y[o] = v.x;
    y[o + 1u] = v.y;
    y[o + 2u] = v.z;
    y[o + 3u] = v.w;
}
#else
#if TEX
// The table's texel image (src/gpu/texels.rs): word i is component i % 4 of texel i / 4.
@group(0) @binding(3) var wt: texture_2d<u32>;
fn word(i: u32) -> u32 { return texel(wt, i >> 2u)[i & 3u]; }
#if W_F32
fn load(e: u32) -> f32 { return bitcast<f32>(word(e)); }
#endif
#if W_F16
fn load(e: u32) -> f32 { return unpack2x16float(word(e >> 1u))[e & 1u]; }
#endif
#if W_BF16
fn load(e: u32) -> f32 { return bf16x2(word(e >> 1u))[e & 1u]; }
#endif
#else
#if W_F32
@group(0) @binding(3) var<storage, read> table: array<f32>;
fn load(e: u32) -> f32 { return table[e]; }
#else
@group(0) @binding(3) var<storage, read> table: array<u32>;
#if W_F16
fn load(e: u32) -> f32 { return unpack2x16float(table[e >> 1u])[e & 1u]; }
#else
fn load(e: u32) -> f32 { return bf16x2(table[e >> 1u])[e & 1u]; }
#endif
#endif
#endif

@compute @workgroup_size({{WG}})
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i >= p.tokens * p.n) {
        return;
    }
    let t = i / p.n;
    let j = i % p.n;
    let id = token_id(t);
    var v = 0.0;
    if (id < p.vocab) {
        v = load(id * p.n + j);
    }
    y[i] = v;
}
#endif
