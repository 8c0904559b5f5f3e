//! Model file loaders (CPU only): GGUF read/write round trips, llama.cpp's Q/K permutation
//! undone, hostile GGUF and safetensors files, config.json variants, and the committed
//! tiny-llama fixtures.

mod common;
use common::{fixtures, float_values, Scratch};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fado::config::{LlamaConfig, RopeScaling};
use fado::loader::gguf::{self, ggml_type, GgufFile, GgufModel, MetaValue, RawTensor};
use fado::loader::{self, hf_config, SafetensorsModel, TensorEntry, WeightSource};
use fado::rng::Rng;
use fado::tensor::DType;
use serde_json::json;

/// f16-rounded bf16 weights vs the bf16 originals: bf16 has 8 mantissa bits, f16 11, so only
/// values in f16's subnormal range move.
const F16_OF_BF16_RTOL: f32 = 1e-3;
const F16_OF_BF16_ATOL: f32 = 1e-4;

fn scratch(name: &str) -> Scratch {
    common::scratch("loaders", name)
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn err_text<T>(r: fado::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            msg.contains(p),
            "error message {msg:?} should mention {p:?}"
        );
    }
}

/// llama.cpp `convert_hf_to_gguf.py` `LlamaModel.permute`, written the numpy way:
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
/// Output rows enumerate the swapped index order (h, j, t); each comes from input (h, t, j).
fn llama_cpp_permute(rows: &[&[u8]], n_head: usize) -> Vec<u8> {
    let half = rows.len() / n_head / 2;
    let mut out = Vec::new();
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                out.extend_from_slice(rows[h * 2 * half + t * half + j]);
            }
        }
    }
    out
}

fn split_rows(data: &[u8], rows: usize) -> Vec<&[u8]> {
    data.chunks(data.len() / rows).collect()
}

// ---------------------------------------------------------------------------------------------
// A hand-made GGUF header builder for hostile files.

#[derive(Default)]
struct B(Vec<u8>);
impl B {
    fn gguf(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B::default();
        b.0.extend_from_slice(b"GGUF");
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn pad(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    /// Tensor info: name, ne, type, offset.
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for &d in ne {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.0).expect("write");
        p
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF round trips

fn every_meta_type() -> Vec<(String, MetaValue)> {
    vec![
        ("t.u8".into(), MetaValue::U8(250)),
        ("t.i8".into(), MetaValue::I8(-7)),
        ("t.u16".into(), MetaValue::U16(65000)),
        ("t.i16".into(), MetaValue::I16(-30000)),
        ("t.u32".into(), MetaValue::U32(4_000_000_000)),
        ("t.i32".into(), MetaValue::I32(-2_000_000_000)),
        ("t.f32".into(), MetaValue::F32(1.5e-5)),
        ("t.bool".into(), MetaValue::Bool(true)),
        (
            "t.string".into(),
            MetaValue::String("héllo ▁wörld {{ x }}".into()),
        ),
        ("t.empty_string".into(), MetaValue::String(String::new())),
        ("t.u64".into(), MetaValue::U64(u64::MAX - 3)),
        ("t.i64".into(), MetaValue::I64(i64::MIN + 5)),
        ("t.f64".into(), MetaValue::F64(-2.25e300)),
        (
            "t.array_f32".into(),
            MetaValue::Array(vec![MetaValue::F32(1.0), MetaValue::F32(-0.5)]),
        ),
        (
            "t.nested".into(),
            MetaValue::Array(vec![
                MetaValue::Array(vec!["a".into(), "bc".into()]),
                MetaValue::Array(vec![]),
                MetaValue::Array(vec!["".into()]),
            ]),
        ),
        ("t.empty_array".into(), MetaValue::Array(vec![])),
    ]
}

#[test]
fn gguf_v2_and_v3_round_trip_every_metadata_type_and_tensor_type_byte_exact() {
    let dir = scratch("roundtrip");
    let mut rng = Rng::new(7);
    // (ggml type, ne, dtype) — rows whose lengths are whole blocks, ragged otherwise.
    let kinds: &[(u32, &[u64], DType)] = &[
        (ggml_type::F32, &[13, 3], DType::F32),
        (ggml_type::F16, &[7, 5], DType::F16),
        (ggml_type::BF16, &[9], DType::BF16),
        (ggml_type::Q8_0, &[64, 3], DType::Q8_0),
        (ggml_type::Q4_0, &[32, 5], DType::Q4_0),
        (ggml_type::Q4_1, &[96, 1], DType::Q4_1),
        (ggml_type::Q4_K, &[256, 2], DType::Q4K),
        (ggml_type::Q5_K, &[512, 1], DType::Q5K),
        (ggml_type::Q6_K, &[256, 3], DType::Q6K),
    ];
    let datas: Vec<Vec<u8>> = kinds
        .iter()
        .map(|(_, ne, d)| random_bytes(&mut rng, d.bytes_for(ne.iter().product::<u64>() as usize)))
        .collect();
    for (version, alignment) in [(2u32, 64u64), (3, 32)] {
        let mut md = every_meta_type();
        if alignment != 32 {
            md.push(("general.alignment".into(), MetaValue::U32(alignment as u32)));
        }
        let tensors: Vec<RawTensor> = kinds
            .iter()
            .zip(&datas)
            .enumerate()
            .map(|(i, ((ty, ne, _), data))| RawTensor {
                name: format!("x.{i}"),
                ggml_type: *ty,
                ne: ne.to_vec(),
                data,
            })
            .collect();
        let path = dir.join(format!("v{version}.gguf"));
        gguf::write_raw(&path, version, &md, &tensors).expect("write");
        let f = GgufFile::open(&path).expect("read back");
        assert_eq!(f.version(), version);
        assert_eq!(f.alignment(), alignment);
        assert_eq!(f.data_offset() % alignment, 0);
        let mut want: BTreeMap<String, MetaValue> = md.into_iter().collect();
        // An empty array has no element type; the writer stores u32.
        want.insert("t.empty_array".into(), MetaValue::Array(vec![]));
        assert_eq!(f.metadata(), &want, "metadata differs for v{version}");
        assert_eq!(f.tensor_infos().len(), kinds.len());
        for (i, (((_, ne, dtype), data), info)) in
            kinds.iter().zip(&datas).zip(f.tensor_infos()).enumerate()
        {
            assert_eq!(info.name, format!("x.{i}"));
            assert_eq!(info.dtype, *dtype);
            assert_eq!(&info.ne[..], *ne);
            assert_eq!(info.file_offset % alignment, 0, "tensor {i} not aligned");
            assert_eq!(
                f.tensor_data(info),
                &data[..],
                "tensor {i} ({dtype}) bytes differ"
            );
        }
    }
}

fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 40,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: 300,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2, 7],
    }
}

/// Random HF-named tensors for a config: 2-D weights in `wdtype`, norms in f32.
fn tiny_tensors(cfg: &LlamaConfig, wdtype: DType, rng: &mut Rng) -> Vec<(TensorEntry, Vec<u8>)> {
    let (h, q, kv, f, v) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
        cfg.vocab_size,
    );
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
    }
    shapes.push(("model.norm.weight".into(), vec![h]));
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![v, h]));
    }
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let dtype = if shape.len() == 1 { DType::F32 } else { wdtype };
            let n = dtype.bytes_for(shape.iter().product());
            (TensorEntry { name, dtype, shape }, random_bytes(rng, n))
        })
        .collect()
}

#[test]
fn gguf_writer_output_reads_back_as_the_same_hf_model() {
    let dir = scratch("writer");
    let mut rng = Rng::new(11);
    for (wdtype, tie) in [
        (DType::F16, false),
        (DType::Q8_0, true),
        (DType::Q4K, false),
    ] {
        let mut cfg = tiny_config();
        cfg.tie_word_embeddings = tie;
        if wdtype == DType::Q4K {
            // K-quants need 256-element rows.
            cfg.hidden_size = 256;
            cfg.head_dim = 64;
            cfg.intermediate_size = 512;
        }
        let tensors = tiny_tensors(&cfg, wdtype, &mut rng);
        let refs: Vec<(TensorEntry, &[u8])> =
            tensors.iter().map(|(e, d)| (e.clone(), &d[..])).collect();
        let path = dir.join(format!("{wdtype}.gguf"));
        gguf::write(&path, &gguf::config_metadata(&cfg), &refs).expect("write");

        let m = GgufModel::open(&path).expect("open");
        assert_eq!(m.config(), &cfg, "config round trip ({wdtype})");
        assert_eq!(m.file().version(), 3);
        let names: Vec<String> = m.tensors().into_iter().map(|t| t.name).collect();
        let want_names: Vec<String> = tensors.iter().map(|(e, _)| e.name.clone()).collect();
        assert_eq!(names, want_names);
        for (e, data) in &tensors {
            assert_eq!(&m.get(&e.name).expect("get"), e);
            assert_eq!(
                &m.bytes(&e.name).expect("bytes")[..],
                &data[..],
                "{} bytes",
                e.name
            );
        }

        // The file itself carries llama.cpp's layout: GGUF names, ne innermost first, Q/K rows permuted.
        let in_file = |name: &str| {
            let info = m
                .file()
                .tensor_info(name)
                .unwrap_or_else(|| panic!("{name} in file"));
            (info.ne.clone(), m.file().tensor_data(info))
        };
        let permuted = |(e, data): &(TensorEntry, Vec<u8>), n_head: usize| {
            llama_cpp_permute(&split_rows(data, e.shape[0]), n_head)
        };
        let q = &tensors[2];
        assert_eq!(q.0.name, "model.layers.0.self_attn.q_proj.weight");
        let (ne, data) = in_file("blk.0.attn_q.weight");
        assert_eq!(ne, vec![cfg.hidden_size as u64, cfg.q_dim() as u64]);
        assert_eq!(
            data,
            &permuted(q, cfg.num_attention_heads)[..],
            "attn_q in the file is not llama.cpp's permutation ({wdtype})"
        );
        assert_eq!(
            in_file("blk.0.attn_k.weight").1,
            &permuted(&tensors[3], cfg.num_key_value_heads)[..],
            "attn_k in the file is not llama.cpp's permutation with n_head_kv ({wdtype})"
        );
        assert_eq!(
            in_file("blk.0.attn_v.weight").1,
            &tensors[4].1[..],
            "attn_v must not be permuted"
        );
    }
}

#[test]
fn gguf_loader_undoes_llama_cpp_qk_permutation_for_float_and_quantized_rows() {
    let dir = scratch("unpermute");
    let mut rng = Rng::new(3);
    let (n_head, n_kv, hd, cols) = (6usize, 2usize, 10usize, 64usize);
    for (ty, dtype) in [(ggml_type::F32, DType::F32), (ggml_type::Q8_0, DType::Q8_0)] {
        let q_rows = n_head * hd;
        let k_rows = n_kv * hd;
        let q = if dtype == DType::F32 {
            f32_bytes(&rng.vec(q_rows * cols, 1.0))
        } else {
            random_bytes(&mut rng, dtype.bytes_for(q_rows * cols))
        };
        let k = random_bytes(&mut rng, dtype.bytes_for(k_rows * cols));
        let q_file = llama_cpp_permute(&split_rows(&q, q_rows), n_head);
        let k_file = llama_cpp_permute(&split_rows(&k, k_rows), n_kv);
        assert_ne!(
            q_file, q,
            "the permutation must move rows for the test to mean anything"
        );
        let md = vec![
            ("general.architecture".to_string(), MetaValue::from("llama")),
            ("llama.embedding_length".into(), MetaValue::U32(cols as u32)),
            ("llama.block_count".into(), MetaValue::U32(1)),
            ("llama.feed_forward_length".into(), MetaValue::U32(8)),
            (
                "llama.attention.head_count".into(),
                MetaValue::U32(n_head as u32),
            ),
            (
                "llama.attention.head_count_kv".into(),
                MetaValue::U32(n_kv as u32),
            ),
            (
                "llama.attention.key_length".into(),
                MetaValue::U32(hd as u32),
            ),
            ("llama.vocab_size".into(), MetaValue::U32(5)),
        ];
        let t = |name: &str, rows: usize, data| RawTensor {
            name: name.into(),
            ggml_type: ty,
            ne: vec![cols as u64, rows as u64],
            data,
        };
        let path = dir.join(format!("{dtype}.gguf"));
        gguf::write_raw(
            &path,
            3,
            &md,
            &[
                t("blk.0.attn_q.weight", q_rows, &q_file),
                t("blk.0.attn_k.weight", k_rows, &k_file),
                t("blk.0.attn_v.weight", k_rows, &k_file),
            ],
        )
        .expect("write");
        let m = GgufModel::open(&path).expect("open");
        let got_q = m
            .bytes("model.layers.0.self_attn.q_proj.weight")
            .expect("q");
        assert!(matches!(got_q, Cow::Owned(_)));
        assert_eq!(&got_q[..], &q[..], "q_proj rows not restored ({dtype})");
        let got_k = m
            .bytes("model.layers.0.self_attn.k_proj.weight")
            .expect("k");
        assert_eq!(
            &got_k[..],
            &k[..],
            "k_proj rows not restored with n_head_kv ({dtype})"
        );
        let got_v = m
            .bytes("model.layers.0.self_attn.v_proj.weight")
            .expect("v");
        assert!(
            matches!(got_v, Cow::Borrowed(_)),
            "v_proj should be zero-copy"
        );
        assert_eq!(&got_v[..], &k_file[..], "v_proj must be served as stored");
        assert_eq!(
            m.get("model.layers.0.self_attn.q_proj.weight")
                .expect("get")
                .shape,
            vec![q_rows, cols]
        );
    }
}

#[test]
fn gguf_llama3_rope_freqs_tensor_and_linear_scaling_become_config() {
    let dir = scratch("rope");
    let mut rng = Rng::new(5);
    let mut cfg = tiny_config();
    cfg.head_dim = 64;
    cfg.hidden_size = 256;
    cfg.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    cfg.rope_theta = 500000.0;
    let mut tensors = tiny_tensors(&cfg, DType::F16, &mut rng);
    let (e, d) = gguf::rope_freqs_tensor(&cfg).expect("llama3 has rope_freqs");
    tensors.push((e, d));
    let refs: Vec<(TensorEntry, &[u8])> =
        tensors.iter().map(|(e, d)| (e.clone(), &d[..])).collect();
    let path = dir.join("llama3.gguf");
    gguf::write(&path, &gguf::config_metadata(&cfg), &refs).expect("write");
    let m = GgufModel::open(&path).expect("open");
    assert_eq!(m.config().rope_scaling, cfg.rope_scaling);
    let want = cfg.rope_inv_freq();
    let got = m.config().rope_inv_freq();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w.abs(), "inv_freq {g} vs {w}");
    }

    cfg.rope_scaling = RopeScaling::Linear { factor: 4.0 };
    let tensors = tiny_tensors(&cfg, DType::F16, &mut rng);
    let refs: Vec<(TensorEntry, &[u8])> =
        tensors.iter().map(|(e, d)| (e.clone(), &d[..])).collect();
    let path = dir.join("linear.gguf");
    gguf::write(&path, &gguf::config_metadata(&cfg), &refs).expect("write");
    assert_eq!(GgufModel::open(&path).expect("open").config(), &cfg);

    let mut md = gguf::config_metadata(&cfg);
    md.insert("llama.rope.scaling.type".into(), "yarn".into());
    let path = dir.join("yarn.gguf");
    gguf::write(&path, &md, &refs).expect("write");
    assert_mentions(
        &err_text(GgufModel::open(&path)),
        &[
            "yarn.gguf",
            "unsupported rope scaling type yarn (supported: linear, llama3)",
        ],
    );
}

#[test]
fn gguf_fixture_matches_the_safetensors_fixture_after_unpermuting() {
    let gg = loader::open(fixtures().join("tiny-llama-f16.gguf")).expect("open gguf fixture");
    let st = loader::open(fixtures().join("tiny-llama")).expect("open safetensors fixture");
    assert_eq!(gg.format(), "gguf");
    assert_eq!(st.format(), "safetensors");
    let (a, b) = (gg.config(), st.config());
    assert_eq!(a.vocab_size, b.vocab_size);
    assert_eq!(a.hidden_size, b.hidden_size);
    assert_eq!(a.intermediate_size, b.intermediate_size);
    assert_eq!(a.num_hidden_layers, b.num_hidden_layers);
    assert_eq!(a.num_attention_heads, b.num_attention_heads);
    assert_eq!(a.num_key_value_heads, b.num_key_value_heads);
    assert_eq!(a.head_dim, b.head_dim);
    assert_eq!(a.rms_norm_eps, b.rms_norm_eps);
    assert_eq!(a.rope_theta, b.rope_theta);
    assert_eq!(a.rope_scaling, b.rope_scaling);
    assert_eq!(a.max_position_embeddings, b.max_position_embeddings);
    assert_eq!(a.tie_word_embeddings, b.tie_word_embeddings);
    assert_eq!(a.bos_token_id, b.bos_token_id);
    // llama.cpp's converter writes one eos id (here generation_config's `<|im_end|>`, 3).
    assert_eq!(a.eos_token_ids, vec![3]);
    assert!(b.eos_token_ids.contains(&3));
    let md = gg.gguf_metadata().expect("gguf metadata");
    assert!(md
        .get("tokenizer.chat_template")
        .and_then(|v| v.as_str())
        .is_some());
    assert_eq!(
        md.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len()),
        Some(a.vocab_size)
    );

    let mut gg_names: Vec<String> = gg.tensors().into_iter().map(|t| t.name).collect();
    let mut st_names: Vec<String> = st.tensors().into_iter().map(|t| t.name).collect();
    gg_names.sort();
    st_names.sort();
    assert_eq!(gg_names, st_names);
    for name in &st_names {
        let (ge, se) = (
            gg.get(name).expect("gguf get"),
            st.get(name).expect("st get"),
        );
        assert_eq!(ge.shape, se.shape, "{name} shape");
        assert_eq!(se.dtype, DType::BF16);
        let want = float_values(se.dtype, &st.bytes(name).expect("st bytes"));
        let got = float_values(ge.dtype, &gg.bytes(name).expect("gguf bytes"));
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= F16_OF_BF16_ATOL + F16_OF_BF16_RTOL * w.abs(),
                "{name}[{i}] (row {}): gguf {g} vs safetensors {w}",
                i / ge.shape.last().copied().unwrap_or(1)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile GGUF files

/// A small valid llama GGUF and the end of its last tensor's data.
fn small_valid_gguf(dir: &Path) -> (PathBuf, usize) {
    let mut rng = Rng::new(9);
    let mut cfg = tiny_config();
    cfg.num_hidden_layers = 1;
    cfg.vocab_size = 8;
    cfg.hidden_size = 32;
    cfg.head_dim = 8;
    cfg.intermediate_size = 32;
    let tensors = tiny_tensors(&cfg, DType::Q8_0, &mut rng);
    let refs: Vec<(TensorEntry, &[u8])> =
        tensors.iter().map(|(e, d)| (e.clone(), &d[..])).collect();
    let path = dir.join("small.gguf");
    gguf::write(&path, &gguf::config_metadata(&cfg), &refs).expect("write");
    let f = GgufFile::open(&path).expect("valid file opens");
    let end = f
        .tensor_infos()
        .iter()
        .map(|t| (t.file_offset + t.size) as usize)
        .max()
        .expect("has tensors");
    (path, end)
}

#[test]
fn gguf_truncated_at_any_byte_is_an_error_naming_the_file() {
    let dir = scratch("truncated");
    let (path, end) = small_valid_gguf(&dir);
    let bytes = std::fs::read(&path).expect("read");
    let cut_path = dir.join("cut.gguf");
    // Every byte of the header; in the data section, each tensor's edges and a stride.
    let f = GgufFile::open(&path).expect("open");
    let header_end = f.data_offset() as usize + 1;
    let mut cuts: Vec<usize> = (0..header_end)
        .chain((header_end..end).step_by(97))
        .collect();
    for t in f.tensor_infos() {
        let (s, e) = (t.file_offset as usize, (t.file_offset + t.size) as usize);
        cuts.extend([s, s + 1, e - 1].into_iter().filter(|&c| c < end));
    }
    cuts.push(end - 1);
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).expect("write");
        let msg = err_text(GgufFile::open(&cut_path));
        assert!(msg.contains("cut.gguf"), "cut at {cut}: {msg}");
        assert!(
            msg.contains("truncated") || (cut == 0 && msg.contains("empty")),
            "cut at {cut}: message should say truncated: {msg}"
        );
    }
    // Reading stops at header sections with a useful "what".
    std::fs::write(&cut_path, &bytes[..30]).expect("write");
    assert_mentions(
        &err_text(GgufFile::open(&cut_path)),
        &["truncated", "metadata"],
    );
    std::fs::write(&cut_path, &bytes[..end - 1]).expect("write");
    assert_mentions(
        &err_text(GgufFile::open(&cut_path)),
        &["output.weight", "beyond the end"],
    );
}

#[test]
fn gguf_hostile_headers_are_errors_not_allocations_or_panics() {
    let dir = scratch("hostile");
    let open = |b: &B, name: &str| err_text(GgufFile::open(b.write(&dir, name)));

    assert_mentions(
        &open(B::default().str("not gguf at all"), "magic.gguf"),
        &["magic.gguf", "not a GGUF file"],
    );
    assert_mentions(&open(&B::gguf(1, 0, 0), "v1.gguf"), &["version 1"]);
    assert_mentions(
        &open(&B::gguf(3u32.swap_bytes(), 0, 0), "be.gguf"),
        &["big-endian"],
    );
    assert_mentions(&open(&B::gguf(7, 0, 0), "v7.gguf"), &["version 7"]);

    // Counts far beyond the file.
    assert_mentions(
        &open(&B::gguf(3, 0, 1 << 40), "kv.gguf"),
        &["1099511627776 metadata entries"],
    );
    assert_mentions(
        &open(&B::gguf(3, 1 << 40, 0), "nt.gguf"),
        &["1099511627776 tensors"],
    );
    let mut b = B::gguf(3, 0, 1);
    b.u64(1 << 62).pad(16);
    assert_mentions(&open(&b, "keylen.gguf"), &["string length", "key"]);

    // Huge array lengths: over the cap, and within the cap but beyond the file.
    let mut b = B::gguf(3, 0, 1);
    b.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(1 << 40)
        .pad(64);
    assert_mentions(
        &open(&b, "arr.gguf"),
        &["tokenizer.ggml.tokens", "array length 1099511627776"],
    );
    let mut b = B::gguf(3, 0, 1);
    b.str("tokenizer.ggml.scores")
        .u32(9)
        .u32(6)
        .u64(1000)
        .pad(64);
    assert_mentions(
        &open(&b, "arr2.gguf"),
        &["tokenizer.ggml.scores", "array of 1000 elements"],
    );

    // Unknown value types, top-level and as array element type.
    let mut b = B::gguf(3, 0, 1);
    b.str("general.weird").u32(13).pad(16);
    assert_mentions(
        &open(&b, "ty.gguf"),
        &["general.weird", "unknown metadata value type 13"],
    );
    let mut b = B::gguf(3, 0, 1);
    b.str("general.weird").u32(9).u32(99).u64(1).pad(16);
    assert_mentions(&open(&b, "ety.gguf"), &["general.weird", "element type 99"]);

    // Arrays nested too deep.
    let mut b = B::gguf(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..6 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(0).pad(16);
    assert_mentions(&open(&b, "deep.gguf"), &["deep", "nested"]);

    // Duplicate keys, bad alignment.
    let mut b = B::gguf(3, 0, 2);
    b.str("a").u32(4).u32(1).str("a").u32(4).u32(2);
    assert_mentions(&open(&b, "dup.gguf"), &["'a' appears twice"]);
    let mut b = B::gguf(3, 0, 1);
    b.str("general.alignment").u32(4).u32(3);
    assert_mentions(
        &open(&b, "align.gguf"),
        &["general.alignment", "power of two"],
    );

    // Tensor infos.
    let tensor_file = |name: &str, ne: &[u64], ty: u32, offset: u64, data: usize| {
        let mut b = B::gguf(3, 1, 0);
        b.tensor(name, ne, ty, offset);
        let pad = b.0.len().div_ceil(32) * 32 - b.0.len();
        b.pad(pad + data);
        b
    };
    assert_mentions(
        &open(
            &tensor_file("blk.0.attn_q.weight", &[32, 2], ggml_type::Q5_0, 0, 64),
            "q50.gguf",
        ),
        &["blk.0.attn_q.weight", "Q5_0 (6)", "not support"],
    );
    assert_mentions(
        &open(&tensor_file("w", &[32, 2], 200, 0, 64), "t200.gguf"),
        &["'w'", "type 200 (no ggml type has this id)"],
    );
    assert_mentions(
        &open(
            &tensor_file("w", &[1 << 32, 1 << 32, 1 << 32], 0, 0, 64),
            "ovf.gguf",
        ),
        &["'w'", "overflows"],
    );
    assert_mentions(
        &open(
            &tensor_file("w", &[1 << 30, 1 << 30], 0, 0, 64),
            "huge.gguf",
        ),
        &["'w'", "beyond the end"],
    );
    assert_mentions(
        &open(&tensor_file("w", &[4, 4], 0, 1 << 20, 64), "off.gguf"),
        &["'w'", "beyond the end"],
    );
    assert_mentions(
        &open(
            &tensor_file("w", &[4, 4], 0, u64::MAX - 31, 64),
            "offmax.gguf",
        ),
        &["'w'", "beyond the end"],
    );
    assert_mentions(
        &open(&tensor_file("w", &[4], 0, 4, 64), "mis.gguf"),
        &["'w'", "alignment"],
    );
    assert_mentions(
        &open(&tensor_file("w", &[2, 2, 2, 2, 2], 0, 0, 64), "dims.gguf"),
        &["'w'", "5 dimensions"],
    );
    assert_mentions(
        &open(&tensor_file("w", &[4, 0], 0, 0, 64), "zero.gguf"),
        &["'w'", "zero"],
    );
    assert_mentions(
        &open(
            &tensor_file("w", &[33, 2], ggml_type::Q8_0, 0, 128),
            "block.gguf",
        ),
        &["'w'", "32-element block"],
    );
    let mut b = B::gguf(3, 2, 0);
    b.tensor("w", &[4], 0, 0).tensor("w", &[4], 0, 32).pad(128);
    assert_mentions(&open(&b, "duptensor.gguf"), &["'w' appears twice"]);
}

#[test]
fn gguf_model_level_errors_name_the_problem() {
    let dir = scratch("gguf-model");
    // Not llama.
    let md = vec![("general.architecture".to_string(), MetaValue::from("gpt2"))];
    let p = dir.join("gpt2.gguf");
    gguf::write_raw(&p, 3, &md, &[]).expect("write");
    assert_mentions(
        &err_text(GgufModel::open(&p)),
        &["gpt2.gguf", "'gpt2' is not supported", "llama"],
    );
    // Missing hyperparameter.
    let md = vec![
        ("general.architecture".to_string(), MetaValue::from("llama")),
        ("llama.embedding_length".into(), MetaValue::U32(64)),
    ];
    let p = dir.join("nohp.gguf");
    gguf::write_raw(&p, 3, &md, &[]).expect("write");
    assert_mentions(
        &err_text(GgufModel::open(&p)),
        &["llama.block_count", "missing"],
    );
    // Q rows that are not heads × an even head size.
    let mut md = gguf::config_metadata(&tiny_config());
    md.insert("llama.attention.head_count".into(), MetaValue::U32(5));
    md.insert("llama.attention.head_count_kv".into(), MetaValue::U32(5));
    let data = vec![0u8; 64 * 64 * 4];
    let p = dir.join("heads.gguf");
    gguf::write_raw(
        &p,
        3,
        &md.into_iter().collect::<Vec<_>>(),
        &[RawTensor {
            name: "blk.0.attn_q.weight".into(),
            ggml_type: ggml_type::F32,
            ne: vec![64, 64],
            data: &data,
        }],
    )
    .expect("write");
    assert_mentions(
        &err_text(GgufModel::open(&p)),
        &["blk.0.attn_q.weight", "64 rows", "5 heads"],
    );
    // Absent tensor.
    let (path, _) = small_valid_gguf(&dir);
    let m = GgufModel::open(&path).expect("open");
    assert_mentions(
        &err_text(m.get("model.layers.9.mlp.up_proj.weight")),
        &[
            "model.layers.9.mlp.up_proj.weight",
            "blk.9.ffn_up.weight",
            "not in the file",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Safetensors

/// A safetensors file from (name, dtype, shape, bytes); offsets laid out back to back.
fn st_file(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            (*name).into(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes.len()]}),
        );
        off += bytes.len();
        data.extend_from_slice(bytes);
    }
    st_raw(&serde_json::to_string(&header).expect("json"), &data)
}

fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn write_config(dir: &Path, cfg: serde_json::Value) {
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write config");
}

fn small_hf_config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "bos_token_id": 1, "eos_token_id": 2
    })
}

#[test]
fn safetensors_single_file_loads_zero_copy_by_dir_and_by_file() {
    let dir = scratch("st-single");
    let mut rng = Rng::new(1);
    let emb = random_bytes(&mut rng, 10 * 8 * 2);
    let norm = f32_bytes(&rng.vec(8, 1.0));
    let q = random_bytes(&mut rng, 8 * 8 * 2);
    std::fs::write(
        dir.join("model.safetensors"),
        st_file(&[
            ("model.embed_tokens.weight", "BF16", &[10, 8], &emb),
            ("model.norm.weight", "F32", &[8], &norm),
            ("model.layers.0.self_attn.q_proj.weight", "F16", &[8, 8], &q),
        ]),
    )
    .expect("write");
    write_config(&dir, small_hf_config());
    for src in [
        loader::open(&dir).expect("open dir"),
        loader::open(dir.join("model.safetensors")).expect("open file"),
        loader::open(dir.join("config.json")).expect("open config.json"),
    ] {
        assert_eq!(src.config().hidden_size, 8);
        assert_eq!(src.config().head_dim, 4);
        assert_eq!(src.hf_dir(), Some(&*dir));
        let names: Vec<String> = src.tensors().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.norm.weight",
                "model.layers.0.self_attn.q_proj.weight"
            ]
        );
        let e = src.get("model.embed_tokens.weight").expect("get");
        assert_eq!((e.dtype, e.shape.clone()), (DType::BF16, vec![10, 8]));
        assert_eq!(src.get("model.norm.weight").expect("get").dtype, DType::F32);
        assert_eq!(
            src.get("model.layers.0.self_attn.q_proj.weight")
                .expect("get")
                .dtype,
            DType::F16
        );
        let b = src.bytes("model.embed_tokens.weight").expect("bytes");
        assert!(
            matches!(b, Cow::Borrowed(_)),
            "safetensors bytes should be zero-copy"
        );
        assert_eq!(&b[..], &emb[..]);
        assert_eq!(
            &src.bytes("model.norm.weight").expect("bytes")[..],
            &norm[..]
        );
        assert_eq!(
            &src.bytes("model.layers.0.self_attn.q_proj.weight")
                .expect("bytes")[..],
            &q[..]
        );
        assert_mentions(
            &err_text(src.get("lm_head.weight")),
            &["'lm_head.weight'", "not in the model"],
        );
    }
}

fn write_sharded(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(2);
    let a = random_bytes(&mut rng, 10 * 8 * 2);
    let b = random_bytes(&mut rng, 10 * 8 * 2);
    std::fs::write(
        dir.join("model-00001-of-00002.safetensors"),
        st_file(&[("model.embed_tokens.weight", "BF16", &[10, 8], &a)]),
    )
    .expect("write");
    std::fs::write(
        dir.join("model-00002-of-00002.safetensors"),
        st_file(&[("lm_head.weight", "BF16", &[10, 8], &b)]),
    )
    .expect("write");
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {"total_size": 320}, "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors"
        }})
        .to_string(),
    )
    .expect("write");
    write_config(dir, small_hf_config());
    (a, b)
}

#[test]
fn safetensors_sharded_index_loads_and_missing_or_wrong_shards_are_named() {
    let dir = scratch("st-sharded");
    let (a, b) = write_sharded(&dir);
    let m = loader::open(&dir).expect("open");
    let names: Vec<String> = m.tensors().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["model.embed_tokens.weight", "lm_head.weight"]);
    assert_eq!(
        &m.bytes("model.embed_tokens.weight").expect("bytes")[..],
        &a[..]
    );
    assert_eq!(&m.bytes("lm_head.weight").expect("bytes")[..], &b[..]);

    // A tensor the index places in a shard that does not hold it.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"weight_map": {
            "lm_head.weight": "model-00001-of-00002.safetensors",
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors"
        }})
        .to_string(),
    )
    .expect("write");
    assert_mentions(
        &err_text(SafetensorsModel::open_dir(&dir)),
        &[
            "model-00001-of-00002.safetensors",
            "'lm_head.weight'",
            "not there",
        ],
    );

    // A path escaping the model folder.
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"weight_map": {"lm_head.weight": "../evil.safetensors"}}).to_string(),
    )
    .expect("write");
    assert_mentions(
        &err_text(SafetensorsModel::open_dir(&dir)),
        &[
            "model.safetensors.index.json",
            "../evil.safetensors",
            "not a plain file name",
        ],
    );

    // Missing shard.
    write_sharded(&dir);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).expect("rm");
    assert_mentions(
        &err_text(loader::open(&dir)),
        &[
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "missing",
        ],
    );
}

#[test]
fn safetensors_hostile_files_name_the_file_and_tensor() {
    let dir = scratch("st-hostile");
    write_config(&dir, small_hf_config());
    let p = dir.join("model.safetensors");
    let open = |bytes: &[u8]| {
        std::fs::write(&p, bytes).expect("write");
        err_text(SafetensorsModel::open_dir(&dir))
    };
    let good = st_file(&[
        ("a", "F32", &[2, 3], &[0u8; 24]),
        ("b", "BF16", &[5], &[0u8; 10]),
    ]);
    // Truncated anywhere.
    for cut in 0..good.len() {
        let msg = open(&good[..cut]);
        assert!(msg.contains("model.safetensors"), "cut at {cut}: {msg}");
    }
    assert_mentions(&open(&good[..5]), &["truncated"]);
    assert_mentions(&open(&good[..good.len() - 3]), &["'b'", "beyond"]);
    // Header length beyond the file.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert_mentions(
        &open(&bad),
        &[
            "header length 1125899906842624",
            "beyond the end of the file",
        ],
    );
    // Tensor offsets beyond the file.
    let hdr = r#"{"a":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
    assert_mentions(&open(&st_raw(hdr, &[0u8; 16])), &["'a'", "beyond"]);
    // Size not matching shape × dtype.
    let hdr = r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#;
    assert_mentions(
        &open(&st_raw(hdr, &[0u8; 16])),
        &["'a'", "needs 24 bytes", "holds 16"],
    );
    // Wrong dtype.
    assert_mentions(
        &open(&st_file(&[(
            "model.layers.0.mlp.up_proj.weight",
            "I64",
            &[2],
            &[0u8; 16],
        )])),
        &[
            "model.safetensors",
            "'model.layers.0.mlp.up_proj.weight'",
            "I64",
            "F32, F16, BF16",
        ],
    );
    // Not JSON.
    assert_mentions(
        &open(&st_raw("{not json", &[])),
        &["model.safetensors", "JSON"],
    );
    // No weights at all.
    std::fs::remove_file(&p).expect("rm");
    assert_mentions(&err_text(loader::open(&dir)), &["no model.safetensors"]);
    // A lone safetensors file with no config.json beside it.
    let lone = scratch("st-lone");
    std::fs::write(lone.join("w.safetensors"), &good).expect("write");
    assert_mentions(
        &err_text(loader::open(lone.join("w.safetensors"))),
        &["w.safetensors", "config.json"],
    );
}

#[test]
fn safetensors_fixture_sharded_tiny_llama_loads() {
    let m = loader::open(fixtures().join("tiny-llama")).expect("open fixture");
    let c = m.config();
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        ),
        (512, 128, 344, 2)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
        (4, 2, 32)
    );
    assert_eq!(
        c.eos_token_ids,
        vec![1, 3],
        "config eos 1 merged with generation_config [1, 3]"
    );
    assert_eq!(c.bos_token_id, Some(0));
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(m.tensors().len(), 2 * 9 + 3);
    let q = m.get("model.layers.1.self_attn.q_proj.weight").expect("q");
    assert_eq!((q.dtype, q.shape.clone()), (DType::BF16, vec![128, 128]));
    assert_eq!(
        m.get("model.layers.0.self_attn.k_proj.weight")
            .expect("k")
            .shape,
        vec![64, 128]
    );
    assert_eq!(
        m.get("model.layers.0.mlp.down_proj.weight")
            .expect("down")
            .shape,
        vec![128, 344]
    );
    let total: u64 = m.tensors().iter().map(|t| t.nbytes() as u64).sum();
    assert_eq!(total, 988416, "matches the index's total_size");
}

// ---------------------------------------------------------------------------------------------
// config.json

fn parse_cfg(cfg: serde_json::Value, gen: Option<serde_json::Value>) -> fado::Result<LlamaConfig> {
    hf_config::parse(
        &cfg,
        Path::new("/m/config.json"),
        gen.as_ref()
            .map(|g| (g, Path::new("/m/generation_config.json"))),
    )
}

fn with(mut base: serde_json::Value, k: &str, v: serde_json::Value) -> serde_json::Value {
    base.as_object_mut().expect("object").insert(k.into(), v);
    base
}

fn without(mut base: serde_json::Value, k: &str) -> serde_json::Value {
    base.as_object_mut().expect("object").remove(k);
    base
}

#[test]
fn hf_config_variants_parse_to_the_same_llama_config() {
    let base = small_hf_config();
    let c = parse_cfg(base.clone(), None).expect("base");
    assert_eq!(c.head_dim, 4, "head_dim defaults to hidden / heads");
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert!(
        !c.tie_word_embeddings,
        "tie_word_embeddings defaults to false"
    );
    assert_eq!(c.max_position_embeddings, 64);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );

    // Explicit head_dim wins.
    assert_eq!(
        parse_cfg(with(base.clone(), "head_dim", json!(16)), None)
            .expect("hd")
            .head_dim,
        16
    );
    // Mistral accepted; rope_scaling null is plain.
    let m = with(
        with(base.clone(), "architectures", json!(["MistralForCausalLM"])),
        "rope_scaling",
        json!(null),
    );
    assert_eq!(
        parse_cfg(m, None).expect("mistral").rope_scaling,
        RopeScaling::None
    );

    // transformers-5 rope_parameters, no top-level rope_theta.
    let t5 = with(
        without(base.clone(), "rope_theta"),
        "rope_parameters",
        json!({"rope_type": "default", "rope_theta": 250000.0}),
    );
    let c5 = parse_cfg(t5, None).expect("rope_parameters");
    assert_eq!(
        (c5.rope_theta, c5.rope_scaling),
        (250000.0, RopeScaling::None)
    );

    // llama3 scaling, both spellings of the type key and both places.
    let l3 = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192});
    let want = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let with_type = |k: &str| {
        let mut s = l3.clone();
        s.as_object_mut()
            .expect("obj")
            .insert(k.into(), json!("llama3"));
        s
    };
    for key in ["rope_type", "type"] {
        let c =
            parse_cfg(with(base.clone(), "rope_scaling", with_type(key)), None).expect("llama3");
        assert_eq!(c.rope_scaling, want, "rope_scaling with '{key}'");
    }
    let mut rp = with_type("rope_type");
    rp.as_object_mut()
        .expect("obj")
        .insert("rope_theta".into(), json!(500000.0));
    let c = parse_cfg(
        with(without(base.clone(), "rope_theta"), "rope_parameters", rp),
        None,
    )
    .expect("rp llama3");
    assert_eq!((c.rope_theta, c.rope_scaling), (500000.0, want));

    // Linear.
    let lin = with(
        base.clone(),
        "rope_scaling",
        json!({"type": "linear", "factor": 2.0}),
    );
    assert_eq!(
        parse_cfg(lin, None).expect("linear").rope_scaling,
        RopeScaling::Linear { factor: 2.0 }
    );

    // eos as a list in config, merged with generation_config's.
    let c = parse_cfg(
        with(base.clone(), "eos_token_id", json!([2, 5])),
        Some(json!({"eos_token_id": [5, 9], "bos_token_id": 1})),
    )
    .expect("eos list");
    assert_eq!(c.eos_token_ids, vec![2, 5, 9]);
    // bos from generation_config when config has none.
    let c = parse_cfg(
        without(base.clone(), "bos_token_id"),
        Some(json!({"bos_token_id": 4, "eos_token_id": 2})),
    )
    .expect("gen bos");
    assert_eq!((c.bos_token_id, c.eos_token_ids), (Some(4), vec![2]));
    assert!(
        parse_cfg(with(base, "tie_word_embeddings", json!(true)), None)
            .expect("tie")
            .tie_word_embeddings
    );
}

#[test]
fn hf_config_errors_name_the_field_and_file() {
    let base = small_hf_config();
    assert_mentions(
        &err_text(parse_cfg(
            with(
                base.clone(),
                "rope_scaling",
                json!({"rope_type": "yarn", "factor": 4.0}),
            ),
            None,
        )),
        &[
            "/m/config.json",
            "unsupported rope scaling type yarn (supported: linear, llama3)",
        ],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(
                base.clone(),
                "rope_parameters",
                json!({"rope_type": "dynamic", "rope_theta": 1.0}),
            ),
            None,
        )),
        &["unsupported rope scaling type dynamic"],
    );
    assert_mentions(
        &err_text(parse_cfg(without(base.clone(), "hidden_size"), None)),
        &["/m/config.json", "'hidden_size'", "missing"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(
                base.clone(),
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0}),
            ),
            None,
        )),
        &["'rope_scaling.low_freq_factor'", "missing"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(base.clone(), "architectures", json!(["GPT2LMHeadModel"])),
            None,
        )),
        &["GPT2LMHeadModel", "LlamaForCausalLM, MistralForCausalLM"],
    );
    assert_mentions(
        &err_text(parse_cfg(without(base.clone(), "architectures"), None)),
        &["'architectures'"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(base.clone(), "hidden_act", json!("gelu")),
            None,
        )),
        &["hidden_act \"gelu\" is not supported"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(base.clone(), "attention_bias", json!(true)),
            None,
        )),
        &["attention_bias"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(
                base.clone(),
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
            ),
            None,
        )),
        &["rope_scaling.low_freq_factor < rope_scaling.high_freq_factor"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(
                base.clone(),
                "rope_scaling",
                json!({"type": "linear", "factor": 0.0}),
            ),
            None,
        )),
        &["'rope_scaling.factor' must be positive"],
    );
    assert_mentions(
        &err_text(parse_cfg(
            with(base.clone(), "num_attention_heads", json!("two")),
            None,
        )),
        &["'num_attention_heads'", "\"two\""],
    );
    assert_mentions(
        &err_text(parse_cfg(base, Some(json!({"eos_token_id": "x"})))),
        &["/m/generation_config.json", "'eos_token_id'"],
    );
}

#[test]
fn hf_config_fixtures_legacy_and_rope_parameters_agree() {
    let legacy = hf_config::load_dir(&fixtures().join("tiny-llama")).expect("legacy");
    let t5 =
        hf_config::load(&fixtures().join("tiny-llama-rope-params/config.json"), None).expect("t5");
    assert_eq!(t5.rope_theta, legacy.rope_theta);
    assert_eq!(
        t5.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64
        }
    );
    assert_eq!(legacy.rope_scaling, RopeScaling::None);
    assert_eq!(t5.hidden_size, legacy.hidden_size);
    assert_eq!(t5.eos_token_ids, vec![1]);
}

// ---------------------------------------------------------------------------------------------
// open() and progress

#[test]
fn open_picks_the_format_and_rejects_unknown_paths() {
    let dir = scratch("open");
    let (gguf_path, _) = small_valid_gguf(&dir);
    assert_eq!(loader::open(&gguf_path).expect("gguf").format(), "gguf");
    // A folder with exactly one .gguf file and no config.json.
    assert_eq!(loader::open(&dir).expect("gguf dir").format(), "gguf");
    // GGUF magic under another extension.
    let renamed = dir.join("model.bin");
    std::fs::copy(&gguf_path, &renamed).expect("copy");
    assert_eq!(loader::open(&renamed).expect("sniffed").format(), "gguf");
    std::fs::write(dir.join("notes.txt"), "hello").expect("write");
    assert_mentions(
        &err_text(loader::open(dir.join("notes.txt"))),
        &["notes.txt", "unknown model format"],
    );
    assert_mentions(
        &err_text(loader::open(dir.join("nope.gguf"))),
        &["nope.gguf"],
    );
    let empty = scratch("open-empty");
    assert_mentions(&err_text(loader::open(&empty)), &["not a model folder"]);
    std::fs::write(empty.join("e.gguf"), b"").expect("write");
    assert_mentions(
        &err_text(loader::open(empty.join("e.gguf"))),
        &["e.gguf", "empty"],
    );
}

#[test]
fn for_each_tensor_reports_monotone_progress_ending_at_the_total() {
    let m = loader::open(fixtures().join("tiny-llama-f16.gguf")).expect("open");
    let calls = std::cell::RefCell::new(Vec::new());
    let progress = |done: u64, total: u64| calls.borrow_mut().push((done, total));
    let mut seen = 0usize;
    let mut bytes = 0u64;
    m.for_each_tensor(Some(&progress), &mut |e, b| {
        assert_eq!(b.len(), e.nbytes(), "{}", e.name);
        seen += 1;
        bytes += b.len() as u64;
        Ok(())
    })
    .expect("visit");
    let calls = calls.into_inner();
    assert_eq!(seen, m.tensors().len());
    assert_eq!(calls.len(), seen + 1);
    assert_eq!(calls[0].0, 0);
    assert!(calls
        .windows(2)
        .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1));
    assert_eq!(calls.last().copied(), Some((bytes, m.total_bytes())));
}

#[test]
fn gguf_llama3_sized_vocabulary_metadata_parses_within_the_caps() {
    let dir = scratch("bigvocab");
    let n_tokens = 128_256usize;
    let tokens: Vec<MetaValue> = (0..n_tokens)
        .map(|i| MetaValue::String(format!("tok{i}")))
        .collect();
    let merges: Vec<MetaValue> = (0..280_147)
        .map(|i| MetaValue::String(format!("a{i} b{i}")))
        .collect();
    let types: Vec<MetaValue> = (0..n_tokens)
        .map(|i| MetaValue::I32((i % 3) as i32))
        .collect();
    let md = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::from("gpt2")),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens)),
        ("tokenizer.ggml.merges".into(), MetaValue::Array(merges)),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(types)),
    ];
    let path = dir.join("vocab.gguf");
    gguf::write_raw(&path, 3, &md, &[]).expect("write");
    let t = std::time::Instant::now();
    let f = GgufFile::open(&path).expect("open");
    let dt = t.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    eprintln!("parsed {size} bytes of tokenizer metadata in {dt:?}");
    let toks = f
        .meta("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .expect("tokens");
    assert_eq!(toks.len(), n_tokens);
    assert_eq!(toks[128_255].as_str(), Some("tok128255"));
}
