//! Quantized GEMV (one token, M = 1) and matmul (M = 64) throughput for every block format.
//!
//! `cargo bench --bench quant` (env `FADO_BENCH_N`, `FADO_BENCH_K`: weight shape, default
//! 4096 × 4096; `FADO_BENCH_ITERS`: timed runs, default 20). GEMV is reported as GB/s of weight
//! bytes read (the bound of decode), matmul as GFLOP/s. The f16 row is the float matmul op's
//! kernels on an f16 weight of the same shape, for comparison; `FADO_BENCH_DTYPES=f16,q4_k`
//! limits the formats. Times are GPU timestamps around the
//! dispatch when the adapter has them, wall-clock run + wait otherwise.

use std::sync::Arc;
use std::time::Instant;

use fado::gpu::{GpuContext, GpuOptions};
use fado::graph::Graph;
use fado::ops::matmul::quant::QuantMatmul;
use fado::ops::matmul::{to_f16_bytes, Matmul};
use fado::ops::Step;
use fado::quant;
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_blocks(rng: &mut Rng, dtype: DType, n: usize) -> Vec<u8> {
    let bb = dtype.block_bytes();
    let f16_at: &[usize] = match dtype {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q6K => &[208],
        _ => &[0, 2],
    };
    let mut out = Vec::with_capacity(dtype.bytes_for(n));
    for _ in 0..n / dtype.block_len() {
        let mut b: Vec<u8> = (0..bb).map(|_| rng.below(256) as u8).collect();
        for &o in f16_at {
            b[o..o + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
        out.extend(b);
    }
    out
}

/// Median seconds per run of `y = x · Wᵀ`.
fn time(ctx: &Arc<GpuContext>, dtype: DType, m: usize, n: usize, k: usize, iters: usize) -> f64 {
    let mut rng = Rng::new(1);
    let bytes = if dtype == DType::F16 {
        to_f16_bytes(&rng.vec(n * k, 0.1))
    } else {
        let gguf = random_blocks(&mut rng, dtype, n * k);
        quant::gpu_layout(dtype, n, k, &gguf).expect("layout")
    };
    let w = ctx
        .upload("w", TensorDesc::new(dtype, [n, k]), &bytes)
        .expect("upload w");
    let x = ctx
        .upload_f32("x", &[m, k], &rng.vec(m * k, 1.0))
        .expect("upload x");
    let mut g = Graph::new();
    let (xi, wi) = (g.external("x", &x), g.external("w", &w));
    let y = if dtype == DType::F16 {
        g.add1(Matmul, &[xi, wi]).expect("op")
    } else {
        g.add1(QuantMatmul::default(), &[xi, wi]).expect("op")
    };
    let exe = g.compile(ctx, &[y]).expect("compile");
    for _ in 0..3 {
        exe.run(Step::default()).expect("run");
    }
    ctx.sync().expect("sync");
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            if ctx.caps.timestamps && ctx.caps.timestamps_in_passes {
                let p = exe.run_profiled(Step::default()).expect("profile");
                p.entries.iter().map(|e| e.2).sum()
            } else {
                let t0 = Instant::now();
                exe.run(Step::default()).expect("run");
                ctx.sync().expect("sync");
                t0.elapsed().as_secs_f64()
            }
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let ctx = GpuContext::new(&GpuOptions::from_env()).expect("GPU adapter");
    let (n, k) = (env("FADO_BENCH_N", 4096), env("FADO_BENCH_K", 4096));
    let iters = env("FADO_BENCH_ITERS", 20).max(1);
    println!(
        "adapter: {} (subgroups: {})",
        ctx.adapter_name(),
        ctx.caps.subgroups
    );
    println!("weight {n} x {k}, median of {iters}");
    println!(
        "{:<6} {:>10} {:>12} {:>10} {:>14}",
        "dtype", "MiB", "gemv µs", "GB/s", "matmul64 GF/s"
    );
    let only = std::env::var("FADO_BENCH_DTYPES").unwrap_or_default();
    for dtype in std::iter::once(DType::F16).chain(DType::BLOCK_FORMATS) {
        if !only.is_empty() && !only.split(',').any(|d| d == dtype.name()) {
            continue;
        }
        let bytes = TensorDesc::new(dtype, [n, k]).size_bytes() as f64;
        let t1 = time(&ctx, dtype, 1, n, k, iters);
        let t64 = time(&ctx, dtype, 64, n, k, iters.div_ceil(4));
        println!(
            "{:<6} {:>10.2} {:>12.1} {:>10.2} {:>14.1}",
            dtype.name(),
            bytes / (1 << 20) as f64,
            t1 * 1e6,
            bytes / t1 / 1e9,
            2.0 * 64.0 * n as f64 * k as f64 / t64 / 1e9
        );
    }
}
