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

#include "sampler_params.wgsl"

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> cands: array<u32>;
@group(0) @binding(3) var<storage, read> sp: SamplerParams;
@group(0) @binding(4) var<storage, read_write> history: array<u32>;

fn cand_count() -> u32 { return p.k; }
fn cand_word(i: u32) -> u32 { return cands[i]; }

#include "sampler_choose.wgsl"

@compute @workgroup_size(1)
fn sample() {
    let pos = step.kv_len;
    if (pos >= p.capacity) {
        return;
    }
    history[pos] = choose(uniform_at(sp.seed_lo, sp.seed_hi, pos));
}
