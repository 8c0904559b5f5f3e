// matmul_bindings.wgsl — the bindings shared by the float GPU-style kernels of the matmul family
// (gemv.wgsl, matmul.wgsl), pasted with `#include "matmul_bindings.wgsl"` after the kernel's
// `struct Params`. Not a kernel family of its own.
//
// Bindings: 0 p: Params; 1 step (unused);
//           2 x: f32 — array<vec4<f32>> when X_VEC4, else array<f32>;
//           3 w: W_F32 → f32 (array<vec4<f32>> when V4, else array<f32>);
//                W_F16 / W_BF16 → 16-bit values packed two per u32, element 2i in the low half
//                (array<vec4<u32>> when V8, array<vec2<u32>> when V4, else array<u32>);
//           4 y: f32 (read_write).
// Defines:  X_VEC4, V4 / V8 (elements per weight load), one of W_F32 / W_F16 / W_BF16.

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
