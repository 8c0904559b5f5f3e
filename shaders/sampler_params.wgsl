// sampler_params.wgsl — `struct SamplerParams`, the sampler's settings as the kernels read them
// (u32 [16]; the layout is documented once, on ops::sample::SamplerParams). Included by the
// kernels that read them (sample.wgsl, topk.wgsl); not a kernel family of its own.

// Mirrors ops::sample::SamplerParams.
struct SamplerParams {
    temperature: f32, top_k: u32, top_p: f32, min_p: f32,
    seed_lo: u32, seed_hi: u32, repeat_penalty: f32, presence: f32,
    frequency: f32, window: u32, inv_temperature: f32, _r0: u32,
    _r1: u32, _r2: u32, _r3: u32, _r4: u32,
}
