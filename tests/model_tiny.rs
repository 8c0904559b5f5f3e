//! The tiny random Llama fixture (bf16, two safetensors shards; and its f16 GGUF twin) against
//! the logits and greedy tokens transformers recorded (scripts/make_fixtures.py); penalized
//! greedy decoding against the CPU reference of the penalties; and a quantized, tied embedding
//! table against its exact f32 twin.

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use fado::model::Model;
use fado::ops::topk::{penalize_cpu, topk_cpu};
use fado::sampling::SamplingParams;
use fado::session::Session;
use serde_json::Value;

/// Last-position logits within 1e-4 relative (to the largest logit) and identical greedy tokens.
fn check(model: &Arc<Model>, exp: &Value) {
    for p in exp["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = json_ids(&p["ids"]);
        assert_reference_logits(model, &prompt, p, F32_RTOL, name);
        let want = json_ids(&p["greedy_tokens"]);
        let mut s = Session::new(model.clone(), 128).unwrap();
        let mut no_eos = SamplingParams::greedy();
        no_eos.seed = 1;
        let g = s
            .generate(&prompt, &no_eos, want.len(), &mut |_| true)
            .unwrap();
        // EOS ends generation early; transformers' reference ran with EOS disabled.
        assert_eq!(
            g.tokens[..],
            want[..g.tokens.len()],
            "{name}: greedy tokens"
        );
    }
}

/// On every kernel variant: CPU-style (texel weights), GPU-style (decode with the fused
/// norm + GEMV), GPU-style without subgroups.
fn check_variants(path: PathBuf, exp: &Value) {
    for (label, c) in variant_contexts() {
        eprintln!("{label}");
        check(&load_on(c, &path), exp);
    }
}

#[test]
fn tiny_llama_safetensors_matches_transformers_logits_and_greedy_tokens() {
    check_variants(
        fixture("tiny-llama"),
        &fixture_json("tiny-llama-expected.json"),
    );
}

#[test]
fn tiny_llama_gguf_with_permuted_qk_matches_transformers() {
    check_variants(
        fixture("tiny-llama-f16.gguf"),
        &fixture_json("tiny-llama-f16-gguf-expected.json"),
    );
}

/// The penalty window as the CPU sees it: distinct ids of the last `n` tokens, with counts.
fn window(tokens: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut w = tokens[tokens.len().saturating_sub(n)..].to_vec();
    w.sort_unstable();
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    for run in w.chunk_by(|a, b| a == b) {
        ids.push(run[0]);
        counts.push(run.len() as f32);
    }
    (ids, counts)
}

/// Greedy decoding with penalties on the GPU gives, step by step, the argmax of the
/// un-penalized logits (read back from a plain session fed the same tokens) after the CPU
/// reference of the penalties; and the penalties change the output.
#[test]
fn penalized_greedy_decoding_matches_the_cpu_reference_step_by_step() {
    let m = tiny_model();
    let exp = fixture_json("tiny-llama-expected.json");
    let prompt = json_ids(&exp["prompts"][0]["ids"]);
    let steps = 24;
    let plain = {
        let mut s = Session::new(m.clone(), 128).unwrap();
        s.generate(&prompt, &SamplingParams::greedy(), steps, &mut |_| true)
            .unwrap()
            .tokens
    };
    // (repeat, presence, frequency, window): a window shorter than the prompt, and one longer.
    for (repeat, presence, frequency, last_n) in
        [(1.8f32, 0.0f32, 0.0f32, 12usize), (1.0, 0.5, 0.75, 64)]
    {
        let what =
            format!("repeat {repeat} presence {presence} frequency {frequency} last {last_n}");
        let p = SamplingParams {
            repeat_penalty: repeat,
            presence_penalty: presence,
            frequency_penalty: frequency,
            repeat_last_n: last_n,
            ..SamplingParams::greedy()
        };
        let mut s = Session::new(m.clone(), 128).unwrap();
        let got = s
            .generate(&prompt, &p, steps, &mut |_| true)
            .unwrap()
            .tokens;
        assert!(!got.is_empty(), "{what}: no tokens");
        // The reference: plain logits of the same history, penalized on the CPU.
        let mut r = Session::new(m.clone(), 128).unwrap();
        let mut history = prompt.clone();
        r.prefill(&prompt, 1).unwrap();
        for (i, &t) in got.iter().enumerate() {
            let mut logits = r.last_logits().unwrap();
            let (wi, wc) = window(&history, last_n);
            penalize_cpu(&mut logits, &wi, &wc, repeat, presence, frequency);
            let want = topk_cpu(&logits, 1).0[0];
            assert_eq!(t, want, "{what}: token {i} (history {history:?})");
            history.push(t);
            r.prefill(&[t], 1).unwrap();
        }
        assert_ne!(
            got,
            plain[..got.len()],
            "{what}: the penalties changed nothing"
        );
    }
}

/// Rewrite the f16 GGUF fixture with `token_embd` as `table` (ggml type, bytes) and
/// `output.weight` as `lm_head_f32` (f32 bytes), or dropped (tied) when `None`; every other
/// tensor and the metadata as they are.
fn rewrite_gguf(out: &std::path::Path, table: (u32, &[u8]), lm_head_f32: Option<&[u8]>) {
    use fado::loader::gguf::{write_raw, GgufFile, RawTensor};
    let src = GgufFile::open(fixture("tiny-llama-f16.gguf")).expect("open fixture");
    let md: Vec<_> = src
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut ts: Vec<RawTensor> = Vec::new();
    for i in src.tensor_infos() {
        let (ggml_type, data) = match i.name.as_str() {
            "token_embd.weight" => table,
            "output.weight" => match lm_head_f32 {
                Some(d) => (0, d),
                None => continue,
            },
            _ => (i.ggml_type, src.tensor_data(i)),
        };
        ts.push(RawTensor {
            name: i.name.clone(),
            ggml_type,
            ne: i.ne.clone(),
            data,
        });
    }
    assert!(
        lm_head_f32.is_none() || ts.iter().any(|t| t.name == "output.weight"),
        "the fixture is untied: it has an output.weight to replace"
    );
    write_raw(out, 3, &md, &ts).expect("write gguf");
}

#[test]
fn quantized_tied_embedding_is_one_gpu_buffer_and_matches_its_dequantized_twin() {
    use fado::quant;
    use fado::tensor::DType;
    let dir = scratch("model-tiny", "tied");
    let src = fado::loader::gguf::GgufFile::open(fixture("tiny-llama-f16.gguf")).unwrap();
    let info = src.tensor_info("token_embd.weight").unwrap();
    let table = float_values(DType::F16, src.tensor_data(info));
    let vocab = info.ne[1] as usize;
    for (dtype, ggml) in [(DType::Q8_0, 8u32), (DType::Q4_0, 2)] {
        let blocks = quant::quantize(dtype, &table).unwrap();
        let deq = quant::dequantize(dtype, &blocks, table.len()).unwrap();
        let q_path = dir.join(format!("tied-{dtype}.gguf"));
        rewrite_gguf(&q_path, (ggml, &blocks), None);
        let f_path = dir.join(format!("untied-f32-{dtype}.gguf"));
        rewrite_gguf(
            &f_path,
            (0, bytemuck::cast_slice(&deq)),
            Some(bytemuck::cast_slice(&deq)),
        );
        let q = load(q_path.clone());
        let f = load(f_path);
        assert!(q.config.tie_word_embeddings);
        let w = &q.weights;
        assert_eq!(w.embed.dtype(), dtype, "the table stays in its blocks");
        assert!(
            w.embed.same_place(&w.lm_head),
            "{dtype}: the tied lm_head is the embedding's own buffer"
        );
        // The f32 twin holds two f32 tables; the quantized model one table of blocks.
        let f32_table = (table.len() * 4) as u64;
        assert_eq!(
            f.weights_bytes - q.weights_bytes,
            2 * f32_table - quant::gpu_layout_bytes(dtype, vocab, table.len() / vocab),
            "{dtype}: GPU weight bytes"
        );
        // Same model (the twin holds the exact dequantized values): same logits and tokens.
        for p in fixture_json("tiny-llama-f16-gguf-expected.json")["prompts"]
            .as_array()
            .unwrap()
        {
            let prompt = json_ids(&p["ids"]);
            assert_close_rel_max(
                &format!("{dtype} tied vs f32 twin"),
                &last_logits(&q, &prompt, 64),
                &last_logits(&f, &prompt, 64),
                F32_RTOL,
            );
        }
    }
}

/// An f16 KV cache holds half the bytes of an f32 one (the cache is every layer's keys and
/// values: layers × 2 × ctx × kv_heads × head_dim values), and `--kv-type` names parse.
#[test]
fn f16_kv_cache_is_half_the_bytes_of_f32() {
    use fado::session::{KvType, SessionOptions};
    let m = tiny_model();
    let c = &m.config;
    let ctx = 96;
    let values = (c.num_hidden_layers * 2 * ctx * c.num_key_value_heads * c.head_dim) as u64;
    let bytes = |kv_type| {
        Session::with_options(m.clone(), SessionOptions { ctx, kv_type })
            .unwrap()
            .kv_bytes()
    };
    assert_eq!(bytes(KvType::F32), values * 4);
    assert_eq!(bytes(KvType::F16), values * 2);
    assert_eq!(Session::new(m.clone(), ctx).unwrap().kv_bytes(), values * 2);
    assert_eq!(KvType::parse("F32"), Ok(KvType::F32));
    let e = KvType::parse("q4").unwrap_err();
    assert!(e.contains("q4") && e.contains("f16"), "{e}");
}

/// A session that adopts another's cached prefix (`Session::adopt_prefix`: the rows copied on
/// the GPU) generates exactly what a session that prefilled the whole prompt generates, and
/// prefills only the rest; both KV types.
#[test]
fn an_adopted_prefix_continues_like_a_full_prefill() {
    use fado::session::{KvType, SessionOptions};
    let m = load(fixture("tiny-llama"));
    let shared: Vec<u32> = (0..90).map(|i| (i * 7 + 3) % 500).collect();
    let mut prompt = shared.clone();
    prompt.extend([11, 12, 13, 14]);
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    for kv_type in [KvType::F16, KvType::F32] {
        let opts = SessionOptions { ctx: 256, kv_type };
        let mut full = Session::with_options(m.clone(), opts).unwrap();
        let want = full.generate(&prompt, &greedy, 12, &mut |_| true).unwrap();

        // The source holds `shared` and something after it; the copy takes the prefix only.
        let mut src = Session::with_options(m.clone(), opts).unwrap();
        let mut other = shared.clone();
        other.extend([400, 401]);
        src.generate(&other, &greedy, 5, &mut |_| true).unwrap();
        let mut dst = Session::with_options(m.clone(), opts).unwrap();
        dst.generate(&[1, 2, 3], &greedy, 3, &mut |_| true).unwrap();
        dst.adopt_prefix(&src.kv_cache(), &src.history()[..shared.len()])
            .unwrap();
        assert_eq!(dst.history(), &shared[..]);
        let kept = dst.reuse_prefix(&prompt);
        assert_eq!(kept, shared.len());
        let got = dst
            .generate(&prompt[kept..], &greedy, 12, &mut |_| true)
            .unwrap();
        assert_eq!(got.prompt_tokens, 4, "only the suffix is prefilled");
        assert_eq!(got.tokens, want.tokens, "{kv_type:?}");
        // A prefix longer than the source's cache is an error, not a bad copy.
        let long: Vec<u32> = vec![1; 300];
        assert!(dst.adopt_prefix(&src.kv_cache(), &long).is_err());
    }
}
