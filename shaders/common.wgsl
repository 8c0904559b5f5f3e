// common.wgsl — shared declarations, pasted with `#include "common.wgsl"`.
//
// `Step` is binding 1 of every kernel: the values that change between executions of a graph.
// 16-bit weights are stored two per u32, element 2i in the low half (little-endian files).

struct Step {
    pos: u32,     // sequence position of the first token of this execution
    kv_len: u32,  // valid keys/values in the cache after this execution
    _p0: u32,
    _p1: u32,
    // A batched step's rows (ops::RowStep; unused by single-sequence steps): row t is one token
    // of its own sequence — x its position, y the sequence's first row in the pooled KV cache,
    // z its first word in the pooled token history, w its index in the pooled sampler params.
    rows: array<vec4<u32>, 16>,
}

fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }
fn bf16x2(w: u32) -> vec2<f32> { return vec2<f32>(bf16_lo(w), bf16_hi(w)); }

// The two 16-bit weights of a word as f32, for kernels defining W_F16 or W_BF16.
#if W_F16
fn widen(q: u32) -> vec2<f32> { return unpack2x16float(q); }
#endif
#if W_BF16
fn widen(q: u32) -> vec2<f32> { return bf16x2(q); }
#endif

// Linear workgroup index for grids split over x and y (see ops::grid_2d).
fn wg_linear(wg: vec3<u32>, gx: u32) -> u32 { return wg.y * gx + wg.x; }

// Texel i of a texel image (src/gpu/texels.rs): TEXEL_ROW = 4096 texels of 4 words per row.
// CPU devices keep weight matrices in these (a texel fetch is one vector gather on lavapipe).
fn texel(t: texture_2d<u32>, i: u32) -> vec4<u32> {
    return textureLoad(t, vec2<u32>(i & 4095u, i >> 12u), 0);
}
