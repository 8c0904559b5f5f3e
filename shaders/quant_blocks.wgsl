// quant_blocks.wgsl — dequantization of one 32-value chunk of a block-quantized weight row,
// pasted with `#include "quant_blocks.wgsl"` by the kernels that read quantized weights.
// Not a kernel family of its own: it defines only `load_chunk`.
//
// Needs, from the including file: `w: array<u32>` (the weight in the GPU layout of
// src/quant/mod.rs) and `p.scales_word` (u32 word offset of the scale section; unused for Q4_K
// and Q5_K). Exactly one dtype define: Q8_0, Q4_0, Q4_1, Q4K, Q5K or Q6K.
//
// `load_chunk(blk, sub)` returns the 32 values `sub*32 .. sub*32+32` of global block `blk`
// (`row * blocks_per_row + block`) as 8 vec4s; `sub` is 0 for the 32-value formats and 0..8 for
// the 256-value K-quants. Layouts (byte-exact with GGUF where the block is 4-byte aligned):
//   Q8_0: quants at words blk*8 .. +8 (4 i8 per word), f16 d at scales_word + blk/2 (half blk&1)
//   Q4_0: quants at words blk*4 .. +4 (word i: elems 4i.. low nibbles, 16+4i.. high), d as Q8_0
//   Q4_1: quants as Q4_0, (d, m) packed in word scales_word + blk
//   Q4_K: 36-word GGUF block at blk*36: [d|dmin] [scales 12 B] [qs 128 B]
//   Q5_K: 44-word GGUF block at blk*44: [d|dmin] [scales 12 B] [qh 32 B] [qs 128 B]
//   Q6_K: 52 words at blk*52: [ql 128 B] [qh 64 B] [scales 16 i8]; f16 d as Q8_0

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
    return unpack2x16float(w[p.scales_word + i / 2u])[i & 1u];
}

// Byte `j` of the words starting at `base`.
fn byte_at(base: u32, j: u32) -> u32 {
    return (w[base + j / 4u] >> (8u * (j & 3u))) & 0xffu;
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

fn load_chunk(blk: u32, sub: u32) -> array<vec4<f32>, 8> {
    var r: array<vec4<f32>, 8>;
#if Q8_0
    let d = scale_f16(blk);
    let base = blk * 8u;
    for (var i = 0u; i < 8u; i++) {
        r[i] = d * i8x4(w[base + i]);
    }
#endif
#if Q4_0
    let d = scale_f16(blk);
    let base = blk * 4u;
    for (var i = 0u; i < 4u; i++) {
        let v = w[base + i];
        r[i] = d * (u8x4(v, 0u, 0xfu) - 8.0);
        r[i + 4u] = d * (u8x4(v, 4u, 0xfu) - 8.0);
    }
#endif
#if Q4_1
    let dm = unpack2x16float(w[p.scales_word + blk]);
    let base = blk * 4u;
    for (var i = 0u; i < 4u; i++) {
        let v = w[base + i];
        r[i] = dm.x * u8x4(v, 0u, 0xfu) + dm.y;
        r[i + 4u] = dm.x * u8x4(v, 4u, 0xfu) + dm.y;
    }
#endif
#if Q4K
    let base = blk * 36u;
    let dd = unpack2x16float(w[base]);
    let sm = scale_min_k4(base + 1u, sub);
    let d1 = dd.x * sm.x;
    let m1 = dd.y * sm.y;
    let qs = base + 4u + 8u * (sub / 2u);
    let sh = 4u * (sub & 1u);
    for (var i = 0u; i < 8u; i++) {
        r[i] = d1 * u8x4(w[qs + i], sh, 0xfu) - m1;
    }
#endif
#if Q5K
    let base = blk * 44u;
    let dd = unpack2x16float(w[base]);
    let sm = scale_min_k4(base + 1u, sub);
    let d1 = dd.x * sm.x;
    let m1 = dd.y * sm.y;
    let qs = base + 12u + 8u * (sub / 2u);
    let sh = 4u * (sub & 1u);
    for (var i = 0u; i < 8u; i++) {
        let q = u8x4(w[qs + i], sh, 0xfu) + 16.0 * u8x4(w[base + 4u + i], sub, 1u);
        r[i] = d1 * q - m1;
    }
#endif
#if Q6K
    let base = blk * 52u;
    let d = scale_f16(blk);
    let h = sub / 4u;
    let t = sub & 3u;
    let ql = base + 16u * h + 8u * (t & 1u);
    let qh = base + 32u + 8u * h;
    let sh = 4u * (t >> 1u);
    // scales 8h + 2t (elements 0..16) and 8h + 2t + 1 (16..32): i8s in words 48..52
    let si = 8u * h + 2u * t;
    let sw = w[base + 48u + si / 4u] >> (8u * (si & 3u));
    let s0 = d * f32(bitcast<i32>(sw << 24u) >> 24u);
    let s1 = d * f32(bitcast<i32>(sw << 16u) >> 24u);
    for (var i = 0u; i < 8u; i++) {
        let q = u8x4(w[ql + i], sh, 0xfu) + 16.0 * u8x4(w[qh + i], 2u * t, 3u) - 32.0;
        r[i] = select(s1, s0, i < 4u) * q;
    }
#endif
    return r;
}
