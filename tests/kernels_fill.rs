//! The fill kernel (synthetic weights) against its CPU reference, and the synthetic weights
//! themselves pinned bit for bit: `fado bench --synthetic` figures stay comparable only while
//! the generated weights do not change.

mod common;
use common::*;

use fado::graph::Graph;
use fado::model::synthetic::random_matrix;
use fado::ops::fill::{Fill, FillKind};
use fado::ops::Step;
use fado::tensor::{DType, TensorDesc};

#[test]
fn fill_writes_the_reference_words_bit_for_bit() {
    let ctx = ctx();
    let kinds = [FillKind::F32, FillKind::BF16, FillKind::F16, FillKind::Bits];
    // Odd lengths, one over a workgroup; a header period on the bits.
    for (i, &words) in [1usize, 255, 257, 1757].iter().enumerate() {
        for (j, &kind) in kinds.iter().enumerate() {
            let period = if kind == FillKind::Bits {
                [0, 9][i % 2]
            } else {
                0
            };
            let op = Fill {
                kind,
                seed: 100 * i as u32 + j as u32,
                scale: 0.25 + i as f32,
                period,
                header: 0xdead_beef,
            };
            let want = op.cpu(words);
            let t = ctx
                .empty("words", TensorDesc::new(DType::U32, [words]))
                .expect("alloc");
            ctx.poison(&t).expect("poison");
            let mut g = Graph::new();
            let id = g.external("words", &t);
            g.add0(op, &[id]).expect("op");
            g.compile(&ctx, &[])
                .expect("compile")
                .run(Step::default())
                .expect("run");
            let got: Vec<u32> =
                bytemuck::cast_slice(&ctx.read_bytes(&t, 0, t.size_bytes()).expect("read"))
                    .to_vec();
            assert_eq!(got, want, "{kind:?}, {words} words, period {period}");
        }
    }
}

/// FNV-1a of the bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn synthetic_weights_are_the_same_bits_as_always() {
    let ctx = ctx();
    // Shapes with whole blocks of every format; seeds as `synthetic::weights` gives them.
    let mut got = Vec::new();
    for (i, dtype) in DType::WEIGHT_TYPES.into_iter().enumerate() {
        let t = random_matrix(&ctx, "w", dtype, 12, 512, 2 + i as u32).expect("fill");
        let bytes = ctx.read_bytes(&t, 0, t.size_bytes()).expect("read");
        got.push((dtype.name(), fnv(&bytes)));
    }
    // Recorded from the generator as it was when fill became an op; the K-quants re-recorded
    // when their GPU layout moved the scales into their own section (issue 17): the same
    // random words now land in the layout's quant and scale sections.
    let want: &[(&str, u64)] = &[
        ("f32", 0xcfb0d24a3ddc6243),
        ("f16", 0x26b20f6c527044e9),
        ("bf16", 0x77ea788476def1d7),
        ("q8_0", 0x85d8c3db8fd98d63),
        ("q4_0", 0x05ca2c58fc236fa8),
        ("q4_1", 0x126e1e3b0e52c15e),
        ("q4_k", 0x2562b946f1e307c2),
        ("q5_k", 0xa95947b2990a1f53),
        ("q6_k", 0x1f0e04e4a1bce6bd),
    ];
    assert_eq!(got, want);
}
