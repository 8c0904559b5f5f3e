//! Kernel benchmarks on the default adapter (`FADO_ADAPTER` picks another).
//!
//! - GEMV 4096×4096 (decode), f32 / f16 / bf16 weights: throughput in bytes of weights read per
//!   second (`Throughput::Bytes`, criterion prints GiB/s).
//! - Matmul 512×512×512 (prefill), f32 / f16 weights: throughput as `Throughput::Elements` of
//!   floating-point operations, 2·M·N·K per product, so criterion's "elem/s" are FLOP/s.
//!
//! Each iteration submits one graph holding `reps()` copies of the op and waits for the GPU at the
//! end, so the launch latency of a submission is spread over those dispatches. `FADO_DISABLE=
//! subgroups` measures the workgroup-reduction GEMV.
//!
//! Run: `cargo bench --bench kernels` (add `-- gemv` or `-- matmul` to pick).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use fado::gpu::{GpuContext, GpuOptions};
use fado::graph::{Executable, Graph};
use fado::ops::matmul::{self, Matmul};
use fado::ops::Step;
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

/// Dispatches per submission: `FADO_BENCH_REPS`, default 4 (enough on lavapipe, where one
/// dispatch takes milliseconds; a real GPU wants 50 or more).
fn reps() -> usize {
    std::env::var("FADO_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(4)
}

fn weight_bytes(w: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(w).to_vec(),
        DType::F16 => matmul::to_f16_bytes(w),
        _ => matmul::to_bf16_bytes(w),
    }
}

/// A graph of `reps()` independent `x · Wᵀ` products sharing x and W.
fn build(ctx: &Arc<GpuContext>, m: usize, n: usize, k: usize, dtype: DType) -> Executable {
    let mut rng = Rng::new(7);
    let x = ctx
        .upload_f32("x", &[m, k], &rng.vec(m * k, 1.0))
        .expect("upload x");
    let w = ctx
        .upload(
            "w",
            TensorDesc::new(dtype, [n, k]),
            &weight_bytes(&rng.vec(n * k, 1.0), dtype),
        )
        .expect("upload w");
    let mut g = Graph::new();
    let xi = g.external("x", &x);
    let wi = g.external("w", &w);
    for _ in 0..reps() {
        g.add1(Matmul, &[xi, wi]).expect("matmul");
    }
    let exe = g.compile(ctx, &[]).expect("compile");
    // Warm up: pipelines compiled, buffers resident.
    exe.run(Step::default()).expect("run");
    ctx.sync().expect("sync");
    exe
}

fn context() -> Arc<GpuContext> {
    let ctx = GpuContext::new(&GpuOptions::from_env()).expect("GPU adapter");
    eprintln!("adapter: {}", ctx.adapter_name());
    ctx
}

/// Ten samples of equal iteration counts (flat sampling: a slow device still finishes in a few
/// iterations), a short measurement.
fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
}

fn gemv(c: &mut Criterion) {
    let ctx = context();
    let (n, k) = (4096, 4096);
    let mut group = c.benchmark_group("gemv_4096x4096");
    configure(&mut group);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let exe = build(&ctx, 1, n, k, dtype);
        let bytes = TensorDesc::new(dtype, [n, k]).size_bytes() * reps() as u64;
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(dtype.name(), |b| {
            b.iter(|| {
                exe.run(Step::default()).expect("run");
                ctx.sync().expect("sync");
            })
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let ctx = context();
    let (m, n, k) = (512, 512, 512);
    let mut group = c.benchmark_group("matmul_512x512x512");
    configure(&mut group);
    for dtype in [DType::F32, DType::F16] {
        let exe = build(&ctx, m, n, k, dtype);
        // FLOPs: one multiply and one add per (m, n, k).
        group.throughput(Throughput::Elements((2 * m * n * k * reps()) as u64));
        group.bench_function(dtype.name(), |b| {
            b.iter(|| {
                exe.run(Step::default()).expect("run");
                ctx.sync().expect("sync");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gemv, matmul);
criterion_main!(benches);
