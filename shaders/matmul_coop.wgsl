// matmul_coop.wgsl — prefill matmul on cooperative matrices (tensor cores where the device has
// them): y[m, n] (+)= Σ_k x[m, k] · W[n, k], x f32 [M, K], W [N, K] f16 / bf16 (two per u32,
// element 2i in the low half) or block-quantized (the GPU layout of src/quant/gpu_layout.rs,
// dequantized by quant_blocks.wgsl), y f32 [M, N]. Products are f16 × f16 with f32
// accumulation: x and W are rounded to f16 as they are staged (bf16 weights too; x clamped to
// ±65504 so that a large activation saturates instead of becoming infinite).
//
// Bindings: 0 params {m, n, k, gx, tiles_n, nbr (blocks per W row), scales_word, _};
//           1 step (unused); 2 x: vec4<f32>[M*K/4]; 3 w: float → vec4<u32>[N*K/8];
//           quantized → u32[] (vec4<u32>[] with W4); 4 y: f32[M*N] (read_write).
// Defines:  T (tile side: 8 or 16, the adapter's coop_matTxT f16 × f16 → f32 configuration);
//           SG (the adapter's fixed subgroup size); one of W_F16 / W_BF16, or QUANT with one
//           dtype of quant_blocks.wgsl and SUBS (32-value chunks per block), KREC, W4; ADD
//           (y += instead of y =).
// Geometry: a workgroup is four subgroups (4·SG threads) and computes a BM×BN = 4T × 4T tile
//           of y; subgroup s (by subgroup_id) owns its 2T × 2T quarter (row s/2, column s%2)
//           as 2×2 accumulators. Per k-step of BK = 32 (one quantized chunk) the workgroup
//           stages x's BM×32 tile (row-major) and W's BN×32 tile (row n = column n of B,
//           i.e. B column-major) in workgroup memory as f16, then each subgroup runs 32/T
//           multiply-adds per accumulator. The accumulators go through workgroup memory to y
//           with bounds checks. K must be a multiple of 32 (the host checks); rows past M or N
//           stage zeros and are not stored.
// Dispatch: ceil(M/BM)·ceil(N/BN) workgroups over (gx, gy) (ops::grid_2d); tile t covers rows
//           (t / tiles_n)·BM and columns (t % tiles_n)·BN.
// Features: SHADER_F16, SUBGROUP (subgroup_id), EXPERIMENTAL_COOPERATIVE_MATRIX.
enable f16;
enable wgpu_cooperative_matrix;
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, gx: u32, tiles_n: u32, nbr: u32, scales_word: u32, _p: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#if QUANT
#if W4
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
#else
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#if QUANT
#include "quant_blocks.wgsl"
const SUBS: u32 = {{SUBS}}u;
#endif

const T: u32 = {{T}}u;
const SG: u32 = {{SG}}u;
const WG: u32 = 4u * SG;
const BM: u32 = 4u * T;
const BN: u32 = 4u * T;
const BK: u32 = 32u;

var<workgroup> xs: array<f16, {{T}} * 4 * 32>;
var<workgroup> ws: array<f16, {{T}} * 4 * 32>;
var<workgroup> cs: array<f32, {{T}} * {{T}} * 16>;

const F16_MAX: f32 = 65504.0;

fn put4(buf: u32, o: u32, v: vec4<f32>) {
    let h = vec4<f16>(clamp(v, vec4<f32>(-F16_MAX), vec4<f32>(F16_MAX)));
    if (buf == 0u) {
        xs[o] = h.x;
        xs[o + 1u] = h.y;
        xs[o + 2u] = h.z;
        xs[o + 3u] = h.w;
    } else {
        ws[o] = h.x;
        ws[o + 1u] = h.y;
        ws[o + 2u] = h.z;
        ws[o + 3u] = h.w;
    }
}

// Stage x[m0.., k0..k0+32] and W[n0.., k0..k0+32] as f16.
fn stage(li: u32, m0: u32, n0: u32, k0: u32) {
    for (var e = li; e < BM * 8u; e += WG) {
        let r = e / 8u;
        let i = e % 8u;
        var v = vec4<f32>(0.0);
        if (m0 + r < p.m) {
            v = x[((m0 + r) * p.k + k0) / 4u + i];
        }
        put4(0u, r * BK + i * 4u, v);
    }
#if QUANT
    // One task per W row and half chunk: the chunk's scales are read once per four vec4s.
    let c = k0 / 32u;
    for (var e = li; e < BN * 2u; e += WG) {
        let r = e / 2u;
        let half = e % 2u;
        let n = n0 + r;
        if (n < p.n) {
            let ch = chunk_at(n * p.nbr + c / SUBS, c % SUBS);
            for (var i = half * 4u; i < half * 4u + 4u; i++) {
                put4(1u, r * BK + i * 4u, chunk_vec4(ch, i));
            }
        } else {
            for (var i = half * 4u; i < half * 4u + 4u; i++) {
                put4(1u, r * BK + i * 4u, vec4<f32>(0.0));
            }
        }
    }
#else
    // Eight 16-bit weights per vec4<u32> load: four loads per row of the tile.
    for (var e = li; e < BN * 4u; e += WG) {
        let r = e / 4u;
        let i = e % 4u;
        var a = vec4<f32>(0.0);
        var b = vec4<f32>(0.0);
        if (n0 + r < p.n) {
            let q = w[((n0 + r) * p.k + k0) / 8u + i];
            a = vec4<f32>(widen(q.x), widen(q.y));
            b = vec4<f32>(widen(q.z), widen(q.w));
        }
        put4(1u, r * BK + i * 8u, a);
        put4(1u, r * BK + i * 8u + 4u, b);
    }
#endif
}

@compute @workgroup_size(4 * {{SG}})
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
          @builtin(subgroup_id) sid: u32) {
    let tile = wg_linear(wg, p.gx);
    let m0 = (tile / p.tiles_n) * BM;
    let n0 = (tile % p.tiles_n) * BN;
    // This subgroup's quarter of the tile: rows sm .. sm + 2T, columns sn .. sn + 2T.
    let sm = (sid / 2u) * 2u * T;
    let sn = (sid % 2u) * 2u * T;

    var c00 = coop_mat{{T}}x{{T}}<f32, C>();
    var c01 = coop_mat{{T}}x{{T}}<f32, C>();
    var c10 = coop_mat{{T}}x{{T}}<f32, C>();
    var c11 = coop_mat{{T}}x{{T}}<f32, C>();
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        stage(li, m0, n0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += T) {
            // A: rows of x, row-major (stride BK); B: k × n with column n = W row n, so
            // column-major with stride BK.
            let a0 = coopLoadT<coop_mat{{T}}x{{T}}<f16, A>>(&xs[sm * BK + kk], BK);
            let a1 = coopLoadT<coop_mat{{T}}x{{T}}<f16, A>>(&xs[(sm + T) * BK + kk], BK);
            let b0 = coopLoad<coop_mat{{T}}x{{T}}<f16, B>>(&ws[sn * BK + kk], BK);
            let b1 = coopLoad<coop_mat{{T}}x{{T}}<f16, B>>(&ws[(sn + T) * BK + kk], BK);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    // Row-major BM×BN through workgroup memory, then bounds-checked stores.
    coopStoreT(c00, &cs[sm * BN + sn], BN);
    coopStoreT(c01, &cs[sm * BN + sn + T], BN);
    coopStoreT(c10, &cs[(sm + T) * BN + sn], BN);
    coopStoreT(c11, &cs[(sm + T) * BN + sn + T], BN);
    workgroupBarrier();
    for (var e = li; e < BM * BN; e += WG) {
        let m = m0 + e / BN;
        let n = n0 + e % BN;
        if (m < p.m && n < p.n) {
#if ADD
            y[m * p.n + n] += cs[e];
#else
            y[m * p.n + n] = cs[e];
#endif
        }
    }
}
