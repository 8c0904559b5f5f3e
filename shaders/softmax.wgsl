// softmax.wgsl — row-wise softmax: y[r, i] = exp(x[r, i] − max_r) / Σ_j exp(x[r, j] − max_r).
//
// Bindings: 0 params {rows, n, gx}; 1 step (unused); 2 x f32 [rows·n]; 3 y f32 [rows·n].
// Dispatch: one workgroup of WG threads per row, rows spread over (gx, gy) (ops::grid_2d).
// Each thread keeps an online (max, sum) over its strided elements; the pairs are merged
// through workgroup memory; a second sweep writes y.
// Features: none.
#include "common.wgsl"

struct Params { rows: u32, n: u32, gx: u32, _a: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<vec2<f32>, {{WG}}>;

const NEG: f32 = -3.0e38;

// Merge two (max, sum-of-exp relative to max) pairs.
fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size({{WG}})
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wg_linear(wg, p.gx);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var acc = vec2<f32>(NEG, 0.0);
    for (var i = li; i < p.n; i += {{WG}}u) {
        acc = merge(acc, vec2<f32>(x[base + i], 1.0));
    }
    red[li] = acc;
    workgroupBarrier();
    for (var off = {{WG}}u / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            red[li] = merge(red[li], red[li + off]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    let inv = 1.0 / r.y;
    for (var i = li; i < p.n; i += {{WG}}u) {
        y[base + i] = exp(x[base + i] - r.x) * inv;
    }
}
