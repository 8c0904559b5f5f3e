//! The tiny random Llama fixture (bf16, two safetensors shards; and its f16 GGUF twin) against
//! the logits and greedy tokens transformers recorded (scripts/make_fixtures.py).

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use fado::model::{Model, ModelOptions};
use fado::sampling::SamplingParams;
use fado::session::Session;
use serde_json::Value;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn expected(name: &str) -> Value {
    let s = std::fs::read_to_string(fixture(name)).expect("fixture json");
    serde_json::from_str(&s).expect("fixture json parses")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn load(path: PathBuf) -> Arc<Model> {
    Model::load_on(ctx(), &path, &ModelOptions::default()).expect("model loads")
}

/// Last-position logits within 1e-4 relative (to the largest logit) and identical greedy tokens.
fn check(model: &Arc<Model>, exp: &Value) {
    for p in exp["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt = ids(&p["ids"]);
        let mut s = Session::new(model.clone(), 128).unwrap();
        s.prefill(&prompt, 1).unwrap();
        let got = s.last_logits().unwrap();
        assert_close_rel_max(
            &format!("{name}: last logits"),
            &got,
            &floats(&p["last_logits"]),
            F32_RTOL,
        );
        let want = ids(&p["greedy_tokens"]);
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

#[test]
fn tiny_llama_safetensors_matches_transformers_logits_and_greedy_tokens() {
    let m = load(fixture("tiny-llama"));
    check(&m, &expected("tiny-llama-expected.json"));
}

#[test]
fn tiny_llama_gguf_with_permuted_qk_matches_transformers() {
    let m = load(fixture("tiny-llama-f16.gguf"));
    check(&m, &expected("tiny-llama-f16-gguf-expected.json"));
}
