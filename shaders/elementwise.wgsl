// elementwise.wgsl — element-wise ops over f32 vectors of n elements.
//
// Entries:
//   add      : 2 a, 3 b, 4 y            y[i] = a[i] + b[i]
//   add_into : 2 b, 3 a (read_write)    a[i] += b[i]            (residual stream, in place)
//   swiglu   : 2 gate, 3 up, 4 y        y[i] = silu(gate[i]) * up[i]
//   swiglu_cat: 2 gu, 3 y               gu is [rows, 2*n'] with gate then up in each row
//   copy_rows: 2 x, 3 y                 y[i] = x[half + i]      (take the last row of a prefill)
//   copy_cols: 2 x [rows, half], 3 y     y[r, off + c] = x[r, c] with _p = n_out << 16 | off
//              (one input of a column concatenation; y read_write, n = rows·half)
// Bindings 0 params {n, gx, half, _}; 1 step (unused).
// Dispatch: ceil(n / WG) workgroups of WG threads, spread over (gx, gy).
#include "common.wgsl"

struct Params { n: u32, gx: u32, half: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;

#if ADD
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        y[i] = a[i] + b[i];
    }
}
#endif

#if ADD_INTO
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;

@compute @workgroup_size({{WG}})
fn add_into(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        a[i] = a[i] + b[i];
    }
}
#endif

fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }

#if SWIGLU
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn swiglu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        y[i] = silu(gate[i]) * up[i];
    }
}
#endif

#if SWIGLU_CAT
@group(0) @binding(2) var<storage, read> gu: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn swiglu_cat(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        let r = i / p.half;
        let c = i % p.half;
        let g = gu[r * 2u * p.half + c];
        let u = gu[r * 2u * p.half + p.half + c];
        y[i] = silu(g) * u;
    }
}
#endif

#if COPY
// copy_rows: 2 x, 3 y          y[i] = x[half + i] for i < n   (half = source element offset)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn copy_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        y[i] = x[p.half + i];
    }
}
#endif

#if COPY_COLS
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size({{WG}})
fn copy_cols(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = wg_linear(wg, p.gx) * {{WG}}u + li;
    if (i < p.n) {
        let r = i / p.half;
        let c = i % p.half;
        y[r * (p._p >> 16u) + (p._p & 0xffffu) + c] = x[i];
    }
}
#endif
