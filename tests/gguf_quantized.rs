//! GGUF files quantized by llama.cpp (Q4_K_M, Q6_K) and by `fado quantize` (Q8_0, Q4_0, Q4_K)
//! against the `gguf` Python package's reference dequantizer and transformers
//! (scripts/make_quant_fixtures.py wrote tests/fixtures/quant-gguf-expected.json): every tensor
//! dequantizes bit for bit as the reference, and the llama.cpp files give transformers'
//! logits and greedy tokens on the dequantized weights.

mod common;
use common::*;

use std::sync::Arc;

use fado::loader::gguf::GgufFile;
use fado::model::Model;
use fado::quant;
use fado::tensor::DType;
use serde_json::Value;

fn expected() -> Value {
    fixture_json("quant-gguf-expected.json")
}

/// The fixture script's checksum: Σ bits(v[i]) · (2i + 1) mod 2^64, as 16 hex digits.
fn checksum(v: &[f32]) -> String {
    let h = v.iter().enumerate().fold(0u64, |h, (i, x)| {
        h.wrapping_add((x.to_bits() as u64).wrapping_mul(2 * i as u64 + 1))
    });
    format!("{h:016x}")
}

/// A tensor's values as Fado reads them: quantized blocks through `quant::dequantize`, floats
/// widened.
fn values(dtype: DType, data: &[u8], n: usize) -> Vec<f32> {
    if dtype.is_quantized() {
        quant::dequantize(dtype, data, n).expect("dequantize")
    } else {
        float_values(dtype, data)
    }
}

/// Check every tensor of `file` against the reference; returns the dtypes seen.
fn check_tensors(file: &str) -> Vec<DType> {
    let exp = expected();
    let f = &exp["files"][file];
    assert!(f.is_object(), "{file} is not in the fixture JSON");
    let g = GgufFile::open(fixture(file)).expect("open");
    let recs = f["tensors"].as_array().unwrap();
    assert_eq!(recs.len(), g.tensor_infos().len(), "{file}: tensor count");
    let mut seen = Vec::new();
    for r in recs {
        let name = r["name"].as_str().unwrap();
        let info = g
            .tensor_info(name)
            .unwrap_or_else(|| panic!("{file}: no {name}"));
        assert_eq!(
            info.dtype.name(),
            r["type"].as_str().unwrap().to_ascii_lowercase(),
            "{file}: {name} type"
        );
        let ne: Vec<u64> = r["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(info.ne, ne, "{file}: {name} ne");
        let n = ne.iter().product::<u64>() as usize;
        let v = values(info.dtype, g.tensor_data(info), n);
        let first = json_f32s(&r["first"]);
        for (i, (a, b)) in v.iter().zip(&first).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{file}: {name}[{i}] = {a}, reference {b}"
            );
        }
        // Bitwise equality of every value (the checksum is order- and bit-sensitive).
        assert_eq!(
            checksum(&v),
            r["checksum"].as_str().unwrap(),
            "{file}: {name} ({}) dequantizes differently from gguf.quants",
            info.dtype
        );
        if !seen.contains(&info.dtype) {
            seen.push(info.dtype);
        }
    }
    seen
}

/// Fado's kernels on the same dequantized weights as transformers: f32 accumulation in another
/// order, so the f32 tolerance.
fn check_model(file: &str) {
    check_model_on(load(fixture(file)), file);
}

/// [`check_model`] on a loaded model (its context decides the kernels).
fn check_model_on(m: Arc<Model>, file: &str) {
    let exp = expected();
    for p in exp["files"][file]["prompts"].as_array().unwrap() {
        let what = &format!("{file} {}", p["name"].as_str().unwrap());
        let prompt = json_ids(&p["ids"]);
        assert_reference_logits(&m, &prompt, p, F32_RTOL, what);
        // Greedy tokens up to the first step whose top-2 gap is within summation-order noise.
        let n = assert_reference_greedy(&m, &prompt, p, 1e-3, 128, what);
        eprintln!("{what}: {n} greedy tokens compared");
    }
}

#[test]
fn llama_cpp_q4_k_m_dequantizes_bitwise_as_gguf_reference() {
    let seen = check_tensors("tiny-llama-256-q4_k_m.gguf");
    assert!(
        seen.contains(&DType::Q4K) && seen.contains(&DType::Q6K),
        "Q4_K_M mixes Q4_K and Q6_K: {seen:?}"
    );
}

#[test]
fn llama_cpp_q6_k_dequantizes_bitwise_as_gguf_reference() {
    assert!(check_tensors("tiny-llama-256-q6_k.gguf").contains(&DType::Q6K));
}

#[test]
fn llama_cpp_q4_k_m_gives_transformers_logits_and_greedy_tokens() {
    check_model("tiny-llama-256-q4_k_m.gguf");
}

#[test]
fn llama_cpp_q6_k_gives_transformers_logits_and_greedy_tokens() {
    check_model("tiny-llama-256-q6_k.gguf");
}

/// The integer GEMV path (what GPUs with packed integer dot products decode with: int8 x per
/// 32 values) on every quantized fixture: one-token logits within `INT_DOT_RTOL` of
/// transformers, greedy tokens equal up to the first top-2 gap below `INT_DOT_TIE`.
#[test]
fn quantized_files_with_the_integer_gemv_path_stay_near_transformers() {
    for file in [
        "tiny-llama-256-q4_k_m.gguf",
        "tiny-llama-256-q6_k.gguf",
        "tiny-llama-fado-q8_0.gguf",
        "tiny-llama-fado-q4_0.gguf",
        "tiny-llama-256-fado-q4_k.gguf",
    ] {
        let m = load_on(ctx_int_dot(), fixture(file));
        assert!(m.ctx.caps.int_dot);
        check_model_on(m, file);
    }
}

#[test]
fn fado_quantized_files_read_back_through_the_gguf_reference_dequantizer() {
    for (file, dtype) in [
        ("tiny-llama-fado-q8_0.gguf", DType::Q8_0),
        ("tiny-llama-fado-q4_0.gguf", DType::Q4_0),
        ("tiny-llama-256-fado-q4_k.gguf", DType::Q4K),
    ] {
        assert!(check_tensors(file).contains(&dtype), "{file} holds {dtype}");
    }
}

#[test]
fn fado_quantized_files_give_transformers_logits_and_greedy_tokens() {
    for file in [
        "tiny-llama-fado-q8_0.gguf",
        "tiny-llama-fado-q4_0.gguf",
        "tiny-llama-256-fado-q4_k.gguf",
    ] {
        check_model(file);
    }
}

#[test]
fn fado_quantizer_still_writes_the_committed_fixture_bytes() {
    // Keeps the fixtures above tied to the current quantizer and writer.
    let dir = scratch("gguf-quantized", "fixture-bytes");
    for (dtype, file) in [
        (DType::Q8_0, "tiny-llama-fado-q8_0.gguf"),
        (DType::Q4_0, "tiny-llama-fado-q4_0.gguf"),
    ] {
        let out = dir.join(file);
        fado::convert::quantize_model(&fixture("tiny-llama"), &out, dtype, None).unwrap();
        let (a, b) = (
            GgufFile::open(&out).unwrap(),
            GgufFile::open(fixture(file)).unwrap(),
        );
        assert_eq!(a.tensor_infos().len(), b.tensor_infos().len());
        for i in a.tensor_infos() {
            let j = b.tensor_info(&i.name).unwrap();
            assert!(
                a.tensor_data(i) == b.tensor_data(j),
                "{file}: {} differs from the committed fixture",
                i.name
            );
        }
    }
}

/// Q4_K_M keeps v (and some down projections) in Q6_K and q, k in Q4_K: the stacked q|k|v then
/// loads as separate quantized parts (multiplied one by one, outputs concatenated), never as
/// a widened f32 copy, so the GPU holds about the file's tensor bytes.
#[test]
fn llama_cpp_q4_k_m_keeps_every_matrix_in_its_blocks_on_the_gpu() {
    let file = "tiny-llama-256-q4_k_m.gguf";
    let m = load(fixture(file));
    let mut split = 0;
    for (i, l) in m.weights.layers.iter().enumerate() {
        for t in l.qkv.iter().chain(&l.gate_up).chain([&l.o, &l.down]) {
            assert!(
                t.dtype().is_quantized(),
                "layer {i}: {} is on the GPU as {}",
                t.desc,
                t.dtype()
            );
        }
        if l.qkv.len() > 1 {
            split += 1;
        }
    }
    assert!(split > 0, "{file}: some layer's q, k, v differ in format");
    let g = fado::loader::gguf::GgufFile::open(fixture(file)).unwrap();
    let file_bytes: u64 = g
        .tensor_infos()
        .iter()
        .map(|i| g.tensor_data(i).len() as u64)
        .sum();
    // The tied table is one buffer; the RoPE table and block-layout padding are small.
    assert!(
        m.weights_bytes <= file_bytes + 4096,
        "{file}: {} bytes on the GPU for {file_bytes} bytes of tensors",
        m.weights_bytes
    );
}
