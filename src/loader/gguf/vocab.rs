//! GGUF tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) → the tokenizer's
//! format-neutral [`Vocab`]: every key read and checked here, so the tokenizer never sees GGUF.
//!
//! * `tokenizer.ggml.model = "gpt2"`: byte-level BPE; `tokenizer.ggml.pre` names the
//!   pre-tokenizer; BOS is not added unless `add_bos_token` says so.
//! * `tokenizer.ggml.model = "llama"`: SentencePiece BPE; merges from `tokenizer.ggml.merges`,
//!   else recovered from `tokenizer.ggml.scores`; BOS added unless `add_bos_token` says not.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::tokenizer::{Merges, Tokenizer, Vocab, VocabModel};

use super::MetaValue;

/// Where the description comes from, in messages.
const SOURCE: &str = "GGUF tokenizer metadata";

/// One GGUF metadata value as the tokenizer import reads it, borrowed from wherever it is kept
/// ([`MetaValue`] here, a test's own reader elsewhere).
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

/// The tokenizer a GGUF file describes, from its `tokenizer.*` metadata; `get` looks a key up.
pub fn tokenizer_from_metadata<'a>(get: &dyn Fn(&str) -> Option<Meta<'a>>) -> Result<Tokenizer> {
    Tokenizer::from_vocab(vocab_from_metadata(get)?)
}

/// [`tokenizer_from_metadata`] over the loader's parsed metadata map (`GgufFile::metadata()`).
pub fn tokenizer_from_map(metadata: &BTreeMap<String, MetaValue>) -> Result<Tokenizer> {
    tokenizer_from_metadata(&|key| metadata.get(key).and_then(meta_ref))
}

/// The vocabulary GGUF tokenizer metadata describes; `get` looks a key up. Errors name the key.
pub fn vocab_from_metadata<'a>(get: &dyn Fn(&str) -> Option<Meta<'a>>) -> Result<Vocab<'a>> {
    let keys = Keys { get };
    let model = keys
        .str("tokenizer.ggml.model")?
        .ok_or_else(|| err("missing `tokenizer.ggml.model` (the file has no tokenizer)"))?;
    let pre = keys.str("tokenizer.ggml.pre")?;
    let tokens = match get("tokenizer.ggml.tokens") {
        Some(Meta::StrArray(t)) => t,
        Some(other) => return Err(keys.wrong("tokenizer.ggml.tokens", &other, "a string array")),
        None => return Err(err("missing `tokenizer.ggml.tokens`")),
    };
    let token_types = token_types(&keys, tokens.len())?;
    let merges = match get("tokenizer.ggml.merges") {
        Some(Meta::StrArray(m)) => Some(m),
        None => None,
        Some(other) => return Err(keys.wrong("tokenizer.ggml.merges", &other, "a string array")),
    };
    let id = |key: &str| keys.token_id(key, tokens.len());
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;
    let add_bos = keys.bool("tokenizer.ggml.add_bos_token")?;
    let add_eos = keys.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let chat_template = keys.str("tokenizer.chat_template")?.map(str::to_owned);

    let (model, merges) = match model {
        "gpt2" => (
            VocabModel::ByteLevel { pre },
            Merges::Listed(merges.unwrap_or_default()),
        ),
        "llama" => (
            VocabModel::SentencePiece,
            sentencepiece_merges(&keys, merges, tokens.len())?,
        ),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.model = {other:?} is not supported (supported: \"gpt2\", \"llama\")"
            )))
        }
    };
    // llama.cpp's default: SentencePiece models add BOS, byte-level ones do not.
    let add_bos = add_bos.unwrap_or(model == VocabModel::SentencePiece);
    Ok(Vocab {
        source: SOURCE.to_string(),
        model,
        tokens,
        token_types,
        merges,
        bos,
        eos,
        unk,
        pad,
        add_bos,
        add_eos,
        chat_template,
    })
}

fn err(msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{SOURCE}: {msg}"))
}

/// Typed lookups of tokenizer keys, with messages naming the key.
struct Keys<'g, 'a> {
    get: &'g dyn Fn(&str) -> Option<Meta<'a>>,
}

impl<'a> Keys<'_, 'a> {
    fn wrong(&self, key: &str, got: &Meta<'_>, want: &str) -> Error {
        err(format!("`{key}` is a {}, expected {want}", got.kind()))
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match (self.get)(key) {
            None => Ok(None),
            Some(Meta::Str(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, &other, "a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match (self.get)(key) {
            None => Ok(None),
            Some(Meta::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.wrong(key, &other, "a bool")),
        }
    }

    /// A token id, which must be inside the vocabulary of `n` tokens.
    fn token_id(&self, key: &str, n: usize) -> Result<Option<u32>> {
        let id = match (self.get)(key) {
            None => return Ok(None),
            Some(m) => m
                .as_u32()
                .ok_or_else(|| err(format!("`{key}` is {m:?}, expected a non-negative integer")))?,
        };
        if id as usize >= n {
            return Err(err(format!(
                "`{key}` = {id} is outside the vocabulary ({n} tokens)"
            )));
        }
        Ok(Some(id))
    }
}

/// `tokenizer.ggml.token_type`: one per token, or absent.
fn token_types(keys: &Keys<'_, '_>, n: usize) -> Result<Vec<i32>> {
    let types = match (keys.get)("tokenizer.ggml.token_type") {
        Some(Meta::I32Array(t)) => t,
        None => vec![],
        Some(other) => return Err(keys.wrong("tokenizer.ggml.token_type", &other, "an i32 array")),
    };
    if !types.is_empty() && types.len() != n {
        return Err(err(format!(
            "`tokenizer.ggml.token_type` has {} entries but there are {n} tokens",
            types.len()
        )));
    }
    Ok(types)
}

/// A SentencePiece vocabulary's merges: listed, else recovered from one score per token.
fn sentencepiece_merges<'a>(
    keys: &Keys<'_, 'a>,
    merges: Option<Vec<&'a str>>,
    n: usize,
) -> Result<Merges<'a>> {
    let scores = match (keys.get)("tokenizer.ggml.scores") {
        Some(Meta::F32Array(s)) => Some(s),
        None => None,
        Some(other) => return Err(keys.wrong("tokenizer.ggml.scores", &other, "an f32 array")),
    };
    if let Some(m) = merges {
        return Ok(Merges::Listed(m));
    }
    let scores = scores.ok_or_else(|| {
        err("a llama (SentencePiece) tokenizer needs `tokenizer.ggml.merges` or `tokenizer.ggml.scores`")
    })?;
    if scores.len() != n {
        return Err(err(format!(
            "`tokenizer.ggml.scores` has {} entries but there are {n} tokens",
            scores.len()
        )));
    }
    Ok(Merges::FromScores(scores))
}

/// A [`MetaValue`] as a [`Meta`]; `None` for shapes the tokenizer import never reads
/// (nested or mixed arrays).
fn meta_ref(v: &MetaValue) -> Option<Meta<'_>> {
    use MetaValue as V;
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
