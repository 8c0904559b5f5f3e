//! The cooperative-matrix prefill matmul (`shaders/matmul_coop.wgsl`, `ops::matmul::coop`)
//! against the CPU reference, for f16, bf16 and every block format, on ragged M, N and K with
//! the output poisoned, plain and added into y; and the choice of kernel (`FADO_COOPMAT=0`
//! gives the SIMT tiled kernels).
//!
//! It needs an adapter with cooperative matrices: Mesa 26.1's lavapipe
//! (`FADO_EXPECT_COOPMAT=1 scripts/mesa26.sh test --test kernels_matmul_coopmat`, which
//! `scripts/test.sh` runs) or a GPU. Elsewhere (bookworm's Mesa 22) each test says so and
//! returns — unless `FADO_EXPECT_COOPMAT=1`, where a missing configuration fails.

mod common;
use common::*;

use std::sync::Arc;

use fado::gpu::{GpuContext, GpuOptions};
use fado::graph::Graph;
use fado::ops::matmul::{self, coop, Matmul, MatmulAddInto};
use fado::ops::{Op, Step};
use fado::quant;
use fado::tensor::{DType, Tensor, TensorDesc};

/// Against the reference of the f16-rounded operands: only the f32 summation order differs.
const ROUNDED_RTOL: f32 = 1e-3;
/// Against the exact reference: the f16 tolerance.
const F16_RTOL: f32 = 1e-2;

const MS: &[usize] = &[9, 40, 70];
const NS: &[usize] = &[5, 37, 130];

fn expect_coopmat() -> bool {
    std::env::var("FADO_EXPECT_COOPMAT").as_deref() == Ok("1")
}

/// GPU-style kernels with cooperative matrices where the adapter has them; `None` (said on
/// stderr) where it has none, a failure then under `FADO_EXPECT_COOPMAT=1`.
fn coop_ctx() -> Option<Arc<GpuContext>> {
    static CTX: std::sync::OnceLock<Arc<GpuContext>> = std::sync::OnceLock::new();
    let c = CTX
        .get_or_init(|| {
            let mut o = GpuOptions::from_env();
            o.cpu_kernels = Some(false);
            o.coopmat = None;
            GpuContext::new(&o).expect("a Vulkan adapter")
        })
        .clone();
    match c.caps.coopmat {
        Some(cm) => {
            eprintln!("{}: cooperative matrices {cm:?}", c.adapter_name());
            Some(c)
        }
        None if expect_coopmat() => panic!(
            "FADO_EXPECT_COOPMAT=1 but `{}` offers no cooperative-matrix configuration Fado \
             uses (f16 × f16 → f32, 8×8 or 16×16, fixed subgroup size)",
            c.adapter_name()
        ),
        None => {
            eprintln!(
                "{}: no cooperative matrices; run under scripts/mesa26.sh (skipped here)",
                c.adapter_name()
            );
            None
        }
    }
}

/// x rounded as the kernel stages it: f16, saturating at ±65504.
fn round_x(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32())
        .collect()
}

/// The weight's GPU bytes and its values (what the SIMT kernels multiply by).
fn weight(rng: &mut Rng, dtype: DType, n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    if dtype.is_quantized() {
        let gguf = random_blocks(rng, dtype, n, k);
        let v = quant::dequantize(dtype, &gguf, n * k).expect("dequantize");
        (quant::gpu_layout(dtype, n, k, &gguf).expect("layout"), v)
    } else {
        weight_bytes(dtype, &rng.vec(n * k, 0.5), k)
    }
}

/// `y = x · Wᵀ` (or `y += x · Wᵀ` onto `y0`) on `c`, the output poisoned first.
fn run(c: &Arc<GpuContext>, x: &Tensor, w: &Tensor, y0: Option<&[f32]>) -> Vec<f32> {
    let mut g = Graph::new();
    let xi = g.external("x", x);
    let wi = g.external("w", w);
    match y0 {
        None => {
            let y = g.add1(Matmul, &[xi, wi]).expect("op");
            let exe = g.compile(c, &[y]).expect("compile");
            c.poison(exe.tensor(y)).expect("poison");
            exe.run(Step::default()).expect("run");
            exe.read_f32(y).expect("read")
        }
        Some(y0) => {
            let (m, n) = (x.desc.rows(), w.desc.shape[0]);
            let yt = c.upload_f32("y", &[m, n], y0).expect("upload y");
            let yi = g.external("y", &yt);
            g.add0(MatmulAddInto, &[xi, wi, yi]).expect("op");
            let exe = g.compile(c, &[]).expect("compile");
            exe.run(Step::default()).expect("run");
            c.read_f32(&yt).expect("read")
        }
    }
}

fn check(dtype: DType, ks: &[usize], seed: u64) {
    let Some(c) = coop_ctx() else { return };
    let mut rng = Rng::new(seed);
    for &k in ks {
        for &n in NS {
            let (bytes, wv) = weight(&mut rng, dtype, n, k);
            let w = c
                .upload("w", TensorDesc::new(dtype, [n, k]), &bytes)
                .expect("upload w");
            let w16 = round_x(&wv);
            for &m in MS {
                let calls = Matmul
                    .kernels(&c.caps, &[&TensorDesc::f32([m, k]), &w.desc])
                    .expect("kernels");
                assert_eq!(
                    (calls.len(), calls[0].shader),
                    (1, "matmul_coop.wgsl"),
                    "{dtype} m={m} k={k}: the cooperative-matrix kernel"
                );
                let x = rng.vec(m * k, 1.0);
                let xt = c.upload_f32("x", &[m, k], &x).expect("upload x");
                let what = format!("{dtype} m={m} n={n} k={k}");
                let got = run(&c, &xt, &w, None);
                let rounded = matmul::cpu(&round_x(&x), &w16, m, n, k);
                assert_close_rel_max(&what, &got, &rounded, ROUNDED_RTOL);
                let exact = matmul::cpu(&x, &wv, m, n, k);
                assert_close_rel_max(&format!("{what} (exact)"), &got, &exact, F16_RTOL);
                if m == MS[1] {
                    // The residual form: y += x · Wᵀ.
                    let y0 = rng.vec(m * n, 3.0);
                    let got = run(&c, &xt, &w, Some(&y0));
                    let want: Vec<f32> = rounded.iter().zip(&y0).map(|(a, b)| a + b).collect();
                    assert_close_rel_max(&format!("{what} add_into"), &got, &want, ROUNDED_RTOL);
                }
            }
        }
    }
}

#[test]
fn f16_weights_match_the_reference() {
    check(DType::F16, &[32, 96, 288], 1);
}

#[test]
fn bf16_weights_match_the_reference() {
    check(DType::BF16, &[32, 96, 288], 2);
}

#[test]
fn q8_0_weights_match_the_dequantized_reference() {
    check(DType::Q8_0, &[32, 160], 3);
}

#[test]
fn q4_0_weights_match_the_dequantized_reference() {
    check(DType::Q4_0, &[32, 160], 4);
}

#[test]
fn q4_1_weights_match_the_dequantized_reference() {
    check(DType::Q4_1, &[32, 160], 5);
}

#[test]
fn q4_k_weights_match_the_dequantized_reference() {
    check(DType::Q4K, &[256, 512], 6);
}

#[test]
fn q5_k_weights_match_the_dequantized_reference() {
    check(DType::Q5K, &[256, 512], 7);
}

#[test]
fn q6_k_weights_match_the_dequantized_reference() {
    check(DType::Q6K, &[256, 512], 8);
}

#[test]
fn a_missing_k_step_or_a_shifted_weight_row_is_caught() {
    // The check above must be able to fail: a reference without the last 32 k values, or with
    // W's rows shifted by one, is rejected for the kernel's output.
    let Some(c) = coop_ctx() else { return };
    let mut rng = Rng::new(9);
    let (m, n, k) = (40, 37, 256);
    for dtype in [DType::F16, DType::Q4K] {
        let (bytes, wv) = weight(&mut rng, dtype, n, k);
        let w = c
            .upload("w", TensorDesc::new(dtype, [n, k]), &bytes)
            .expect("upload w");
        let x = rng.vec(m * k, 1.0);
        let xt = c.upload_f32("x", &[m, k], &x).expect("upload x");
        let got = run(&c, &xt, &w, None);
        let (xr, wr) = (round_x(&x), round_x(&wv));
        assert!(within_rel_max(
            &got,
            &matmul::cpu(&xr, &wr, m, n, k),
            ROUNDED_RTOL
        ));
        let mut short_x = xr.clone();
        for row in short_x.chunks_mut(k) {
            row[k - 32..].fill(0.0);
        }
        let mut shifted = wr.clone();
        shifted.rotate_left(k);
        for (what, want) in [
            (
                "without the last k-step",
                matmul::cpu(&short_x, &wr, m, n, k),
            ),
            ("with W's rows shifted", matmul::cpu(&xr, &shifted, m, n, k)),
        ] {
            assert!(
                !within_rel_max(&got, &want, ROUNDED_RTOL),
                "{dtype}: a reference {what} passed"
            );
        }
    }
}

#[test]
fn the_kernel_is_chosen_for_prefill_only_and_fado_coopmat_0_switches_it_off() {
    let Some(c) = coop_ctx() else { return };
    let q = TensorDesc::new(DType::Q4K, [64, 256]);
    let h = TensorDesc::new(DType::F16, [64, 256]);
    let f = TensorDesc::new(DType::F32, [64, 256]);
    let shader = |c: &GpuContext, m: usize, w: &TensorDesc| {
        Matmul
            .kernels(&c.caps, &[&TensorDesc::f32([m, 256]), w])
            .expect("kernels")[0]
            .shader
    };
    assert_eq!(shader(&c, 9, &q), "matmul_coop.wgsl");
    assert_eq!(shader(&c, 9, &h), "matmul_coop.wgsl");
    // Decode (and small batches) keep the GEMVs; f32 weights keep f32 products.
    assert_eq!(shader(&c, 1, &q), "matmul_quant.wgsl");
    assert_eq!(shader(&c, 8, &h), "gemv.wgsl");
    assert_eq!(shader(&c, 9, &f), "matmul.wgsl");
    assert_eq!(coop::prefill_path(&c.caps), "coopmat");
    let mut o = GpuOptions::from_env();
    o.cpu_kernels = Some(false);
    o.coopmat = Some(false);
    let off = GpuContext::new(&o).expect("context");
    assert_eq!(off.caps.coopmat, None);
    assert_eq!(shader(&off, 9, &q), "matmul_quant.wgsl");
    assert_eq!(shader(&off, 9, &h), "matmul.wgsl");
    assert_eq!(coop::prefill_path(&off.caps), "tiled");
    // CPU-style kernels never take it.
    o.cpu_kernels = Some(true);
    o.coopmat = None;
    let cpu = GpuContext::new(&o).expect("context");
    assert_eq!(cpu.caps.coopmat, None);
    assert_eq!(coop::prefill_path(&cpu.caps), "rows");
}
