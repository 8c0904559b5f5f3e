//! Every op, given inconsistent shapes or an unsupported dtype, returns an error that names the
//! op, the shapes it was given and what it expected — never a panic. Checked without a GPU:
//! the shape rules live in `Op::infer` (run when a node is added to a graph) and `Op::kernels`.
//!
//! 1. A table of hand-picked bad inputs, at least one bad shape and one bad dtype per op, with
//!    the words each message must contain.
//! 2. A seeded sweep that mutates a valid input list of every op (a dtype, a dimension — zero
//!    and huge ones included —, the rank, the number of inputs): `infer` and, when it accepts,
//!    `scratch` and `kernels` must not panic, and every error must name the op.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fado::gpu::Caps;
use fado::ops::add::{Add, AddInto};
use fado::ops::attention::{Attention, AttentionSplit, DecodeSplit};
use fado::ops::concat::ConcatCols;
use fado::ops::embedding::Embedding;
use fado::ops::matmul::quant::QuantMatmul;
use fado::ops::matmul::{Matmul, MatmulAddInto};
use fado::ops::rmsnorm::RmsNorm;
use fado::ops::rope::RopeKv;
use fado::ops::swiglu::{SwiGlu, SwiGluCat};
use fado::ops::take_last_row::TakeLastRow;
use fado::ops::topk::{Penalize, TopK};
use fado::ops::Op;
use fado::rng::Rng;
use fado::tensor::{DType, TensorDesc};

fn t(dtype: DType, shape: &[usize]) -> TensorDesc {
    TensorDesc::new(dtype, shape.to_vec())
}
fn f32t(shape: &[usize]) -> TensorDesc {
    t(DType::F32, shape)
}

/// Limits of a small portable device (WebGPU defaults) with subgroups; `cpu` marks a CPU
/// device (lavapipe-like), for which several ops pick other kernels.
fn caps(cpu: bool) -> Caps {
    Caps {
        f16: true,
        subgroups: true,
        subgroup_min: if cpu { 8 } else { 32 },
        subgroup_max: if cpu { 8 } else { 32 },
        timestamps: false,
        timestamps_in_passes: false,
        coopmat: None,
        int_dot: !cpu,
        cpu,
        uniform_offset_align: 256,
        uniform_window: 64 << 10,
        max_storage_binding: 128 << 20,
        max_buffer: 256 << 20,
        max_workgroup_storage: 16 * 1024,
        max_invocations: 256,
        max_workgroups_per_dim: 65535,
        storage_offset_align: 256,
        max_texture_2d: 8192,
    }
}

const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = 8;

fn rope() -> RopeKv {
    RopeKv {
        n_heads: HQ,
        n_kv_heads: HKV,
        head_dim: D,
        interleaved: false,
    }
}
fn attention() -> Attention {
    Attention {
        n_heads: HQ,
        n_kv_heads: HKV,
        head_dim: D,
        scale: 0.35,
    }
}
fn penalize() -> Penalize {
    Penalize {
        repeat: 1.1,
        presence: 0.0,
        frequency: 0.0,
    }
}

/// Every op of `src/ops`, each with a list of inputs it accepts (the sweep mutates these).
fn all_ops() -> Vec<(Box<dyn Op>, Vec<TensorDesc>)> {
    let kv = || cache(DType::F32, 16);
    let qkv_w = (HQ + 2 * HKV) * D;
    vec![
        (Box::new(Add), vec![f32t(&[3, 8]), f32t(&[3, 8])]),
        (Box::new(AddInto), vec![f32t(&[3, 8]), f32t(&[3, 8])]),
        (
            Box::new(ConcatCols),
            vec![f32t(&[3, 8]), f32t(&[3, 5]), f32t(&[3, 5])],
        ),
        (Box::new(attention()), vec![f32t(&[5, HQ * D]), kv(), kv()]),
        (
            Box::new(AttentionSplit {
                attn: attention(),
                split: DecodeSplit {
                    chunks: 3,
                    min_chunk: 4,
                },
            }),
            vec![f32t(&[1, HQ * D]), kv(), kv()],
        ),
        (
            Box::new(Embedding),
            vec![t(DType::U32, &[5]), f32t(&[10, 8])],
        ),
        (Box::new(Matmul), vec![f32t(&[3, 32]), f32t(&[7, 32])]),
        (
            Box::new(MatmulAddInto),
            vec![f32t(&[3, 32]), t(DType::BF16, &[7, 32]), f32t(&[3, 7])],
        ),
        (
            Box::new(QuantMatmul { add_into: false }),
            vec![f32t(&[3, 32]), t(DType::Q8_0, &[7, 32])],
        ),
        (
            Box::new(QuantMatmul { add_into: true }),
            vec![f32t(&[1, 256]), t(DType::Q4K, &[7, 256]), f32t(&[1, 7])],
        ),
        (
            Box::new(RmsNorm { eps: 1e-5 }),
            vec![f32t(&[3, 8]), f32t(&[8])],
        ),
        (
            Box::new(rope()),
            vec![f32t(&[5, qkv_w]), f32t(&[D / 2]), kv(), kv()],
        ),
        (Box::new(TakeLastRow), vec![f32t(&[3, 8])]),
        (Box::new(SwiGlu), vec![f32t(&[3, 8]), f32t(&[3, 8])]),
        (Box::new(SwiGluCat), vec![f32t(&[3, 8])]),
        (Box::new(TopK { k: 4 }), vec![f32t(&[1, 100])]),
        (
            Box::new(penalize()),
            vec![f32t(&[1, 100]), t(DType::U32, &[8]), f32t(&[8])],
        ),
    ]
}

struct Case {
    what: &'static str,
    op: Box<dyn Op>,
    inputs: Vec<TensorDesc>,
    /// Words the message must contain besides the op's name (shapes, what was expected).
    mentions: Vec<String>,
}

fn case(what: &'static str, op: impl Op + 'static, inputs: Vec<TensorDesc>, m: &[&str]) -> Case {
    Case {
        what,
        op: Box::new(op),
        inputs,
        mentions: m.iter().map(|s| s.to_string()).collect(),
    }
}

fn cache(dtype: DType, cap: usize) -> TensorDesc {
    t(dtype, &[cap, HKV, D])
}

fn table() -> Vec<Case> {
    let qkv_w = (HQ + 2 * HKV) * D;
    vec![
        // add / add_into
        case(
            "add: shapes differ",
            Add,
            vec![f32t(&[2, 3]), f32t(&[3, 2])],
            &["f32[2, 3]", "f32[3, 2]", "expected equal shapes"],
        ),
        case(
            "add: f16 input",
            Add,
            vec![f32t(&[4]), t(DType::F16, &[4])],
            &["f16[4]", "expected one of f32"],
        ),
        case(
            "add_into: shapes differ",
            AddInto,
            vec![f32t(&[5]), f32t(&[4])],
            &["f32[5]", "f32[4]", "expected equal shapes"],
        ),
        case(
            "add_into: u32 input",
            AddInto,
            vec![t(DType::U32, &[4]), f32t(&[4])],
            &["u32[4]", "expected one of f32"],
        ),
        case(
            "add: one input",
            Add,
            vec![f32t(&[4])],
            &["expected 2 inputs, got 1 [f32[4]]"],
        ),
        // attention
        case(
            "attention: q width",
            attention(),
            vec![f32t(&[3, 30]), cache(DType::F32, 16), cache(DType::F32, 16)],
            &["f32[3, 30]", &format!("expected [tokens, {}]", HQ * D)],
        ),
        case(
            "attention: cache heads",
            attention(),
            vec![f32t(&[3, HQ * D]), f32t(&[16, 3, D]), f32t(&[16, 3, D])],
            &["k_cache", "f32[16, 3, 8]", "expected [capacity, 2, 8]"],
        ),
        case(
            "attention: caches differ",
            attention(),
            vec![
                f32t(&[1, HQ * D]),
                cache(DType::F32, 16),
                cache(DType::F16, 16),
            ],
            &["f32[16, 2, 8]", "f16[16, 2, 8]", "expected the same"],
        ),
        case(
            "attention: bf16 q",
            attention(),
            vec![
                t(DType::BF16, &[1, HQ * D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["bf16[1, 32]", "expected one of f32"],
        ),
        case(
            "attention: bf16 cache",
            attention(),
            vec![
                f32t(&[1, HQ * D]),
                cache(DType::BF16, 16),
                cache(DType::BF16, 16),
            ],
            &["bf16[16, 2, 8]", "expected one of f32, f16"],
        ),
        case(
            "attention: heads not grouped",
            Attention {
                n_heads: 5,
                ..attention()
            },
            vec![
                f32t(&[1, 5 * D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["5 query heads", "2 kv heads", "expected a whole number"],
        ),
        case(
            "attention_split: zero chunks",
            AttentionSplit {
                attn: attention(),
                split: DecodeSplit {
                    chunks: 0,
                    min_chunk: 4,
                },
            },
            vec![
                f32t(&[1, HQ * D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["chunks: 0", "expected at least one chunk"],
        ),
        case(
            "attention_split: q rank",
            AttentionSplit {
                attn: attention(),
                split: DecodeSplit {
                    chunks: 2,
                    min_chunk: 4,
                },
            },
            vec![
                f32t(&[HQ * D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["f32[32]", "expected 2 dimensions"],
        ),
        case(
            "attention: more tokens than cache rows",
            attention(),
            vec![
                f32t(&[17, HQ * D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["f32[17, 32]", "f32[16, 2, 8]", "expected at most 16 tokens"],
        ),
        // embedding
        case(
            "embedding: ids rank",
            Embedding,
            vec![t(DType::U32, &[2, 3]), f32t(&[10, 4])],
            &["u32[2, 3]", "expected 1 dimension"],
        ),
        case(
            "embedding: f32 ids",
            Embedding,
            vec![f32t(&[3]), f32t(&[10, 4])],
            &["ids", "f32[3]", "expected one of u32"],
        ),
        case(
            "embedding: u32 table",
            Embedding,
            vec![t(DType::U32, &[3]), t(DType::U32, &[10, 32])],
            &["u32[10, 32]", "expected one of f32, f16, bf16"],
        ),
        case(
            "embedding: q8_0 table of partial blocks",
            Embedding,
            vec![t(DType::U32, &[3]), t(DType::Q8_0, &[10, 48])],
            &["q8_0[10, 48]", "not whole q8_0 blocks"],
        ),
        // concat_cols
        case(
            "concat_cols: rows differ",
            ConcatCols,
            vec![f32t(&[3, 8]), f32t(&[4, 5])],
            &[
                "f32[4, 5]",
                "f32[3, 8]",
                "expected equal leading dimensions",
            ],
        ),
        case(
            "concat_cols: f16 input",
            ConcatCols,
            vec![f32t(&[3, 8]), t(DType::F16, &[3, 5])],
            &["f16[3, 5]", "expected one of f32"],
        ),
        // matmul / matmul_add_into
        case(
            "matmul: inner dims",
            Matmul,
            vec![f32t(&[3, 5]), f32t(&[7, 6])],
            &["f32[3, 5]", "f32[7, 6]", "expected w's last dimension 5"],
        ),
        case(
            "matmul: w rank",
            Matmul,
            vec![f32t(&[3, 5]), f32t(&[5])],
            &["f32[5]", "expected w to have 2 dimensions"],
        ),
        case(
            "matmul: u32 weight",
            Matmul,
            vec![f32t(&[3, 5]), t(DType::U32, &[7, 5])],
            &["u32[7, 5]", "expected one of f32, f16, bf16"],
        ),
        case(
            "matmul: f16 x",
            Matmul,
            vec![t(DType::F16, &[3, 5]), f32t(&[7, 5])],
            &["f16[3, 5]", "expected one of f32"],
        ),
        case(
            "matmul: partial quant blocks",
            Matmul,
            vec![f32t(&[3, 40]), t(DType::Q8_0, &[7, 40])],
            &["q8_0[7, 40]", "blocks of 32"],
        ),
        case(
            "matmul_add_into: y shape",
            MatmulAddInto,
            vec![f32t(&[3, 5]), f32t(&[7, 5]), f32t(&[3, 6])],
            &["f32[3, 6]", "expected y to be f32[3, 7]"],
        ),
        case(
            "matmul_add_into: y dtype",
            MatmulAddInto,
            vec![f32t(&[3, 5]), f32t(&[7, 5]), t(DType::F16, &[3, 7])],
            &["f16[3, 7]", "expected y to be f32[3, 7]"],
        ),
        // quant_matmul
        case(
            "quant_matmul: inner dims",
            QuantMatmul { add_into: false },
            vec![f32t(&[2, 64]), t(DType::Q4_0, &[8, 32])],
            &["f32[2, 64]", "q4_0[8, 32]", "expected x [.., 32]"],
        ),
        case(
            "quant_matmul: float weight",
            QuantMatmul { add_into: false },
            vec![f32t(&[2, 32]), f32t(&[8, 32])],
            &["weight", "f32[8, 32]", "expected one of q8_0"],
        ),
        case(
            "quant_matmul: y shape",
            QuantMatmul { add_into: true },
            vec![f32t(&[2, 32]), t(DType::Q8_0, &[8, 32]), f32t(&[2, 9])],
            &["f32[2, 9]", "expected y f32[2, 8]"],
        ),
        // rmsnorm
        case(
            "rmsnorm: weight length",
            RmsNorm { eps: 1e-5 },
            vec![f32t(&[3, 8]), f32t(&[7])],
            &["f32[3, 8]", "f32[7]", "expected weight [8]"],
        ),
        case(
            "rmsnorm: bf16 weight",
            RmsNorm { eps: 1e-5 },
            vec![f32t(&[3, 8]), t(DType::BF16, &[8])],
            &["bf16[8]", "expected one of f32"],
        ),
        // rope_kv
        case(
            "rope_kv: qkv width",
            rope(),
            vec![
                f32t(&[3, qkv_w - 4]),
                f32t(&[D / 2]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["f32[3, 60]", "expected [tokens, 64]"],
        ),
        case(
            "rope_kv: inv_freq length",
            rope(),
            vec![
                f32t(&[3, qkv_w]),
                f32t(&[D]),
                cache(DType::F32, 16),
                cache(DType::F32, 16),
            ],
            &["f32[8]", "expected [4] (head_dim / 2)"],
        ),
        case(
            "rope_kv: caches differ",
            rope(),
            vec![
                f32t(&[3, qkv_w]),
                f32t(&[D / 2]),
                cache(DType::F32, 16),
                cache(DType::F32, 8),
            ],
            &["f32[16, 2, 8]", "f32[8, 2, 8]", "expected the same"],
        ),
        case(
            "rope_kv: u32 cache",
            rope(),
            vec![
                f32t(&[3, qkv_w]),
                f32t(&[D / 2]),
                cache(DType::U32, 16),
                cache(DType::U32, 16),
            ],
            &["u32[16, 2, 8]", "expected one of f32, f16"],
        ),
        case(
            "rope_kv: odd head_dim",
            RopeKv {
                head_dim: 6,
                ..rope()
            },
            vec![
                f32t(&[3, 48]),
                f32t(&[3]),
                f32t(&[16, HKV, 6]),
                f32t(&[16, HKV, 6]),
            ],
            &["head_dim 6", "expected a multiple of 4"],
        ),
        case(
            "rope_kv: more tokens than cache rows",
            rope(),
            vec![
                f32t(&[9, qkv_w]),
                f32t(&[D / 2]),
                cache(DType::F16, 8),
                cache(DType::F16, 8),
            ],
            &["f32[9, 64]", "f16[8, 2, 8]", "expected at most 8 tokens"],
        ),
        case(
            "embedding: output too large",
            Embedding,
            vec![t(DType::U32, &[1 << 30]), f32t(&[10, 8])],
            &["f32[1073741824, 8]", "more than 2^32 − 1 elements"],
        ),
        // take_last_row
        case(
            "take_last_row: rank 1",
            TakeLastRow,
            vec![f32t(&[8])],
            &["f32[8]", "expected [rows ≥ 1, n]"],
        ),
        case(
            "take_last_row: f16",
            TakeLastRow,
            vec![t(DType::F16, &[2, 8])],
            &["f16[2, 8]", "expected one of f32"],
        ),
        // swiglu / swiglu_cat
        case(
            "swiglu: shapes differ",
            SwiGlu,
            vec![f32t(&[2, 4]), f32t(&[2, 5])],
            &["f32[2, 4]", "f32[2, 5]", "expected equal shapes"],
        ),
        case(
            "swiglu: f16 up",
            SwiGlu,
            vec![f32t(&[2, 4]), t(DType::F16, &[2, 4])],
            &["f16[2, 4]", "expected one of f32"],
        ),
        case(
            "swiglu_cat: odd width",
            SwiGluCat,
            vec![f32t(&[2, 7])],
            &["f32[2, 7]", "expected an even last dimension"],
        ),
        case(
            "swiglu_cat: u32",
            SwiGluCat,
            vec![t(DType::U32, &[2, 8])],
            &["u32[2, 8]", "expected one of f32"],
        ),
        // topk / penalize
        case(
            "topk: two rows",
            TopK { k: 4 },
            vec![f32t(&[2, 100])],
            &["f32[2, 100]", "expected one non-empty row"],
        ),
        case(
            "topk: k too large",
            TopK { k: 65 },
            vec![f32t(&[1, 100])],
            &["k = 65", "expected 1 ..= 64"],
        ),
        case(
            "topk: f16 logits",
            TopK { k: 4 },
            vec![t(DType::F16, &[1, 100])],
            &["f16[1, 100]", "expected one of f32"],
        ),
        case(
            "penalize: counts length",
            penalize(),
            vec![f32t(&[1, 100]), t(DType::U32, &[8]), f32t(&[7])],
            &["u32[8]", "f32[7]", "expected the same length"],
        ),
        case(
            "penalize: f32 ids",
            penalize(),
            vec![f32t(&[1, 100]), f32t(&[8]), f32t(&[8])],
            &["ids", "f32[8]", "expected one of u32"],
        ),
    ]
}

/// `f` must not panic; the case label says which input did.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{what}: the op panicked instead of returning an error: {msg}")
        }
    }
}

#[test]
fn every_op_rejects_bad_shapes_and_dtypes_with_a_message_naming_op_shapes_and_expectation() {
    let cases = table();
    // The table covers every op of src/ops.
    for (op, _) in all_ops() {
        let n = cases.iter().filter(|c| c.op.name() == op.name()).count();
        assert!(
            n >= 2,
            "op `{}` has {n} cases in the table; add a bad shape and a bad dtype",
            op.name()
        );
    }
    let mut failures = Vec::new();
    for c in &cases {
        let refs: Vec<&TensorDesc> = c.inputs.iter().collect();
        let r = no_panic(c.what, || c.op.infer(&refs));
        let msg = match r {
            Ok(out) => {
                failures.push(format!("{}: accepted, gave {out:?}", c.what));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let prefix = format!("op `{}`: ", c.op.name());
        if !msg.starts_with(&prefix) {
            failures.push(format!(
                "{}: {msg:?} does not start with {prefix:?}",
                c.what
            ));
        }
        for m in &c.mentions {
            if !msg.contains(m.as_str()) {
                failures.push(format!("{}: {msg:?} does not mention {m:?}", c.what));
            }
        }
        if msg.contains('\n') {
            failures.push(format!("{}: {msg:?} is more than one line", c.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_op_panics_on_mutated_inputs() {
    const DTYPES: &[DType] = &[
        DType::F32,
        DType::U32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4K,
    ];
    const DIMS: &[usize] = &[0, 1, 2, 3, 4, 7, 8, 16, 32, 64, 256, 1 << 20, 1 << 31];
    let mut rng = Rng::new(7);
    let pick = |rng: &mut Rng, n: usize| rng.below(n as u32) as usize;
    let (mut accepted, mut rejected) = (0usize, 0usize);
    let runs = [false, true]
        .into_iter()
        .flat_map(|cpu| all_ops().into_iter().map(move |o| (o, cpu)));
    for ((op, valid), cpu) in runs {
        let caps = caps(cpu);
        // The starting point is valid, so the mutations below are one to three steps from it.
        let refs: Vec<&TensorDesc> = valid.iter().collect();
        op.infer(&refs)
            .and_then(|_| op.kernels(&caps, &refs))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: the valid inputs {valid:?} were refused: {e}",
                    op.name()
                )
            });
        for i in 0..2000 {
            let mut inputs = valid.clone();
            for _ in 0..1 + pick(&mut rng, 3) {
                if inputs.is_empty() {
                    inputs.push(f32t(&[4]));
                }
                let j = pick(&mut rng, inputs.len());
                match pick(&mut rng, 6) {
                    0 => inputs[j].dtype = DTYPES[pick(&mut rng, DTYPES.len())],
                    1 | 2 if !inputs[j].shape.is_empty() => {
                        let d = pick(&mut rng, inputs[j].shape.len());
                        inputs[j].shape[d] = DIMS[pick(&mut rng, DIMS.len())];
                    }
                    3 => inputs[j].shape.push(DIMS[pick(&mut rng, DIMS.len())]),
                    4 => {
                        inputs[j].shape.pop();
                    }
                    _ => {
                        if pick(&mut rng, 2) == 0 {
                            inputs.remove(j);
                        } else {
                            let dup = inputs[j].clone();
                            inputs.push(dup);
                        }
                    }
                }
            }
            let refs: Vec<&TensorDesc> = inputs.iter().collect();
            let what = format!("{} #{i} (cpu device: {cpu}) on {inputs:?}", op.name());
            let named = |msg: &str| msg.starts_with("op `") || msg.starts_with("GPU out of memory");
            match no_panic(&what, || op.infer(&refs)) {
                Err(e) => {
                    rejected += 1;
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with(&format!("op `{}`: ", op.name())),
                        "{what}: {msg:?} does not name the op"
                    );
                }
                Ok(_) => {
                    accepted += 1;
                    no_panic(&what, || op.scratch(&refs));
                    if let Err(e) = no_panic(&what, || op.kernels(&caps, &refs)) {
                        let msg = e.to_string();
                        assert!(
                            named(&msg),
                            "{what}: kernels error {msg:?} does not name the op"
                        );
                    }
                }
            }
        }
    }
    eprintln!("mutated input lists: {accepted} accepted, {rejected} rejected");
    assert!(
        accepted > 100 && rejected > 100,
        "{accepted} accepted, {rejected} rejected"
    );
}
