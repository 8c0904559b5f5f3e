//! Constrained decoding: a JSON schema or a Lark grammar turned into, at each step, the set of
//! tokens that keep the output inside the grammar (llguidance does the parsing).
//!
//! Three pieces, by lifetime:
//! * [`TokenEnv`] — once per model: every token's bytes in a byte trie and llguidance's parser
//!   factory (together ~150 ms for a 49k vocabulary, so `Model::token_env` caches it).
//! * [`Constraint`] — once per grammar: the compiled grammar. Compiling is where a bad schema
//!   or grammar fails, with llguidance's message naming the problem.
//! * [`ConstraintMatcher`] — once per request: the parser state. Each step it gives the
//!   allowed-token mask as u32 words (bit `id & 31` of word `id >> 5`, the layout the GPU
//!   sampler reads, padded to the logits' width) and consumes the chosen token.
//!
//! Token bytes: text tokens are their raw bytes ([`Tokenizer::token_bytes`]); special tokens
//! are `0xFF` + their spelling, so no grammar text can ever match `<|im_start|>`; ids past the
//! tokenizer's vocabulary (models whose logits are padded) are unreachable special tokens.
//! The model's end-of-sequence ids are the trie's EOS tokens: the mask allows them exactly
//! when the grammar accepts the output so far.

#![warn(missing_docs)]

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What to constrain the output to.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// A JSON schema (draft 2020-12 subset llguidance supports; `$ref` to `#/...` only).
    /// Output is compact JSON unless the schema's `x-guidance` says otherwise (see
    /// `"whitespace_flexible"` in llguidance's docs).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `json_object` response format).
    JsonObject,
    /// A Lark grammar (llguidance's dialect, `start` rule; `%json {...}` embeds a schema).
    Lark(String),
}

impl GrammarSpec {
    /// A short name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            GrammarSpec::JsonSchema(_) => "JSON schema",
            GrammarSpec::JsonObject => "JSON object",
            GrammarSpec::Lark(_) => "Lark grammar",
        }
    }
}

/// llguidance's view of the vocabulary. It tokenizes text only to fast-forward forced bytes,
/// which Fado does not use, so a greedy walk of the trie is enough (and it is declared
/// non-canonical so llguidance never relies on it matching the real BPE).
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A model's token environment for constraints: built once per model, shared by every
/// [`Constraint`] compiled for it.
pub struct TokenEnv {
    factory: ParserFactory,
    n_vocab: usize,
}

impl TokenEnv {
    /// The environment of `tok` for logits of `n_vocab` columns (≥ the tokenizer's
    /// vocabulary; extra ids are never allowed) with end-of-sequence ids `stop_ids`.
    pub fn new(tok: &Tokenizer, n_vocab: usize, stop_ids: &[u32]) -> Result<TokenEnv> {
        let words = token_words(tok, n_vocab);
        let eos = *stop_ids.first().ok_or_else(|| {
            Error::Tokenizer("constrained decoding needs an end-of-sequence token".into())
        })?;
        let mut info = TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = tok.bos_id();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(stop_ids);
        let env: llguidance::toktrie::TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Tokenizer(format!("building the grammar engine: {e}")))?;
        // Warnings go into the error or nowhere, never to the process's stderr.
        factory.quiet();
        Ok(TokenEnv {
            factory,
            n_vocab: words.len(),
        })
    }

    /// Columns of the logits the masks cover.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Compile `spec`. An invalid or unsupported schema, or a grammar that does not compile,
    /// is an [`Error::Request`] naming the problem (llguidance's first line, e.g.
    /// "invalid JSON schema: Unsatisfiable schema: minimum (5) is greater than maximum (1)").
    pub fn compile(&self, spec: GrammarSpec) -> Result<Constraint> {
        let grammar = match &spec {
            GrammarSpec::JsonSchema(v) => {
                if !(v.is_object() || v.is_boolean()) {
                    return Err(Error::Request(
                        "invalid JSON schema: it must be an object or a boolean".into(),
                    ));
                }
                TopLevelGrammar::from_json_schema(compact(v.clone()))
            }
            GrammarSpec::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            GrammarSpec::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| Error::Request(format!("invalid {}: {}", spec.kind(), first_line(&e))))?;
        Ok(Constraint {
            spec,
            parser,
            n_vocab: self.n_vocab,
        })
    }
}

/// `schema` with llguidance's `x-guidance` options defaulting to compact JSON (no free
/// whitespace between tokens: `{"a": 1, "b": [2, 3]}`), unless the schema sets its own. With
/// free whitespace, small models spend tokens on (and can loop in) newlines and indentation.
/// Validators ignore the `x-guidance` keyword.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// The message's first non-empty line: llguidance's errors go on with a caret display.
fn first_line(e: &impl std::fmt::Display) -> String {
    let s = format!("{e}");
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string()
}

/// Per-token bytes as llguidance wants them (see the module docs).
fn token_words(tok: &Tokenizer, n_vocab: usize) -> Vec<Vec<u8>> {
    let n = tok.vocab_size();
    let special = |spelling: &str| {
        let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        b.extend_from_slice(spelling.as_bytes());
        b
    };
    let mut words = Vec::with_capacity(n_vocab.max(n));
    for id in 0..n as u32 {
        if tok.is_special(id) {
            words.push(special(&tok.id_to_token(id).unwrap_or_default()));
        } else {
            words.push(tok.token_bytes(id));
        }
    }
    while words.len() < n_vocab {
        words.push(special(&format!("<[{}]>", words.len())));
    }
    words
}

/// A compiled grammar for one model's vocabulary. Cheap to share (`Arc`); each request takes
/// its own [`ConstraintMatcher`].
pub struct Constraint {
    spec: GrammarSpec,
    parser: TokenParser,
    n_vocab: usize,
}

impl Constraint {
    /// What it was compiled from.
    pub fn spec(&self) -> &GrammarSpec {
        &self.spec
    }

    /// Words of the masks ([`ConstraintMatcher::mask`]): `ceil(n_vocab / 32)`.
    pub fn mask_words(&self) -> usize {
        self.n_vocab.div_ceil(32)
    }

    /// A fresh parser state for one generation.
    pub fn matcher(&self) -> ConstraintMatcher {
        ConstraintMatcher {
            m: Matcher::new(Ok(self.parser.deep_clone())),
            mask: vec![0; self.mask_words()],
        }
    }
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.n_vocab == other.n_vocab
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Constraint({:?})", self.spec)
    }
}

/// One generation's position in the grammar.
pub struct ConstraintMatcher {
    m: Matcher,
    mask: Vec<u32>,
}

impl ConstraintMatcher {
    /// The tokens allowed next, one bit each, over the logits' width. Empty of text tokens
    /// only when the grammar is complete, where it allows the EOS ids.
    pub fn mask(&mut self) -> Result<&[u32]> {
        let v = self
            .m
            .compute_mask()
            .map_err(|e| Error::Request(format!("constraint: {}", first_line(&e))))?;
        let words = v.as_slice();
        let n = words.len().min(self.mask.len());
        self.mask[..n].copy_from_slice(&words[..n]);
        self.mask[n..].fill(0);
        Ok(&self.mask)
    }

    /// Advance past the token the sampler chose (one the last mask allowed).
    pub fn consume(&mut self, token: u32) -> Result<()> {
        self.m
            .consume_token(token)
            .map_err(|e| Error::Request(format!("constraint: {}", first_line(&e))))
    }

    /// Whether the grammar can produce nothing more (a JSON value is closed, or an EOS was
    /// consumed): generation is complete.
    pub fn is_stopped(&self) -> bool {
        self.m.is_stopped()
    }

    /// Whether the output so far is a complete sentence of the grammar (EOS would be allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.m.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_skips_blank_lines_and_trims() {
        assert_eq!(first_line(&"\n  bad thing \n  ^^^\n"), "bad thing");
        assert_eq!(first_line(&""), "unknown error");
    }
}
