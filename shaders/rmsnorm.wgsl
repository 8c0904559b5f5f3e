// rmsnorm.wgsl — RMSNorm with fused weight: y[r, i] = x[r, i] * inverseSqrt(mean_i(x[r, :]²) + eps) * w[i]
//
// Bindings: 0 params {rows, n, eps, gx}; 1 step (unused); 2 x: f32[rows*n]; 3 w: f32[n];
//           4 y: f32[rows*n].
// Dispatch: one workgroup of WG threads per row, rows spread over (gx, gy) (ops::grid_2d).
// Features: none. Reduction through workgroup memory (rows are short; one pass reads x twice,
// the second read hits cache). With SG (CPU devices: WG = the fixed subgroup size) one
// subgroupAdd instead — no workgroup memory, no barrier (a context switch there).
#include "common.wgsl"

struct Params { rows: u32, n: u32, eps: f32, gx: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#if !SG
var<workgroup> partial: array<f32, {{WG}}>;
#endif

@compute @workgroup_size({{WG}})
fn rmsnorm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg_linear(wg, p.gx);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var s = 0.0;
    for (var i = li; i < p.n; i += {{WG}}u) {
        let v = x[base + i];
        s += v * v;
    }
#if SG
    let total = subgroupAdd(s);
#else
    partial[li] = s;
    workgroupBarrier();
    for (var off = {{WG}}u / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            partial[li] += partial[li + off];
        }
        workgroupBarrier();
    }
    let total = partial[0];
#endif
    let inv = inverseSqrt(total / f32(p.n) + p.eps);
    for (var i = li; i < p.n; i += {{WG}}u) {
        y[base + i] = x[base + i] * inv * w[i];
    }
}
