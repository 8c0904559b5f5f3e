// rows.wgsl — y (+)= x · Wᵀ with float weights (f32, f16, bf16) on CPU devices (lavapipe,
// SwiftShader, WARP), where a workgroup runs on one core as SIMD lanes: a barrier is a context
// switch, and (lavapipe) a storage load is a loop over the lanes with a branch each while a
// uniform load is one vector gather. So: thread i computes output row n = wg·WG + i alone (no
// reduction, no workgroup memory), x comes from a uniform array, the weights in vec4 loads.
//
// Bindings: 0 params {m (rows of this window), n, k, gx, m0 (first row of y), _, _, _};
//           1 step (unused); 2 x: uniform vec4<f32>[XU], the window's m rows of x (k/4 each) first;
//           3 w: W_F32 → vec4<f32>[N·K/4]; W_F16 / W_BF16 → vec4<u32>[N·K/8] (8 values each,
//           element 2i in the low half) — with TEX the same vec4s as texels of the weight's
//           texel image (texture_2d<u32>, src/gpu/texels.rs); 4 y: f32[M·N] (read_write;
//           y += with ADD_INTO).
// Defines:  XU (Caps::uniform_window / 16, the same for every CPU-style kernel: lavapipe leaks
//           when consecutive dispatches declare the uniform at one binding with different sizes), MR (1: one row of x, or 8: windows of up to 8 rows — rows past the window's end
//           re-read its last row and are not stored), one of W_F32 / W_F16 / W_BF16, ADD_INTO.
// Dispatch: per window of ≤ 8 rows (the host binds each window of x at its offset),
//           ceil(n / WG) workgroups over (gx, gy). Needs K % 4 == 0 (f32) or K % 8 == 0.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, gx: u32, m0: u32, _a: u32, _b: u32, _c: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, {{XU}}>;
#if TEX
// The weight's texel image (src/gpu/texels.rs): vec4 i of the layout below is texel i.
@group(0) @binding(3) var wt: texture_2d<u32>;
#if W_F32
fn wv4(i: u32) -> vec4<f32> { return bitcast<vec4<f32>>(texel(wt, i)); }
#else
fn wv4(i: u32) -> vec4<u32> { return texel(wt, i); }
#endif
#else
#if W_F32
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
fn wv4(i: u32) -> vec4<f32> { return w[i]; }
#else
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
fn wv4(i: u32) -> vec4<u32> { return w[i]; }
#endif
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = {{WG}}u;
const MR: u32 = {{MR}}u;

#if W_F16
fn widen(q: u32) -> vec2<f32> { return unpack2x16float(q); }
#endif
#if W_BF16
fn widen(q: u32) -> vec2<f32> { return bf16x2(q); }
#endif

fn store(i: u32, v: f32) {
#if ADD_INTO
    y[i] += v;
#else
    y[i] = v;
#endif
}

@compute @workgroup_size({{WG}})
fn rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg_linear(wg, p.gx) * WG + li;
    // Rows past the end redo the last row (uniform control flow), their sums are dropped.
    let row = min(n, p.n - 1u);
    let k4 = p.k / 4u;
    let last = p.m - 1u;
    let o1 = min(1u, last) * k4;
    let o2 = min(2u, last) * k4;
    let o3 = min(3u, last) * k4;
    let o4 = min(4u, last) * k4;
    let o5 = min(5u, last) * k4;
    let o6 = min(6u, last) * k4;
    let o7 = min(7u, last) * k4;
    // Eight named accumulators: a private array would live in memory on these devices.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
#if W_F32
    for (var c = 0u; c < k4; c++) {
        let wv = wv4(row * k4 + c);
        a0 += wv * x[c];
        if (MR == 8u) {
            a1 += wv * x[o1 + c];
            a2 += wv * x[o2 + c];
            a3 += wv * x[o3 + c];
            a4 += wv * x[o4 + c];
            a5 += wv * x[o5 + c];
            a6 += wv * x[o6 + c];
            a7 += wv * x[o7 + c];
        }
    }
#else
    let k8 = p.k / 8u;
    for (var c = 0u; c < k8; c++) {
        let q = wv4(row * k8 + c);
        let w0 = vec4<f32>(widen(q.x), widen(q.y));
        let w1 = vec4<f32>(widen(q.z), widen(q.w));
        let c0 = 2u * c;
        a0 += w0 * x[c0] + w1 * x[c0 + 1u];
        if (MR == 8u) {
            a1 += w0 * x[o1 + c0] + w1 * x[o1 + c0 + 1u];
            a2 += w0 * x[o2 + c0] + w1 * x[o2 + c0 + 1u];
            a3 += w0 * x[o3 + c0] + w1 * x[o3 + c0 + 1u];
            a4 += w0 * x[o4 + c0] + w1 * x[o4 + c0 + 1u];
            a5 += w0 * x[o5 + c0] + w1 * x[o5 + c0 + 1u];
            a6 += w0 * x[o6 + c0] + w1 * x[o6 + c0 + 1u];
            a7 += w0 * x[o7 + c0] + w1 * x[o7 + c0 + 1u];
        }
    }
#endif
    if (n < p.n) {
        let y0 = p.m0 * p.n + n;
        store(y0, a0.x + a0.y + a0.z + a0.w);
        if (MR == 8u) {
            if (last >= 1u) { store(y0 + p.n, a1.x + a1.y + a1.z + a1.w); }
            if (last >= 2u) { store(y0 + 2u * p.n, a2.x + a2.y + a2.z + a2.w); }
            if (last >= 3u) { store(y0 + 3u * p.n, a3.x + a3.y + a3.z + a3.w); }
            if (last >= 4u) { store(y0 + 4u * p.n, a4.x + a4.y + a4.z + a4.w); }
            if (last >= 5u) { store(y0 + 5u * p.n, a5.x + a5.y + a5.z + a5.w); }
            if (last >= 6u) { store(y0 + 6u * p.n, a6.x + a6.y + a6.z + a6.w); }
            if (last >= 7u) { store(y0 + 7u * p.n, a7.x + a7.y + a7.z + a7.w); }
        }
    }
}
