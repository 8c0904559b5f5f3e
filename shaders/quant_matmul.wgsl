// quant_matmul.wgsl — y[m, n] (+)= Σ_k x[m, k] · W[n, k] with W block-quantized, dequantized in
// the kernel (f32 accumulation). W stays in its GPU layout (src/quant/mod.rs), ≈ the file size.
//
// Bindings: 0 params {m, n, k, nbr (blocks per W row), scales_word, gx, chunks (k/32), m0};
//           1 step (unused); 2 x: vec4<f32>[m*k/4]; 3 w: u32[] (quantized); 4 y: f32[m*n];
//           gemv_rows also 5 w4: vec4<u32>[] (binding 3's buffer again). With TEX (rows
//           kernels on CPU devices) binding 3 is instead `wt`, the weight's texel image
//           (src/gpu/texels.rs: the same words, 4 to a texel), and there is no binding 5.
// Defines:  gemv_rows, matmul_rows: XU (x is a uniform array of XU vec4: Caps::uniform_window / 16
//           for every such kernel, whatever the rows — see Caps::uniform_window), NIB32 (Q4_0/Q4_1), QH (Q5_K/Q6_K);
//           one dtype of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (see quant_blocks.wgsl); SUBS (32-value
//           chunks per block: 1 or 8); WG (threads); ADD (y += instead of y =);
//           gemv: TPR (threads per W row, a power of two; WG / TPR rows per workgroup),
//           SUBGROUPS (subgroup reduction; TPR must be a multiple of the subgroup size);
//           matmul: BM (x rows per workgroup); gemv also NORM (RMSNorm of x fused in: params
//           gain {eps, _, _, _}, binding 5 g: vec4<f32>[K/4] the norm weight; y = (W · (g ∘ x))
//           / sqrt(mean(x²) + eps); WG a power of two).
// Entries:
//   gemv   (m == 1): a workgroup computes WG / TPR outputs; the TPR threads of a row take its
//          32-value chunks eight threads to a chunk, one quant word (4 values) per thread, so
//          adjacent threads read adjacent words; they dequantize, multiply by x, then reduce: subgroupAdd + one partial per subgroup in workgroup
//          memory when SUBGROUPS, else a tree over the row's TPR slots of workgroup memory.
//          Dispatch: ceil(n / (WG / TPR)) workgroups over (gx, gy).
//   gemv_rows (m == 1, CPU devices): thread i computes output row wg·WG + i alone, chunk by
//          chunk, with no reduction and no barrier — on a CPU device the lanes of a SIMD
//          vector are rows and a barrier is a context switch. With XU x is bound as
//          a uniform array: lavapipe turns a storage load into a loop over the lanes with a
//          branch each, a uniform load into one vector gather.
//          Dispatch: ceil(n / WG) workgroups over (gx, gy).
//   matmul_rows (m ≥ 2, CPU devices): one call per window of up to 8 rows of x, bound as a
//          uniform array of XU vec4 (p.m = the window's rows, p.m0 its first row of y); thread
//          i owns W row wg·WG + i, dequantizes each chunk once and uses it for the 8 rows
//          (8 named accumulators: a private array would live in memory there). No barriers.
//          Dispatch per window: ceil(n / WG) workgroups over (gx, gy).
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
#if XU
// x as a uniform array (gemv_rows on CPU devices, where uniform loads are vector gathers).
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, {{XU}}>;
#else
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#endif
#if TEX
@group(0) @binding(3) var wt: texture_2d<u32>;
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
#endif
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

#if ROWS
#if TEX
// Four words of the weight from its texel image.
fn w4at(i: u32) -> vec4<u32> { return texel(wt, i); }
#else
// The weight again, as vec4 words (the same buffer as binding 3).
@group(0) @binding(5) var<storage, read> w4: array<vec4<u32>>;
fn w4at(i: u32) -> vec4<u32> { return w4[i]; }
#endif

// A chunk's quant words (q) and high-bit words (h) as vec4 loads: each storage load is a
// per-lane loop on lavapipe whatever its width; every format's quants start 16-byte aligned.
struct Words { q0: vec4<u32>, q1: vec4<u32>, h0: vec4<u32>, h1: vec4<u32> }

fn chunk_words(ch: Chunk) -> Words {
    var r: Words;
    r.q0 = w4at(ch.qs / 4u);
#if NIB32
    // Q4_0 / Q4_1: one vec4 holds all 32 values (low nibbles 0..16, high 16..32).
    r.q1 = r.q0;
#else
    r.q1 = w4at(ch.qs / 4u + 1u);
#endif
#if QH
    r.h0 = w4at(ch.qh / 4u);
    r.h1 = w4at(ch.qh / 4u + 1u);
#endif
    return r;
}

// Values 4i .. 4i+4 of the chunk from its loaded words.
fn words_vec4(ch: Chunk, r: Words, i: u32) -> vec4<f32> {
    if (i < 4u) {
        return decode4(ch, i, r.q0[i], r.h0[i]);
    }
    return decode4(ch, i, r.q1[i - 4u], r.h1[i - 4u]);
}
#endif

#if GEMV_ROWS

@compute @workgroup_size({{WG}})
fn gemv_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg_linear(wg, p.gx) * WG + li;
    // Rows past the end redo the last row instead of returning early: control flow stays
    // uniform, so the driver can load x once per SIMD vector instead of once per lane.
    let row = min(n, p.n - 1u);
    var acc = vec4<f32>(0.0);
    for (var c = 0u; c < p.chunks; c++) {
        let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
        let xb = c * 8u;
        let r = chunk_words(ch);
        acc += decode4(ch, 0u, r.q0.x, r.h0.x) * x[xb];
        acc += decode4(ch, 1u, r.q0.y, r.h0.y) * x[xb + 1u];
        acc += decode4(ch, 2u, r.q0.z, r.h0.z) * x[xb + 2u];
        acc += decode4(ch, 3u, r.q0.w, r.h0.w) * x[xb + 3u];
        acc += decode4(ch, 4u, r.q1.x, r.h1.x) * x[xb + 4u];
        acc += decode4(ch, 5u, r.q1.y, r.h1.y) * x[xb + 5u];
        acc += decode4(ch, 6u, r.q1.z, r.h1.z) * x[xb + 6u];
        acc += decode4(ch, 7u, r.q1.w, r.h1.w) * x[xb + 7u];
    }
    if (n < p.n) {
        store(n, acc.x + acc.y + acc.z + acc.w);
    }
}
#endif

#if MATMUL_ROWS
@compute @workgroup_size({{WG}})
fn matmul_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg_linear(wg, p.gx) * WG + li;
    let row = min(n, p.n - 1u);
    let k4 = p.k / 4u;
    // Rows past the window's end read its last row (in bounds of the uniform array); their
    // sums are not stored.
    let last = p.m - 1u;
    let o1 = min(1u, last) * k4;
    let o2 = min(2u, last) * k4;
    let o3 = min(3u, last) * k4;
    let o4 = min(4u, last) * k4;
    let o5 = min(5u, last) * k4;
    let o6 = min(6u, last) * k4;
    let o7 = min(7u, last) * k4;
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
        let r = chunk_words(ch);
        for (var i = 0u; i < 8u; i++) {
            let wv = words_vec4(ch, r, i);
            let xb = c * 8u + i;
            a0 += dot(wv, x[xb]);
            a1 += dot(wv, x[o1 + xb]);
            a2 += dot(wv, x[o2 + xb]);
            a3 += dot(wv, x[o3 + xb]);
            a4 += dot(wv, x[o4 + xb]);
            a5 += dot(wv, x[o5 + xb]);
            a6 += dot(wv, x[o6 + xb]);
            a7 += dot(wv, x[o7 + xb]);
        }
    }
    if (n < p.n) {
        let y0 = p.m0 * p.n + n;
        store(y0, a0);
        if (last >= 1u) { store(y0 + p.n, a1); }
        if (last >= 2u) { store(y0 + 2u * p.n, a2); }
        if (last >= 3u) { store(y0 + 3u * p.n, a3); }
        if (last >= 4u) { store(y0 + 4u * p.n, a4); }
        if (last >= 5u) { store(y0 + 5u * p.n, a5); }
        if (last >= 6u) { store(y0 + 6u * p.n, a6); }
        if (last >= 7u) { store(y0 + 7u * p.n, a7); }
    }
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
