// quant_blocks.wgsl — dequantization of one 32-value chunk of a block-quantized weight row,
// pasted with `#include "quant_blocks.wgsl"` by the kernels that read quantized weights.
// Not a kernel family of its own: it defines `chunk_at` and `chunk_vec4`.
//
// Needs, from the including file: `w: array<u32>` (the weight in the GPU layout of
// src/quant/gpu_layout.rs), or with W4 `w: array<vec4<u32>>` (the same words), or with TEX
// `wt: texture_2d<u32>` (the same words as a texel image), and `p.scales_word` (u32 word offset
// of the scale section). Exactly one dtype define: Q8_0, Q4_0, Q4_1, Q4K, Q5K or Q6K.
//
// `chunk_at(blk, sub)` reads the scales of the 32 values `sub*32 .. sub*32+32` of global block
// `blk` (`row * blocks_per_row + block`; `sub` is 0 for the 32-value formats and 0..8 for the
// 256-value K-quants) into a small `Chunk`; `chunk_vec4(c, i)` then decodes values 4i .. 4i+4
// (i < 8) from one or two words. No private arrays: kernels keep 8 vec4 products in flight
// without spilling. Layouts (quants first, block after block, then the scales; the quant bytes
// of a block in GGUF's order; S = scales_word):
//   Q8_0: quants at words blk*8 .. +8 (4 i8 per word), f16 d at S + blk/2 (half blk&1)
//   Q4_0: quants at words blk*4 .. +4 (word i: elems 4i.. low nibbles, 16+4i.. high), d as Q8_0
//   Q4_1: quants as Q4_0, (d, m) packed in word S + blk
//   Q4_K: qs[128] at words blk*32 ..; record at S + 4*blk: [d|dmin] [A] [B] [C] (scale_min_k)
//   Q5_K: qh[32] qs[128] at words blk*40 ..; record as Q4_K
//   Q6_K: ql[128] qh[64] at words blk*48 ..; i8 scales[16] at S + 4*blk; f16 d at
//         S + S/12 + blk/2 (half blk&1)

#if TEX
// Word i of the weight's texel image (`wt`, binding 3 on CPU devices).
fn wq(i: u32) -> u32 { return texel(wt, i >> 2u)[i & 3u]; }
#else
#if W4
fn wq(i: u32) -> u32 { return w[i >> 2u][i & 3u]; }
#else
fn wq(i: u32) -> u32 { return w[i]; }
#endif
#endif

// 4 signed bytes of a word, as f32.
fn i8x4(v: u32) -> vec4<f32> {
    let s = bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return vec4<f32>(s);
}

// 4 unsigned bytes of a word, each shifted right by `sh` and masked with `mask`.
fn u8x4(v: u32, sh: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(v) >> vec4<u32>(sh, 8u + sh, 16u + sh, 24u + sh)) & vec4<u32>(mask));
}

// f16 number `i` of the scale section (two per word).
fn scale_f16(i: u32) -> f32 {
    return unpack2x16float(wq(p.scales_word + i / 2u))[i & 1u];
}

// 6-bit scale and min of sub-block s from a K-quant scale record's words A, B, C: the low
// nibbles in A (scales) and B (mins), the top two bits in C (scales at 2s, mins at 16 + 2s).
fn scale_min_k(a: u32, b: u32, c: u32, s: u32) -> vec2<f32> {
    let sc = ((a >> (4u * s)) & 15u) | (((c >> (2u * s)) & 3u) << 4u);
    let m = ((b >> (4u * s)) & 15u) | (((c >> (16u + 2u * s)) & 3u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// What a chunk's values need besides their quant words: value = a·q + b (a2 for the second
// half of a Q6_K chunk), quants at word `qs` (nibble shift `sh`), high bits at word `qh`
// (shift `hsh`).
struct Chunk { qs: u32, qh: u32, sh: u32, hsh: u32, a: f32, a2: f32, b: f32 }

fn chunk_at(blk: u32, sub: u32) -> Chunk {
    var c: Chunk;
#if Q8_0
    c.qs = blk * 8u;
    c.a = scale_f16(blk);
#endif
#if Q4_0
    c.qs = blk * 4u;
    c.a = scale_f16(blk);
    c.b = -8.0 * c.a;
#endif
#if Q4_1
    let dm = unpack2x16float(wq(p.scales_word + blk));
    c.qs = blk * 4u;
    c.a = dm.x;
    c.b = dm.y;
#endif
#if Q4K
    let rec = p.scales_word + 4u * blk;
    let dd = unpack2x16float(wq(rec));
    let sm = scale_min_k(wq(rec + 1u), wq(rec + 2u), wq(rec + 3u), sub);
    c.a = dd.x * sm.x;
    c.b = -(dd.y * sm.y);
    c.qs = blk * 32u + 8u * (sub / 2u);
    c.sh = 4u * (sub & 1u);
#endif
#if Q5K
    let rec = p.scales_word + 4u * blk;
    let dd = unpack2x16float(wq(rec));
    let sm = scale_min_k(wq(rec + 1u), wq(rec + 2u), wq(rec + 3u), sub);
    c.a = dd.x * sm.x;
    c.b = -(dd.y * sm.y);
    c.qh = blk * 40u;
    c.qs = c.qh + 8u + 8u * (sub / 2u);
    c.sh = 4u * (sub & 1u);
    c.hsh = sub;
#endif
#if Q6K
    let base = blk * 48u;
    let d = unpack2x16float(wq(p.scales_word + p.scales_word / 12u + blk / 2u))[blk & 1u];
    let h = sub / 4u;
    let t = sub & 3u;
    c.qs = base + 16u * h + 8u * (t & 1u);
    c.qh = base + 32u + 8u * h;
    c.sh = 4u * (t >> 1u);
    c.hsh = 2u * t;
    // i8 scales 8h + 2t (values 0..16) and 8h + 2t + 1 (16..32)
    let si = 8u * h + 2u * t;
    let sw = wq(p.scales_word + 4u * blk + si / 4u) >> (8u * (si & 3u));
    c.a = d * f32(bitcast<i32>(sw << 24u) >> 24u);
    c.a2 = d * f32(bitcast<i32>(sw << 16u) >> 24u);
#endif
    return c;
}

// Values 4i .. 4i+4 of the chunk (i < 8) from its quant word `q` (and, for Q5_K and Q6_K, its
// high-bit word `h`): the words `chunk_vec4` reads, or a vector load already holds.
fn decode4(c: Chunk, i: u32, q: u32, h: u32) -> vec4<f32> {
#if Q8_0
    return c.a * i8x4(q);
#endif
#if Q4_0
    return c.a * u8x4(q, 4u * (i >> 2u), 0xfu) + c.b;
#endif
#if Q4_1
    return c.a * u8x4(q, 4u * (i >> 2u), 0xfu) + c.b;
#endif
#if Q4K
    return c.a * u8x4(q, c.sh, 0xfu) + c.b;
#endif
#if Q5K
    return c.a * (u8x4(q, c.sh, 0xfu) + 16.0 * u8x4(h, c.hsh, 1u)) + c.b;
#endif
#if Q6K
    let v = u8x4(q, c.sh, 0xfu) + 16.0 * u8x4(h, c.hsh, 3u) - 32.0;
    return select(c.a2, c.a, i < 4u) * v;
#endif
}

// Values 4i .. 4i+4 of the chunk (i < 8). The legacy 4-bit formats keep values j and j+16 in
// one byte, so words 0..4 serve i and i+4; Q5_K and Q6_K add a high-bit word.
fn chunk_vec4(c: Chunk, i: u32) -> vec4<f32> {
#if Q8_0
    return decode4(c, i, wq(c.qs + i), 0u);
#endif
#if Q4_0
    return decode4(c, i, wq(c.qs + (i & 3u)), 0u);
#endif
#if Q4_1
    return decode4(c, i, wq(c.qs + (i & 3u)), 0u);
#endif
#if Q4K
    return decode4(c, i, wq(c.qs + i), 0u);
#endif
#if Q5K
    return decode4(c, i, wq(c.qs + i), wq(c.qh + i));
#endif
#if Q6K
    return decode4(c, i, wq(c.qs + i), wq(c.qh + i));
#endif
}
