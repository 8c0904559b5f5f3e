// matmul_rows.wgsl — y (+)= x · Wᵀ on CPU devices (lavapipe, SwiftShader, WARP), for every weight
// format: the CPU-style kernel of the matmul family. There a workgroup runs on one core as SIMD
// lanes: a barrier is a context switch, and (lavapipe) a storage load is a loop over the lanes
// with a branch each while a uniform load or a texel fetch is one vector gather. So thread i
// computes output row n = wg·WG + i alone (no reduction, no workgroup memory, no barrier), x
// comes from a uniform array, the weights in vec4 loads.
//
// One scaffold (`matmul_rows`: the window of x rows, eight accumulators, the stores) for every
// format; each format brings `steps()` (weight loads per row), its weight fetch, and `accumulate`
// (one load times each x row of the window, in the format's own order of f32 operations).
//
// Bindings: 0 params {m (rows of this window), n, k, nbr (blocks per W row), scales_word, gx,
//           chunks (k / 32), m0 (first row of y)} — nbr, scales_word, chunks for QUANT only;
//           1 step (unused); 2 x: uniform vec4<f32>[XU], the window's m rows of x (k/4 each) first;
//           3 w: W_F32 → vec4<f32>[N·K/4]; W_F16 / W_BF16 → vec4<u32>[N·K/8] (8 values each,
//           element 2i in the low half); QUANT → u32[] (the GPU layout of src/quant/mod.rs) —
//           with TEX the same words as the weight's texel image (texture_2d<u32>,
//           src/gpu/texels.rs, 4 words a texel); 4 y: f32[M·N] (read_write; y += with ADD_INTO);
//           QUANT without TEX also 5 w4: vec4<u32>[] (binding 3's buffer again, as vec4 words).
// Defines:  WG (threads), XU (Caps::uniform_window / 16, the same for every CPU-style kernel:
//           lavapipe leaks when consecutive dispatches declare the uniform at one binding with
//           different sizes), MR8 (windows of up to 8 rows of x — rows past the window's end
//           re-read its last row and are not stored; unset: one row), one of W_F32 / W_F16 /
//           W_BF16, or QUANT with one of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (quant_blocks.wgsl), SUBS
//           (32-value chunks per block: 1 or 8), NIB32 (Q4_0/Q4_1), QH (Q5_K/Q6_K); ADD_INTO; TEX.
// Dispatch: per window of ≤ 8 rows (the host binds each window of x at its offset),
//           ceil(n / WG) workgroups over (gx, gy). Needs K % 4 == 0 (f32), K % 8 == 0 (16-bit)
//           or whole blocks.
// Features: none.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, {{XU}}>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = {{WG}}u;

// The x rows of this window: row r starts at vec4 `o{r}` of x (row 0 at 0). Rows past the
// window's end (r > last) read its last row, in bounds of the uniform array; their sums are not
// stored.
struct Window { o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32, last: u32 }

fn window() -> Window {
    let k4 = p.k / 4u;
    let last = p.m - 1u;
    return Window(
        min(1u, last) * k4,
        min(2u, last) * k4,
        min(3u, last) * k4,
        min(4u, last) * k4,
        min(5u, last) * k4,
        min(6u, last) * k4,
        min(7u, last) * k4,
        last,
    );
}

#if QUANT
#if TEX
@group(0) @binding(3) var wt: texture_2d<u32>;
// Four words of the weight from its texel image.
fn w4at(i: u32) -> vec4<u32> { return texel(wt, i); }
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
// The weight again, as vec4 words (the same buffer as binding 3).
@group(0) @binding(5) var<storage, read> w4: array<vec4<u32>>;
fn w4at(i: u32) -> vec4<u32> { return w4[i]; }
#endif

#include "quant_blocks.wgsl"

const SUBS: u32 = {{SUBS}}u;

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

// A load is one 32-value chunk.
fn steps() -> u32 { return p.chunks; }

#if MR8
// Values 4i .. 4i+4 of the chunk from its loaded words.
fn words_vec4(ch: Chunk, r: Words, i: u32) -> vec4<f32> {
    if (i < 4u) {
        return decode4(ch, i, r.q0[i], r.h0[i]);
    }
    return decode4(ch, i, r.q1[i - 4u], r.h1[i - 4u]);
}

// Each dequantized vec4 is used for the 8 rows before the next is decoded.
alias Sum = f32;
fn total(s: Sum) -> f32 { return s; }

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
    let r = chunk_words(ch);
    for (var i = 0u; i < 8u; i++) {
        let wv = words_vec4(ch, r, i);
        let xb = c * 8u + i;
        (*a).a0 += dot(wv, x[xb]);
        (*a).a1 += dot(wv, x[o.o1 + xb]);
        (*a).a2 += dot(wv, x[o.o2 + xb]);
        (*a).a3 += dot(wv, x[o.o3 + xb]);
        (*a).a4 += dot(wv, x[o.o4 + xb]);
        (*a).a5 += dot(wv, x[o.o5 + xb]);
        (*a).a6 += dot(wv, x[o.o6 + xb]);
        (*a).a7 += dot(wv, x[o.o7 + xb]);
    }
}
#else
alias Sum = vec4<f32>;
fn total(s: Sum) -> f32 { return s.x + s.y + s.z + s.w; }

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
    let xb = c * 8u;
    let r = chunk_words(ch);
    (*a).a0 += decode4(ch, 0u, r.q0.x, r.h0.x) * x[xb];
    (*a).a0 += decode4(ch, 1u, r.q0.y, r.h0.y) * x[xb + 1u];
    (*a).a0 += decode4(ch, 2u, r.q0.z, r.h0.z) * x[xb + 2u];
    (*a).a0 += decode4(ch, 3u, r.q0.w, r.h0.w) * x[xb + 3u];
    (*a).a0 += decode4(ch, 4u, r.q1.x, r.h1.x) * x[xb + 4u];
    (*a).a0 += decode4(ch, 5u, r.q1.y, r.h1.y) * x[xb + 5u];
    (*a).a0 += decode4(ch, 6u, r.q1.z, r.h1.z) * x[xb + 6u];
    (*a).a0 += decode4(ch, 7u, r.q1.w, r.h1.w) * x[xb + 7u];
}
#endif
#else
#if TEX
// The weight's texel image (src/gpu/texels.rs): vec4 i of the layout above is texel i.
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

alias Sum = vec4<f32>;
fn total(s: Sum) -> f32 { return s.x + s.y + s.z + s.w; }

#if W_F32
// A load is 4 values.
fn steps() -> u32 { return p.k / 4u; }

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let wv = wv4(row * (p.k / 4u) + c);
    (*a).a0 += wv * x[c];
#if MR8
    (*a).a1 += wv * x[o.o1 + c];
    (*a).a2 += wv * x[o.o2 + c];
    (*a).a3 += wv * x[o.o3 + c];
    (*a).a4 += wv * x[o.o4 + c];
    (*a).a5 += wv * x[o.o5 + c];
    (*a).a6 += wv * x[o.o6 + c];
    (*a).a7 += wv * x[o.o7 + c];
#endif
}
#else
// A load is 8 values, widened to two vec4.
fn steps() -> u32 { return p.k / 8u; }

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let q = wv4(row * (p.k / 8u) + c);
    let w0 = vec4<f32>(widen(q.x), widen(q.y));
    let w1 = vec4<f32>(widen(q.z), widen(q.w));
    let c0 = 2u * c;
    (*a).a0 += w0 * x[c0] + w1 * x[c0 + 1u];
#if MR8
    (*a).a1 += w0 * x[o.o1 + c0] + w1 * x[o.o1 + c0 + 1u];
    (*a).a2 += w0 * x[o.o2 + c0] + w1 * x[o.o2 + c0 + 1u];
    (*a).a3 += w0 * x[o.o3 + c0] + w1 * x[o.o3 + c0 + 1u];
    (*a).a4 += w0 * x[o.o4 + c0] + w1 * x[o.o4 + c0 + 1u];
    (*a).a5 += w0 * x[o.o5 + c0] + w1 * x[o.o5 + c0 + 1u];
    (*a).a6 += w0 * x[o.o6 + c0] + w1 * x[o.o6 + c0 + 1u];
    (*a).a7 += w0 * x[o.o7 + c0] + w1 * x[o.o7 + c0 + 1u];
#endif
}
#endif
#endif

// Eight named accumulators, one per x row of the window: a private array would live in memory
// on these devices.
struct Acc { a0: Sum, a1: Sum, a2: Sum, a3: Sum, a4: Sum, a5: Sum, a6: Sum, a7: Sum }

fn store(i: u32, v: f32) {
#if ADD_INTO
    y[i] += v;
#else
    y[i] = v;
#endif
}

@compute @workgroup_size({{WG}})
fn matmul_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wg_linear(wg, p.gx) * WG + li;
    // Rows past the end redo the last row instead of returning early: control flow stays
    // uniform, so the driver can load x once per SIMD vector instead of once per lane.
    let row = min(n, p.n - 1u);
    let o = window();
    var a: Acc;
    for (var c = 0u; c < steps(); c++) {
        accumulate(&a, row, c, o);
    }
    if (n < p.n) {
        let y0 = p.m0 * p.n + n;
        store(y0, total(a.a0));
#if MR8
        if (o.last >= 1u) { store(y0 + p.n, total(a.a1)); }
        if (o.last >= 2u) { store(y0 + 2u * p.n, total(a.a2)); }
        if (o.last >= 3u) { store(y0 + 3u * p.n, total(a.a3)); }
        if (o.last >= 4u) { store(y0 + 4u * p.n, total(a.a4)); }
        if (o.last >= 5u) { store(y0 + 5u * p.n, total(a.a5)); }
        if (o.last >= 6u) { store(y0 + 6u * p.n, total(a.a6)); }
        if (o.last >= 7u) { store(y0 + 7u * p.n, total(a.a7)); }
#endif
    }
}
