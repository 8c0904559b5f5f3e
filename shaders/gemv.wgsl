// gemv.wgsl — matrix-vector product for decode (one token): y[n] = Σ_k x[k] · w[n, k]
// (`y = x · Wᵀ` with W `[N, K]` row-major, as in Hugging Face checkpoints). With ADD_INTO the
// result is added to y in place (residual fused into o_proj / down_proj).
//
// Bindings: 0 params {k, n, gx, _}; 1 step (unused);
//           2 x: f32[K]            (array<vec4<f32>> when X_VEC4, else array<f32>);
//           3 w: W_F32  → f32[N*K] (array<vec4<f32>> when VEC 4, else array<f32>);
//                W_F16 / W_BF16 → 16-bit values packed two per u32, element 2i in the low half
//                (array<vec4<u32>> when VEC 8, array<vec2<u32>> when VEC 4, array<u32> else);
//           4 y: f32[N] (read_write; read only with ADD_INTO).
// Defines: WG (threads per workgroup), TPR (threads per output row; ROWS = WG / TPR rows per
//          workgroup), VEC (elements per weight load: 1, 2, 4 or 8; the host picks the widest that
//          divides K, so rows start aligned), one of W_F32 / W_F16 / W_BF16, X_VEC4 (x read as
//          vec4, VEC >= 4), ADD_INTO, and the reduction:
//          SUBGROUPS + SG_ROW  — TPR equals the subgroup size: one subgroupAdd per row, no barrier;
//          SUBGROUPS           — subgroupAdd, then the TPR / sg_size partials of a row are summed
//                                through workgroup memory (subgroups are assumed to be contiguous
//                                runs of local_invocation_index, which TPR being a multiple of the
//                                largest subgroup size keeps inside one row);
//          neither             — workgroup-memory tree reduction over TPR threads.
// Dispatch: ceil(N / ROWS) workgroups spread over (gx, gy) (ops::grid_2d).
// Features: subgroups for the SUBGROUPS variants; nothing otherwise.
#include "common.wgsl"

struct Params { k: u32, n: u32, gx: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
#if X_VEC4
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
#if W_F32
#if V4
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<f32>;
#endif
#else
#if V8
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#else
#if V4
@group(0) @binding(3) var<storage, read> w: array<vec2<u32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#endif
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const ROWS: u32 = {{WG}}u / {{TPR}}u;

#if W_F16
fn widen(q: u32) -> vec2<f32> { return unpack2x16float(q); }
#endif
#if W_BF16
fn widen(q: u32) -> vec2<f32> { return bf16x2(q); }
#endif

// Σ over load `c` of row `row` (elements c·VEC .. c·VEC + VEC − 1 of the row).
fn chunk(row: u32, c: u32) -> f32 {
#if W_F32
#if V4
    return dot(w[row * (p.k / 4u) + c], x[c]);
#else
    return w[row * p.k + c] * x[c];
#endif
#else
#if V8
    let q = w[row * (p.k / 8u) + c];
    return dot(vec4<f32>(widen(q.x), widen(q.y)), x[2u * c])
         + dot(vec4<f32>(widen(q.z), widen(q.w)), x[2u * c + 1u]);
#endif
#if V4
    let q = w[row * (p.k / 4u) + c];
    return dot(vec4<f32>(widen(q.x), widen(q.y)), x[c]);
#endif
#if V2
    let h = widen(w[row * (p.k / 2u) + c]);
    return h.x * x[2u * c] + h.y * x[2u * c + 1u];
#endif
#if V1
    let e = row * p.k + c;
    return widen(w[e >> 1u])[e & 1u] * x[c];
#endif
#endif
}

#if !SG_ROW
var<workgroup> partial: array<f32, {{WG}}>;
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
    // Two accumulators so consecutive loads do not wait on each other's adds.
    var a0 = 0.0;
    var a1 = 0.0;
    if (row < p.n) {
        var c = t;
        for (; c + {{TPR}}u < loads; c += 2u * {{TPR}}u) {
            a0 += chunk(row, c);
            a1 += chunk(row, c + {{TPR}}u);
        }
        if (c < loads) {
            a0 += chunk(row, c);
        }
    }
    let acc = a0 + a1;

#if SG_ROW
    let s = subgroupAdd(acc);
    let first = t == 0u;
#else
#if SUBGROUPS
    let s0 = subgroupAdd(acc);
    if (lane == 0u) {
        partial[li / sg] = s0;
    }
    workgroupBarrier();
    let first = t == 0u;
    var s = 0.0;
    if (first) {
        let base = li / sg;
        for (var i = 0u; i < {{TPR}}u / sg; i++) {
            s += partial[base + i];
        }
    }
#else
    partial[li] = acc;
    workgroupBarrier();
    for (var off = {{TPR}}u / 2u; off > 0u; off >>= 1u) {
        if (t < off) {
            partial[li] += partial[li + off];
        }
        workgroupBarrier();
    }
    let first = t == 0u;
    let s = partial[li];
#endif
#endif
    if (first && row < p.n) {
#if ADD_INTO
        y[row] = y[row] + s;
#else
        y[row] = s;
#endif
    }
}
