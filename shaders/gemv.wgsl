// gemv.wgsl — matrix-vector products for decode and very short prefills (M = MR ≤ 8 rows of x):
// y[m, n] = Σ_k x[m, k] · w[n, k] (`y = x · Wᵀ`, W `[N, K]` row-major as in Hugging Face
// checkpoints). Each weight load is used for all MR rows of x, so the weights are read once.
// With ADD_INTO the result is added to y in place (residual fused into o_proj / down_proj).
//
// Bindings: 0 params {k, n, gx, m, eps, _, _, _}; 1 step (unused);
//           2 x: f32[MR*K]         (array<vec4<f32>> when X_VEC4, else array<f32>);
//           3 w: W_F32  → f32[N*K] (array<vec4<f32>> when V4, else array<f32>);
//                W_F16 / W_BF16 → 16-bit values packed two per u32, element 2i in the low half
//                (array<vec4<u32>> when V8, array<vec2<u32>> when V4, array<u32> else);
//           4 y: f32[MR*N] (read_write; read only with ADD_INTO) — 0 to 4 in matmul_bindings.wgsl;
//           NORM: 5 g: f32[K] (RMSNorm weight, typed like x).
// Defines: WG (threads per workgroup), TPR (threads per weight row; ROWS = WG / TPR rows per
//          workgroup), MR (rows of x), VEC and V{VEC} (elements per weight load: 1, 2, 4 or 8; the
//          host picks the widest that divides K, so every row starts on a load boundary), one of
//          W_F32 / W_F16 / W_BF16, X_VEC4 (x read as vec4, VEC >= 4), U4 (main loop unrolled by
//          four: more loads in flight), ADD_INTO, X_SWIGLU (x is gate|up [1, 2K], MR = 1, and the
//          product reads silu(gate)·up: SwiGLU fused into the down projection), NORM (RMSNorm of x fused in front: MR = 1,
//          WG a power of two; y = (W · (g ∘ x)) / sqrt(mean(x²) + eps)), and the reduction:
//          SUBGROUPS + SG_ROW  — TPR equals the (fixed) subgroup size: subgroupAdd, no barrier;
//          SUBGROUPS           — subgroupAdd, then the TPR / sg_size subgroup sums of a row through
//                                workgroup memory (subgroups are assumed to be contiguous runs of
//                                local_invocation_index; TPR, a multiple of the largest subgroup
//                                size, keeps each inside one row);
//          neither             — workgroup-memory tree reduction over TPR threads.
// Thread t of a row reads loads t, t + TPR, …: neighbouring threads read neighbouring memory.
// Dispatch: ceil(N / ROWS) workgroups spread over (gx, gy) (ops::grid_2d).
// Features: subgroups for the SUBGROUPS variants; nothing otherwise.
#include "common.wgsl"

struct Params { k: u32, n: u32, gx: u32, m: u32, eps: f32, _a: u32, _b: u32, _c: u32 }

#include "matmul_bindings.wgsl"
#if NORM
// The RMSNorm weight (f32 [K], same vector type as x): x is normalized as it is read.
#if X_VEC4
@group(0) @binding(5) var<storage, read> g: array<vec4<f32>>;
fn xat(i: u32) -> vec4<f32> { return x[i] * g[i]; }
#else
@group(0) @binding(5) var<storage, read> g: array<f32>;
fn xat(i: u32) -> f32 { return x[i] * g[i]; }
#endif
var<workgroup> nrm: array<f32, {{WG}}>;
#else
#if X_SWIGLU
// x holds gate|up ([1, 2K], MR = 1): the product reads silu(gate)·up, the MLP's activation
// fused in (ops::matmul::swiglu), as elementwise.wgsl's swiglu computes it.
#if X_VEC4
fn xat(i: u32) -> vec4<f32> { let g = x[i]; return g / (1.0 + exp(-g)) * x[i + p.k / 4u]; }
#else
fn xat(i: u32) -> f32 { let g = x[i]; return g / (1.0 + exp(-g)) * x[i + p.k]; }
#endif
#else
#if X_VEC4
fn xat(i: u32) -> vec4<f32> { return x[i]; }
#else
fn xat(i: u32) -> f32 { return x[i]; }
#endif
#endif
#endif

const ROWS: u32 = {{WG}}u / {{TPR}}u;

// Per-thread sums, one per x row.
var<private> acc: array<f32, {{MR}}>;

// Add load `c` of weight row `row` (elements c·VEC .. c·VEC + VEC − 1) times every x row.
fn accumulate(row: u32, c: u32) {
#if W_F32
#if V4
    let xs = p.k / 4u;
    let wv = w[row * xs + c];
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += dot(wv, xat(m * xs + c));
    }
#else
    let wv = w[row * p.k + c];
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += wv * xat(m * p.k + c);
    }
#endif
#else
#if V8
    let q = w[row * (p.k / 8u) + c];
    let w0 = vec4<f32>(widen(q.x), widen(q.y));
    let w1 = vec4<f32>(widen(q.z), widen(q.w));
    let xs = p.k / 4u;
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += dot(w0, xat(m * xs + 2u * c)) + dot(w1, xat(m * xs + 2u * c + 1u));
    }
#endif
#if V4
    let xs = p.k / 4u;
    let q = w[row * xs + c];
    let wv = vec4<f32>(widen(q.x), widen(q.y));
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += dot(wv, xat(m * xs + c));
    }
#endif
#if V2
    let h = widen(w[row * (p.k / 2u) + c]);
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += h.x * xat(m * p.k + 2u * c) + h.y * xat(m * p.k + 2u * c + 1u);
    }
#endif
#if V1
    let e = row * p.k + c;
    let wv = widen(w[e >> 1u])[e & 1u];
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] += wv * xat(m * p.k + c);
    }
#endif
#endif
}

#if !SG_ROW
var<workgroup> partial: array<f32, {{MR}} * {{WG}}>;
#endif

@compute @workgroup_size({{WG}})
fn gemv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg: u32,
#endif
) {
    let r = li / {{TPR}}u;
    let t = li % {{TPR}}u;
    let row = wg_linear(wg, p.gx) * ROWS + r;
    let loads = p.k / {{VEC}}u;
    for (var m = 0u; m < {{MR}}u; m++) {
        acc[m] = 0.0;
    }
#if NORM
    // RMSNorm fused in (MR = 1): the workgroup sums x² over the row (x is a few KiB, in cache),
    // every dot product reads x·g, and the sums are scaled by 1/rms at the end — one dispatch
    // instead of two, and no normalized copy of x written and read back.
    var ss = 0.0;
#if X_VEC4
    for (var i = li; i < p.k / 4u; i += {{WG}}u) {
        let v = x[i];
        ss += dot(v, v);
    }
#else
    for (var i = li; i < p.k; i += {{WG}}u) {
        let v = x[i];
        ss += v * v;
    }
#endif
    nrm[li] = ss;
    workgroupBarrier();
    for (var off = {{WG}}u / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            nrm[li] += nrm[li + off];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(nrm[0] / f32(p.k) + p.eps);
#else
    let inv = 1.0;
#endif
    if (row < p.n) {
        var c = t;
#if U4
        // Four loads per thread in flight before their sums are needed.
        for (; c + 3u * {{TPR}}u < loads; c += 4u * {{TPR}}u) {
            accumulate(row, c);
            accumulate(row, c + {{TPR}}u);
            accumulate(row, c + 2u * {{TPR}}u);
            accumulate(row, c + 3u * {{TPR}}u);
        }
#endif
        for (; c < loads; c += {{TPR}}u) {
            accumulate(row, c);
        }
    }

    // Reduce the TPR partial sums of each (x row, weight row); `sums[m]` is valid in thread t == 0.
    var sums: array<f32, {{MR}}>;
#if SG_ROW
    for (var m = 0u; m < {{MR}}u; m++) {
        sums[m] = subgroupAdd(acc[m]);
    }
#else
#if SUBGROUPS
    for (var m = 0u; m < {{MR}}u; m++) {
        let s = subgroupAdd(acc[m]);
        if (lane == 0u) {
            partial[m * {{WG}}u + li / sg] = s;
        }
    }
    workgroupBarrier();
    if (t == 0u) {
        let base = li / sg;
        for (var m = 0u; m < {{MR}}u; m++) {
            var s = 0.0;
            for (var i = 0u; i < {{TPR}}u / sg; i++) {
                s += partial[m * {{WG}}u + base + i];
            }
            sums[m] = s;
        }
    }
#else
    for (var m = 0u; m < {{MR}}u; m++) {
        partial[m * {{WG}}u + li] = acc[m];
    }
    workgroupBarrier();
    for (var off = {{TPR}}u / 2u; off > 0u; off >>= 1u) {
        if (t < off) {
            for (var m = 0u; m < {{MR}}u; m++) {
                partial[m * {{WG}}u + li] += partial[m * {{WG}}u + li + off];
            }
        }
        workgroupBarrier();
    }
    for (var m = 0u; m < {{MR}}u; m++) {
        sums[m] = partial[m * {{WG}}u + li];
    }
#endif
#endif
    if (t == 0u && row < p.n) {
        for (var m = 0u; m < {{MR}}u; m++) {
#if ADD_INTO
            y[m * p.n + row] = y[m * p.n + row] + sums[m] * inv;
#else
            y[m * p.n + row] = sums[m] * inv;
#endif
        }
    }
}
