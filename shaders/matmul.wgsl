// matmul.wgsl — tiled matrix product for prefill: y[m, n] = Σ_k x[m, k] · w[n, k]
// (`y = x · Wᵀ`, x `[M, K]` f32, W `[N, K]` row-major as in Hugging Face checkpoints). With
// ADD_INTO the result is added to y in place.
//
// Bindings: 0 params {m, n, k, gx, tiles_n, _, _, _}; 1 step (unused);
//           2 x: f32[M*K]  (array<vec4<f32>> when X_VEC4, else array<f32>);
//           3 w: W_F32 → f32[N*K] (array<vec4<f32>> when V4, else array<f32>);
//                W_F16 / W_BF16 → 16-bit values packed two per u32, element 2i in the low half
//                (array<vec2<u32>> when V4, else array<u32>);
//           4 y: f32[M*N] (read_write; read only with ADD_INTO) — declared in matmul_bindings.wgsl.
// Defines: S (1 or 2; S2 set when 2), BK (k-step, a multiple of 4), one of W_F32 / W_F16 / W_BF16,
//          X_VEC4 and V4 together (K is a multiple of 4: single loads of four k-consecutive
//          elements), ADD_INTO.
// 256 threads (16×16); each computes S×S blocks of 4×4 outputs, so a workgroup covers a
// BM×BN = 64·S × 64·S tile of y. Each k-step the workgroup stages a BM×BK tile of x and a BN×BK
// tile of w (widened to f32) in workgroup memory, k-major as vec4s of four consecutive rows, so
// a thread reads one vec4 of x and one of w per block side and k, and accumulates 4×4 outer
// products in vec4 registers (f32). Loads outside M, N or K stage zeros; stores outside M, N
// are skipped.
// Dispatch: ceil(M/BM)·ceil(N/BN) workgroups spread over (gx, gy) (ops::grid_2d); tile t covers
// rows (t / tiles_n)·BM and columns (t % tiles_n)·BN.
// Features: none.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, gx: u32, tiles_n: u32, _p0: u32, _p1: u32, _p2: u32 }

#include "matmul_bindings.wgsl"

// 16×16 threads; each computes S×S blocks of 4×4 outputs, block (i, j) at rows
// m0 + i·64 + tm·4 .. +3 and columns n0 + j·64 + tn·4 .. +3 (strided blocks keep neighbouring
// threads on neighbouring workgroup-memory words).
const S: u32 = {{S}}u;
const BM: u32 = 64u * S;
const BN: u32 = 64u * S;
const BK: u32 = {{BK}}u;
const WG: u32 = 256u;

// k-major tiles of vec4s over 4 consecutive rows: xs[k * BM/4 + m/4], ws[k * BN/4 + n/4].
var<workgroup> xs: array<vec4<f32>, 16 * {{S}} * {{BK}}>;
var<workgroup> ws: array<vec4<f32>, 16 * {{S}} * {{BK}}>;

// Four k-consecutive values of x row `m` from column `k` (zeros past M or K).
fn load_x4(m: u32, k: u32) -> vec4<f32> {
    if (m >= p.m) {
        return vec4<f32>(0.0);
    }
#if X_VEC4
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
    return x[(m * p.k + k) / 4u];
#else
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < p.k) {
            v[j] = x[m * p.k + k + j];
        }
    }
    return v;
#endif
}

// Four k-consecutive values of w row `n` from column `k`, widened to f32 (zeros past N or K).
fn load_w4(n: u32, k: u32) -> vec4<f32> {
    if (n >= p.n) {
        return vec4<f32>(0.0);
    }
#if V4
    if (k >= p.k) {
        return vec4<f32>(0.0);
    }
#if W_F32
    return w[(n * p.k + k) / 4u];
#else
    let q = w[(n * p.k + k) / 4u];
    return vec4<f32>(widen(q.x), widen(q.y));
#endif
#else
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < p.k) {
            let e = n * p.k + k + j;
#if W_F32
            v[j] = w[e];
#else
            v[j] = widen(w[e >> 1u])[e & 1u];
#endif
        }
    }
    return v;
#endif
}

// c[i] += a[i] · b: the 4×4 outer product of four rows of x and four columns of w.
fn outer(a: vec4<f32>, b: vec4<f32>, c: ptr<function, array<vec4<f32>, 4>>) {
    (*c)[0] = fma(vec4<f32>(a.x), b, (*c)[0]);
    (*c)[1] = fma(vec4<f32>(a.y), b, (*c)[1]);
    (*c)[2] = fma(vec4<f32>(a.z), b, (*c)[2]);
    (*c)[3] = fma(vec4<f32>(a.w), b, (*c)[3]);
}

// Write four outputs of row m from column n (bounds-checked).
fn store_row(m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.n) {
            let o = m * p.n + n + j;
#if ADD_INTO
            y[o] = y[o] + v[j];
#else
            y[o] = v[j];
#endif
        }
    }
}

// Write block c, whose first element is y[m, n]. Constant indices only, so c stays in registers.
fn store(m: u32, n: u32, c: ptr<function, array<vec4<f32>, 4>>) {
    store_row(m, n, (*c)[0]);
    store_row(m + 1u, n, (*c)[1]);
    store_row(m + 2u, n, (*c)[2]);
    store_row(m + 3u, n, (*c)[3]);
}

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tile = wg_linear(wg, p.gx);
    let m0 = (tile / p.tiles_n) * BM;
    let n0 = (tile % p.tiles_n) * BN;
    let tn = li % 16u;
    let tm = li / 16u;

    var c00: array<vec4<f32>, 4>;
#if S2
    var c01: array<vec4<f32>, 4>;
    var c10: array<vec4<f32>, 4>;
    var c11: array<vec4<f32>, 4>;
#endif

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage the tiles: each load is four k-consecutive elements of one row, scattered into
        // the k-major layout.
        for (var e = li; e < BM * BK / 4u; e += WG) {
            let r = e / (BK / 4u);
            let kk = (e % (BK / 4u)) * 4u;
            let v = load_x4(m0 + r, k0 + kk);
            for (var j = 0u; j < 4u; j++) {
                xs[(kk + j) * (BM / 4u) + r / 4u][r % 4u] = v[j];
            }
        }
        for (var e = li; e < BN * BK / 4u; e += WG) {
            let r = e / (BK / 4u);
            let kk = (e % (BK / 4u)) * 4u;
            let v = load_w4(n0 + r, k0 + kk);
            for (var j = 0u; j < 4u; j++) {
                ws[(kk + j) * (BN / 4u) + r / 4u][r % 4u] = v[j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = xs[kk * (BM / 4u) + tm];
            let b0 = ws[kk * (BN / 4u) + tn];
            outer(a0, b0, &c00);
#if S2
            let a1 = xs[kk * (BM / 4u) + 16u + tm];
            let b1 = ws[kk * (BN / 4u) + 16u + tn];
            outer(a0, b1, &c01);
            outer(a1, b0, &c10);
            outer(a1, b1, &c11);
#endif
        }
        workgroupBarrier();
    }

    store(m0 + tm * 4u, n0 + tn * 4u, &c00);
#if S2
    store(m0 + tm * 4u, n0 + 64u + tn * 4u, &c01);
    store(m0 + 64u + tm * 4u, n0 + tn * 4u, &c10);
    store(m0 + 64u + tm * 4u, n0 + 64u + tn * 4u, &c11);
#endif
}
