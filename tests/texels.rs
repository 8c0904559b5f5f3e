//! Texel images (src/gpu/texels.rs): CPU devices keep weight matrices in `rgba32uint`
//! textures of 4096 texels per row. Bytes must round-trip whatever the size (ragged last row,
//! several rows), and the CPU-style kernels must read weights that span several rows exactly
//! as the CPU reference does — the model weights are that size, the kernel tests' are not.

mod common;
use common::*;

use fado::ops::matmul::{self, quant as matmul_quant};
use fado::ops::{embedding, Arg, KernelCall};
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

#[test]
fn texel_images_round_trip_bytes_of_any_size() {
    let c = ctx();
    let mut rng = Rng::new(41);
    let row = 4096 * 16;
    for bytes in [4usize, 20, 64, row - 4, row, row + 20, 3 * row + 52] {
        let data: Vec<u8> = (0..bytes).map(|_| rng.below(256) as u8).collect();
        let desc = TensorDesc::new(DType::U32, [bytes / 4]);
        let t = c.upload_texels("t", desc.clone(), &data).expect("upload");
        assert!(t.texels().is_some() && t.buffer().is_none());
        assert_eq!(c.read_bytes(&t, 0, bytes as u64).expect("read"), data);
        let mid = bytes / 2 / 4 * 4;
        assert_eq!(
            c.read_bytes(&t, mid as u64, (bytes - mid) as u64)
                .expect("read tail"),
            &data[mid..],
            "{bytes} bytes from {mid}"
        );
        // The same bytes made into an image from a buffer on the device.
        let b = c.upload("b", desc, &data).expect("upload buffer");
        let m = c.to_texels(&b).expect("to texels");
        assert_eq!(
            c.read_bytes(&m, 0, bytes as u64).expect("read"),
            data,
            "{bytes} bytes"
        );
    }
    // A texel image takes whole writes only.
    let t = c
        .upload_texels("t", TensorDesc::new(DType::U32, [8]), &[0; 32])
        .expect("upload");
    let e = c.write(&t, 4, &[1, 2, 3, 4]).expect_err("partial write");
    assert!(e.to_string().contains("whole writes"), "{e}");
}

fn reads_texels(calls: &[KernelCall]) -> bool {
    calls.iter().all(|c| {
        c.defines.get("TEX").map(String::as_str) == Some("1") && c.args.contains(&Arg::Texels(1))
    })
}

#[test]
fn cpu_kernels_read_weights_spanning_several_texel_rows_like_the_reference() {
    let c = ctx_variant(true, true);
    let mut rng = Rng::new(42);
    // 301 rows of 256: 77 056 weights, several texel rows in every dtype (one row holds
    // 64 KiB); m = 1 is the GEMV, 3 and 11 the prefill windows (11 = a full 8 and a ragged 3).
    let (n, k) = (301usize, 256usize);
    for dtype in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4K,
    ] {
        let w = rng.vec(n * k, 1.0);
        let (bytes, wv) = weight_bytes(dtype, &w, k);
        let desc = TensorDesc::new(dtype, [n, k]);
        assert!(fado::gpu::reads_texels(&c.caps, &desc), "{dtype}");
        let wt = fado::gpu::place_weight(&c, c.upload("w", desc.clone(), &bytes).expect("upload"))
            .expect("place");
        assert!(wt.texels().is_some(), "{dtype} weight is a texel image");
        for m in [1usize, 3, 11] {
            let x = rng.vec(m * k, 1.0);
            let xd = TensorDesc::f32([m, k]);
            let calls = matmul::kernels_for("matmul", &c.caps, &xd, &desc, None).expect("kernels");
            assert!(reads_texels(&calls), "{dtype} m={m}: {calls:?}");
            let xt = c.upload_f32("x", &[m, k], &x).expect("upload x");
            let got = run_op_on(&c, matmul::Matmul, &[&xt, &wt], Default::default());
            let want = if dtype.is_quantized() {
                matmul_quant::cpu(&x, &wv, k)
            } else {
                matmul::cpu(&x, &wv, m, n, k)
            };
            assert_close_rel_max(&format!("{dtype} m={m} n={n} k={k}"), &got[0], &want, 1e-4);
        }
        // The same weight as an embedding table (tied with the lm_head it is one tensor).
        let ids: Vec<u32> = vec![0, n as u32 - 1, 150, 7];
        let idt = c
            .upload(
                "ids",
                TensorDesc::new(DType::U32, [ids.len()]),
                bytemuck::cast_slice(&ids),
            )
            .expect("ids");
        let calls = fado::ops::Op::kernels(&embedding::Embedding, &c.caps, &[&idt.desc, &desc])
            .expect("kernels");
        assert!(reads_texels(&calls), "{dtype} embedding");
        let got = run_op_on(&c, embedding::Embedding, &[&idt, &wt], Default::default());
        assert_eq!(got[0], embedding::cpu(&ids, &wv, k), "{dtype} embedding");
    }
}
