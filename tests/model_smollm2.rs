//! SmolLM2-135M-Instruct (the default model, Q4_1/Q8_0 GGUF) against transformers' greedy
//! continuations of the same GGUF (dequantized), raw and chat-templated.
//! Needs the default model: `scripts/fetch-default-model.sh` (the test scripts run it) or
//! FADO_DEFAULT_MODEL. Fails, never skips, without it.

mod common;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;

use fado::chat_template::Message;
use fado::generate::{encode_chat, encode_raw};
use fado::model::{Model, ModelOptions};
use fado::session::Session;
use serde_json::Value;

fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("FADO_DEFAULT_MODEL") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/fetch-default-model.sh"
    ))
    .output()
    .expect("run scripts/fetch-default-model.sh");
    assert!(
        out.status.success(),
        "the default model is needed: scripts/fetch-default-model.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Greedy tokens may legitimately differ after a step whose top-2 logit gap is within numerical
/// noise of quantized-weight summation order; compare up to the first such step.
const TIE_MARGIN: f64 = 2e-3;

#[test]
fn smollm2_gguf_greedy_continuations_match_transformers_raw_and_chat() {
    let path = default_model();
    let model: Arc<Model> =
        Model::load_on(ctx(), &path, &ModelOptions::default()).expect("load SmolLM2");
    let exp: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2-expected.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for p in exp["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want_prompt = ids(&p["prompt_ids"]);
        let prompt = if p["kind"] == "chat" {
            encode_chat(&model, &[Message::new("user", text)], true).unwrap()
        } else {
            encode_raw(&model, text).unwrap()
        };
        assert_eq!(prompt, want_prompt, "{text}: prompt ids");
        let want = ids(&p["greedy_tokens"]);
        let margins: Vec<f64> = p["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let n = margins
            .iter()
            .position(|m| *m < TIE_MARGIN)
            .map(|i| i + 1)
            .unwrap_or(want.len());
        let mut s = Session::new(model.clone(), 256).unwrap();
        // transformers ran with EOS disabled: generate token by token through the same path.
        let mut got = Vec::new();
        let mut cands = s.prefill(&prompt, 1).unwrap();
        for _ in 0..n {
            let t = cands[0].0;
            got.push(t);
            cands = s.prefill(&[t], 1).unwrap();
        }
        assert_eq!(
            got,
            want[..n],
            "{text}: greedy tokens (compared {n} of {})",
            want.len()
        );
        // And the public generate() agrees up to EOS.
        let mut s = Session::new(model.clone(), 256).unwrap();
        let g = s
            .generate(&prompt, &SamplingParams::greedy(), n, &mut |_| true)
            .unwrap();
        assert_eq!(g.tokens[..], want[..g.tokens.len()], "{text}: generate()");
    }
}
