//! The two BPE pipelines a vocabulary can describe — byte-level (GPT-2 alphabet, split regexes)
//! and SentencePiece (byte fallback, merges recovered from scores) — and GPT-2's byte alphabet.

use std::collections::HashMap;
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
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{tok_err, Merges};
use crate::error::Result;

/// GPT-2's byte ↔ printable-char table, as char → byte.
pub(super) fn byte_alphabet() -> &'static HashMap<char, u8> {
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
pub(super) fn bytes_to_unicode() -> [char; 256] {
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
pub(super) const BPE_CACHE_CAPACITY: usize = 0;

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

pub(super) fn build_byte_level(
    tokens: &[&str],
    merges: &[&str],
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
    let merges = parse_merges(merges, src)?;
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

pub(super) fn build_sentencepiece(
    tokens: &[&str],
    merges: &Merges<'_>,
    src: &str,
) -> Result<tokenizers::Tokenizer> {
    let merges = match merges {
        Merges::Listed(m) => parse_merges(m, src)?,
        Merges::FromScores(scores) => merges_from_scores(tokens, scores),
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
