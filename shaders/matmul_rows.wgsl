// matmul_rows.wgsl — y (+)= x · Wᵀ on CPU devices (lavapipe, SwiftShader, WARP), for every weight
// format: the CPU-style kernel of the matmul family. There a workgroup runs on one core as SIMD
// lanes: a barrier is a context switch, and (lavapipe) a storage load is a loop over the lanes
// with a branch each while a uniform load or a texel fetch is one vector gather. So thread i
// computes output row n = wg·WG + i alone (no reduction, no workgroup memory, no barrier), x
// comes from uniform arrays, the weights in vec4 loads.
//
// One scaffold (`matmul_rows`: the window of x rows, eight accumulators, the stores) for every
// format; each format brings `steps()` (weight loads per row), its weight fetch, and `accumulate`
// (one load times each x row of the window, in the format's own order of f32 operations). In a
// prefill (MR8) every weight load serves the window's eight rows of x. lavapipe makes a uniform
// load whose index varies in a loop a gather per component, all lanes reading the same address:
// with SGX each lane loads a different vec4 of a 32-value block of every row (`xs_at`) and takes
// the others' by subgroupBroadcast (`accumulate32`, the same f32 operations in the same order);
// a float row's last partial block goes through `accumulate`.
//
// Bindings: 0 params {m (rows of this window), n, k, nbr (blocks per W row), scales_word, gx,
//           chunks (k / 32), m0 (first row of y)} — nbr, scales_word, chunks for QUANT only;
//           1 step (unused); 2 x: uniform vec4<f32>[XU], the window's first RPB rows of x (k/4
//           each); 3 w: W_F32 → vec4<f32>[N·K/4]; W_F16 / W_BF16 → vec4<u32>[N·K/8] (8 values
//           each, element 2i in the low half); QUANT → u32[] (the GPU layout of
//           src/quant/mod.rs) — with TEX the same words as the weight's texel image
//           (texture_2d<u32>, src/gpu/texels.rs, 4 words a texel); 4 y: f32[M·N] (read_write;
//           y += with ADD_INTO); 5 .. 3 + XG: xg1 .. xg7, the window's next groups of RPB rows
//           (rows too long for 8 in one 64 KiB uniform: K > 2048 → 2, 4 or 8 groups); QUANT
//           without TEX also W4B = 4 + XG: w4: vec4<u32>[] (binding 3's buffer again, as vec4
//           words).
// Defines:  WG (threads), XU (Caps::uniform_window / 16, the same for every CPU-style kernel:
//           lavapipe leaks when consecutive dispatches declare the uniform at one binding with
//           different sizes), MR8 (windows of up to 8 rows of x — rows past the window's end
//           re-read a row of their group and are not stored; unset: one row), RPB (rows of x per
//           uniform binding), XG2 / XG4 / XG8 (at least 2, 4, 8 groups: bindings xg1, xg2..3,
//           xg4..7), X1 .. X7 (the binding of row r: x or xg{r / RPB}), W4B, one of W_F32 /
//           W_F16 / W_BF16, or QUANT with one of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (quant_blocks.wgsl),
//           SUBS (32-value chunks per block: 1 or 8), NIB32 (Q4_0/Q4_1), QH (Q5_K/Q6_K);
//           WR4 / WR8 (MR8 only: the window holds more than 2 / more than 4 rows, so rows 2..3 /
//           4..7 are computed; a smaller window leaves their multiply-adds out — a batched decode
//           step of 2 or 4 rows costs what its rows need, not what 8 do);
//           ADD_INTO; TEX; SGX (MR8 only: x shared through subgroups of at least 8 lanes, a
//           power of two, within WG).
// Dispatch: per window of ≤ 8 rows (the host binds each group of the window at its offset; a
//           group past the window's end at the window's start), ceil(n / WG) workgroups over
//           (gx, gy). Needs K % 4 == 0 (f32), K % 8 == 0 (16-bit) or whole blocks.
// Features: subgroups with SGX.
#include "common.wgsl"

struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<uniform> x: array<vec4<f32>, {{XU}}>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = {{WG}}u;

#if XG2
@group(0) @binding(5) var<uniform> xg1: array<vec4<f32>, {{XU}}>;
#endif
#if XG4
@group(0) @binding(6) var<uniform> xg2: array<vec4<f32>, {{XU}}>;
@group(0) @binding(7) var<uniform> xg3: array<vec4<f32>, {{XU}}>;
#endif
#if XG8
@group(0) @binding(8) var<uniform> xg4: array<vec4<f32>, {{XU}}>;
@group(0) @binding(9) var<uniform> xg5: array<vec4<f32>, {{XU}}>;
@group(0) @binding(10) var<uniform> xg6: array<vec4<f32>, {{XU}}>;
@group(0) @binding(11) var<uniform> xg7: array<vec4<f32>, {{XU}}>;
#endif

const RPB: u32 = {{RPB}}u;

// The x rows of this window: row r starts at vec4 `o{r}` of its group's binding (define X{r};
// row 0 at 0 of x). Rows past the window's end (r > last) read row min(r, last) mod RPB of
// their group, in bounds of the uniform array; their sums are not stored.
struct Window { o1: u32, o2: u32, o3: u32, o4: u32, o5: u32, o6: u32, o7: u32, last: u32, lane: u32 }

// `lane`: this invocation's lane in its subgroup, mod 8 (SGX; else 0).
fn window(lane: u32) -> Window {
    let k4 = p.k / 4u;
    let last = p.m - 1u;
    return Window(
        (min(1u, last) % RPB) * k4,
        (min(2u, last) % RPB) * k4,
        (min(3u, last) % RPB) * k4,
        (min(4u, last) % RPB) * k4,
        (min(5u, last) % RPB) * k4,
        (min(6u, last) % RPB) * k4,
        (min(7u, last) % RPB) * k4,
        last,
        lane & 7u,
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
@group(0) @binding({{W4B}}) var<storage, read> w4: array<vec4<u32>>;
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

// Loads (steps) per 32-value block: the block is a chunk.
const PER_BLOCK: u32 = 1u;

#if SGX
// Chunk b times every row's x (Xs: see xs_at).
fn accumulate32(a: ptr<function, Acc>, row: u32, b: u32, s: Xs) {
    let ch = chunk_at(row * p.nbr + b / SUBS, b % SUBS);
    let r = chunk_words(ch);
    mac(a, words_vec4(ch, r, 0u), xs0(s));
    mac(a, words_vec4(ch, r, 1u), xs1(s));
    mac(a, words_vec4(ch, r, 2u), xs2(s));
    mac(a, words_vec4(ch, r, 3u), xs3(s));
    mac(a, words_vec4(ch, r, 4u), xs4(s));
    mac(a, words_vec4(ch, r, 5u), xs5(s));
    mac(a, words_vec4(ch, r, 6u), xs6(s));
    mac(a, words_vec4(ch, r, 7u), xs7(s));
}

// w times the 8 rows' values of the same 4 positions.
fn mac(a: ptr<function, Acc>, w: vec4<f32>, v: Xs) {
    (*a).a0 += dot(w, v.x0);
    (*a).a1 += dot(w, v.x1);
#if WR4
    (*a).a2 += dot(w, v.x2);
    (*a).a3 += dot(w, v.x3);
#endif
#if WR8
    (*a).a4 += dot(w, v.x4);
    (*a).a5 += dot(w, v.x5);
    (*a).a6 += dot(w, v.x6);
    (*a).a7 += dot(w, v.x7);
#endif
}
#endif

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let ch = chunk_at(row * p.nbr + c / SUBS, c % SUBS);
    let r = chunk_words(ch);
    for (var i = 0u; i < 8u; i++) {
        let wv = words_vec4(ch, r, i);
        let xb = c * 8u + i;
        (*a).a0 += dot(wv, x[xb]);
        (*a).a1 += dot(wv, {{X1}}[o.o1 + xb]);
#if WR4
        (*a).a2 += dot(wv, {{X2}}[o.o2 + xb]);
        (*a).a3 += dot(wv, {{X3}}[o.o3 + xb]);
#endif
#if WR8
        (*a).a4 += dot(wv, {{X4}}[o.o4 + xb]);
        (*a).a5 += dot(wv, {{X5}}[o.o5 + xb]);
        (*a).a6 += dot(wv, {{X6}}[o.o6 + xb]);
        (*a).a7 += dot(wv, {{X7}}[o.o7 + xb]);
#endif
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
const PER_BLOCK: u32 = 8u;

#if SGX
// Values 32b .. 32b + 32 of W row `row` times every row's x (Xs: see xs_at).
fn accumulate32(a: ptr<function, Acc>, row: u32, b: u32, s: Xs) {
    let base = row * (p.k / 4u) + b * 8u;
    mac(a, wv4(base + 0u), xs0(s));
    mac(a, wv4(base + 1u), xs1(s));
    mac(a, wv4(base + 2u), xs2(s));
    mac(a, wv4(base + 3u), xs3(s));
    mac(a, wv4(base + 4u), xs4(s));
    mac(a, wv4(base + 5u), xs5(s));
    mac(a, wv4(base + 6u), xs6(s));
    mac(a, wv4(base + 7u), xs7(s));
}

fn mac(a: ptr<function, Acc>, w: vec4<f32>, v: Xs) {
    (*a).a0 += w * v.x0;
    (*a).a1 += w * v.x1;
#if WR4
    (*a).a2 += w * v.x2;
    (*a).a3 += w * v.x3;
#endif
#if WR8
    (*a).a4 += w * v.x4;
    (*a).a5 += w * v.x5;
    (*a).a6 += w * v.x6;
    (*a).a7 += w * v.x7;
#endif
}
#endif

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let wv = wv4(row * (p.k / 4u) + c);
    (*a).a0 += wv * x[c];
#if MR8
    (*a).a1 += wv * {{X1}}[o.o1 + c];
#if WR4
    (*a).a2 += wv * {{X2}}[o.o2 + c];
    (*a).a3 += wv * {{X3}}[o.o3 + c];
#endif
#if WR8
    (*a).a4 += wv * {{X4}}[o.o4 + c];
    (*a).a5 += wv * {{X5}}[o.o5 + c];
    (*a).a6 += wv * {{X6}}[o.o6 + c];
    (*a).a7 += wv * {{X7}}[o.o7 + c];
#endif
#endif
}
#else
// A load is 8 values, widened to two vec4.
fn steps() -> u32 { return p.k / 8u; }
const PER_BLOCK: u32 = 4u;

#if SGX
// Values 32b .. 32b + 32 of W row `row` times every row's x (Xs: see xs_at).
fn accumulate32(a: ptr<function, Acc>, row: u32, b: u32, s: Xs) {
    let base = row * (p.k / 8u) + b * 4u;
    mac2(a, wv4(base + 0u), xs0(s), xs1(s));
    mac2(a, wv4(base + 1u), xs2(s), xs3(s));
    mac2(a, wv4(base + 2u), xs4(s), xs5(s));
    mac2(a, wv4(base + 3u), xs6(s), xs7(s));
}

// The 8 values of q times the 8 rows' values of the same positions (v0: the first 4).
fn mac2(a: ptr<function, Acc>, q: vec4<u32>, v0: Xs, v1: Xs) {
    let w0 = vec4<f32>(widen(q.x), widen(q.y));
    let w1 = vec4<f32>(widen(q.z), widen(q.w));
    (*a).a0 += w0 * v0.x0 + w1 * v1.x0;
    (*a).a1 += w0 * v0.x1 + w1 * v1.x1;
#if WR4
    (*a).a2 += w0 * v0.x2 + w1 * v1.x2;
    (*a).a3 += w0 * v0.x3 + w1 * v1.x3;
#endif
#if WR8
    (*a).a4 += w0 * v0.x4 + w1 * v1.x4;
    (*a).a5 += w0 * v0.x5 + w1 * v1.x5;
    (*a).a6 += w0 * v0.x6 + w1 * v1.x6;
    (*a).a7 += w0 * v0.x7 + w1 * v1.x7;
#endif
}
#endif

fn accumulate(a: ptr<function, Acc>, row: u32, c: u32, o: Window) {
    let q = wv4(row * (p.k / 8u) + c);
    let w0 = vec4<f32>(widen(q.x), widen(q.y));
    let w1 = vec4<f32>(widen(q.z), widen(q.w));
    let c0 = 2u * c;
    (*a).a0 += w0 * x[c0] + w1 * x[c0 + 1u];
#if MR8
    (*a).a1 += w0 * {{X1}}[o.o1 + c0] + w1 * {{X1}}[o.o1 + c0 + 1u];
#if WR4
    (*a).a2 += w0 * {{X2}}[o.o2 + c0] + w1 * {{X2}}[o.o2 + c0 + 1u];
    (*a).a3 += w0 * {{X3}}[o.o3 + c0] + w1 * {{X3}}[o.o3 + c0 + 1u];
#endif
#if WR8
    (*a).a4 += w0 * {{X4}}[o.o4 + c0] + w1 * {{X4}}[o.o4 + c0 + 1u];
    (*a).a5 += w0 * {{X5}}[o.o5 + c0] + w1 * {{X5}}[o.o5 + c0 + 1u];
    (*a).a6 += w0 * {{X6}}[o.o6 + c0] + w1 * {{X6}}[o.o6 + c0 + 1u];
    (*a).a7 += w0 * {{X7}}[o.o7 + c0] + w1 * {{X7}}[o.o7 + c0 + 1u];
#endif
#endif
}
#endif
#endif

#if SGX
// The 8 rows' x for 32-value block b: each lane holds vec4 `lane` of the block of every row (one
// uniform load, which lavapipe makes a gather, serves the 8 lanes of a subgroup); xs{i} gives
// every lane lane i's vectors — values 4i .. 4i + 4 of the block — by subgroupBroadcast (a
// register shuffle there; its lane must be a constant).
struct Xs { x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32> }

fn xs_at(b: u32, o: Window) -> Xs {
    let xb = b * 8u + o.lane;
    return Xs(x[xb], {{X1}}[o.o1 + xb], {{X2}}[o.o2 + xb], {{X3}}[o.o3 + xb], {{X4}}[o.o4 + xb], {{X5}}[o.o5 + xb], {{X6}}[o.o6 + xb], {{X7}}[o.o7 + xb]);
}

fn xs0(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 0u), subgroupBroadcast(s.x1, 0u), subgroupBroadcast(s.x2, 0u), subgroupBroadcast(s.x3, 0u), subgroupBroadcast(s.x4, 0u), subgroupBroadcast(s.x5, 0u), subgroupBroadcast(s.x6, 0u), subgroupBroadcast(s.x7, 0u));
}
fn xs1(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 1u), subgroupBroadcast(s.x1, 1u), subgroupBroadcast(s.x2, 1u), subgroupBroadcast(s.x3, 1u), subgroupBroadcast(s.x4, 1u), subgroupBroadcast(s.x5, 1u), subgroupBroadcast(s.x6, 1u), subgroupBroadcast(s.x7, 1u));
}
fn xs2(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 2u), subgroupBroadcast(s.x1, 2u), subgroupBroadcast(s.x2, 2u), subgroupBroadcast(s.x3, 2u), subgroupBroadcast(s.x4, 2u), subgroupBroadcast(s.x5, 2u), subgroupBroadcast(s.x6, 2u), subgroupBroadcast(s.x7, 2u));
}
fn xs3(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 3u), subgroupBroadcast(s.x1, 3u), subgroupBroadcast(s.x2, 3u), subgroupBroadcast(s.x3, 3u), subgroupBroadcast(s.x4, 3u), subgroupBroadcast(s.x5, 3u), subgroupBroadcast(s.x6, 3u), subgroupBroadcast(s.x7, 3u));
}
fn xs4(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 4u), subgroupBroadcast(s.x1, 4u), subgroupBroadcast(s.x2, 4u), subgroupBroadcast(s.x3, 4u), subgroupBroadcast(s.x4, 4u), subgroupBroadcast(s.x5, 4u), subgroupBroadcast(s.x6, 4u), subgroupBroadcast(s.x7, 4u));
}
fn xs5(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 5u), subgroupBroadcast(s.x1, 5u), subgroupBroadcast(s.x2, 5u), subgroupBroadcast(s.x3, 5u), subgroupBroadcast(s.x4, 5u), subgroupBroadcast(s.x5, 5u), subgroupBroadcast(s.x6, 5u), subgroupBroadcast(s.x7, 5u));
}
fn xs6(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 6u), subgroupBroadcast(s.x1, 6u), subgroupBroadcast(s.x2, 6u), subgroupBroadcast(s.x3, 6u), subgroupBroadcast(s.x4, 6u), subgroupBroadcast(s.x5, 6u), subgroupBroadcast(s.x6, 6u), subgroupBroadcast(s.x7, 6u));
}
fn xs7(s: Xs) -> Xs {
    return Xs(subgroupBroadcast(s.x0, 7u), subgroupBroadcast(s.x1, 7u), subgroupBroadcast(s.x2, 7u), subgroupBroadcast(s.x3, 7u), subgroupBroadcast(s.x4, 7u), subgroupBroadcast(s.x5, 7u), subgroupBroadcast(s.x6, 7u), subgroupBroadcast(s.x7, 7u));
}
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
fn matmul_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
#if SGX
    @builtin(subgroup_invocation_id) lane: u32,
#endif
) {
    let n = wg_linear(wg, p.gx) * WG + li;
    // Rows past the end redo the last row instead of returning early: control flow stays
    // uniform, so the driver can load x once per SIMD vector instead of once per lane.
    let row = min(n, p.n - 1u);
    var a: Acc;
#if SGX
    let o = window(lane);
    // Whole 32-value blocks with x shared through the subgroup, then the rest of a float row.
    let blocks = p.k / 32u;
    for (var b = 0u; b < blocks; b++) {
        accumulate32(&a, row, b, xs_at(b, o));
    }
    for (var c = blocks * PER_BLOCK; c < steps(); c++) {
        accumulate(&a, row, c, o);
    }
#else
    let o = window(0u);
    for (var c = 0u; c < steps(); c++) {
        accumulate(&a, row, c, o);
    }
#endif
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
