// sampler_choose.wgsl — the sampler's arithmetic (ops::sample::choose, its CPU reference,
// operation for operation in f32 and in the same order) and its random number
// (rng::uniform_at, in u32 arithmetic). Pasted with `#include` after sampler_params.wgsl by
// kernels that define `sp: SamplerParams`, `fn cand_count() -> u32` (K) and
// `fn cand_word(i: u32) -> u32` (word i of the candidates as TopK writes them: K ids, then K
// logits as f32 bits, best first, id 0xFFFFFFFF ending the list), and the define MAX_K ≥ K.
// Not a kernel family of its own.

const NONE_ID: u32 = 0xffffffffu;


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
    let kc = cand_count();
    let first = cand_word(0u);
    let best = bitcast<f32>(cand_word(kc));
    var n = 0u;
    while (n < kc && cand_word(n) != NONE_ID) {
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
        w[i] = exp((bitcast<f32>(cand_word(kc + i)) - best) * sp.inv_temperature);
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
            return cand_word(i);
        }
    }
    return cand_word(keep - 1u);
}
