//! Ids → bytes → text: how one token maps back to bytes (picked from the pipeline's decoder),
//! and the streaming detokenizer.

use tokenizers::pre_tokenizers::metaspace::PrependScheme;
use tokenizers::DecoderWrapper;

use super::Tokenizer;

/// How a single token id maps back to bytes; picked from the decoder the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Detok {
    /// GPT-2 byte-level alphabet: each char of a token stands for one byte.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` is a raw byte; `strip_first_space` drops one
    /// leading space of the whole text (the `Strip` / `Metaspace` decoders).
    SentencePiece { strip_first_space: bool },
    /// Anything else: the token's own decoding.
    Plain,
}

pub(super) fn detok_from_decoder(decoder: Option<&DecoderWrapper>) -> Detok {
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
