//! The reference distributions of a perplexity run, saved for a later KL-divergence comparison
//! (`fado perplexity --save-logits`, then `--kl-divergence` with another build or
//! quantization of the same model).
//!
//! Format, version 1 (little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `FADOLOGP` |
//! | 4 | u32 format version (1) |
//! | 4 | u32 length of the JSON header |
//! | n | the JSON header: `model`, `vocab`, `ctx`, `chunks`, `first`, `top_k`, `tokens` (the `chunks × ctx` evaluated ids, before any BOS replacement) |
//! | … | one record per scored token, chunk by chunk, positions `first+1 … ctx−1` |
//!
//! A record is `4 + 4 + 8·top_k` bytes: the f32 log-probability of the token that came, the
//! f32 log of the probability mass outside the stored entries (−∞ when the whole vocabulary is
//! stored), then `top_k` pairs (u32 id, f32 log-probability), most likely first. Vocabularies of
//! up to [`FULL_VOCAB_MAX`] tokens are stored whole (`top_k = vocab`); larger ones keep the
//! [`TOP_K`] most likely tokens plus the remaining mass, so the KL divergence computed from them
//! treats the tail as one outcome — a lower bound of the full one (log-sum inequality) that
//! misses only what the tail redistributes within itself.

#![warn(missing_docs)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;

use super::perplexity::{Plan, Scored};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"FADOLOGP";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Vocabularies up to this size are stored whole.
pub const FULL_VOCAB_MAX: usize = 4096;
/// Log-probabilities kept per token for larger vocabularies.
pub const TOP_K: usize = 128;

/// What a logits file was computed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The model's name (informative; not checked, since comparing another build or
    /// quantization of a model is the point).
    pub model: String,
    /// Vocabulary size.
    pub vocab: usize,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks.
    pub chunks: usize,
    /// The first position whose logits are used (`ctx / 2`).
    pub first: usize,
    /// Entries per record.
    pub top_k: usize,
    /// The evaluated token ids.
    pub tokens: Vec<u32>,
}

impl Header {
    /// The header for `plan` on `model`.
    pub fn new(model: &Model, plan: &Plan) -> Header {
        let vocab = model.config.vocab_size;
        Header {
            model: model.name.clone(),
            vocab,
            ctx: plan.ctx,
            chunks: plan.chunks,
            first: plan.first(),
            top_k: if vocab <= FULL_VOCAB_MAX {
                vocab
            } else {
                TOP_K
            },
            tokens: plan.tokens.clone(),
        }
    }

    /// Bytes of one record.
    pub fn record_bytes(&self) -> usize {
        8 + 8 * self.top_k
    }

    /// Check that `plan` on `model` evaluates what this file holds (`what` names the file).
    pub fn check(&self, model: &Model, plan: &Plan, what: &str) -> Result<()> {
        let vocab = model.config.vocab_size;
        if self.vocab != vocab {
            return Err(Error::Request(format!(
                "{what} was computed with a vocabulary of {} tokens (model {}), but {} has {vocab}: \
                 compare against logits of the same model family",
                self.vocab, self.model, model.name
            )));
        }
        if self.ctx != plan.ctx {
            return Err(Error::Request(format!(
                "{what} was computed with --ctx {}, this run has --ctx {}: use --ctx {}",
                self.ctx, plan.ctx, self.ctx
            )));
        }
        let n = plan.tokens.len().min(self.tokens.len());
        if let Some(i) = (0..n).find(|&i| plan.tokens[i] != self.tokens[i]) {
            return Err(Error::Request(format!(
                "{what} was computed on another text (or tokenizer): token {i} is {} there and {} \
                 here; use the same --file",
                self.tokens[i], plan.tokens[i]
            )));
        }
        if self.chunks < plan.chunks {
            return Err(Error::Request(format!(
                "{what} holds {} chunks, this run evaluates {}: use --chunks {}",
                self.chunks, plan.chunks, self.chunks
            )));
        }
        Ok(())
    }
}

/// The log-probabilities of `s` rounded to f32, best first: the stored entries (the
/// `k` largest; ties, lower id first) and the log of the mass outside them.
pub fn top_entries(s: &Scored, k: usize) -> (Vec<(u32, f32)>, f32) {
    let mut ids: Vec<u32> = (0..s.logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| {
        let (la, lb) = (s.logits[*a as usize], s.logits[*b as usize]);
        lb.total_cmp(&la).then(a.cmp(b))
    };
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_logit);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit);
    let entries: Vec<(u32, f32)> = ids.into_iter().map(|i| (i, logprob(s, i))).collect();
    let rest = if k >= s.logits.len() {
        f32::NEG_INFINITY
    } else {
        rest_logprob(entries.iter().map(|e| e.1))
    };
    (entries, rest)
}

/// `log p(id)` of `s`, rounded to f32 as stored (so a model compared with itself gives exactly
/// zero).
pub fn logprob(s: &Scored, id: u32) -> f32 {
    (s.logits[id as usize] as f64 - s.lse) as f32
}

/// `log(1 − Σ exp(lp))`: the mass outside the given log-probabilities (clamped above zero).
pub fn rest_logprob(lps: impl Iterator<Item = f32>) -> f32 {
    let inside: f64 = lps.map(|l| (l as f64).exp()).sum();
    (1.0 - inside).max(1e-30).ln() as f32
}

/// Writes a logits file record by record.
pub struct LogitsWriter {
    out: BufWriter<File>,
    top_k: usize,
    path: PathBuf,
}

impl LogitsWriter {
    /// Create `path` and write the header.
    pub fn create(path: &Path, header: &Header) -> Result<LogitsWriter> {
        let io = |e: std::io::Error| Error::io(path, e);
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        let json = serde_json::to_vec(header)
            .map_err(|e| Error::Request(format!("encoding the logits header: {e}")))?;
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        out.write_all(&(json.len() as u32).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        Ok(LogitsWriter {
            out,
            top_k: header.top_k,
            path: path.to_path_buf(),
        })
    }

    /// Append the record of one scored token.
    pub fn write(&mut self, s: &Scored) -> Result<()> {
        let (entries, rest) = top_entries(s, self.top_k);
        let mut rec = Vec::with_capacity(8 + 8 * entries.len());
        rec.extend_from_slice(&logprob(s, s.target).to_le_bytes());
        rec.extend_from_slice(&rest.to_le_bytes());
        for (id, lp) in entries {
            rec.extend_from_slice(&id.to_le_bytes());
            rec.extend_from_slice(&lp.to_le_bytes());
        }
        self.out
            .write_all(&rec)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Flush everything to disk.
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// One stored token's reference distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `log p(the token that came)`.
    pub target: f32,
    /// `log` of the mass outside `entries` (−∞ when they are the whole vocabulary).
    pub rest: f32,
    /// (id, log-probability), most likely first.
    pub entries: Vec<(u32, f32)>,
}

/// Reads a logits file.
pub struct LogitsReader {
    input: BufReader<File>,
    /// What the file holds.
    pub header: Header,
    what: String,
    path: PathBuf,
}

impl LogitsReader {
    /// Open `path` and read its header; anything that is not a version-1 logits file is an
    /// error naming the file.
    pub fn open(path: &Path) -> Result<LogitsReader> {
        let what = format!("the logits file {}", path.display());
        let io = |e: std::io::Error| Error::io(path, e);
        let mut input = BufReader::new(File::open(path).map_err(io)?);
        let bad = |why: &str| {
            Error::Request(format!(
                "{what} is not a Fado logits file ({why}); write one with `fado perplexity \
                 --save-logits`"
            ))
        };
        let mut fixed = [0u8; 16];
        input.read_exact(&mut fixed).map_err(|_| bad("too short"))?;
        if &fixed[..8] != MAGIC {
            return Err(bad("wrong magic bytes"));
        }
        let version = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
        if version != VERSION {
            return Err(Error::Request(format!(
                "{what} has format version {version}; this build reads version {VERSION}"
            )));
        }
        let len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
        let size = std::fs::metadata(path).map_err(io)?.len() as usize;
        if len > size {
            return Err(bad("the header length is past the end of the file"));
        }
        let mut json = vec![0u8; len];
        input
            .read_exact(&mut json)
            .map_err(|_| bad("truncated header"))?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| bad(&format!("bad header: {e}")))?;
        let scored = header.ctx.saturating_sub(1 + header.first);
        let want = 16 + len + header.chunks * scored * header.record_bytes();
        if header.tokens.len() != header.chunks * header.ctx
            || header.top_k == 0
            || header.top_k > header.vocab
            || size != want
        {
            return Err(bad(&format!(
                "its size or header is inconsistent: {size} bytes, {want} expected"
            )));
        }
        Ok(LogitsReader {
            input,
            header,
            what,
            path: path.to_path_buf(),
        })
    }

    /// The next record.
    pub fn next_record(&mut self) -> Result<Record> {
        let mut rec = vec![0u8; self.header.record_bytes()];
        self.input
            .read_exact(&mut rec)
            .map_err(|e| Error::io(&self.path, e))?;
        let f = |i: usize| f32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let u = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let vocab = self.header.vocab as u32;
        let entries: Vec<(u32, f32)> = (0..self.header.top_k)
            .map(|j| (u(8 + 8 * j), f(12 + 8 * j)))
            .collect();
        if entries.iter().any(|e| e.0 >= vocab) {
            return Err(Error::Request(format!(
                "{} holds a token id outside its vocabulary: the file is damaged",
                self.what
            )));
        }
        Ok(Record {
            target: f(0),
            rest: f(4),
            entries,
        })
    }
}
