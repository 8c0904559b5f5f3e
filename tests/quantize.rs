//! `fado quantize` (fado::convert): the tiny fixture quantized to Q8_0 reads back with the
//! blocks Fado's quantizer made, the tokenizer and template it had, and transformers' greedy
//! tokens within what Q8_0 allows.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use fado::convert;
use fado::loader::{self, gguf::GgufModel, permute_rows, WeightSource};
use fado::quant;
use fado::tensor::DType;
use fado::tokenizer::Tokenizer;

fn quantize_tiny(dir: &Path, dtype: DType) -> PathBuf {
    let out = dir.join(format!("tiny-{dtype}.gguf"));
    convert::quantize_model(&fixture("tiny-llama"), &out, dtype, None).expect("quantize");
    out
}

/// Q8_0 moves each weight by at most half a step (max|block| / 254). On this random model that
/// moves the last logits by 1.6 %, 2.1 % and 4.7 % of the largest logit for the three prompts —
/// the same numbers transformers gives on the Q8_0-dequantized weights (checked once with the
/// gguf package's quantizer), so this is Q8_0's error, not Fado's.
const Q8_0_LOGIT_RTOL: f32 = 6e-2;
/// Greedy tokens are compared up to the first step where transformers' top-2 logit gap (on
/// the bf16 model) is below this: smaller gaps are within Q8_0's logit error. Measured: 43 of
/// 48 tokens compared, all equal.
const Q8_0_TIE_MARGIN: f64 = 0.05;

#[test]
fn tiny_llama_quantized_to_q8_0_keeps_transformers_greedy_tokens() {
    let dir = scratch("quantize", "greedy");
    let m = load(quantize_tiny(&dir, DType::Q8_0));
    assert_eq!(m.weights.layers[0].qkv[0].dtype(), DType::Q8_0);
    let exp = fixture_json("tiny-llama-expected.json");
    let mut compared = 0;
    for p in exp["prompts"].as_array().unwrap() {
        let name = &format!("{}: q8_0", p["name"].as_str().unwrap());
        let prompt = json_ids(&p["ids"]);
        assert_reference_logits(&m, &prompt, p, Q8_0_LOGIT_RTOL, name);
        compared += assert_reference_greedy(&m, &prompt, p, Q8_0_TIE_MARGIN, 128, name);
    }
    assert!(compared >= 40, "only {compared} greedy tokens compared");
}

#[test]
fn quantized_file_holds_exactly_the_blocks_fado_quantized_in_llama_cpp_order() {
    let dir = scratch("quantize", "blocks");
    let out = quantize_tiny(&dir, DType::Q8_0);
    let src = loader::open(fixture("tiny-llama")).unwrap();
    let q = GgufModel::open(&out).unwrap();
    assert_eq!(q.config().hidden_size, src.config().hidden_size);
    assert_eq!(q.file().version(), 3);
    let heads = src.config().num_attention_heads;
    let mut quantized = 0;
    for e in src.tensors() {
        let got = q.get(&e.name).expect("tensor in the output");
        let bytes = q.bytes(&e.name).unwrap();
        let orig = src.bytes(&e.name).unwrap();
        assert_eq!(e.dtype, DType::BF16, "the fixture is bf16");
        let cols = e.shape[e.shape.len() - 1];
        let want: Vec<u8> = if e.shape.len() == 1 {
            assert_eq!(got.dtype, DType::F32, "{}", e.name);
            float_values(DType::BF16, &orig)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        } else if cols % 32 == 0 {
            assert_eq!(got.dtype, DType::Q8_0, "{}", e.name);
            quantized += 1;
            quant::quantize(DType::Q8_0, &float_values(DType::BF16, &orig)).unwrap()
        } else {
            // down_proj rows of 344 are not whole blocks: kept bf16, byte for byte.
            assert_eq!(got.dtype, DType::BF16, "{}", e.name);
            orig.to_vec()
        };
        assert!(bytes[..] == want[..], "{}: bytes differ", e.name);
        if e.name == "model.layers.0.self_attn.q_proj.weight" {
            // The file itself holds llama.cpp's row order.
            let info = q.file().tensor_info("blk.0.attn_q.weight").unwrap();
            let row = want.len() / e.shape[0];
            assert!(q.file().tensor_data(info) == &permute_rows(&want, heads, row)[..]);
        }
    }
    assert_eq!(
        quantized,
        2 + 2 * 6,
        "embedding, lm_head, 6 matrices per layer"
    );
}

#[test]
fn quantized_file_carries_the_tokenizer_and_chat_template() {
    let dir = scratch("quantize", "tokenizer");
    let out = quantize_tiny(&dir, DType::Q4_0);
    let q = GgufModel::open(&out).unwrap();
    let meta = q.metadata();
    let from_gguf =
        fado::loader::gguf::vocab::tokenizer_from_map(meta).expect("tokenizer from metadata");
    let hf = Tokenizer::from_file(fixture("tiny-llama/tokenizer.json")).unwrap();
    for text in [
        "Olá, Lisboa! 123 4567",
        "<|im_start|>user\nhello  world<|im_end|>",
        " leading space\tand tabs\n\nnewlines",
        "ação çã 😀",
    ] {
        assert_eq!(
            from_gguf.encode(text, true).unwrap(),
            hf.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    let template = std::fs::read_to_string(fixture("tiny-llama/chat_template.jinja")).unwrap();
    assert_eq!(
        meta.get("tokenizer.chat_template").and_then(|v| v.as_str()),
        Some(template.as_str())
    );
}

#[test]
fn quantize_refuses_unsupported_types_and_tokenizers_with_the_reason() {
    let dir = scratch("quantize", "refuse");
    let e = convert::quantize_model(
        &fixture("tiny-llama"),
        &dir.join("x.gguf"),
        DType::Q6K,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("q6_k") && e.contains("q8_0, q4_0 or q4_k"),
        "{e}"
    );
    // A SentencePiece-style tokenizer.json (Metaspace decoder) is not converted.
    let tj = r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                 "pre_tokenizer": null, "decoder": {"type": "Metaspace"}, "added_tokens": []}"#;
    std::fs::write(dir.join("tokenizer.json"), tj).unwrap();
    let e = convert::tokenizer_metadata(&dir, 4)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot convert this tokenizer") && e.contains("Metaspace"),
        "{e}"
    );
    assert!(!dir.join("x.gguf").exists() && !dir.join("x.gguf.part").exists());
}

#[test]
fn fado_quantize_command_writes_the_file_and_reports_fallbacks() {
    let dir = scratch("quantize", "cli");
    let out = dir.join("tiny.gguf");
    let run = |ty: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fado"))
            .args(["quantize"])
            .arg(fixture("tiny-llama"))
            .arg(&out)
            .args(["--type", ty])
            .output()
            .expect("run fado")
    };
    let o = run("q4_0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("14 q4_0")
            && err.contains("fell back")
            && err.contains("down_proj.weight: bf16"),
        "{err}"
    );
    assert_eq!(
        GgufModel::open(&out)
            .unwrap()
            .get("model.embed_tokens.weight")
            .unwrap()
            .dtype,
        DType::Q4_0
    );
    let o = run("q6_k");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown quantization `q6_k`"), "{err}");
}

#[test]
fn add_bos_token_is_inferred_from_the_post_processor_when_the_config_omits_it() {
    let dir = scratch("quantize", "add-bos");
    std::fs::copy(
        fixture("tiny-llama/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    // The fixture's post-processor is TemplateProcessing "<s> $A".
    for (bos, want) in [("<s>", true), ("</s>", false)] {
        std::fs::write(
            dir.join("tokenizer_config.json"),
            format!(r#"{{"bos_token": "{bos}", "eos_token": "<|im_end|>"}}"#),
        )
        .unwrap();
        let md = convert::tokenizer_metadata(&dir, 512).unwrap();
        assert_eq!(
            md.get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool()),
            Some(want),
            "bos {bos}"
        );
    }
}
