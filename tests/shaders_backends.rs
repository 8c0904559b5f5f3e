//! Metal and DX12, proven where they cannot run: every kernel variant Fado creates here — the
//! pipelines its real graphs build, for every weight format, in every kernel style (CPU-style,
//! GPU-style with and without subgroups, GPU-style without f16) — goes through naga's validator
//! and its MSL and HLSL back ends (the translations wgpu's Metal and DX12 backends make), and
//! the test fails on any error. Vulkan runs them for real in the other tests.
//!
//! The variants come from the pipeline cache after running: the tiny Llama fixtures (bf16
//! safetensors; f16, Q8_0, Q4_0, Q4_K, Q4_K_M and Q6_K GGUFs) through a multi-token prefill
//! and decode steps with penalties and log-probabilities, and a small synthetic model in each
//! of the nine weight types (which also runs the fill kernels).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{fixture, to_spirv, translate_to};
use fado::config::{LlamaConfig, RopeScaling};
use fado::constrain::GrammarSpec;
use fado::gpu::{shader, GpuContext, GpuOptions, PipelineKey};
use fado::model::Model;
use fado::sampling::SamplingParams;
use fado::session::Session;
use fado::tensor::DType;

/// The kernel styles and feature sets a device may give Fado.
fn contexts() -> Vec<(&'static str, Arc<GpuContext>)> {
    let make = |cpu: bool, subgroups: bool, f16: bool| {
        let mut o = GpuOptions::from_env();
        o.cpu_kernels = Some(cpu);
        o.disable_subgroups |= !subgroups;
        o.disable_f16 |= !f16;
        GpuContext::new(&o).expect("a Vulkan adapter (lavapipe without a GPU)")
    };
    vec![
        ("cpu-style", make(true, true, true)),
        ("gpu-style", make(false, true, true)),
        ("gpu-style-no-subgroups", make(false, false, true)),
        ("gpu-style-no-f16", make(false, true, false)),
    ]
}

/// A small model whose rows are whole blocks of every format (K-quants need 256).
fn small_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 512,
        hidden_size: 256,
        // Rows of 8448 values: the CPU-style down projection binds each prefill window of x
        // as 8 uniform bindings (every grouping's declarations).
        intermediate_size: 8448,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 1e4,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

/// Run the step shapes a model meets: a 20-token prefill (past the 8-row windows), then
/// decode steps plain and with penalties and log-probabilities.
fn exercise(model: &Arc<Model>) {
    let mut s = Session::new(model.clone(), 48).expect("session");
    let prompt: Vec<u32> = (0..20).map(|i| 3 + i % 200).collect();
    s.prefill(&prompt, 4).expect("prefill");
    s.prefill(&[5], 1).expect("decode");
    let params = SamplingParams {
        repeat_penalty: 1.2,
        ..SamplingParams::greedy()
    };
    s.generate_with_logprobs(&[7], &params, 2, Some(3), &mut |_, _| true)
        .expect("decode with penalties and logprobs");
    // Constrained decoding: the sampler's first pass reads the allowed-token mask.
    let lark = GrammarSpec::Lark("start: /[a-z]+/\n".into());
    let params = SamplingParams {
        constraint: Some(model.constraint(lark).expect("grammar")),
        ..SamplingParams::greedy()
    };
    s.generate(&[9], &params, 2, &mut |_| true)
        .expect("constrained decode");
}

/// Build batched decode's sampling head (the `ROWS` variants; no model builds it yet): top-k
/// with k 1 and k > 1, penalties, log-sum-exp. Compiling creates the pipelines.
fn exercise_rows(ctx: &Arc<GpuContext>) {
    use fado::graph::Graph;
    use fado::ops::sample::TopKSampleRows;
    use fado::ops::topk::{LogSumExpRows, PenalizeHistoryRows};
    use fado::tensor::TensorDesc;
    let u32s = |name, n: usize| {
        let desc = TensorDesc::new(DType::U32, [n]);
        ctx.upload(name, desc, &vec![0u8; 4 * n]).expect("upload")
    };
    let logits = ctx
        .upload_f32("logits", &[3, 1000], &[0.0; 3000])
        .expect("upload");
    let (params, history) = (u32s("params", 4 * 16), u32s("history", 4 * 32));
    for k in [1, 40] {
        let mut g = Graph::new();
        let ins = [
            g.external("logits", &logits),
            g.external("params", &params),
            g.external("history", &history),
        ];
        let history_len = 32;
        g.add0(PenalizeHistoryRows { history_len }, &ins)
            .expect("penalties");
        let c = g
            .add1(TopKSampleRows { k, history_len }, &ins)
            .expect("top-k");
        let l = g.add1(LogSumExpRows, &ins[..1]).expect("lse");
        g.compile(ctx, &[c, l]).expect("compile the batched head");
    }
}

/// Validate `key`'s WGSL with naga and translate it to MSL and HLSL.
fn translate(key: &PipelineKey) -> Result<(), String> {
    let src = shader::preprocess(key.shader, &key.defines).map_err(|e| e.to_string())?;
    translate_source(&src, key.entry)
}

fn translate_source(src: &str, entry: &str) -> Result<(), String> {
    translate_to(src, entry, true)
}

#[test]
fn every_kernel_variant_translates_to_msl_and_hlsl() {
    let files = [
        "tiny-llama",
        "tiny-llama-f16.gguf",
        "tiny-llama-fado-q8_0.gguf",
        "tiny-llama-fado-q4_0.gguf",
        "tiny-llama-256-fado-q4_k.gguf",
        "tiny-llama-256-q4_k_m.gguf",
        "tiny-llama-256-q6_k.gguf",
    ];
    let mut keys = Vec::new();
    let mut shaders = BTreeSet::new();
    for (style, ctx) in contexts() {
        for f in files {
            exercise(&common::load_on(ctx.clone(), fixture(f)));
        }
        for dtype in DType::WEIGHT_TYPES {
            let m = Model::synthetic(ctx.clone(), "small", small_config(), dtype, None)
                .expect("synthetic model");
            exercise(&m);
        }
        exercise_rows(&ctx);
        for k in ctx.pipelines.keys() {
            shaders.insert(k.shader);
            keys.push((style, k));
        }
    }
    // Every kernel family was reached (a change that stops building one would shrink this).
    for family in [
        "attention.wgsl",
        "elementwise.wgsl",
        "embedding.wgsl",
        "fill.wgsl",
        "gemv.wgsl",
        "matmul.wgsl",
        "matmul_quant.wgsl",
        "matmul_rows.wgsl",
        "rmsnorm.wgsl",
        "rope.wgsl",
        "topk.wgsl",
    ] {
        assert!(
            shaders.contains(family),
            "{family} never built: {shaders:?}"
        );
    }
    let rows = keys
        .iter()
        .filter(|(_, k)| k.defines.get("ROWS").is_some_and(|v| v == "1"))
        .count();
    assert!(rows >= 4, "only {rows} batched (ROWS) variants built");
    let failures: Vec<String> = keys
        .iter()
        .filter_map(|(style, k)| {
            translate(k)
                .err()
                .map(|e| format!("{style} {}::{} {:?}: {e}", k.shader, k.entry, k.defines))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} variants fail:\n{}",
        failures.len(),
        keys.len(),
        failures.join("\n")
    );
    eprintln!("{} variants translate to MSL and HLSL", keys.len());
}

#[test]
fn the_translation_check_rejects_broken_kernels() {
    let ok = "@compute @workgroup_size(1) fn main() {}";
    assert_eq!(translate_source(ok, "main"), Ok(()));
    assert!(translate_source(ok, "other").is_err());
    let bad = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    assert!(translate_source(bad, "main").is_err());
}

#[test]
fn every_cooperative_matrix_variant_compiles_for_vulkan_and_the_8x8_ones_for_metal() {
    // Built from the dispatch code with each configuration an adapter may report (this machine's
    // Vulkan driver may have none): 16×16 on 32-wide subgroups (NVIDIA), 8×8 on 8-wide ones
    // (Mesa 26's lavapipe) and 32-wide ones (Apple's simdgroup matrices are 8×8), for every
    // 16-bit and block weight format, plain and added into y. Not DX12: naga 30's HLSL back end
    // has no cooperative matrices (so wgpu's DX12 backend offers none, and Fado keeps the
    // tiled kernels there).
    use fado::gpu::CoopMat;
    use fado::ops::matmul::{Matmul, MatmulAddInto};
    use fado::ops::Op;
    use fado::tensor::TensorDesc;
    let base = common::ctx().caps.clone();
    let mut failures = Vec::new();
    let mut n = 0;
    for (size, subgroup) in [(16, 32), (8, 8), (8, 32)] {
        let mut caps = base.clone();
        caps.cpu = false;
        caps.max_workgroup_storage = caps.max_workgroup_storage.max(32 << 10);
        caps.max_invocations = caps.max_invocations.max(256);
        caps.coopmat = Some(CoopMat { size, subgroup });
        for dtype in DType::WEIGHT_TYPES {
            if dtype == DType::F32 {
                continue;
            }
            let (x, w, y) = (
                TensorDesc::f32([64, 512]),
                TensorDesc::new(dtype, [96, 512]),
                TensorDesc::f32([64, 96]),
            );
            let plain = Matmul.kernels(&caps, &[&x, &w]).expect("kernels");
            let add = MatmulAddInto
                .kernels(&caps, &[&x, &w, &y])
                .expect("kernels");
            for c in plain.into_iter().chain(add) {
                assert_eq!(c.shader, "matmul_coop.wgsl", "{dtype} {size}×{size}");
                let src = shader::preprocess(c.shader, &c.defines).expect("preprocess");
                let what = format!("{dtype} {size}×{size} SG {subgroup} {:?}", c.defines);
                if let Err(e) = to_spirv(&src, c.entry) {
                    failures.push(format!("{what}: {e}"));
                }
                if size == 8 {
                    if let Err(e) = translate_to(&src, c.entry, false) {
                        failures.push(format!("{what}: {e}"));
                    }
                }
                n += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} variants fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(n >= 3 * 8 * 2, "{n} variants");
}
