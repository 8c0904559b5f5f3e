//! RMSNorm, residual add, SwiGLU and embedding kernels against their CPU references.

mod common;
use common::*;

use fado::ops::{add, embedding, rmsnorm, swiglu, Step};
use fado::tensor::{DType, TensorDesc};

const ROWS_COLS: &[(usize, usize)] = &[(1, 1), (1, 7), (3, 576), (7, 1757), (33, 64), (2, 4096)];

#[test]
fn rmsnorm_matches_reference_on_ragged_rows() {
    let mut rng = Rng::new(1);
    for &(r, n) in ROWS_COLS {
        let x = rng.vec(r * n, 2.0);
        let w = rng.vec(n, 1.5);
        let want = rmsnorm::cpu(&x, &w, 1e-5);
        // One subgroup per row on the CPU-style context, a workgroup tree on the other.
        for (label, c) in &variant_contexts()[..2] {
            let got = run_op_on(
                c,
                rmsnorm::RmsNorm { eps: 1e-5 },
                &[
                    &c.upload_f32("x", &[r, n], &x).unwrap(),
                    &c.upload_f32("w", &[n], &w).unwrap(),
                ],
                Step::default(),
            );
            let what = format!("rmsnorm {r}x{n} {label}");
            assert_close(&what, &got[0], &want, F32_RTOL, 1e-5);
        }
    }
}

#[test]
fn add_and_add_into_match_reference() {
    let mut rng = Rng::new(2);
    for &(r, n) in ROWS_COLS {
        let a = rng.vec(r * n, 3.0);
        let b = rng.vec(r * n, 3.0);
        let want = add::cpu(&a, &b);
        let got = run_op(
            add::Add,
            &[&upload("a", &[r, n], &a), &upload("b", &[r, n], &b)],
            Step::default(),
        );
        assert_close("add", &got[0], &want, F32_RTOL, 0.0);
        let ta = upload("a", &[r, n], &a);
        let outs = run_op(
            add::AddInto,
            &[&ta, &upload("b", &[r, n], &b)],
            Step::default(),
        );
        assert!(outs.is_empty());
        let got = ctx().read_f32(&ta).unwrap();
        assert_close("add_into", &got, &want, F32_RTOL, 0.0);
    }
}

#[test]
fn swiglu_matches_reference_split_and_concatenated() {
    let mut rng = Rng::new(3);
    for &(r, n) in ROWS_COLS {
        let g = rng.vec(r * n, 6.0);
        let u = rng.vec(r * n, 2.0);
        let want = swiglu::cpu(&g, &u);
        let got = run_op(
            swiglu::SwiGlu,
            &[&upload("g", &[r, n], &g), &upload("u", &[r, n], &u)],
            Step::default(),
        );
        assert_close("swiglu", &got[0], &want, F32_RTOL, 1e-6);
        let mut cat = Vec::with_capacity(2 * r * n);
        for row in 0..r {
            cat.extend_from_slice(&g[row * n..(row + 1) * n]);
            cat.extend_from_slice(&u[row * n..(row + 1) * n]);
        }
        let got = run_op(
            swiglu::SwiGluCat,
            &[&upload("gu", &[r, 2 * n], &cat)],
            Step::default(),
        );
        assert_close("swiglu_cat", &got[0], &want, F32_RTOL, 1e-6);
    }
}

#[test]
fn embedding_gathers_rows_for_every_table_dtype() {
    let mut rng = Rng::new(4);
    let ctx = ctx();
    for &(vocab, n) in &[(5usize, 3usize), (97, 64), (300, 129)] {
        let table = rng.vec(vocab * n, 1.0);
        let ids: Vec<u32> = (0..9)
            .map(|_| rng.below(vocab as u32))
            .chain([vocab as u32 + 3])
            .collect();
        let id_t = ctx
            .upload(
                "ids",
                TensorDesc::new(DType::U32, [ids.len()]),
                bytemuck::cast_slice(&ids),
            )
            .unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let (bytes, reference) = weight_bytes(dtype, &table, n);
            let desc = TensorDesc::new(dtype, [vocab, n]);
            let tab = ctx.upload("table", desc, &bytes).unwrap();
            let want = embedding::cpu(&ids, &reference, n);
            let got = run_op(embedding::Embedding, &[&id_t, &tab], Step::default());
            // Widening 16-bit values is exact.
            assert_close(
                &format!("embedding {dtype} {vocab}x{n}"),
                &got[0],
                &want,
                0.0,
                0.0,
            );
        }
    }
}

#[test]
fn ops_reject_inconsistent_shapes_with_a_named_error() {
    let mut g = fado::graph::Graph::new();
    let x = g.external("x", &upload("x", &[2, 8], &[0.0; 16]));
    let w = g.external("w", &upload("w", &[7], &[0.0; 7]));
    let e = g
        .add(rmsnorm::RmsNorm { eps: 1e-5 }, &[x, w])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rmsnorm")
            && e.contains("[2, 8]")
            && e.contains("[7]")
            && e.contains("expected"),
        "{e}"
    );
    let ids = g.external("ids", &upload("ids", &[3], &[0.0; 3]));
    let e = g
        .add(embedding::Embedding, &[ids, x])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("embedding") && e.contains("dtype f32 is not supported"),
        "{e}"
    );
}

#[test]
fn take_last_row_copies_exactly_the_last_row() {
    let mut rng = Rng::new(5);
    for &(r, n) in ROWS_COLS {
        let x = rng.vec(r * n, 1.0);
        let got = run_op(
            fado::ops::take_last_row::TakeLastRow,
            &[&upload("x", &[r, n], &x)],
            Step::default(),
        );
        assert_close(
            "take_last_row",
            &got[0],
            &fado::ops::take_last_row::cpu_last_row(&x, n),
            0.0,
            0.0,
        );
    }
}

#[test]
fn concat_cols_matches_reference_on_ragged_widths() {
    use fado::ops::concat::{self, ConcatCols};
    let mut rng = Rng::new(9);
    for &(rows, widths) in &[
        (1usize, &[5usize, 3, 3][..]),
        (7, &[64, 17, 17][..]),
        (33, &[1][..]),
        (3, &[300, 1, 129, 2][..]),
    ] {
        let data: Vec<Vec<f32>> = widths.iter().map(|w| rng.vec(rows * w, 1.0)).collect();
        let ts: Vec<_> = data
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (d, w))| upload(&format!("x{i}"), &[rows, *w], d))
            .collect();
        let refs: Vec<_> = ts.iter().collect();
        let got = run_op(ConcatCols, &refs, Step::default());
        let parts: Vec<(&[f32], usize)> = data
            .iter()
            .zip(widths)
            .map(|(d, w)| (d.as_slice(), *w))
            .collect();
        // Exact: a copy. Poisoned output elements (NaN) would fail.
        assert_close(
            &format!("concat {rows} × {widths:?}"),
            &got[0],
            &concat::cpu(&parts),
            0.0,
            0.0,
        );
    }
    // Mismatched rows are an error naming the op.
    let mut g = fado::graph::Graph::new();
    let a = g.external("a", &upload("a", &[2, 3], &[0.0; 6]));
    let b = g.external("b", &upload("b", &[3, 3], &[0.0; 9]));
    let e = g.add(ConcatCols, &[a, b]).unwrap_err().to_string();
    assert!(
        e.contains("concat_cols") && e.contains("leading dimensions"),
        "{e}"
    );
}
