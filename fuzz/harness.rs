//! The code paths the fuzz targets drive, one function per target, each taking the raw fuzz
//! input. Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`) and by the regression
//! tests (`tests/fuzz_regressions.rs`), which include this file with
//! `#[path]`, so a crash input replays through exactly the same calls.
//!
//! Every function must return normally for every input: errors from the library are the
//! expected outcome for malformed input and are ignored; a panic, a hang or an unbounded
//! allocation is a bug.
//!
//! Input layouts (sections are separated by 0xFF, a byte that never occurs in UTF-8, so text
//! sections stay text):
//! - `gguf`: the bytes of a GGUF file.
//! - `safetensors`: first byte even → the rest is `model.safetensors` (with a fixed valid
//!   `config.json` next to it); odd → the rest is `model.safetensors.index.json` next to one
//!   small valid shard `model-00001-of-00001.safetensors`.
//! - `hf_config`: `config.json` [0xFF `generation_config.json`].
//! - `gguf_tokenizer`: first byte even → the rest is a GGUF file whose metadata feeds
//!   `gguf::vocab::tokenizer_from_map`; odd → a structured description (see [`tok_structured`]).
//! - `chat_template`: template source, then 0xFF-separated: flags byte, bos, eos, then role and
//!   content of each message in turn.
//! - `http_body`: first byte even → the rest is a `POST /v1/chat/completions` body, odd → a
//!   `POST /v1/completions` body; parsed as the server does, then turned into the slot's
//!   generation request under a fixed server configuration (the prompt length stands in for
//!   tokenization: the token count of a token prompt, else the byte length of the text).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fado::chat_template::{ChatTemplate, Message};
use fado::loader::gguf::{self, GgufFile, GgufModel, MetaValue};
use fado::loader::{hf_config, SafetensorsModel, WeightSource};
use fado::tokenizer::Tokenizer;

const SEP: u8 = 0xFF;

fn sections(data: &[u8]) -> Vec<&[u8]> {
    data.split(|&b| b == SEP).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scratch folder for this process and thread (tmpfs when there is one), emptied.
fn scratch(kind: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!(
        "fado-fuzz-{}-{:?}-{kind}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Visit every tensor of a loaded model: descriptions, sizes and bytes must agree.
fn visit(model: &dyn WeightSource) {
    let _ = model.config();
    let _ = model.total_bytes();
    for t in model.tensors() {
        let _ = t.desc();
        if let Ok(b) = model.bytes(&t.name) {
            assert_eq!(b.len(), t.nbytes(), "tensor {} byte length", t.name);
        }
        let _ = model.get(&t.name);
    }
    let _ = model.get("model.layers.0.self_attn.q_proj.weight");
}

pub fn gguf(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data) else {
        return;
    };
    for t in file.tensor_infos() {
        let d = file.tensor_data(t);
        assert_eq!(d.len() as u64, t.size);
        let _ = gguf::gguf_to_hf_name(&t.name);
    }
    let _ = gguf::llama_config(&file);
    if let Ok(model) = GgufModel::from_file(file) {
        visit(&model);
    }
}

/// A small valid config.json for the safetensors target.
pub const FIXED_CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 16,
 "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
 "num_attention_heads": 2, "num_key_value_heads": 1, "eos_token_id": 2}"#;

/// A valid safetensors file holding `name` as f32 of the given shape.
pub fn safetensors_file(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    let mut data = Vec::new();
    for (name, dtype, shape) in tensors {
        let per = if *dtype == "F32" { 4 } else { 2 };
        let n: usize = shape.iter().product::<usize>() * per;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}),
        );
        data.extend((0..n).map(|i| i as u8));
        off += n;
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

pub fn safetensors(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch("st");
    if std::fs::write(dir.join("config.json"), FIXED_CONFIG).is_err() {
        return;
    }
    if mode % 2 == 0 {
        let file = dir.join("model.safetensors");
        if std::fs::write(&file, rest).is_err() {
            return;
        }
        if let Ok(m) = SafetensorsModel::open_file(&file) {
            visit(&m);
        }
    } else {
        let shard = safetensors_file(&[("model.norm.weight", "F32", &[8])]);
        let ok = std::fs::write(dir.join("model-00001-of-00001.safetensors"), shard).is_ok()
            && std::fs::write(dir.join("model.safetensors.index.json"), rest).is_ok();
        if !ok {
            return;
        }
        if let Ok(m) = SafetensorsModel::open_dir(&dir) {
            visit(&m);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

pub fn hf_config(data: &[u8]) {
    let s = sections(data);
    let dir = scratch("cfg");
    let cfg = dir.join("config.json");
    let gen = dir.join("generation_config.json");
    if std::fs::write(&cfg, s[0]).is_err() {
        return;
    }
    let gen_path = match s.get(1) {
        Some(g) if std::fs::write(&gen, g).is_ok() => Some(gen.as_path()),
        _ => None,
    };
    if let Ok(c) = hf_config::load(&cfg, gen_path) {
        // Round trip through the GGUF metadata writer's view of a config.
        let _ = gguf::config_metadata(&c);
        let _ = c.q_dim();
        let _ = c.kv_dim();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Texts every tokenizer is run on, besides the input's own.
const TEXTS: &[&str] = &[
    "Hello world",
    " leading  spaces\n\nand\ttabs ",
    "<s>special</s><|im_start|>user",
    "émoji 🦀 and 中文",
    "",
];

fn exercise_tokenizer(tok: &Tokenizer, extra: &[String]) {
    let _ = tok.vocab_size();
    let _ = tok.chat_template();
    for t in TEXTS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        for special in [false, true] {
            if let Ok(ids) = tok.encode(t, special) {
                let _ = tok.decode(&ids);
                let _ = tok.decode_with(&ids, true);
                let mut d = tok.stream_decoder();
                for &id in &ids {
                    let _ = d.push(id);
                }
                let _ = d.finish();
            }
        }
    }
    // Ids outside the vocabulary and the special ones.
    let n = tok.vocab_size() as u32;
    let odd = [0, 1, 2, n.saturating_sub(1), n, n + 1, u32::MAX];
    let _ = tok.decode(&odd);
    let mut d = tok.stream_decoder().skip_special_tokens(true);
    for id in odd {
        let _ = d.push(id);
        let _ = tok.token_bytes(id);
        let _ = tok.is_special(id);
        let _ = tok.id_to_token(id);
    }
    let _ = d.finish();
}

const MODELS: &[&str] = &["llama", "gpt2", "bert", ""];
const PRES: &[&str] = &[
    "", "default", "llama3", "qwen2", "tekken", "gpt-4o", "smollm",
];

/// Structured tokenizer metadata: sections `header`, `tokens`, `token types`, `merges`,
/// `scores`, `texts`; list items within a section are separated by 0x00.
/// Header bytes: model, pre, flags (bit 0/1: add_bos present/value, bit 2/3: add_eos,
/// bit 4: merges present, bit 5: scores present, bit 6: token types present,
/// bit 7: chat template present), then bos, eos, unk, pad ids (0xFE: absent; ids index the
/// tokens modulo one past their count so out-of-range ids happen too).
pub fn tok_structured(data: &[u8]) -> BTreeMap<String, MetaValue> {
    let s = sections(data);
    let part = |i: usize| s.get(i).copied().unwrap_or(&[]);
    let header = part(0);
    let h = |i: usize| header.get(i).copied().unwrap_or(0xFE);
    let list = |b: &[u8]| -> Vec<String> {
        if b.is_empty() {
            vec![]
        } else {
            b.split(|&c| c == 0).map(text).collect()
        }
    };
    let tokens = list(part(1));
    let n = tokens.len();
    let flags = h(2);
    let mut m = BTreeMap::new();
    m.insert(
        "tokenizer.ggml.model".to_string(),
        MetaValue::from(MODELS[h(0) as usize % MODELS.len()]),
    );
    let pre = PRES[h(1) as usize % PRES.len()];
    if !pre.is_empty() {
        m.insert("tokenizer.ggml.pre".into(), MetaValue::from(pre));
    }
    if flags & 1 != 0 {
        m.insert(
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(flags & 2 != 0),
        );
    }
    if flags & 4 != 0 {
        m.insert(
            "tokenizer.ggml.add_eos_token".into(),
            MetaValue::Bool(flags & 8 != 0),
        );
    }
    if flags & 0x40 != 0 {
        let types: Vec<MetaValue> = (0..n)
            .map(|i| MetaValue::I32(part(2).get(i).map_or(1, |&b| i32::from(b % 8))))
            .collect();
        m.insert("tokenizer.ggml.token_type".into(), MetaValue::Array(types));
    }
    if flags & 0x10 != 0 {
        let merges = list(part(3)).into_iter().map(MetaValue::String).collect();
        m.insert("tokenizer.ggml.merges".into(), MetaValue::Array(merges));
    }
    if flags & 0x20 != 0 {
        let scores: Vec<MetaValue> = (0..n)
            .map(|i| MetaValue::F32(part(4).get(i).map_or(0.0, |&b| f32::from(b) - 128.0)))
            .collect();
        m.insert("tokenizer.ggml.scores".into(), MetaValue::Array(scores));
    }
    if flags & 0x80 != 0 {
        m.insert(
            "tokenizer.chat_template".into(),
            MetaValue::from("{{ messages }}"),
        );
    }
    for (i, key) in ["bos", "eos", "unknown", "padding"].iter().enumerate() {
        let b = h(3 + i);
        if b != 0xFE {
            let id = u32::from(b) % (n as u32 + 1);
            m.insert(format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id));
        }
    }
    m.insert(
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(tokens.into_iter().map(MetaValue::String).collect()),
    );
    m
}

pub fn gguf_tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (meta, extra) = if mode % 2 == 0 {
        match GgufFile::from_bytes("fuzz.gguf", rest) {
            Ok(f) => (f.metadata().clone(), vec![]),
            Err(_) => return,
        }
    } else {
        let s = sections(rest);
        let texts = s
            .get(5)
            .map(|b| b.split(|&c| c == 0).map(text).collect())
            .unwrap_or_default();
        (tok_structured(rest), texts)
    };
    if let Ok(tok) = gguf::vocab::tokenizer_from_map(&meta) {
        exercise_tokenizer(&tok, &extra);
    }
}

pub fn chat_template(data: &[u8]) {
    let s = sections(data);
    let source = text(s[0]);
    let flags = s.get(1).and_then(|f| f.first()).copied().unwrap_or(1);
    let bos = s.get(2).map(|b| text(b)).unwrap_or_else(|| "<s>".into());
    let eos = s.get(3).map(|b| text(b)).unwrap_or_else(|| "</s>".into());
    let mut messages: Vec<Message> = s
        .get(4..)
        .unwrap_or(&[])
        .chunks(2)
        .map(|c| Message::new(text(c[0]), c.get(1).map(|b| text(b)).unwrap_or_default()))
        .collect();
    if messages.is_empty() {
        messages = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Bye"),
        ];
    }
    let Ok(t) = ChatTemplate::new(source) else {
        return;
    };
    if let Ok(out) = t.render(&messages, flags & 1 != 0, &bos, &eos) {
        // The default output cap is 16 MiB.
        assert!(out.len() <= 16 << 20, "render exceeded the output cap");
    }
}

pub fn http_body(data: &[u8]) {
    use fado::server::api::text_request;
    use fado::server::api::{self, Endpoint, Prompt};
    use fado::server::ServerConfig;
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let cfg = ServerConfig {
        ctx: 256,
        max_tokens_cap: 64,
        ..ServerConfig::default()
    };
    let (endpoint, parsed) = if sel % 2 == 0 {
        let r = api::parse_chat(body).map(|r| {
            let len: usize = r.messages.iter().map(|m| m.content.len() + 4).sum();
            (len, r.gen)
        });
        (Endpoint::Chat, r)
    } else {
        let r = api::parse_completion(body).map(|r| {
            let len = match &r.prompt {
                Prompt::Text(t) => t.len(),
                Prompt::Tokens(t) => t.len(),
            };
            (len, r.gen)
        });
        (Endpoint::Completion, r)
    };
    let check_error = |e: &api::ApiError| {
        assert!(e.status.is_client_error(), "{e:?}");
        assert!(!e.message.is_empty());
        let _ = e.body().to_string();
    };
    let (len, gen) = match parsed {
        Ok(x) => x,
        Err(e) => return check_error(&e),
    };
    // What parsing accepted is in range.
    gen.params
        .validate()
        .expect("parsed sampling parameters validate");
    assert!(gen.params.temperature <= 2.0);
    assert!(gen.stop.len() <= api::MAX_STOP_STRINGS && gen.stop.iter().all(|s| !s.is_empty()));
    assert!(gen
        .logprobs
        .is_none_or(|n| n <= fado::sampling::MAX_TOP_LOGPROBS));
    assert!(gen.max_tokens != Some(0));
    // Token ids within the vocabulary: parsing does not see the model.
    match text_request(&cfg, cfg.ctx, endpoint, &vec![0; len], 1 << 20, &gen, 7) {
        Ok(req) => {
            assert!(req.max_tokens >= 1 && req.max_tokens <= cfg.max_tokens_cap);
            assert!(len >= 1 && len + req.max_tokens <= cfg.ctx + 1);
            assert_eq!(req.params.seed == 7, !gen.seeded || gen.params.seed == 7);
        }
        Err(e) => check_error(&e),
    }
}
