// embedding.wgsl — token embedding gather: y[t, j] = table[ids[t], j] widened to f32.
//
// Bindings: 0 params {tokens, n, vocab, gx}; 1 step (unused); 2 ids: u32[tokens];
//           3 table: f32[vocab*n] (W_F32) or u32[vocab*n/2] packed f16 (W_F16) / bf16 (W_BF16);
//           4 y: f32[tokens*n].
// Dispatch: ceil(tokens*n / WG) workgroups over (gx, gy). An id >= vocab yields zeros (ids are
// validated on the host; this keeps a bad id from reading out of bounds).
#include "common.wgsl"

struct Params { tokens: u32, n: u32, vocab: u32, gx: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
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
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i >= p.tokens * p.n) {
        return;
    }
    let t = i / p.n;
    let j = i % p.n;
    let id = ids[t];
    var v = 0.0;
    if (id < p.vocab) {
        v = load(id * p.n + j);
    }
    y[i] = v;
}
