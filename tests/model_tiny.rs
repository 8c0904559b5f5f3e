//! The tiny random Llama fixture (bf16, two safetensors shards; and its f16 GGUF twin) against
//! the logits and greedy tokens transformers recorded (scripts/make_fixtures.py); penalized
//! greedy decoding against the CPU reference of the penalties.

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use fado::model::{Model, ModelOptions};
use fado::ops::topk::{penalize_cpu, topk_cpu};
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
    let m = load(fixture("tiny-llama"));
    let exp = expected("tiny-llama-expected.json");
    let prompt = ids(&exp["prompts"][0]["ids"]);
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
