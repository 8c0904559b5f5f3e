//! Writes the seed corpora under `fuzz/corpus/<target>/` from the test fixtures and small
//! models built with Fado's own writers. Included by `tests/fuzz_regressions.rs`; regenerate
//! with `cargo test --test fuzz_regressions -- --ignored regenerate_seed_corpora`.
//! Seeds are kept small (a few KiB each) so the committed corpora stay a few hundred KiB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fado::config::{LlamaConfig, RopeScaling};
use fado::loader::gguf::{self, GgufFile, MetaValue, RawTensor};
use fado::loader::TensorEntry;
use fado::tensor::DType;

use super::harness;

const SEP: u8 = 0xFF;

/// The repository root (this file is compiled into the main crate's tests).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let d = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&d).expect("create corpus dir");
    std::fs::write(d.join(name), bytes).expect("write seed");
    // Every seed must run cleanly through its harness.
    match target {
        "gguf" => harness::gguf(bytes),
        "safetensors" => harness::safetensors(bytes),
        "hf_config" => harness::hf_config(bytes),
        "gguf_tokenizer" => harness::gguf_tokenizer(bytes),
        "chat_template" => harness::chat_template(bytes),
        _ => unreachable!(),
    }
    // …and the valid ones must get all the way through (so the fuzzer starts deep).
    let deep = match target {
        "gguf" => GgufFile::from_bytes("seed.gguf", bytes)
            .and_then(gguf::GgufModel::from_file)
            .map(|_| ()),
        "gguf_tokenizer" => gguf_tokenizer_seed(bytes).map(|_| ()),
        "chat_template" => {
            let src = String::from_utf8_lossy(bytes.split(|&b| b == SEP).next().unwrap_or(&[]))
                .into_owned();
            fado::chat_template::ChatTemplate::new(src)
                .and_then(|t| {
                    t.render(
                        &[fado::chat_template::Message::new("user", "hi")],
                        true,
                        "<s>",
                        "</s>",
                    )
                })
                .map(|_| ())
        }
        _ => Ok(()),
    };
    if let Err(e) = deep {
        panic!("seed {target}/{name} does not load: {e}");
    }
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn gguf_tokenizer_seed(bytes: &[u8]) -> fado::Result<fado::tokenizer::Tokenizer> {
    let (&mode, rest) = bytes.split_first().expect("mode byte");
    let meta = if mode % 2 == 0 {
        GgufFile::from_bytes("seed.gguf", rest)?.metadata().clone()
    } else {
        harness::tok_structured(rest)
    };
    fado::loader::gguf::vocab::tokenizer_from_map(&meta)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&SEP)
}

fn cfg(hidden: usize, heads: usize, kv: usize, inter: usize, rope: RopeScaling) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 16,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: 1,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: rope,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    }
}

fn tokenizer_meta(m: &mut BTreeMap<String, MetaValue>, gpt2: bool) {
    let toks: Vec<&str> = if gpt2 {
        vec![
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "H",
            "e",
            "l",
            "o",
            "Ġ",
            "w",
            "r",
            "d",
            "He",
            "ll",
            "Ġw",
            "or",
            "ld",
        ]
    } else {
        vec![
            "<unk>", "<s>", "</s>", "▁", "H", "e", "l", "o", "▁H", "ll", "<0x0A>", "<0xE2>", "w",
            "r", "d", "▁w",
        ]
    };
    let arr = |v: Vec<MetaValue>| MetaValue::Array(v);
    m.insert(
        "tokenizer.ggml.model".into(),
        (if gpt2 { "gpt2" } else { "llama" }).into(),
    );
    m.insert(
        "tokenizer.ggml.tokens".into(),
        arr(toks.iter().map(|&t| t.into()).collect()),
    );
    let types = (0..toks.len())
        .map(|i| {
            MetaValue::I32(if i < 3 {
                3
            } else if gpt2 || !toks[i].starts_with("<0x") {
                1
            } else {
                6
            })
        })
        .collect();
    m.insert("tokenizer.ggml.token_type".into(), arr(types));
    if gpt2 {
        let merges = ["H e", "l l", "Ġ w", "o r", "l d"];
        m.insert(
            "tokenizer.ggml.merges".into(),
            arr(merges.iter().map(|&t| t.into()).collect()),
        );
        m.insert("tokenizer.ggml.pre".into(), "llama3".into());
    } else {
        let scores = (0..toks.len())
            .map(|i| MetaValue::F32(-(i as f32)))
            .collect();
        m.insert("tokenizer.ggml.scores".into(), arr(scores));
    }
    m.insert("tokenizer.chat_template".into(), harness_template().into());
}

fn harness_template() -> &'static str {
    fado::chat_template::CHATML_TEMPLATE
}

/// A one-layer model with every tensor in `dtype` (norms f32).
fn model_gguf(c: &LlamaConfig, dtype: DType, untied: bool, gpt2: Option<bool>) -> Vec<u8> {
    let h = c.hidden_size;
    let qd = c.num_attention_heads * c.head_dim;
    let kvd = c.num_key_value_heads * c.head_dim;
    let i = c.intermediate_size;
    let mut shapes: Vec<(String, Vec<usize>, DType)> = vec![
        (
            "model.embed_tokens.weight".into(),
            vec![c.vocab_size, h],
            dtype,
        ),
        ("model.norm.weight".into(), vec![h], DType::F32),
    ];
    let l = |n: &str| format!("model.layers.0.{n}.weight");
    for (n, s) in [
        ("input_layernorm", vec![h]),
        ("post_attention_layernorm", vec![h]),
        ("self_attn.q_proj", vec![qd, h]),
        ("self_attn.k_proj", vec![kvd, h]),
        ("self_attn.v_proj", vec![kvd, h]),
        ("self_attn.o_proj", vec![h, qd]),
        ("mlp.gate_proj", vec![i, h]),
        ("mlp.up_proj", vec![i, h]),
        ("mlp.down_proj", vec![h, i]),
    ] {
        let dt = if s.len() == 1 { DType::F32 } else { dtype };
        shapes.push((l(n), s, dt));
    }
    if untied {
        shapes.push(("lm_head.weight".into(), vec![c.vocab_size, h], dtype));
    }
    let mut meta = gguf::config_metadata(c);
    if let Some(g) = gpt2 {
        tokenizer_meta(&mut meta, g);
    }
    let datas: Vec<(TensorEntry, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape, dt)| {
            let e = TensorEntry {
                name,
                dtype: dt,
                shape,
            };
            let n = e.nbytes();
            // Small, valid values: 0x00/0x3c patterns are finite in every format.
            let data = (0..n).map(|k| if k % 2 == 0 { 0 } else { 0x3c }).collect();
            (e, data)
        })
        .chain(gguf::rope_freqs_tensor(c))
        .collect();
    let refs: Vec<(TensorEntry, &[u8])> = datas
        .iter()
        .map(|(e, d)| (e.clone(), d.as_slice()))
        .collect();
    let p = std::env::temp_dir().join(format!("fado-gen-corpus-{}.gguf", std::process::id()));
    gguf::write(&p, &meta, &refs).expect("write gguf");
    let b = std::fs::read(&p).expect("read gguf");
    let _ = std::fs::remove_file(&p);
    b
}

/// Metadata only (no tensors) of a GGUF file, re-written small.
fn metadata_only(path: &Path) -> Vec<u8> {
    let f = GgufFile::open(path).expect("open fixture gguf");
    let md: Vec<(String, MetaValue)> = f
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") || k.starts_with("general.architecture"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let p = std::env::temp_dir().join(format!("fado-gen-corpus-meta-{}.gguf", std::process::id()));
    gguf::write_raw(&p, 3, &md, &[] as &[RawTensor<'_>]).expect("write gguf");
    let b = std::fs::read(&p).expect("read gguf");
    let _ = std::fs::remove_file(&p);
    b
}

pub fn generate() {
    let fx = root().join("tests/fixtures");
    let read = |p: &str| std::fs::read(fx.join(p)).expect("fixture");

    // gguf
    let tiny = cfg(8, 2, 1, 12, RopeScaling::None);
    put(
        "gguf",
        "f32-tied-spm",
        &model_gguf(&tiny, DType::F32, false, Some(false)),
    );
    let lin = cfg(8, 2, 2, 12, RopeScaling::Linear { factor: 2.0 });
    put(
        "gguf",
        "f16-untied-linear",
        &model_gguf(&lin, DType::F16, true, None),
    );
    let l3 = cfg(
        16,
        2,
        1,
        8,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
    );
    put(
        "gguf",
        "bf16-llama3",
        &model_gguf(&l3, DType::BF16, false, Some(true)),
    );
    let q = cfg(32, 4, 2, 32, RopeScaling::None);
    put("gguf", "q8_0", &model_gguf(&q, DType::Q8_0, false, None));
    put(
        "gguf",
        "q4_0",
        &model_gguf(
            &cfg(32, 2, 1, 64, RopeScaling::None),
            DType::Q4_0,
            true,
            None,
        ),
    );

    // gguf_tokenizer: GGUF metadata mode (even first byte) and structured mode (odd).
    let with_mode = |m: u8, b: &[u8]| [&[m][..], b].concat();
    put(
        "gguf_tokenizer",
        "spm-synthetic",
        &with_mode(0, &read("spm-synthetic/tokenizer.gguf")),
    );
    let tiny_meta = metadata_only(&fx.join("tiny-llama-f16.gguf"));
    if tiny_meta.len() < 64 << 10 {
        put(
            "gguf_tokenizer",
            "tiny-llama-meta",
            &with_mode(0, &tiny_meta),
        );
    }
    put(
        "gguf_tokenizer",
        "gpt2-small",
        &with_mode(2, &model_gguf(&tiny, DType::F16, false, Some(true))),
    );
    let structured: &[(&str, Vec<u8>)] = &[
        // llama, no pre, add_bos set, scores + types, bos/eos/unk
        (
            "spm",
            join(&[
                &[0, 0, 0x61 | 0x02, 1, 2, 0, 0xFE],
                b"<unk>\0<s>\0</s>\0\xe2\x96\x81\0H\0e\0l\0o\0\xe2\x96\x81H\0ll\0<0x0A>\0w",
                &[2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 6, 1],
                b"",
                &[100, 100, 100, 120, 110, 110, 110, 110, 130, 125, 100, 110],
                b"Hello\0\nworld\0<s>Hell",
            ]),
        ),
        // gpt2 with llama3 pre, merges, control tokens
        (
            "bpe",
            join(&[
                &[1, 2, 0x51, 0, 1, 0xFE, 0xFE],
                b"<|endoftext|>\0<|im_start|>\0H\0e\0l\0o\0\xc4\xa0\0w\0He\0ll\0\xc4\xa0w",
                &[3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                b"H e\0l l\0\xc4\xa0 w",
                b"",
                b"Hello world\0<|im_start|>Hello",
            ]),
        ),
    ];
    for (name, b) in structured {
        put("gguf_tokenizer", name, &with_mode(1, b));
    }

    // safetensors: single file (even) and index (odd).
    let st = harness::safetensors_file(&[
        ("model.embed_tokens.weight", "F32", &[4, 3][..]),
        ("model.norm.weight", "BF16", &[3]),
        ("lm_head.weight", "F16", &[4, 3]),
    ]);
    put("safetensors", "single", &with_mode(0, &st));
    let idx = br#"{"metadata": {"total_size": 32}, "weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}"#;
    put("safetensors", "index", &with_mode(1, idx));
    let sharded = read("tiny-llama/model.safetensors.index.json");
    put("safetensors", "index-tiny", &with_mode(1, &sharded));

    // hf_config
    put(
        "hf_config",
        "tiny",
        &join(&[
            &read("tiny-llama/config.json"),
            &read("tiny-llama/generation_config.json"),
        ]),
    );
    put(
        "hf_config",
        "rope-params",
        &read("tiny-llama-rope-params/config.json"),
    );
    let variants = [
        r#"{"architectures":["MistralForCausalLM"],"vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"sliding_window":4096,"max_position_embeddings":32768,"rope_theta":1e6,"eos_token_id":[2,3],"bos_token_id":null}"#,
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"rope_scaling":{"type":"linear","factor":4.0},"tie_word_embeddings":true}"#,
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":32,"hidden_size":16,"intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
    ];
    for (i, v) in variants.iter().enumerate() {
        put(
            "hf_config",
            &format!("variant-{i}"),
            &join(&[v.as_bytes(), br#"{"eos_token_id": 7, "bos_token_id": 1}"#]),
        );
    }

    // chat_template
    let conv: &[&[u8]] = &[
        &[1],
        b"<s>",
        b"</s>",
        b"system",
        b"Be brief.",
        b"user",
        b"Hi",
        b"assistant",
        b"Hello!",
        b"user",
        b"Bye",
    ];
    let tmpl = |src: &[u8]| [&[src][..], conv].concat().join(&SEP);
    put(
        "chat_template",
        "tiny",
        &tmpl(&read("tiny-llama/chat_template.jinja")),
    );
    let llama3 = br#"{{- bos_token }}{%- set date_string = strftime_now("%d %b %Y") %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "" %}{%- endif %}{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}{{- "Today Date: " + date_string + "\n\n" }}{%- if tools is not none %}{{- tools|tojson(indent=4) }}{%- endif %}{{- system_message }}{{- "<|eot_id|>" }}{%- for message in messages %}{%- if not (message.role in ['user', 'assistant']) %}{{- raise_exception('bad role ' ~ message.role) }}{%- endif %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"#;
    put("chat_template", "llama3", &tmpl(llama3));
    let fancy = br#"{% macro m(x, d) %}{% if d > 0 %}{{ m(x ~ '.', d - 1) }}{% else %}{{ x }}{% endif %}{% endmacro %}{% set ns = namespace(n=0) %}{% for msg in messages %}{% if loop.index > 3 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{{ msg.content.strip().upper() | tojson }}{{ m(msg.role, 3) }}{{ {'a': [1, 2.5, none, true], 'b': msg}|tojson(indent=2, sort_keys=true) }}{{ msg.content.split(' ')|join('|') }}{% if msg.role.startswith('u') %}{{ msg.items()|list|length }}{% endif %}{% endfor %}{{ ns.n }}{{ range(5)|list }}{{ 'ab' * 3 }}"#;
    put("chat_template", "features", &tmpl(fancy));
    put(
        "chat_template",
        "chatml",
        &tmpl(fado::chat_template::CHATML_TEMPLATE.as_bytes()),
    );
}
