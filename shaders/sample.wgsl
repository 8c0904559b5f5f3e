// sample.wgsl — the next token chosen among TopK's candidates and written into the token
// history on the GPU, so decode steps follow each other without the host. The arithmetic is
// ops::sample::choose (its CPU reference) operation for operation, in f32 and in the same
// order; the random number is rng::uniform_at(seed, position), ported to u32 arithmetic.
//
// Entry `sample` — bindings 2 cands u32 [2K] (K ids, then K logits as f32 bits, best first;
//   id 0xFFFFFFFF ends the list); 3 sp SamplerParams (u32 [16], layout documented in
//   src/ops/sample.rs); 4 history u32 [capacity], in place. Chooses the token at position
//   step.kv_len with u = uniform_at(seed, kv_len) and writes history[kv_len] when
//   kv_len < capacity (nothing otherwise). Params: K, capacity. Dispatch (1, 1, 1) of a single
//   thread: at most MAX_K candidates, and sequential sums keep the rounding the CPU's.
#include "common.wgsl"

struct Params { k: u32, capacity: u32, _a: u32, _b: u32 }

// Mirrors ops::sample::SamplerParams.
struct SamplerParams {
    temperature: f32, top_k: u32, top_p: f32, min_p: f32,
    seed_lo: u32, seed_hi: u32, repeat_penalty: f32, presence: f32,
    frequency: f32, window: u32, inv_temperature: f32, _r0: u32,
    _r1: u32, _r2: u32, _r3: u32, _r4: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> cands: array<u32>;
@group(0) @binding(3) var<storage, read> sp: SamplerParams;
@group(0) @binding(4) var<storage, read_write> history: array<u32>;

const NONE: u32 = 0xffffffffu;

// rng::hash32: one round of the PCG-RXS-M-XS hash (u32 arithmetic wraps in WGSL as in Rust's
// wrapping_*).
fn hash32(x: u32) -> u32 {
    let s = x * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// rng::uniform_at: the top 24 bits of the hash over 2^24, exact in f32.
fn uniform_at(seed_lo: u32, seed_hi: u32, position: u32) -> f32 {
    let s = hash32(hash32(seed_lo) ^ seed_hi);
    let h = hash32(hash32(s ^ position));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

fn choose(u: f32) -> u32 {
    let first = cands[0];
    let best = bitcast<f32>(cands[p.k]);
    var n = 0u;
    while (n < p.k && cands[n] != NONE) {
        n++;
    }
    if (sp.top_k > 0u) {
        n = min(n, sp.top_k);
    }
    // Not finite by its bits: compilers may assume floats are finite.
    if (sp.temperature <= 0.0 || n <= 1u || (bitcast<u32>(best) & 0x7f800000u) == 0x7f800000u) {
        return first;
    }
    // Weights relative to the best (w[0] = 1): probabilities up to the common factor Σw.
    var w: array<f32, {{MAX_K}}>;
    w[0] = 1.0;
    var sum = 1.0;
    for (var i = 1u; i < n; i++) {
        w[i] = exp((bitcast<f32>(cands[p.k + i]) - best) * sp.inv_temperature);
        sum += w[i];
    }
    var keep = n;
    if (sp.min_p > 0.0) {
        keep = 0u;
        while (keep < n && w[keep] >= sp.min_p) {
            keep++;
        }
        keep = max(keep, 1u);
    }
    if (sp.top_p < 1.0) {
        let mass = sp.top_p * sum;
        var acc = 0.0;
        for (var i = 0u; i < keep; i++) {
            acc += w[i];
            if (acc >= mass) {
                keep = i + 1u;
                break;
            }
        }
    }
    var total = 0.0;
    for (var i = 0u; i < keep; i++) {
        total += w[i];
    }
    let r = u * total;
    var acc = 0.0;
    for (var i = 0u; i < keep; i++) {
        acc += w[i];
        if (r < acc) {
            return cands[i];
        }
    }
    return cands[keep - 1u];
}

@compute @workgroup_size(1)
fn sample() {
    let pos = step.kv_len;
    if (pos >= p.capacity) {
        return;
    }
    history[pos] = choose(uniform_at(sp.seed_lo, sp.seed_hi, pos));
}
