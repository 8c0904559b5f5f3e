//! Text ⇄ token ids.
//!
//! Two sources, one result: a Hugging Face `tokenizer.json` is loaded as is; a GGUF file carries no
//! `tokenizer.json`, only llama.cpp's `tokenizer.ggml.*` metadata, which the loader
//! (`loader::gguf::vocab`) turns into a format-neutral [`Vocab`], from which we build the same
//! `tokenizers` pipeline that transformers' GGUF converter builds
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`), so both give Hugging Face's ids:
//!
//! * byte-level BPE (GGUF `gpt2`): vocabulary (tokens outside the byte alphabet are respelled
//!   byte by byte) + merges, `ByteLevel` pre-tokenizer with the GPT-2 regex unless the
//!   pre-tokenizer name (`tokenizer.ggml.pre`) is a family with its own split regex (llama3,
//!   qwen2, …; see [`pre_tokenizer_split`]), `ByteLevel` decoder.
//! * SentencePiece BPE (GGUF `llama`): vocabulary as spelled, merges given or recovered from the
//!   scores, byte fallback (`<0xXX>`), `Metaspace` (`▁`, prepend on the first split), decoder
//!   Replace(▁→space) + ByteFallback + Fuse + Strip(one leading space).
//!
//! In both, control tokens ([`token_type::CONTROL`]) become special added tokens and
//! user-defined ones plain added tokens, so `<|im_start|>` encodes to one id; BOS/EOS are added
//! by a `TemplateProcessing` post-processor following the vocabulary's `add_bos` / `add_eos`.
//!
//! Files: `vocab` (the neutral description and the pipeline built from it), `bpe` (the two BPE
//! pipelines and GPT-2's byte alphabet), `decode` (ids → bytes, [`StreamDecoder`], which turns
//! ids into text one at a time without ever emitting half a character).

#![warn(missing_docs)]

mod bpe;
mod decode;
mod vocab;

use std::path::Path;

use crate::error::{Error, Result};

pub use bpe::{merges_from_scores, pre_tokenizer_split};
pub use decode::StreamDecoder;
pub use vocab::{token_type, Merges, Vocab, VocabModel};

use bpe::{byte_alphabet, BPE_CACHE_CAPACITY};
use decode::{detok_from_decoder, Detok};

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

pub(crate) fn tok_err(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{source}: {msg}"))
}

/// A `tokenizer_config.json` special token: a string or `{"content": ...}`.
pub(crate) fn config_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// A JSON file next to `tokenizer.json`, `None` if it is not there.
pub(crate) fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::model(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `tokenizer_config.json`'s `chat_template`: a string, or a list of `{name, template}` from which
/// "default" is taken.
pub fn pick_config_template(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list.iter().find_map(|t| {
            (t.get("name")?.as_str()? == "default")
                .then(|| t.get("template")?.as_str().map(str::to_owned))?
        }),
        _ => None,
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
            .and_then(pick_config_template);
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
