//! `fado quantize`: a Hugging Face model folder (f32/f16/bf16 safetensors) or a GGUF file →
//! a GGUF v3 file of block-quantized weights that Fado and llama.cpp read.
//!
//! Streamed tensor by tensor: each tensor is read from the memory map, quantized with
//! [`crate::quant`] and written before the next is touched, so memory stays near one tensor.
//! What goes where (as llama.cpp's `llama-quantize` does, with the formats Fado quantizes to):
//!
//! - 1-D tensors (norms) are f32;
//! - 2-D tensors take the requested type when their rows are whole blocks of it, else the
//!   32-value format of [`quant::block_format_for`] (for Q4_K: Q4_0, the size of llama.cpp's
//!   Q5_0 fallback, which Fado does not write), else they keep their float type (lossless);
//! - Q/K rows are permuted to llama.cpp's order by [`gguf::write_streamed`].
//!
//! Metadata: `llama.*` hyperparameters from the config; for a Hugging Face folder the
//! tokenizer becomes `tokenizer.ggml.*` (byte-level BPE only, as `convert_hf_to_gguf.py` writes
//! for gpt2-style tokenizers; anything else is refused with the reason) and the chat template
//! `tokenizer.chat_template`; a GGUF source keeps its tokenizer and other metadata.

#![warn(missing_docs)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{Error, Result};
use crate::loader::{self, gguf, MetaValue, TensorEntry};
use crate::quant;
use crate::tensor::DType;
use crate::tokenizer::{
    config_token, pick_config_template, pre_tokenizer_split, read_json, token_type,
};

/// The block formats `fado quantize` writes.
pub const TARGETS: &[DType] = &[DType::Q8_0, DType::Q4_0, DType::Q4K];

/// What a conversion did.
#[derive(Clone, Debug, Default)]
pub struct QuantizeReport {
    /// Tensors written, by dtype.
    pub tensors: BTreeMap<String, usize>,
    /// 2-D tensors that did not get the requested type (rows not whole blocks): name and type.
    pub fallbacks: Vec<(String, DType)>,
    /// Tensors that were already block-quantized in another format and were re-quantized from
    /// their dequantized values (loses more than quantizing the original floats).
    pub requantized: Vec<String>,
    /// Bytes of tensor data read from the source (as stored there).
    pub bytes_in: u64,
    /// Bytes of tensor data written, including a generated `rope_freqs` tensor; the GGUF
    /// header, metadata and alignment padding are not counted.
    pub bytes_out: u64,
}

/// llama.cpp's `general.file_type` for a Fado target (`llama_ftype`: MOSTLY_Q8_0 = 7,
/// MOSTLY_Q4_0 = 2, MOSTLY_Q4_K_S = 14 — the closest: every matrix Q4_K).
fn file_type(d: DType) -> u32 {
    match d {
        DType::Q8_0 => 7,
        DType::Q4_0 => 2,
        _ => 14,
    }
}

/// The type a tensor is written as: f32 for 1-D tensors, else the block format
/// [`quant::block_format_for`] picks, else its own float type (lossless).
fn target_for(e: &TensorEntry, want: DType) -> DType {
    if e.shape.len() == 1 {
        return DType::F32;
    }
    let cols = e.shape.last().copied().unwrap_or(0);
    match quant::block_format_for(want, cols) {
        Some(d) => d,
        None if e.dtype.is_float() => e.dtype,
        // A quantized source tensor always has whole-block rows; unreachable in practice.
        None => DType::F32,
    }
}

/// Quantize the model at `input` into `output` (GGUF v3) with matrices in `dtype` (Q8_0, Q4_0
/// or Q4_K). `progress` gets (bytes read, bytes total) after each tensor.
pub fn quantize_model(
    input: &Path,
    output: &Path,
    dtype: DType,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<QuantizeReport> {
    if !TARGETS.contains(&dtype) {
        return Err(Error::Config(format!(
            "cannot quantize to {dtype}: fado quantize writes q8_0, q4_0 or q4_k"
        )));
    }
    if output.exists() && output.canonicalize().ok() == input.canonicalize().ok() {
        return Err(Error::Config(format!(
            "the output {} is the input; choose another file",
            output.display()
        )));
    }
    if !input.exists() {
        return Err(Error::Config(format!(
            "{}: no such file or folder; check the input path (a Hugging Face folder or a .gguf \
             file)",
            input.display()
        )));
    }
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(Error::Config(format!(
            "the output folder {} does not exist; create it first or write elsewhere",
            folder.display()
        )));
    }
    let src = loader::open(input)?;
    let cfg = src.config().clone();
    let md = output_metadata(src.as_ref(), input, dtype)?;

    let entries = src.tensors();
    let mut out_entries: Vec<TensorEntry> = entries
        .iter()
        .map(|e| TensorEntry {
            name: e.name.clone(),
            dtype: target_for(e, dtype),
            shape: e.shape.clone(),
        })
        .collect();
    // Llama 3 RoPE scaling lives in a tensor in GGUF; a safetensors source has none.
    let rope_freqs =
        gguf::rope_freqs_tensor(&cfg).filter(|(e, _)| !entries.iter().any(|s| s.name == e.name));
    if let Some((e, _)) = &rope_freqs {
        out_entries.push(e.clone());
    }

    let mut report = plan_report(&entries, &out_entries, dtype);
    let total: u64 = entries.iter().map(|e| e.nbytes() as u64).sum();
    let mut done = 0u64;
    gguf::write_streamed(output, &md, &out_entries, &mut |i| {
        let Some(s) = entries.get(i) else {
            // Past the source's tensors: the generated rope_freqs.
            return Ok(Cow::Owned(
                rope_freqs
                    .as_ref()
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
            ));
        };
        let data = convert_tensor(s, &out_entries[i], src.bytes(&s.name)?)?;
        done += s.nbytes() as u64;
        if let Some(p) = progress {
            p(done, total);
        }
        Ok(Cow::Owned(data))
    })?;
    report.bytes_in = total;
    Ok(report)
}

/// The output's metadata. A GGUF source keeps its tokenizer, chat template and `general.*`,
/// with hyperparameters rewritten from the parsed config; a Hugging Face folder gets them
/// converted.
fn output_metadata(
    src: &dyn loader::WeightSource,
    input: &Path,
    dtype: DType,
) -> Result<BTreeMap<String, MetaValue>> {
    let cfg = src.config();
    let mut md: BTreeMap<String, MetaValue> = BTreeMap::new();
    match src.gguf_metadata() {
        Some(m) => {
            for (k, v) in m {
                if !k.starts_with("llama.") && k != "general.alignment" {
                    md.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in gguf::config_metadata(cfg) {
                if !k.starts_with("tokenizer.") {
                    md.insert(k, v);
                }
            }
        }
        None => {
            md.extend(gguf::config_metadata(cfg));
            let dir = src
                .hf_dir()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| input.parent().unwrap_or(Path::new(".")).to_path_buf());
            md.extend(tokenizer_metadata(&dir, cfg.vocab_size)?);
            // tokenizer_config.json's eos wins (as in llama.cpp's converter); keep an end id of
            // config.json / generation_config.json that differs as the end-of-turn token, so
            // both still stop generation.
            let eos = md
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.as_u64());
            if let Some(other) = cfg.eos_token_ids.iter().find(|&&e| Some(e as u64) != eos) {
                md.insert("tokenizer.ggml.eot_token_id".into(), MetaValue::U32(*other));
            }
            if let Some(name) = input.file_name() {
                md.insert(
                    "general.name".into(),
                    name.to_string_lossy().into_owned().into(),
                );
            }
        }
    }
    md.insert("general.file_type".into(), MetaValue::U32(file_type(dtype)));
    md.insert("general.quantization_version".into(), MetaValue::U32(2));
    Ok(md)
}

/// What the conversion will write, before any byte is read (`bytes_in` is filled in at the end).
fn plan_report(
    entries: &[TensorEntry],
    out_entries: &[TensorEntry],
    dtype: DType,
) -> QuantizeReport {
    let mut report = QuantizeReport::default();
    for (s, o) in entries.iter().zip(out_entries) {
        if o.shape.len() == 2 && o.dtype != dtype {
            report.fallbacks.push((o.name.clone(), o.dtype));
        }
        if s.dtype.is_quantized() && s.dtype != o.dtype {
            report.requantized.push(s.name.clone());
        }
    }
    for o in out_entries {
        *report.tensors.entry(o.dtype.to_string()).or_default() += 1;
        report.bytes_out += o.nbytes() as u64;
    }
    report
}

/// One tensor's bytes `s` → `o`: kept when the type is, else widened and re-encoded.
fn convert_tensor(s: &TensorEntry, o: &TensorEntry, bytes: Cow<'_, [u8]>) -> Result<Vec<u8>> {
    if s.dtype == o.dtype {
        return Ok(bytes.into_owned());
    }
    let v = quant::widen(&s.name, s.dtype, &bytes, s.numel())?;
    match o.dtype {
        DType::F32 => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        q if q.is_quantized() => quant::quantize(q, &v),
        // Fallback types are the source's own, so this is unreachable; kept an error.
        d => Err(Error::Config(format!(
            "tensor `{}`: no conversion from {} to {d}",
            s.name, s.dtype
        ))),
    }
}

fn tok_error(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::model(
        dir.join("tokenizer.json"),
        format!(
            "cannot convert this tokenizer to GGUF metadata: {msg}. fado quantize converts \
             byte-level BPE (gpt2-style) tokenizers; quantize a GGUF made by llama.cpp's \
             convert_hf_to_gguf.py instead"
        ),
    )
}

/// llama.cpp's `tokenizer.ggml.pre` name for a `tokenizer.json` pre-tokenizer, where Fado (and
/// llama.cpp) split the same way. `None`: not a byte-level BPE pre-tokenizer we can name.
fn pre_name(pre: &serde_json::Value) -> Option<&'static str> {
    let kind = pre.get("type")?.as_str()?;
    match kind {
        "ByteLevel" if pre.get("use_regex").and_then(|v| v.as_bool()) != Some(false) => {
            Some("gpt-2")
        }
        "Sequence" => {
            let items = pre.get("pretokenizers")?.as_array()?;
            let (last, first) = (items.last()?, items.first()?);
            let byte_level = last.get("type")?.as_str()? == "ByteLevel";
            if !byte_level || items.len() != 2 {
                return None;
            }
            match first.get("type")?.as_str()? {
                // SmolLM2: every digit its own word, then GPT-2's regex.
                "Digits" if first.get("individual_digits")?.as_bool()? => Some("smollm"),
                "Split" => {
                    let re = first.get("pattern")?.get("Regex")?.as_str()?;
                    ["llama-bpe", "qwen2", "tekken", "gpt-4o", "qwen35"]
                        .into_iter()
                        .find(|n| pre_tokenizer_split(n) == Some(re))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The special token a `TemplateProcessing` post-processor (alone or inside a `Sequence`)
/// puts first in a single sequence.
fn template_first_token(pp: &serde_json::Value) -> Option<String> {
    match pp.get("type")?.as_str()? {
        "TemplateProcessing" => pp["single"]
            .as_array()?
            .first()?
            .get("SpecialToken")?
            .get("id")?
            .as_str()
            .map(str::to_owned),
        "Sequence" => pp["processors"]
            .as_array()?
            .iter()
            .find_map(template_first_token),
        _ => None,
    }
}

/// `tokenizer.ggml.*` metadata (and `tokenizer.chat_template`) for a Hugging Face folder's
/// byte-level BPE tokenizer, as llama.cpp's `convert_hf_to_gguf.py` writes it (`_set_vocab_gpt2`
/// + `SpecialVocab`): every id below `vocab_size` gets a token (`[PAD{i}]`, type UNUSED, where
///   the tokenizer has none), added tokens are CONTROL (special) or USER_DEFINED, merges are
///   `"a b"` strings, special ids come from `tokenizer_config.json`.
pub fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<BTreeMap<String, MetaValue>> {
    let tj_path = dir.join("tokenizer.json");
    let tj = read_json(&tj_path)?.ok_or_else(|| {
        Error::model(
            &tj_path,
            "no tokenizer.json in the model folder; the GGUF needs the tokenizer",
        )
    })?;
    let pre = byte_level_pre(dir, &tj)?;
    let (by_id, added) = tokens_by_id(dir, &tj, vocab_size)?;
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u64 {
        let (t, ty) = match (by_id.get(&id), added.get(&id)) {
            (Some(t), Some(true)) => (t.clone(), token_type::CONTROL),
            (Some(t), Some(false)) => (t.clone(), token_type::USER_DEFINED),
            (Some(t), None) => (t.clone(), token_type::NORMAL),
            (None, _) => (format!("[PAD{id}]"), token_type::UNUSED),
        };
        tokens.push(MetaValue::String(t));
        types.push(MetaValue::I32(ty));
    }
    let merges = merges(dir, &tj["model"])?;

    let mut md = BTreeMap::new();
    md.insert("tokenizer.ggml.model".into(), MetaValue::from("gpt2"));
    md.insert("tokenizer.ggml.pre".into(), MetaValue::from(pre));
    md.insert("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens));
    md.insert("tokenizer.ggml.token_type".into(), MetaValue::Array(types));
    md.insert("tokenizer.ggml.merges".into(), MetaValue::Array(merges));
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
    special_metadata(&mut md, &tj, &tc, &by_id);
    if let Some(t) = chat_template(dir, &tc)? {
        md.insert("tokenizer.chat_template".into(), MetaValue::String(t));
    }
    Ok(md)
}

/// The pre-tokenizer's llama.cpp name, if the tokenizer is byte-level BPE; else why not.
fn byte_level_pre(dir: &Path, tj: &serde_json::Value) -> Result<&'static str> {
    let kind = tj["model"]["type"].as_str().unwrap_or("?");
    if kind != "BPE" {
        return Err(tok_error(dir, format!("its model is {kind}, not BPE")));
    }
    if tj["decoder"]["type"].as_str() != Some("ByteLevel") {
        return Err(tok_error(
            dir,
            format!(
                "its decoder is {} (a SentencePiece-style tokenizer?), not ByteLevel",
                tj["decoder"]["type"]
            ),
        ));
    }
    pre_name(&tj["pre_tokenizer"]).ok_or_else(|| {
        tok_error(
            dir,
            format!(
                "its pre-tokenizer {} has no llama.cpp name Fado knows",
                tj["pre_tokenizer"]
            ),
        )
    })
}

/// Every token by id (vocabulary and added tokens), and the added ones' special flags; ids must
/// lie below the model's `vocab_size`.
fn tokens_by_id(
    dir: &Path,
    tj: &serde_json::Value,
    vocab_size: usize,
) -> Result<(HashMap<u64, String>, HashMap<u64, bool>)> {
    let vocab = tj["model"]["vocab"]
        .as_object()
        .ok_or_else(|| tok_error(dir, "model.vocab is not an object"))?;
    let mut by_id: HashMap<u64, String> = HashMap::new();
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            by_id.insert(id, t.clone());
        }
    }
    // id → special?
    let mut added: HashMap<u64, bool> = HashMap::new();
    for a in tj["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
            by_id.insert(id, c.to_owned());
            added.insert(id, a["special"].as_bool().unwrap_or(false));
        }
    }
    if let Some(max) = by_id.keys().max() {
        if *max as usize >= vocab_size {
            return Err(tok_error(
                dir,
                format!("token id {max} is past the model's vocab_size {vocab_size}"),
            ));
        }
    }
    Ok((by_id, added))
}

/// The model's merges as `"a b"` strings (tokenizer.json has strings or pairs).
fn merges(dir: &Path, model: &serde_json::Value) -> Result<Vec<MetaValue>> {
    model["merges"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) => match (p.first(), p.get(1)) {
                (Some(a), Some(b)) => Ok(format!(
                    "{} {}",
                    a.as_str().unwrap_or(""),
                    b.as_str().unwrap_or("")
                )),
                _ => Err(tok_error(dir, format!("merge {m} is not a pair"))),
            },
            _ => Err(tok_error(
                dir,
                format!("merge {m} is not a string or a pair"),
            )),
        })
        .map(|r| r.map(MetaValue::String))
        .collect()
}

/// Special token ids and the add-BOS/EOS flags, from `tokenizer_config.json`.
fn special_metadata(
    md: &mut BTreeMap<String, MetaValue>,
    tj: &serde_json::Value,
    tc: &serde_json::Value,
    by_id: &HashMap<u64, String>,
) {
    let id_of = |t: &str| {
        by_id
            .iter()
            .find(|(_, s)| *s == t)
            .map(|(id, _)| *id as u32)
    };
    for (key, field) in [
        ("bos", "bos_token"),
        ("eos", "eos_token"),
        ("unknown", "unk_token"),
        ("padding", "pad_token"),
    ] {
        if let Some(id) = config_token(tc.get(field)).as_deref().and_then(id_of) {
            md.insert(format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id));
        }
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = tc.get(key).and_then(|v| v.as_bool()) {
            md.insert(format!("tokenizer.ggml.{key}"), MetaValue::Bool(b));
        }
    }
    // Without the flag (Llama 3 style), a post-processor that starts with the BOS token adds
    // it, as llama.cpp's SpecialVocab infers.
    if !md.contains_key("tokenizer.ggml.add_bos_token") {
        if let Some(bos) = config_token(tc.get("bos_token")) {
            let first = template_first_token(&tj["post_processor"]);
            md.insert(
                "tokenizer.ggml.add_bos_token".into(),
                MetaValue::Bool(first.as_deref() == Some(bos.as_str())),
            );
        }
    }
}

/// The chat template as Fado reads it: chat_template.jinja, else tokenizer_config.json's.
fn chat_template(dir: &Path, tc: &serde_json::Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(tc.get("chat_template").and_then(pick_config_template))
        }
        Err(e) => Err(Error::io(jinja, e)),
    }
}
