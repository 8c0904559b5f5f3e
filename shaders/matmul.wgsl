// matmul.wgsl — tiled matrix product for prefill: y[m, n] = Σ_k x[m, k] · w[n, k]
// (`y = x · Wᵀ`, x `[M, K]` f32, W `[N, K]` row-major as in Hugging Face checkpoints). With
// ADD_INTO the result is added to y in place.
//
// Bindings: 0 params {m, n, k, gx, tiles_n, _, _, _}; 1 step (unused);
//           2 x: f32[M*K]  (array<vec4<f32>> when VEC4, else array<f32>);
//           3 w: W_F32 → f32[N*K] (array<vec4<f32>> when VEC4, else array<f32>);
//                W_F16 / W_BF16 → 16-bit values packed two per u32, element 2i in the low half
//                (array<vec2<u32>> when VEC4, else array<u32>);
//           4 y: f32[M*N] (read_write; read only with ADD_INTO).
// Defines: BM, BN (output tile), BK (k-step), TM, TN (outputs per thread along m and n; the
//          workgroup is (BM/TM)·(BN/TN) threads = WG), one of W_F32 / W_F16 / W_BF16, VEC4 (K is a
//          multiple of 4: loads of four k-consecutive elements), ADD_INTO.
// Each k-step the workgroup stages a BM×BK tile of x and a BN×BK tile of w (widened to f32) in
// workgroup memory, k-major, so every thread reads TM consecutive x values and TN consecutive
// w values per k and accumulates a TM×TN block in registers (f32). Loads outside M, N or K
// stage zeros; stores outside M, N are skipped.
// Dispatch: ceil(M/BM)·ceil(N/BN) workgroups spread over (gx, gy) (ops::grid_2d); tile t covers
// rows (t / tiles_n)·BM and columns (t % tiles_n)·BN.
// Features: none.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, gx: u32, tiles_n: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
#if VEC4
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
#if W_F32
#if VEC4
@group(0) @binding(3) var<storage, read> w: array<vec4<f32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<f32>;
#endif
#else
#if VEC4
@group(0) @binding(3) var<storage, read> w: array<vec2<u32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const BM: u32 = {{BM}}u;
const BN: u32 = {{BN}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const WG: u32 = (BM / TM) * (BN / TN);

// k-major tiles: xs[k * BM + m], ws[k * BN + n].
var<workgroup> xs: array<f32, {{BM}} * {{BK}}>;
var<workgroup> ws: array<f32, {{BN}} * {{BK}}>;

#if W_F16
fn widen(q: u32) -> vec2<f32> { return unpack2x16float(q); }
#endif
#if W_BF16
fn widen(q: u32) -> vec2<f32> { return bf16x2(q); }
#endif

// Four k-consecutive values of x row `m` from column `k` (zeros past M or K).
fn load_x4(m: u32, k: u32) -> vec4<f32> {
    if (m >= p.m) {
        return vec4<f32>(0.0);
    }
#if VEC4
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
#if VEC4
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

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let tile = wg_linear(wg, p.gx);
    let m0 = (tile / p.tiles_n) * BM;
    let n0 = (tile % p.tiles_n) * BN;
    // This thread's TM×TN block: rows m0 + tm·TM + i, columns n0 + tn·TN + j.
    let tn = li % (BN / TN);
    let tm = li / (BN / TN);

    var acc: array<array<f32, {{TN}}>, {{TM}}>;
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage the tiles: each load is four k-consecutive elements of one row.
        for (var e = li; e < BM * BK / 4u; e += WG) {
            let r = e / (BK / 4u);
            let kk = (e % (BK / 4u)) * 4u;
            let v = load_x4(m0 + r, k0 + kk);
            for (var j = 0u; j < 4u; j++) {
                xs[(kk + j) * BM + r] = v[j];
            }
        }
        for (var e = li; e < BN * BK / 4u; e += WG) {
            let r = e / (BK / 4u);
            let kk = (e % (BK / 4u)) * 4u;
            let v = load_w4(n0 + r, k0 + kk);
            for (var j = 0u; j < 4u; j++) {
                ws[(kk + j) * BN + r] = v[j];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, {{TM}}>;
            var b: array<f32, {{TN}}>;
            for (var i = 0u; i < TM; i++) {
                a[i] = xs[kk * BM + tm * TM + i];
            }
            for (var j = 0u; j < TN; j++) {
                b[j] = ws[kk * BN + tn * TN + j];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let m = m0 + tm * TM + i;
        if (m >= p.m) {
            break;
        }
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tn * TN + j;
            if (n < p.n) {
#if ADD_INTO
                y[m * p.n + n] = y[m * p.n + n] + acc[i][j];
#else
                y[m * p.n + n] = acc[i][j];
#endif
            }
        }
    }
}
