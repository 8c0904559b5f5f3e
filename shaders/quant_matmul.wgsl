// quant_matmul.wgsl — y[m, n] (+)= Σ_k x[m, k] · W[n, k] with W block-quantized, dequantized in
// the kernel (f32 accumulation). W stays in its GPU layout (src/quant/mod.rs), ≈ the file size.
//
// Bindings: 0 params {m, n, k, nbr (blocks per W row), scales_word, gx, chunks (k/32), _};
//           1 step (unused); 2 x: vec4<f32>[m*k/4]; 3 w: u32[] (quantized); 4 y: f32[m*n].
// Defines:  one dtype of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (see quant_blocks.wgsl); SUBS (32-value
//           chunks per block: 1 or 8); WG (threads); ADD (y += instead of y =);
//           gemv: ROWS (W rows per workgroup), RED (= WG·ROWS), SUBGROUPS (subgroup reduction);
//           matmul: BM (x rows per workgroup).
// Entries:
//   gemv   (m == 1): a workgroup computes ROWS outputs; its threads take the row's 32-value
//          chunks in turn (adjacent threads read adjacent chunks), each thread dequantizes its
//          chunk of every one of the ROWS rows against the same 32 x values, then the workgroup
//          reduces: subgroupAdd + one partial per subgroup in workgroup memory when SUBGROUPS,
//          else a tree in workgroup memory. Dispatch: ceil(n / ROWS) workgroups over (gx, gy).
//   matmul (m ≥ 2): a workgroup computes a BM × WG tile of y: thread i owns W row n0 + i and
//          BM accumulators; per 32-value chunk of k the workgroup stages the BM x rows in
//          workgroup memory, each thread dequantizes its W chunk once and uses it BM times.
//          Dispatch: (ceil(n / WG), ceil(m / BM), 1).
// Features: SUBGROUPS needs wgpu::Features::SUBGROUP; otherwise none.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, _p: u32 }

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

fn dot_chunk(wv: array<vec4<f32>, 8>, xv: array<vec4<f32>, 8>) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        s += dot(wv[i], xv[i]);
    }
    return s;
}

#if ROWS
const ROWS: u32 = {{ROWS}}u;
var<workgroup> red: array<f32, {{RED}}>;

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
    var acc: array<f32, ROWS>;
    for (var c = li; c < p.chunks; c += WG) {
        var xv: array<vec4<f32>, 8>;
        for (var i = 0u; i < 8u; i++) {
            xv[i] = x[c * 8u + i];
        }
        let b = c / SUBS;
        let sub = c % SUBS;
        for (var r = 0u; r < ROWS; r++) {
            // Rows past the end repeat the last row; their sums are dropped.
            let row = min(r0 + r, p.n - 1u);
            acc[r] += dot_chunk(load_chunk(row * p.nbr + b, sub), xv);
        }
    }
#if SUBGROUPS
    let sg = li / ss;
    for (var r = 0u; r < ROWS; r++) {
        let t = subgroupAdd(acc[r]);
        if (sl == 0u) {
            red[r * WG + sg] = t;
        }
    }
    workgroupBarrier();
    let nsg = (WG + ss - 1u) / ss;
    if (li < ROWS && r0 + li < p.n) {
        var t = 0.0;
        for (var i = 0u; i < nsg; i++) {
            t += red[li * WG + i];
        }
        store(r0 + li, t);
    }
#else
    for (var r = 0u; r < ROWS; r++) {
        red[r * WG + li] = acc[r];
    }
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            for (var r = 0u; r < ROWS; r++) {
                red[r * WG + li] += red[r * WG + li + off];
            }
        }
        workgroupBarrier();
    }
    if (li < ROWS && r0 + li < p.n) {
        store(r0 + li, red[li * WG]);
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
        let wv = load_chunk(row * p.nbr + c / SUBS, c % SUBS);
        for (var m = 0u; m < BM; m++) {
            var s = 0.0;
            for (var i = 0u; i < 8u; i++) {
                s += dot(wv[i], xs[m * 8u + i]);
            }
            acc[m] += s;
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
