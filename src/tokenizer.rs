//! Text ⇄ token ids.
//!
//! Two sources, one result: a Hugging Face `tokenizer.json` is loaded as is; a GGUF file carries no
//! `tokenizer.json`, only llama.cpp's `tokenizer.ggml.*` metadata, from which we rebuild the same
//! `tokenizers` pipeline that transformers' GGUF converter builds
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so both give Hugging Face's ids:
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE. Vocabulary (tokens outside the byte alphabet
//!   are respelled byte by byte) + the file's merges, `ByteLevel` pre-tokenizer with the GPT-2 regex
//!   unless `tokenizer.ggml.pre` names a family with its own split regex (llama3, qwen2, …; see
//!   [`pre_tokenizer_split`]), `ByteLevel` decoder.
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE. Vocabulary as spelled, merges from the file or
//!   recovered from the scores, byte fallback (`<0xXX>`), `Metaspace` (`▁`, prepend on the first
//!   split), decoder Replace(▁→space) + ByteFallback + Fuse + Strip(one leading space).
//!
//! In both, control tokens (token_type 3) become special added tokens and user-defined ones (4)
//! plain added tokens, so `<|im_start|>` encodes to one id; BOS/EOS are added by a
//! `TemplateProcessing` post-processor following `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` (default: llama → BOS on, gpt2 → off).
//!
//! [`StreamDecoder`] turns ids into text one at a time without ever emitting half a character.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{Error, Result};

/// One GGUF metadata value, borrowed from wherever the loader keeps it. The loader adapts its own
/// value type to this, so the tokenizer does not depend on the loader.
#[derive(Debug, Clone)]
pub enum Meta<'a> {
    /// A string.
    Str(&'a str),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A 32-bit float.
    F32(f32),
    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    StrArray(Vec<&'a str>),
    /// An array of floats (e.g. `tokenizer.ggml.scores`).
    F32Array(Vec<f32>),
    /// An array of integers (e.g. `tokenizer.ggml.token_type`).
    I32Array(Vec<i32>),
}

impl<'a> Meta<'a> {
    fn as_u32(&self) -> Option<u32> {
        match *self {
            Meta::U32(v) => Some(v),
            Meta::I32(v) => u32::try_from(v).ok(),
            Meta::U64(v) => u32::try_from(v).ok(),
            Meta::I64(v) => u32::try_from(v).ok(),
            _ => None,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            Meta::Str(_) => "string",
            Meta::U32(_) => "u32",
            Meta::I32(_) => "i32",
            Meta::U64(_) => "u64",
            Meta::I64(_) => "i64",
            Meta::Bool(_) => "bool",
            Meta::F32(_) => "f32",
            Meta::StrArray(_) => "string array",
            Meta::F32Array(_) => "f32 array",
            Meta::I32Array(_) => "i32 array",
        }
    }
}

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown-token piece.
    pub const UNKNOWN: i32 = 2;
    /// A control token (BOS, EOS, chat markers), never produced by text.
    pub const CONTROL: i32 = 3;
    /// A user-defined piece, matched before the model's own splitting.
    pub const USER_DEFINED: i32 = 4;
    /// A reserved, unused piece.
    pub const UNUSED: i32 = 5;
    /// A byte fallback piece `<0xNN>`.
    pub const BYTE: i32 = 6;
}

/// How a single token id maps back to bytes; picked from the decoder the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detok {
    /// GPT-2 byte-level alphabet: each char of a token stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` is a raw byte; `strip_first_space` drops one
    /// leading space of the whole text (the `Strip` / `Metaspace` decoders).
    SentencePiece { strip_first_space: bool },
    /// Anything else: the token's own decoding.
    Plain,
}

/// A text tokenizer with the model's special-token conventions.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: String,
    bos: Option<(String, u32)>,
    eos_ids: Vec<u32>,
    eos_token: Option<String>,
    add_bos: bool,
    detok: Detok,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn tok_err(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{source}: {msg}"))
}

/// A `tokenizer_config.json` special token: a string or `{"content": ...}`.
fn config_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::model(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Special tokens come from the `tokenizer_config.json`
    /// next to it (bos/eos token, chat template) and `generation_config.json` (extra eos ids),
    /// when present.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::model(path, format!("not a valid tokenizer.json: {e}")))?;
        // See BPE_CACHE_CAPACITY: a deserialized BPE has the default cache; shrink it to
        // nothing (a fresh clone, so no entries exist yet; only an empty per-thread map remains).
        if let tokenizers::ModelWrapper::BPE(bpe) = inner.get_model() {
            let mut bpe = bpe.clone();
            bpe.resize_cache(BPE_CACHE_CAPACITY);
            inner.with_model(bpe);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json(&dir.join("generation_config.json"))?;

        let lookup =
            |tok: Option<String>| tok.and_then(|t| inner.token_to_id(&t).map(|id| (t, id)));
        let bos = lookup(config_token(
            config.as_ref().and_then(|c| c.get("bos_token")),
        ));
        let eos = lookup(config_token(
            config.as_ref().and_then(|c| c.get("eos_token")),
        ));
        let mut eos_ids: Vec<u32> = eos.iter().map(|(_, id)| *id).collect();
        if let Some(v) = gen_config.as_ref().and_then(|g| g.get("eos_token_id")) {
            let ids: Vec<u64> = match v {
                serde_json::Value::Number(n) => n.as_u64().into_iter().collect(),
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).collect(),
                _ => vec![],
            };
            for id in ids.into_iter().filter_map(|id| u32::try_from(id).ok()) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let chat_template = config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(crate::chat_template::pick_config_template);
        let detok = detok_from_decoder(inner.get_decoder());
        let mut tok = Tokenizer {
            inner,
            source,
            bos,
            eos_ids,
            eos_token: eos.map(|(t, _)| t),
            add_bos: false,
            detok,
            chat_template,
        };
        tok.add_bos = tok.detect_add_bos()?;
        Ok(tok)
    }

    /// Rebuilds the tokenizer a GGUF file describes, from its `tokenizer.*` metadata, the way
    /// transformers does (see the module docs). `get` looks a metadata key up.
    pub fn from_gguf_metadata<'a>(get: &dyn Fn(&str) -> Option<Meta<'a>>) -> Result<Self> {
        let source = "GGUF tokenizer metadata".to_string();
        let src = source.as_str();
        let get_str = |key: &str| -> Result<Option<&'a str>> {
            match get(key) {
                None => Ok(None),
                Some(Meta::Str(s)) => Ok(Some(s)),
                Some(other) => Err(tok_err(
                    src,
                    format!("`{key}` is a {}, expected a string", other.kind()),
                )),
            }
        };
        let get_u32 = |key: &str| -> Result<Option<u32>> {
            match get(key) {
                None => Ok(None),
                Some(m) => m.as_u32().map(Some).ok_or_else(|| {
                    tok_err(
                        src,
                        format!("`{key}` is {m:?}, expected a non-negative integer"),
                    )
                }),
            }
        };
        let get_bool = |key: &str| -> Result<Option<bool>> {
            match get(key) {
                None => Ok(None),
                Some(Meta::Bool(b)) => Ok(Some(b)),
                Some(other) => Err(tok_err(
                    src,
                    format!("`{key}` is a {}, expected a bool", other.kind()),
                )),
            }
        };

        let model = get_str("tokenizer.ggml.model")?.ok_or_else(|| {
            tok_err(
                src,
                "missing `tokenizer.ggml.model` (the file has no tokenizer)",
            )
        })?;
        let pre = get_str("tokenizer.ggml.pre")?;
        let tokens = match get("tokenizer.ggml.tokens") {
            Some(Meta::StrArray(t)) => t,
            Some(other) => {
                return Err(tok_err(
                    src,
                    format!(
                        "`tokenizer.ggml.tokens` is a {}, expected a string array",
                        other.kind()
                    ),
                ))
            }
            None => return Err(tok_err(src, "missing `tokenizer.ggml.tokens`")),
        };
        let n = tokens.len();
        let token_types: Vec<i32> = match get("tokenizer.ggml.token_type") {
            Some(Meta::I32Array(t)) => t,
            None => vec![],
            Some(other) => {
                return Err(tok_err(
                    src,
                    format!(
                        "`tokenizer.ggml.token_type` is a {}, expected an i32 array",
                        other.kind()
                    ),
                ))
            }
        };
        if !token_types.is_empty() && token_types.len() != n {
            return Err(tok_err(
                src,
                format!(
                    "`tokenizer.ggml.token_type` has {} entries but there are {n} tokens",
                    token_types.len()
                ),
            ));
        }
        let merges: Option<Vec<&'a str>> = match get("tokenizer.ggml.merges") {
            Some(Meta::StrArray(m)) => Some(m),
            None => None,
            Some(other) => {
                return Err(tok_err(
                    src,
                    format!(
                        "`tokenizer.ggml.merges` is a {}, expected a string array",
                        other.kind()
                    ),
                ))
            }
        };
        let id_token = |key: &str| -> Result<Option<(String, u32)>> {
            match get_u32(key)? {
                None => Ok(None),
                Some(id) => match tokens.get(id as usize) {
                    Some(t) => Ok(Some((t.to_string(), id))),
                    None => Err(tok_err(
                        src,
                        format!("`{key}` = {id} is outside the vocabulary ({n} tokens)"),
                    )),
                },
            }
        };
        let bos = id_token("tokenizer.ggml.bos_token_id")?;
        let eos = id_token("tokenizer.ggml.eos_token_id")?;
        let unk = id_token("tokenizer.ggml.unknown_token_id")?;
        let pad = id_token("tokenizer.ggml.padding_token_id")?;
        let add_bos_flag = get_bool("tokenizer.ggml.add_bos_token")?;
        let add_eos = get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let chat_template = get_str("tokenizer.chat_template")?.map(str::to_owned);

        let byte_level = match model {
            "gpt2" => true,
            "llama" => false,
            other => {
                return Err(tok_err(
                    src,
                    format!("tokenizer.ggml.model = {other:?} is not supported (supported: \"gpt2\", \"llama\")"),
                ))
            }
        };
        let add_bos = add_bos_flag.unwrap_or(!byte_level);

        let mut inner = if byte_level {
            build_byte_level(&tokens, merges.as_deref(), pre, src)?
        } else {
            let scores: Option<Vec<f32>> = match get("tokenizer.ggml.scores") {
                Some(Meta::F32Array(s)) => Some(s),
                None => None,
                Some(other) => {
                    return Err(tok_err(
                        src,
                        format!(
                            "`tokenizer.ggml.scores` is a {}, expected an f32 array",
                            other.kind()
                        ),
                    ))
                }
            };
            build_sentencepiece(&tokens, merges.as_deref(), scores.as_deref(), src)?
        };

        // Control tokens → special added tokens; user-defined → plain added tokens (matched whole).
        let alphabet = byte_alphabet();
        let control: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|&(t, &ty)| {
                ty == token_type::CONTROL
                    && (!byte_level || t.chars().all(|c| alphabet.contains_key(&c)))
            })
            .map(|(t, _)| AddedToken::from(t.to_string(), true).normalized(false))
            .collect();
        inner
            .add_special_tokens(control)
            .map_err(|e| tok_err(src, e))?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|&(t, &ty)| ty == token_type::USER_DEFINED && inner.token_to_id(t).is_some())
            .map(|(t, _)| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        inner.add_tokens(user).map_err(|e| tok_err(src, e))?;
        // bos/eos/unk/pad are special tokens in transformers whatever their type says.
        let named: Vec<AddedToken> = [&bos, &eos, &unk, &pad]
            .into_iter()
            .flatten()
            .filter(|(t, _)| {
                !inner
                    .get_added_tokens_decoder()
                    .values()
                    .any(|a| &a.content == t)
            })
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner
            .add_special_tokens(named)
            .map_err(|e| tok_err(src, e))?;

        let add_bos = add_bos && bos.is_some();
        let add_eos = add_eos && eos.is_some();
        inner.with_post_processor(Some(template_processing(
            bos.as_ref().filter(|_| add_bos),
            eos.as_ref().filter(|_| add_eos),
            src,
        )?));

        let detok = if byte_level {
            Detok::ByteLevel
        } else {
            Detok::SentencePiece {
                strip_first_space: true,
            }
        };
        Ok(Tokenizer {
            inner,
            source,
            eos_ids: eos.iter().map(|(_, id)| *id).collect(),
            eos_token: eos.map(|(t, _)| t),
            bos,
            add_bos,
            detok,
            chat_template,
        })
    }

    /// [`from_gguf_metadata`](Self::from_gguf_metadata) over the loader's parsed metadata map
    /// (`GgufFile::metadata()`).
    pub fn from_gguf_map(
        metadata: &std::collections::BTreeMap<String, crate::loader::gguf::MetaValue>,
    ) -> Result<Self> {
        Self::from_gguf_metadata(&|key| metadata.get(key).and_then(meta_from_loader))
    }

    /// Whether `encode(text, true)` puts the BOS token first.
    fn detect_add_bos(&self) -> Result<bool> {
        let Some((_, bos_id)) = &self.bos else {
            return Ok(false);
        };
        let with = self.encode("a", true)?;
        let without = self.encode("a", false)?;
        Ok(with.len() > without.len() && with.first() == Some(bos_id))
    }

    /// Text → ids. With `add_special_tokens` the model's post-processor adds what Hugging Face adds
    /// (BOS for Llama-style models, nothing for most byte-level ones). Special tokens written in the
    /// text (`<|im_start|>`) are always recognised.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err(&self.source, format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids → text, special tokens included (as Hugging Face's `decode(skip_special_tokens=False)`).
    /// Unknown ids are skipped; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// Ids → text, optionally leaving special tokens out.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        match self.inner.decode(ids, skip_special_tokens) {
            Ok(s) => s,
            Err(_) => {
                // The decoders we build cannot fail; keep a byte-exact fallback anyway.
                let mut d = StreamDecoder::new(self).skip_special_tokens(skip_special_tokens);
                let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
                s.push_str(&d.finish());
                s
            }
        }
    }

    /// The BOS token id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, id)| *id)
    }

    /// The BOS token text (what chat templates get as `bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(t, _)| t.as_str())
    }

    /// Ids that end generation (eos, plus generation_config.json's extra ones for tokenizer.json).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The EOS token text (what chat templates get as `eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Whether `encode(text, true)` prepends BOS. tokenizer.json: its post-processor decides;
    /// GGUF: `tokenizer.ggml.add_bos_token`, default true for llama, false for gpt2.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// The id of a token (added tokens included), e.g. `token_to_id("<|im_end|>")`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token spelled by an id, as stored in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The chat template the tokenizer came with (GGUF `tokenizer.chat_template`, or
    /// `tokenizer_config.json`'s `chat_template`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A streaming detokenizer for generated ids.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The raw bytes one token stands for (before UTF-8 assembly). Empty for unknown ids.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let added = self.inner.get_added_vocabulary().simple_id_to_token(id);
        let Some(token) = added.or_else(|| self.inner.id_to_token(id)) else {
            return Vec::new();
        };
        match self.detok {
            Detok::ByteLevel => {
                let map = byte_alphabet();
                token
                    .chars()
                    .map(|c| map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| token.into_bytes())
            }
            Detok::SentencePiece { .. } => {
                let b = token.as_bytes();
                if b.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
                    if let Ok(byte) = u8::from_str_radix(&token[3..5], 16) {
                        return vec![byte];
                    }
                }
                token.replace('▁', " ").into_bytes()
            }
            Detok::Plain => self
                .inner
                .decode(&[id], false)
                .map(String::into_bytes)
                .unwrap_or_default(),
        }
    }
}

/// The loader's GGUF value as a tokenizer [`Meta`]; `None` for shapes the tokenizer never reads
/// (nested or mixed arrays).
pub fn meta_from_loader(v: &crate::loader::gguf::MetaValue) -> Option<Meta<'_>> {
    use crate::loader::gguf::MetaValue as V;
    Some(match v {
        V::String(s) => Meta::Str(s),
        V::U8(x) => Meta::U32(u32::from(*x)),
        V::U16(x) => Meta::U32(u32::from(*x)),
        V::U32(x) => Meta::U32(*x),
        V::I8(x) => Meta::I32(i32::from(*x)),
        V::I16(x) => Meta::I32(i32::from(*x)),
        V::I32(x) => Meta::I32(*x),
        V::U64(x) => Meta::U64(*x),
        V::I64(x) => Meta::I64(*x),
        V::F32(x) => Meta::F32(*x),
        V::F64(x) => Meta::F32(*x as f32),
        V::Bool(b) => Meta::Bool(*b),
        V::Array(items) => match items.first() {
            None => Meta::StrArray(Vec::new()),
            Some(V::String(_)) => Meta::StrArray(
                items
                    .iter()
                    .map(|i| match i {
                        V::String(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect::<Option<_>>()?,
            ),
            Some(V::F32(_)) => Meta::F32Array(
                items
                    .iter()
                    .map(|i| match i {
                        V::F32(x) => Some(*x),
                        _ => None,
                    })
                    .collect::<Option<_>>()?,
            ),
            Some(_) => Meta::I32Array(
                items
                    .iter()
                    .map(|i| match *i {
                        V::I32(x) => Some(x),
                        V::U32(x) => i32::try_from(x).ok(),
                        V::I8(x) => Some(i32::from(x)),
                        V::U8(x) => Some(i32::from(x)),
                        V::I16(x) => Some(i32::from(x)),
                        V::U16(x) => Some(i32::from(x)),
                        V::I64(x) => i32::try_from(x).ok(),
                        V::U64(x) => i32::try_from(x).ok(),
                        _ => None,
                    })
                    .collect::<Option<_>>()?,
            ),
        },
    })
}

fn detok_from_decoder(decoder: Option<&DecoderWrapper>) -> Detok {
    match decoder {
        Some(DecoderWrapper::ByteLevel(_)) => Detok::ByteLevel,
        Some(DecoderWrapper::Metaspace(m)) => Detok::SentencePiece {
            strip_first_space: m.get_prepend_scheme() != PrependScheme::Never,
        },
        Some(DecoderWrapper::Sequence(seq)) => {
            let parts = seq.get_decoders();
            if parts
                .iter()
                .any(|d| matches!(d, DecoderWrapper::ByteLevel(_)))
            {
                return Detok::ByteLevel;
            }
            let spm = parts.iter().any(|d| {
                matches!(
                    d,
                    DecoderWrapper::ByteFallback(_) | DecoderWrapper::Replace(_)
                )
            });
            if spm {
                let strip_first_space = parts.iter().any(|d| match d {
                    DecoderWrapper::Strip(s) => {
                        let v = serde_json::to_value(s).unwrap_or_default();
                        v.get("content").and_then(|c| c.as_str()) == Some(" ")
                            && v.get("start").and_then(|c| c.as_u64()).unwrap_or(0) > 0
                    }
                    DecoderWrapper::Metaspace(m) => m.get_prepend_scheme() != PrependScheme::Never,
                    _ => false,
                });
                Detok::SentencePiece { strip_first_space }
            } else {
                Detok::Plain
            }
        }
        _ => Detok::Plain,
    }
}

/// GPT-2's byte ↔ printable-char table, as char → byte.
fn byte_alphabet() -> &'static HashMap<char, u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        bytes_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

/// GPT-2's byte → printable-char table: printable Latin-1 bytes stand for themselves, the rest
/// are shifted to U+0100 upwards.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + next).unwrap_or('\u{FFFD}');
            next += 1;
            c
        };
    }
    table
}

/// The split regex llama.cpp's `tokenizer.ggml.pre` implies, as transformers maps it
/// (`GGUF_PRE_TOKENIZER_SPLITS`). `None`: GPT-2's own regex inside `ByteLevel` (this includes
/// "default", "gpt-2" and "smollm" — transformers ignores the latter's digit splitting, which
/// changes nothing for SmolLM2 since its vocabulary has no multi-digit tokens).
pub fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// BPE models are built without the `tokenizers` word cache. In tokenizers 0.23 that cache is
/// thread-local and keyed by model instance, and its entries are never freed when the model is
/// dropped: every tokenizer built and used leaks up to 10 000 cached words per thread (found by
/// the `gguf_tokenizer` fuzz target, whose RSS grew without bound). Merging a word is cheap next
/// to a forward pass, so the cache is not worth a leak in a process that reloads models.
const BPE_CACHE_CAPACITY: usize = 0;

fn bpe_vocab(tokens: impl Iterator<Item = String>) -> tokenizers::models::bpe::Vocab {
    // Later duplicates win, as in Python's dict comprehension.
    tokens.enumerate().map(|(i, t)| (t, i as u32)).collect()
}

fn parse_merges(merges: &[&str], src: &str) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    tok_err(
                        src,
                        format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                    )
                })
        })
        .collect()
}

fn build_byte_level(
    tokens: &[&str],
    merges: Option<&[&str]>,
    pre: Option<&str>,
    src: &str,
) -> Result<tokenizers::Tokenizer> {
    let spelling = bytes_to_unicode();
    let alphabet = byte_alphabet();
    let respelled = tokens.iter().map(|t| {
        if t.chars().all(|c| alphabet.contains_key(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        }
    });
    let vocab = bpe_vocab(respelled);
    let merges = parse_merges(merges.unwrap_or(&[]), src)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .cache_capacity(BPE_CACHE_CAPACITY)
        .build()
        .map_err(|e| tok_err(src, format!("cannot build the BPE model: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let pre_tok: PreTokenizerWrapper = match pre.and_then(pre_tokenizer_split) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err(src, format!("bad split regex: {e}")))?;
            PreSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(ByteLevel::default()));
    Ok(tok)
}

/// Merges recovered from a SentencePiece vocabulary and its scores, exactly as transformers'
/// `generate_merges(vocab, vocab_scores)`: every split of every token into two vocabulary pieces,
/// ordered by the merged token's score (best first), then by the pieces' lengths (longer first),
/// ties kept in vocabulary order.
pub fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        index.insert(t, i);
    }
    // Python's dict(zip(tokens, scores)): first position, last value.
    let mut order: Vec<(&str, f32)> = Vec::with_capacity(tokens.len());
    let mut pos: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        match pos.get(t) {
            Some(&p) => order[p].1 = s,
            None => {
                pos.insert(t, order.len());
                order.push((t, s));
            }
        }
    }
    // (left, right, score, left chars, right chars)
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    let mut local = Vec::new();
    for &(merge, score) in &order {
        local.clear();
        for (cut, _) in merge.char_indices().skip(1) {
            let (l, r) = merge.split_at(cut);
            if let (Some(&il), Some(&ir)) = (index.get(l), index.get(r)) {
                local.push((il, ir, l, r));
            }
        }
        local.sort_by_key(|&(il, ir, _, _)| (il, ir));
        merges.extend(
            local
                .iter()
                .map(|&(_, _, l, r)| (l, r, score, l.chars().count(), r.chars().count())),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

fn build_sentencepiece(
    tokens: &[&str],
    merges: Option<&[&str]>,
    scores: Option<&[f32]>,
    src: &str,
) -> Result<tokenizers::Tokenizer> {
    let merges = match merges {
        Some(m) => parse_merges(m, src)?,
        None => {
            let scores = scores.ok_or_else(|| {
                tok_err(src, "a llama (SentencePiece) tokenizer needs `tokenizer.ggml.merges` or `tokenizer.ggml.scores`")
            })?;
            if scores.len() != tokens.len() {
                return Err(tok_err(
                    src,
                    format!(
                        "`tokenizer.ggml.scores` has {} entries but there are {} tokens",
                        scores.len(),
                        tokens.len()
                    ),
                ));
            }
            merges_from_scores(tokens, scores)
        }
    };
    let vocab = bpe_vocab(tokens.iter().map(|t| t.to_string()));
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .cache_capacity(BPE_CACHE_CAPACITY)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| tok_err(src, format!("cannot build the BPE model: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    let replace = Replace::new("▁", " ").map_err(|e| tok_err(src, e))?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ])));
    Ok(tok)
}

/// transformers' `update_post_processor`: `[bos] $A [eos]`.
fn template_processing(
    bos: Option<&(String, u32)>,
    eos: Option<&(String, u32)>,
    src: &str,
) -> Result<PostProcessorWrapper> {
    use serde_json::json;
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let mut single = vec![];
    let mut pair = vec![];
    let mut special_tokens = serde_json::Map::new();
    for (part, type_id) in [("A", 0u32), ("B", 1)] {
        let target = if part == "A" { &mut single } else { &mut pair };
        if let Some((t, _)) = bos {
            target.push(special(t, type_id));
        }
        target.push(seq(part, type_id));
        if let Some((t, _)) = eos {
            target.push(special(t, type_id));
        }
    }
    let pair = [single.clone(), pair].concat();
    for (t, id) in bos.into_iter().chain(eos) {
        special_tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    let v = json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens});
    serde_json::from_value(v)
        .map_err(|e| tok_err(src, format!("cannot build the post-processor: {e}")))
}

/// Streaming detokenizer: feed generated ids one at a time, get back only complete UTF-8 text.
///
/// Bytes of a character split across tokens (byte-level pieces, `<0xXX>` byte-fallback tokens,
/// multi-codepoint emoji) are held until the character is complete; a byte sequence that can never
/// become valid UTF-8 is emitted as U+FFFD at once, and [`finish`](Self::finish) flushes an
/// incomplete tail as U+FFFD. For SentencePiece models the single leading space the decoder strips
/// at the start of a text is stripped at the start of the stream, as `decode` does; use
/// [`continuing`](Self::continuing) when the stream continues a prompt instead.
/// Concatenating every `push` and `finish` gives `decode(ids)` (up to how many U+FFFD stand for
/// invalid bytes).
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    pending: Vec<u8>,
    at_start: bool,
    skip_special: bool,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder at the start of a text: like `decode`, it strips a SentencePiece model's
    /// leading space; special tokens are kept.
    pub fn new(tok: &'t Tokenizer) -> Self {
        StreamDecoder {
            tok,
            pending: Vec::new(),
            at_start: true,
            skip_special: false,
        }
    }

    /// Do not strip a SentencePiece leading space: the text continues earlier text.
    pub fn continuing(mut self) -> Self {
        self.at_start = false;
        self
    }

    /// Leave special tokens (`<|im_end|>`, `</s>`) out of the text.
    pub fn skip_special_tokens(mut self, yes: bool) -> Self {
        self.skip_special = yes;
        self
    }

    /// Adds one id; returns the text that is now complete (often empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        let mut bytes = self.tok.token_bytes(id);
        if self.at_start && !bytes.is_empty() {
            self.at_start = false;
            if matches!(
                self.tok.detok,
                Detok::SentencePiece {
                    strip_first_space: true
                }
            ) && bytes[0] == b' '
            {
                bytes.remove(0);
            }
        }
        self.pending.extend_from_slice(&bytes);
        self.take_complete()
    }

    /// Flushes what is left; bytes that never completed a character become U+FFFD.
    pub fn finish(&mut self) -> String {
        let mut out = self.take_complete();
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        out
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just validated this prefix.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += bad;
                        }
                        None => break, // incomplete character: wait for more bytes
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
