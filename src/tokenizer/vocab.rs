//! A tokenizer described by its vocabulary, whatever file it came from ([`Vocab`]), and the
//! `tokenizers` pipeline built from it.

use tokenizers::{AddedToken, PostProcessorWrapper};

use super::bpe::{build_byte_level, build_sentencepiece};
use super::decode::Detok;
use super::{byte_alphabet, tok_err, Tokenizer};
use crate::error::Result;

/// Kinds of token, numbered as llama.cpp's `llama_token_type` (GGUF `tokenizer.ggml.token_type`).
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

/// Which BPE pipeline a vocabulary is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VocabModel<'a> {
    /// Byte-level BPE (GPT-2 style); `pre` names the pre-tokenizer family (llama.cpp's names,
    /// see [`pre_tokenizer_split`](super::pre_tokenizer_split)), `None` for GPT-2's own.
    ByteLevel {
        /// The pre-tokenizer family.
        pre: Option<&'a str>,
    },
    /// SentencePiece BPE with byte fallback.
    SentencePiece,
}

/// Where a vocabulary's merges come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Merges<'a> {
    /// Merges as `"left right"` strings, best first.
    Listed(Vec<&'a str>),
    /// One score per token, from which SentencePiece merges are recovered
    /// ([`merges_from_scores`](super::merges_from_scores)).
    FromScores(Vec<f32>),
}

/// A tokenizer described by its vocabulary, neutral of file format: what a loader reads out of
/// a model file (GGUF's `tokenizer.ggml.*`) for [`Tokenizer::from_vocab`] to build from.
#[derive(Clone, Debug)]
pub struct Vocab<'a> {
    /// Where the description came from, for messages.
    pub source: String,
    /// Byte-level or SentencePiece BPE.
    pub model: VocabModel<'a>,
    /// Token spellings; a token's id is its index.
    pub tokens: Vec<&'a str>,
    /// One [`token_type`] per token, or empty when every token is normal.
    pub token_types: Vec<i32>,
    /// The merges.
    pub merges: Merges<'a>,
    /// BOS token id.
    pub bos: Option<u32>,
    /// EOS token id.
    pub eos: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Padding token id.
    pub pad: Option<u32>,
    /// Whether encoding with special tokens puts BOS first.
    pub add_bos: bool,
    /// Whether encoding with special tokens puts EOS last.
    pub add_eos: bool,
    /// The chat template the model ships, if any.
    pub chat_template: Option<String>,
}

impl Vocab<'_> {
    /// A special token's spelling and id; an error if the id is outside the vocabulary.
    fn special(&self, what: &str, id: Option<u32>) -> Result<Option<(String, u32)>> {
        match id {
            None => Ok(None),
            Some(id) => match self.tokens.get(id as usize) {
                Some(t) => Ok(Some((t.to_string(), id))),
                None => Err(tok_err(
                    &self.source,
                    format!(
                        "{what} id {id} is outside the vocabulary ({} tokens)",
                        self.tokens.len()
                    ),
                )),
            },
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer a vocabulary describes, the way transformers does for GGUF files
    /// (see the module docs).
    pub fn from_vocab(vocab: Vocab<'_>) -> Result<Self> {
        let src = vocab.source.as_str();
        let bos = vocab.special("bos", vocab.bos)?;
        let eos = vocab.special("eos", vocab.eos)?;
        let unk = vocab.special("unk", vocab.unk)?;
        let pad = vocab.special("pad", vocab.pad)?;
        let byte_level = matches!(vocab.model, VocabModel::ByteLevel { .. });
        let mut inner = match (&vocab.model, &vocab.merges) {
            (VocabModel::ByteLevel { pre }, Merges::Listed(m)) => {
                build_byte_level(&vocab.tokens, m, *pre, src)?
            }
            (VocabModel::ByteLevel { .. }, Merges::FromScores(_)) => {
                return Err(tok_err(
                    src,
                    "a byte-level BPE vocabulary needs its merges listed",
                ))
            }
            (VocabModel::SentencePiece, merges) => build_sentencepiece(&vocab.tokens, merges, src)?,
        };
        add_tokens(&mut inner, &vocab, byte_level, [&bos, &eos, &unk, &pad])?;

        let add_bos = vocab.add_bos && bos.is_some();
        let add_eos = vocab.add_eos && eos.is_some();
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
            source: vocab.source,
            eos_ids: eos.iter().map(|(_, id)| *id).collect(),
            eos_token: eos.map(|(t, _)| t),
            bos,
            add_bos,
            detok,
            chat_template: vocab.chat_template,
        })
    }
}

/// Control tokens → special added tokens; user-defined → plain added tokens (matched whole);
/// the named special tokens (bos/eos/unk/pad) are special in transformers whatever their type.
fn add_tokens(
    inner: &mut tokenizers::Tokenizer,
    vocab: &Vocab<'_>,
    byte_level: bool,
    named: [&Option<(String, u32)>; 4],
) -> Result<()> {
    let src = vocab.source.as_str();
    let alphabet = byte_alphabet();
    let control: Vec<AddedToken> = vocab
        .tokens
        .iter()
        .zip(&vocab.token_types)
        .filter(|&(t, &ty)| {
            ty == token_type::CONTROL
                && (!byte_level || t.chars().all(|c| alphabet.contains_key(&c)))
        })
        .map(|(t, _)| AddedToken::from(t.to_string(), true).normalized(false))
        .collect();
    inner
        .add_special_tokens(control)
        .map_err(|e| tok_err(src, e))?;
    let user: Vec<AddedToken> = vocab
        .tokens
        .iter()
        .zip(&vocab.token_types)
        .filter(|&(t, &ty)| ty == token_type::USER_DEFINED && inner.token_to_id(t).is_some())
        .map(|(t, _)| AddedToken::from(t.to_string(), false).normalized(false))
        .collect();
    inner.add_tokens(user).map_err(|e| tok_err(src, e))?;
    let named: Vec<AddedToken> = named
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
    Ok(())
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
