// fill.wgsl — deterministic pseudo-random fill of raw buffer words, for synthetic weights
// (`fado bench --synthetic`): the bytes are generated on the GPU, nothing is uploaded.
// Op: src/ops/fill.rs (`Fill`, whose `cpu` states the same words).
//
// Bindings: 0 params {words, seed, mode, period, header, scale_bits, gx, _}; 1 step (unused);
//           2 out: u32[words] (read_write).
// Word w gets, by mode: 0 f32 uniform(−scale, scale); 1 two bf16 uniform(−scale, scale);
//   2 two f16 uniform(−scale, scale); 3 random bits. When `period` > 0, words with
//   w % period == 0 get `header` instead (block headers of quantized formats: sane f16 scales).
// Defines: WG (threads per workgroup).
// Dispatch: ceil(words / WG) workgroups over (gx, gy).
// Features: none.
#include "common.wgsl"

struct Params { words: u32, seed: u32, mode: u32, period: u32, header: u32, scale_bits: u32, gx: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

fn hash(x: u32) -> u32 {
    var h = x * 0x9e3779b1u;
    h ^= h >> 16u;
    h *= 0x85ebca6bu;
    h ^= h >> 13u;
    h *= 0xc2b2ae35u;
    h ^= h >> 16u;
    return h;
}

fn unit(bits: u32) -> f32 {
    // uniform in [−1, 1)
    return f32(bits >> 8u) / 8388608.0 - 1.0;
}

@compute @workgroup_size({{WG}})
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let w = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (w >= p.words) {
        return;
    }
    if (p.period > 0u && w % p.period == 0u) {
        out[w] = p.header;
        return;
    }
    let scale = bitcast<f32>(p.scale_bits);
    let a = hash(w ^ hash(p.seed));
    let b = hash(a + 0x68e31da4u);
    var v = a;
    if (p.mode == 0u) {
        v = bitcast<u32>(unit(a) * scale);
    } else if (p.mode == 1u) {
        let lo = bitcast<u32>(unit(a) * scale) >> 16u;
        let hi = bitcast<u32>(unit(b) * scale) & 0xffff0000u;
        v = lo | hi;
    } else if (p.mode == 2u) {
        v = pack2x16float(vec2<f32>(unit(a) * scale, unit(b) * scale));
    }
    out[w] = v;
}
