// matmul_quant.wgsl — y[m, n] (+)= Σ_k x[m, k] · W[n, k] with W block-quantized, dequantized in
// the kernel (f32 accumulation): the GPU-style kernels of the matmul family for block formats
// (CPU devices take matmul_rows.wgsl). W stays in its GPU layout (src/quant/gpu_layout.rs: all
// blocks' quants, 16-byte aligned, then the scales), the file size.
//
// Bindings: 0 params {m, n, k, nbr (blocks per W row), scales_word, gx, chunks, m0};
//           1 step (unused); 2 x: vec4<f32>[m*k/4]; 3 w: u32[] (quantized; with W4 the same
//           words as vec4<u32>[], used when the tensor is a whole number of 16 bytes);
//           4 y: f32[m*n].
// Defines:  one dtype of Q8_0 Q4_0 Q4_1 Q4K Q5K Q6K (see quant_blocks.wgsl); SUBS (32-value
//           chunks per block: 1 or 8); WG (threads); ADD (y += instead of y =); W4;
//           gemv: R (W rows per workgroup), RED (WG * R), SUBGROUPS (subgroup reduction; WG a
//           multiple of the subgroup size), NORM (RMSNorm of x fused in: params gain
//           {eps, _, _, _}, binding 5 g: vec4<f32>[K/4] the norm weight;
//           y = (W · (g ∘ x)) / sqrt(mean(x²) + eps); WG a power of two), X_SWIGLU (x is
//           gate|up f32 [1, 2K] and the product reads silu(gate)·up: the MLP's SwiGLU fused
//           into the down projection), INT_DOT (the integer path: x quantized to int8 per 32
//           values in each thread's registers, dot4I8Packed products; KQ for the K-quants);
//           matmul: BM (x rows per workgroup).
// Entries:
//   gemv   (m == 1), streaming: a workgroup computes R outputs, its WG threads all along K.
//          K is cut in units — a block of the 32-value formats, 64 values of the K-quants (a
//          pair of Q4_K/Q5_K sub-blocks sharing 32 quant bytes, a quarter-pair of Q6_K) —
//          and thread t takes units t, t + WG, …: per unit it loads the R rows' quants as
//          vec4<u32> (adjacent threads read adjacent 16-byte runs of a row) and their scales
//          (a word or a 16-byte record), then walks the unit's words reading each x vec4 once
//          for the R rows (x is read once per workgroup, straight into registers); the scales
//          are applied once per unit (a·Σq·x + b·Σx). p.chunks = units per row. Reduction:
//          subgroupAdd per row + one partial per subgroup in workgroup memory (SUBGROUPS), else
//          a tree over the WG slots of each row.
//          Dispatch: ceil(n / R) workgroups over (gx, gy).
//   matmul (m ≥ 2): a workgroup computes a BM × WG tile of y: thread i owns W row n0 + i and
//          BM accumulators; per 32-value chunk of k (p.chunks = k / 32) the workgroup stages the
//          BM x rows in workgroup memory, each thread dequantizes its W chunk once and uses it
//          BM times. Dispatch: (ceil(n / WG), ceil(m / BM), 1).
// Features: SUBGROUPS needs wgpu::Features::SUBGROUP; INT_DOT uses WGSL's
//           packed_4x8_integer_dot_product (naga emits OpSDot where the device has
//           VK_KHR_shader_integer_dot_product, a bit-extract polyfill elsewhere); otherwise none.
#include "common.wgsl"

#if NORM
struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32, eps: f32, _a: u32, _b: u32, _c: u32 }
#else
struct Params { m: u32, n: u32, k: u32, nbr: u32, scales_word: u32, gx: u32, chunks: u32, m0: u32 }
#endif

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#if W4
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
fn wq4(i: u32) -> vec4<u32> { return w[i]; }
#else
@group(0) @binding(3) var<storage, read> w: array<u32>;
fn wq4(i: u32) -> vec4<u32> { return vec4<u32>(w[4u * i], w[4u * i + 1u], w[4u * i + 2u], w[4u * i + 3u]); }
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

#if R
const R: u32 = {{R}}u;
var<workgroup> red: array<f32, {{RED}}>;
#if NORM
// The RMSNorm weight (f32 [K]): x is normalized as it is read.
@group(0) @binding(5) var<storage, read> g: array<vec4<f32>>;
fn xat(i: u32) -> vec4<f32> { return x[i] * g[i]; }
#else
#if X_SWIGLU
// x holds gate|up ([1, 2K]): the product reads silu(gate)·up, the MLP's activation fused in
// (ops::matmul::swiglu), as elementwise.wgsl's swiglu computes it.
fn xat(i: u32) -> vec4<f32> { let g = x[i]; return g / (1.0 + exp(-g)) * x[i + p.k / 4u]; }
#else
fn xat(i: u32) -> vec4<f32> { return x[i]; }
#endif
#endif

// One unit of one W row: its quant words (q0 q1: words 0..8; h0 h1: high bits), what the
// unit's word sums are multiplied by (a, per scale group) and what Σx of each group is (b),
// and the high-bit shift (Q5_K, Q6_K).
struct Unit { q0: vec4<u32>, q1: vec4<u32>, h0: vec4<u32>, h1: vec4<u32>, a: vec4<f32>, b: vec4<f32>, hs: u32 }

fn pick(v0: vec4<u32>, v1: vec4<u32>, i: u32) -> u32 {
    if (i < 4u) {
        return v0[i];
    }
    return v1[i - 4u];
}

// Signed byte `j` of a word.
fn i8_at(v: u32, j: u32) -> f32 {
    return f32(bitcast<i32>(v << (24u - 8u * j)) >> 24u);
}

// Quant words per unit (the loop over a unit's words).
#if Q4_0
const WORDS: u32 = 4u;
#else
#if Q4_1
const WORDS: u32 = 4u;
#else
const WORDS: u32 = 8u;
#endif
#endif

// Unit u of W row `row`, scales decoded.
fn load_unit(row: u32, u: u32) -> Unit {
    var un: Unit;
#if Q8_0
    let gb = row * p.nbr + u;
    un.q0 = wq4(2u * gb);
    un.q1 = wq4(2u * gb + 1u);
    un.a = vec4<f32>(unpack2x16float(wq(p.scales_word + gb / 2u))[gb & 1u], 0.0, 0.0, 0.0);
#endif
#if Q4_0
    let gb = row * p.nbr + u;
    un.q0 = wq4(gb);
    let d = unpack2x16float(wq(p.scales_word + gb / 2u))[gb & 1u];
    un.a = vec4<f32>(d, 0.0, 0.0, 0.0);
    un.b = vec4<f32>(-8.0 * d, 0.0, 0.0, 0.0);
#endif
#if Q4_1
    let gb = row * p.nbr + u;
    un.q0 = wq4(gb);
    let dm = unpack2x16float(wq(p.scales_word + gb));
    un.a = vec4<f32>(dm.x, 0.0, 0.0, 0.0);
    un.b = vec4<f32>(dm.y, 0.0, 0.0, 0.0);
#endif
#if Q4K
    let gb = row * p.nbr + u / 4u;
    let pr = u & 3u;
    un.q0 = wq4(8u * gb + 2u * pr);
    un.q1 = wq4(8u * gb + 2u * pr + 1u);
#endif
#if Q5K
    let gb = row * p.nbr + u / 4u;
    let pr = u & 3u;
    un.h0 = wq4(10u * gb);
    un.h1 = wq4(10u * gb + 1u);
    un.q0 = wq4(10u * gb + 2u + 2u * pr);
    un.q1 = wq4(10u * gb + 3u + 2u * pr);
    un.hs = 2u * pr;
#endif
#if KREC
    // The block's 16-byte scale record: [d|dmin] and the packed 6-bit scales (scale_min_k).
    let rec = wq4(p.scales_word / 4u + gb);
    let dd = unpack2x16float(rec.x);
    let s0 = scale_min_k(rec.y, rec.z, rec.w, 2u * pr);
    let s1 = scale_min_k(rec.y, rec.z, rec.w, 2u * pr + 1u);
    un.a = vec4<f32>(dd.x * s0.x, dd.x * s1.x, 0.0, 0.0);
    un.b = vec4<f32>(-(dd.y * s0.y), -(dd.y * s1.y), 0.0, 0.0);
#endif
#if Q6K
    let gb = row * p.nbr + u / 4u;
    let h = (u >> 1u) & 1u;
    let j = u & 1u;
    un.q0 = wq4(12u * gb + 4u * h + 2u * j);
    un.q1 = wq4(12u * gb + 4u * h + 2u * j + 1u);
    un.h0 = wq4(12u * gb + 8u + 2u * h);
    un.h1 = wq4(12u * gb + 9u + 2u * h);
    un.hs = 2u * j;
    let d = unpack2x16float(wq(p.scales_word + p.scales_word / 12u + gb / 2u))[gb & 1u];
    // Scales 8h + 2j (+1) for the low nibbles, 8h + 2j + 4 (+1) for the high ones.
    let sw = wq4(p.scales_word / 4u + gb);
    let lo = select(sw.x, sw.z, h == 1u);
    let hi = select(sw.y, sw.w, h == 1u);
    un.a = d * vec4<f32>(i8_at(lo, 2u * j), i8_at(lo, 2u * j + 1u), i8_at(hi, 2u * j), i8_at(hi, 2u * j + 1u));
    un.b = -32.0 * un.a;
#endif
    return un;
}

// The x vec4 that word i's low (x_lo) and high (x_hi) values multiply, in unit u of a row.
fn x_lo(u: u32, i: u32) -> u32 {
#if Q6K
    return 64u * (u / 4u) + 32u * ((u >> 1u) & 1u) + 8u * (u & 1u) + i;
#else
#if KREC
    return 16u * u + i;
#else
    return 8u * u + i;
#endif
#endif
}

fn x_hi(u: u32, i: u32) -> u32 {
#if Q8_0
    return x_lo(u, i);
#endif
#if Q4_0
    return x_lo(u, i) + 4u;
#endif
#if Q4_1
    return x_lo(u, i) + 4u;
#endif
#if KREC
    return x_lo(u, i) + 8u;
#endif
#if Q6K
    return x_lo(u, i) + 16u;
#endif
}

// Per scale group (the components of Unit.a / .b): Σq·x of word i (word_dot) and Σx
// (x_groups; rows share it).
fn word_dot(un: Unit, i: u32, xl: vec4<f32>, xh: vec4<f32>) -> vec4<f32> {
    let q = pick(un.q0, un.q1, i);
#if Q8_0
    return vec4<f32>(dot(i8x4(q), xl), 0.0, 0.0, 0.0);
#endif
#if Q4_0
    return vec4<f32>(dot(u8x4(q, 0u, 15u), xl) + dot(u8x4(q, 4u, 15u), xh), 0.0, 0.0, 0.0);
#endif
#if Q4_1
    return vec4<f32>(dot(u8x4(q, 0u, 15u), xl) + dot(u8x4(q, 4u, 15u), xh), 0.0, 0.0, 0.0);
#endif
#if Q4K
    return vec4<f32>(dot(u8x4(q, 0u, 15u), xl), dot(u8x4(q, 4u, 15u), xh), 0.0, 0.0);
#endif
#if Q5K
    let h = pick(un.h0, un.h1, i);
    let lo = u8x4(q, 0u, 15u) + 16.0 * u8x4(h, un.hs, 1u);
    let hi = u8x4(q, 4u, 15u) + 16.0 * u8x4(h, un.hs + 1u, 1u);
    return vec4<f32>(dot(lo, xl), dot(hi, xh), 0.0, 0.0);
#endif
#if Q6K
    let h = pick(un.h0, un.h1, i);
    let lo = dot(u8x4(q, 0u, 15u) + 16.0 * u8x4(h, un.hs, 3u), xl);
    let hi = dot(u8x4(q, 4u, 15u) + 16.0 * u8x4(h, un.hs + 4u, 3u), xh);
    return select(vec4<f32>(0.0, lo, 0.0, hi), vec4<f32>(lo, 0.0, hi, 0.0), i < 4u);
#endif
}

fn x_groups(i: u32, xl: vec4<f32>, xh: vec4<f32>) -> vec4<f32> {
    let one = vec4<f32>(1.0);
#if Q8_0
    return vec4<f32>(0.0);
#endif
#if Q4_0
    return vec4<f32>(dot(xl, one) + dot(xh, one), 0.0, 0.0, 0.0);
#endif
#if Q4_1
    return vec4<f32>(dot(xl, one) + dot(xh, one), 0.0, 0.0, 0.0);
#endif
#if KREC
    return vec4<f32>(dot(xl, one), dot(xh, one), 0.0, 0.0);
#endif
#if Q6K
    let lo = dot(xl, one);
    let hi = dot(xh, one);
    return select(vec4<f32>(0.0, lo, 0.0, hi), vec4<f32>(lo, 0.0, hi, 0.0), i < 4u);
#endif
}

#if INT_DOT
// The integer path (issue 17): each thread quantizes the x chunks of its unit itself, in
// registers (no extra dispatch, no x buffer): 32 values → 8 words of 4 int8 lanes with one f32
// scale d = max|x| / 127 (q = round(x / d), ties to even), q8_1-style, and the unit's products
// are dot4I8Packed sums per scale group, scaled once by a·d (and b·d·Σq for the offsets).
struct XQ { q0: vec4<u32>, q1: vec4<u32>, d: f32 }

fn quant_x(v0: u32) -> XQ {
    var v: array<vec4<f32>, 8>;
    var amax = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        v[i] = xat(v0 + i);
        amax = max(amax, abs(v[i]));
    }
    var r: XQ;
    r.d = max(max(amax.x, amax.y), max(amax.z, amax.w)) / 127.0;
    let id = select(0.0, 1.0 / r.d, r.d > 0.0);
    var q: array<u32, 8>;
    for (var i = 0u; i < 8u; i++) {
        q[i] = pack4xI8(clamp(vec4<i32>(round(v[i] * id)), vec4<i32>(-127), vec4<i32>(127)));
    }
    r.q0 = vec4<u32>(q[0], q[1], q[2], q[3]);
    r.q1 = vec4<u32>(q[4], q[5], q[6], q[7]);
    return r;
}

const NIB: u32 = 0x0f0f0f0fu;

// Per scale group: Σq·xq of word i (xl, xh: the x words its low and high values multiply).
fn word_idot(un: Unit, i: u32, xl: u32, xh: u32) -> vec4<i32> {
    let q = pick(un.q0, un.q1, i);
#if Q8_0
    return vec4<i32>(dot4I8Packed(q, xl), 0, 0, 0);
#endif
#if Q4_0
    return vec4<i32>(dot4I8Packed(q & NIB, xl) + dot4I8Packed((q >> 4u) & NIB, xh), 0, 0, 0);
#endif
#if Q4_1
    return vec4<i32>(dot4I8Packed(q & NIB, xl) + dot4I8Packed((q >> 4u) & NIB, xh), 0, 0, 0);
#endif
#if Q4K
    return vec4<i32>(dot4I8Packed(q & NIB, xl), dot4I8Packed((q >> 4u) & NIB, xh), 0, 0);
#endif
#if Q5K
    let h = pick(un.h0, un.h1, i);
    let lo = (q & NIB) | (((h >> un.hs) & 0x01010101u) << 4u);
    let hi = ((q >> 4u) & NIB) | (((h >> (un.hs + 1u)) & 0x01010101u) << 4u);
    return vec4<i32>(dot4I8Packed(lo, xl), dot4I8Packed(hi, xh), 0, 0);
#endif
#if Q6K
    let h = pick(un.h0, un.h1, i);
    let lo = dot4I8Packed((q & NIB) | (((h >> un.hs) & 0x03030303u) << 4u), xl);
    let hi = dot4I8Packed(((q >> 4u) & NIB) | (((h >> (un.hs + 4u)) & 0x03030303u) << 4u), xh);
    return select(vec4<i32>(0, lo, 0, hi), vec4<i32>(lo, 0, hi, 0), i < 4u);
#endif
}

// Unit u's products for the R rows from `r0`, added to acc: the integer twin of the float
// loop in gemv.
fn unit_int(r0: u32, u: u32, acc: ptr<function, array<f32, R>>) {
    var un: array<Unit, R>;
    for (var r = 0u; r < R; r++) {
        un[r] = load_unit(min(r0 + r, p.n - 1u), u);
    }
    let lo = quant_x(x_lo(u, 0u));
    let ones = 0x01010101u;
#if KQ
    let hi = quant_x(x_hi(u, 0u));
#endif
    var s: array<vec4<i32>, R>;
    var xs = vec4<i32>(0);
    for (var i = 0u; i < WORDS; i++) {
        let xl = pick(lo.q0, lo.q1, i);
#if KQ
        let xh = pick(hi.q0, hi.q1, i);
#else
        // The 32-value formats: a word's high nibbles multiply x values 16 further on.
        let xh = pick(lo.q0, lo.q1, (i + 4u) & 7u);
#endif
        for (var r = 0u; r < R; r++) {
            s[r] += word_idot(un[r], i, xl, xh);
        }
        // Σxq per scale group (the offsets b; rows share it).
#if KQ
#if Q6K
        let gl = dot4I8Packed(xl, ones);
        let gh = dot4I8Packed(xh, ones);
        xs += select(vec4<i32>(0, gl, 0, gh), vec4<i32>(gl, 0, gh, 0), i < 4u);
#else
        xs += vec4<i32>(dot4I8Packed(xl, ones), dot4I8Packed(xh, ones), 0, 0);
#endif
#else
        xs.x += dot4I8Packed(xl, ones);
#endif
    }
#if Q4_0
    // Q4_0 and Q4_1 words also hold the values 16.. of the chunk: their Σxq is in words 4..8.
    xs.x += dot4I8Packed(lo.q1.x, ones) + dot4I8Packed(lo.q1.y, ones) + dot4I8Packed(lo.q1.z, ones) + dot4I8Packed(lo.q1.w, ones);
#endif
#if Q4_1
    xs.x += dot4I8Packed(lo.q1.x, ones) + dot4I8Packed(lo.q1.y, ones) + dot4I8Packed(lo.q1.z, ones) + dot4I8Packed(lo.q1.w, ones);
#endif
    // The x scale of each group: one chunk for the 32-value formats, lo|hi for the K-quants.
#if Q6K
    let dx = vec4<f32>(lo.d, lo.d, hi.d, hi.d);
#else
#if KQ
    let dx = vec4<f32>(lo.d, hi.d, 0.0, 0.0);
#else
    let dx = vec4<f32>(lo.d, 0.0, 0.0, 0.0);
#endif
#endif
    let xsf = vec4<f32>(xs);
    for (var r = 0u; r < R; r++) {
        (*acc)[r] += dot(un[r].a * dx, vec4<f32>(s[r])) + dot(un[r].b * dx, xsf);
    }
}
#endif

@compute @workgroup_size({{WG}})
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32
#if SUBGROUPS
    , @builtin(subgroup_invocation_id) sl: u32, @builtin(subgroup_size) ss: u32
#endif
) {
    let r0 = wg_linear(wg, p.gx) * R;
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
    var acc: array<f32, R>;
#if INT_DOT
    for (var u = li; u < p.chunks; u += WG) {
        unit_int(r0, u, &acc);
    }
#else
    for (var u = li; u < p.chunks; u += WG) {
        // All R rows' loads first (R independent 16-byte loads in flight per thread); rows past
        // the end redo the last row and their sums are dropped.
        var un: array<Unit, R>;
        for (var r = 0u; r < R; r++) {
            un[r] = load_unit(min(r0 + r, p.n - 1u), u);
        }
        var s: array<vec4<f32>, R>;
        var xs = vec4<f32>(0.0);
        for (var i = 0u; i < WORDS; i++) {
            // Each x vec4 is read once and used for the R rows.
            let xl = xat(x_lo(u, i));
            let xh = xat(x_hi(u, i));
            xs += x_groups(i, xl, xh);
            for (var r = 0u; r < R; r++) {
                s[r] += word_dot(un[r], i, xl, xh);
            }
        }
        for (var r = 0u; r < R; r++) {
            acc[r] += dot(un[r].a, s[r]) + dot(un[r].b, xs);
        }
    }
#endif
#if SUBGROUPS
    // WG is a multiple of the subgroup size (the host checks): one partial per subgroup and row.
    let nsg = WG / ss;
    for (var r = 0u; r < R; r++) {
        let t = subgroupAdd(acc[r]);
        if (sl == 0u) {
            red[r * nsg + li / ss] = t;
        }
    }
    workgroupBarrier();
    if (li < R && r0 + li < p.n) {
        var v = 0.0;
        for (var i = 0u; i < nsg; i++) {
            v += red[li * nsg + i];
        }
        store(r0 + li, v * inv);
    }
#else
    for (var r = 0u; r < R; r++) {
        red[r * WG + li] = acc[r];
    }
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off >>= 1u) {
        if (li < off) {
            for (var r = 0u; r < R; r++) {
                red[r * WG + li] += red[r * WG + li + off];
            }
        }
        workgroupBarrier();
    }
    if (li < R && r0 + li < p.n) {
        store(r0 + li, red[li * WG] * inv);
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
