// matmul_quant.wgsl — y[m, n] (+)= Σ_k x[m, k] · W[n, k] with W block-quantized, dequantized in
// the kernel (f32 accumulation): the GPU-style kernels of the matmul family for block formats
// (CPU devices take matmul_rows.wgsl). W stays in its GPU layout (src/quant/mod.rs), ≈ the file
// size.
//
// Bindings: 0 params {m, n, k, nbr (blocks per W row), scales_word, gx, chunks (k/32), m0};
//           1 step (unused); 2 x: vec4<f32>[m*k/4]; 3 w: u32[] (quantized); 4 y: f32[m*n].
// Defines:  one dtype of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (see quant_blocks.wgsl); SUBS (32-value
//           chunks per block: 1 or 8); WG (threads); ADD (y += instead of y =);
//           gemv: TPR (threads per W row, a power of two; WG / TPR rows per workgroup),
//           SUBGROUPS (subgroup reduction; TPR must be a multiple of the subgroup size),
//           NORM (RMSNorm of x fused in: params gain {eps, _, _, _}, binding 5 g: vec4<f32>[K/4]
//           the norm weight; y = (W · (g ∘ x)) / sqrt(mean(x²) + eps); WG a power of two);
//           matmul: BM (x rows per workgroup).
// Entries:
//   gemv   (m == 1): a workgroup computes WG / TPR outputs; the TPR threads of a row take its
//          32-value chunks eight threads to a chunk, one quant word (4 values) per thread, so
//          adjacent threads read adjacent words; they dequantize, multiply by x, then reduce:
//          subgroupAdd + one partial per subgroup in workgroup memory when SUBGROUPS, else a
//          tree over the row's TPR slots of workgroup memory.
//          Dispatch: ceil(n / (WG / TPR)) workgroups over (gx, gy).
//   matmul (m ≥ 2): a workgroup computes a BM × WG tile of y: thread i owns W row n0 + i and
//          BM accumulators; per 32-value chunk of k the workgroup stages the BM x rows in
//          workgroup memory, each thread dequantizes its W chunk once and uses it BM times.
//          Dispatch: (ceil(n / WG), ceil(m / BM), 1).
// Features: SUBGROUPS needs wgpu::Features::SUBGROUP; otherwise none.
#include "common.wgsl"

#if NORM
struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32, eps: f32, _a: u32, _b: u32, _c: u32 }
#else
struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32 }
#endif

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

#include "quant_blocks.wgsl"

const WG: u32 = {{WG}}u;
const SUBS: u32 = {{SUBS}}u;

fn store(i: u32, v: f32) {
#if ADD
    y[i] += v;
#else
    y[i] = v;
#endif
}

#if TPR
const TPR: u32 = {{TPR}}u;
const ROWS: u32 = WG / TPR;
var<workgroup> red: array<f32, {{WG}}>;
#if NORM
// The RMSNorm weight (f32 [K]): x is normalized as it is read.
@group(0) @binding(5) var<storage, read> g: array<vec4<f32>>;
fn xat(i: u32) -> vec4<f32> { return x[i] * g[i]; }
#else
fn xat(i: u32) -> vec4<f32> { return x[i]; }
#endif

@compute @workgroup_size({{WG}})
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32
#if SUBGROUPS
    , @builtin(subgroup_invocation_id) sl: u32, @builtin(subgroup_size) ss: u32
#endif
) {
    let r0 = wg_linear(wg, p.gx) * ROWS;
    if (r0 >= p.n) {
        return;
    }
#if NORM
    // RMSNorm fused in: the workgroup sums x² over the row (a few KiB, in cache), every dot
    // product reads x·g, and the row sums are scaled by 1/rms when stored. (The return above
    // is the whole workgroup's, so the barriers stay in uniform control flow.)
    var sq = 0.0;
    for (var i = li; i < p.k / 4u; i += WG) {
        let v = x[i];
        sq += dot(v, v);
    }
    red[li] = sq;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            red[li] += red[li + off];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.k) + p.eps);
    workgroupBarrier();
#else
    let inv = 1.0;
#endif
    let lane = li % TPR;
    // Threads of rows past the end redo the last row; their sums are dropped.
    let row = min(r0 + li / TPR, p.n - 1u);
    // Eight threads share a chunk, one quant word (4 values) each, so that a subgroup's loads
    // are contiguous words; the chunk's scales are read by all eight (one cached line).
    let j = lane & 7u;
    var acc = 0.0;
    for (var c = lane >> 3u; c < p.chunks; c += TPR / 8u) {
        let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
        acc += dot(chunk_vec4(ch, j), xat(c * 8u + j));
    }
#if SUBGROUPS
    // TPR is a multiple of the subgroup size (the host checks), so no subgroup spans two rows.
    let t = subgroupAdd(acc);
    if (sl == 0u) {
        red[li / ss] = t;
    }
    workgroupBarrier();
    let per_row = TPR / ss;
    if (li < ROWS && r0 + li < p.n) {
        var v = 0.0;
        for (var i = 0u; i < per_row; i++) {
            v += red[li * per_row + i];
        }
        store(r0 + li, v * inv);
    }
#else
    red[li] = acc;
    workgroupBarrier();
    for (var off = TPR / 2u; off > 0u; off >>= 1u) {
        if (lane < off) {
            red[li] += red[li + off];
        }
        workgroupBarrier();
    }
    if (lane == 0u && r0 + li / TPR < p.n) {
        store(r0 + li / TPR, red[li] * inv);
    }
#endif
}
#endif

#if BM
const BM: u32 = {{BM}}u;
var<workgroup> xs: array<vec4<f32>, {{BM}} * 8>;

@compute @workgroup_size({{WG}})
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg.x * WG + li;
    let m0 = wg.y * BM;
    // Threads past the last row dequantize the last row and discard the result, so that every
    // thread reaches the barriers.
    let row = min(n, p.n - 1u);
    let k4 = p.k / 4u;
    var acc: array<f32, BM>;
    for (var c = 0u; c < p.chunks; c++) {
        for (var i = li; i < BM * 8u; i += WG) {
            let m = m0 + i / 8u;
            var v = vec4<f32>(0.0);
            if (m < p.m) {
                v = x[m * k4 + c * 8u + i % 8u];
            }
            xs[i] = v;
        }
        workgroupBarrier();
        let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
        for (var i = 0u; i < 8u; i++) {
            let wv = chunk_vec4(ch, i);
            for (var m = 0u; m < BM; m++) {
                acc[m] += dot(wv, xs[m * 8u + i]);
            }
        }
        workgroupBarrier();
    }
    if (n < p.n) {
        for (var m = 0u; m < BM; m++) {
            if (m0 + m < p.m) {
                store((m0 + m) * p.n + n, acc[m]);
            }
        }
    }
}
#endif
