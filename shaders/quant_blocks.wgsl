// quant_blocks.wgsl — dequantization of one 32-value chunk of a block-quantized weight row,
// pasted with `#include "quant_blocks.wgsl"` by the kernels that read quantized weights.
// Not a kernel family of its own: it defines `chunk_at` and `chunk_vec4`.
//
// Needs, from the including file: `w: array<u32>` (the weight in the GPU layout of
// src/quant/mod.rs), or with TEX `wt: texture_2d<u32>` (the same words as a texel image), and `p.scales_word` (u32 word offset of the scale section; unused for Q4_K
// and Q5_K). Exactly one dtype define: Q8_0, Q4_0, Q4_1, Q4K, Q5K or Q6K.
//
// `chunk_at(blk, sub)` reads the scales of the 32 values `sub*32 .. sub*32+32` of global block
// `blk` (`row * blocks_per_row + block`; `sub` is 0 for the 32-value formats and 0..8 for the
// 256-value K-quants) into a small `Chunk`; `chunk_vec4(c, i)` then decodes values 4i .. 4i+4
// (i < 8) from one or two words. No private arrays: kernels keep 8 vec4 products in flight
// without spilling. Layouts (byte-exact with GGUF where the block is 4-byte aligned):
//   Q8_0: quants at words blk*8 .. +8 (4 i8 per word), f16 d at scales_word + blk/2 (half blk&1)
//   Q4_0: quants at words blk*4 .. +4 (word i: elems 4i.. low nibbles, 16+4i.. high), d as Q8_0
//   Q4_1: quants as Q4_0, (d, m) packed in word scales_word + blk
//   Q4_K: 36-word GGUF block at blk*36: [d|dmin] [scales 12 B] [qs 128 B]
//   Q5_K: 44-word GGUF block at blk*44: [d|dmin] [scales 12 B] [qh 32 B] [qs 128 B]
//   Q6_K: 52 words at blk*52: [ql 128 B] [qh 64 B] [scales 16 i8]; f16 d as Q8_0

#if TEX
// Word i of the weight's texel image (`wt`, binding 3 on CPU devices).
fn wq(i: u32) -> u32 { return texel(wt, i >> 2u)[i & 3u]; }
#else
fn wq(i: u32) -> u32 { return w[i]; }
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

// Byte `j` of the words starting at `base`.
fn byte_at(base: u32, j: u32) -> u32 {
    return (wq(base + j / 4u) >> (8u * (j & 3u))) & 0xffu;
}

// 6-bit scale and min of sub-block s from the 12 packed bytes at word `base` (Q4_K, Q5_K).
fn scale_min_k4(base: u32, s: u32) -> vec2<f32> {
    if (s < 4u) {
        return vec2<f32>(f32(byte_at(base, s) & 63u), f32(byte_at(base, s + 4u) & 63u));
    }
    let lo = byte_at(base, s + 4u);
    let sc = (lo & 0xfu) | ((byte_at(base, s - 4u) >> 6u) << 4u);
    let m = (lo >> 4u) | ((byte_at(base, s) >> 6u) << 4u);
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
    let base = blk * 36u;
    let dd = unpack2x16float(wq(base));
    let sm = scale_min_k4(base + 1u, sub);
    c.a = dd.x * sm.x;
    c.b = -(dd.y * sm.y);
    c.qs = base + 4u + 8u * (sub / 2u);
    c.sh = 4u * (sub & 1u);
#endif
#if Q5K
    let base = blk * 44u;
    let dd = unpack2x16float(wq(base));
    let sm = scale_min_k4(base + 1u, sub);
    c.a = dd.x * sm.x;
    c.b = -(dd.y * sm.y);
    c.qs = base + 12u + 8u * (sub / 2u);
    c.sh = 4u * (sub & 1u);
    c.qh = base + 4u;
    c.hsh = sub;
#endif
#if Q6K
    let base = blk * 52u;
    let d = scale_f16(blk);
    let h = sub / 4u;
    let t = sub & 3u;
    c.qs = base + 16u * h + 8u * (t & 1u);
    c.qh = base + 32u + 8u * h;
    c.sh = 4u * (t >> 1u);
    c.hsh = 2u * t;
    // i8 scales 8h + 2t (values 0..16) and 8h + 2t + 1 (16..32), in words 48..52
    let si = 8u * h + 2u * t;
    let sw = wq(base + 48u + si / 4u) >> (8u * (si & 3u));
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
