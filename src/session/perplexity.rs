//! Perplexity of a text, computed as llama.cpp's `llama-perplexity` does, so that figures
//! compare one to one: the whole text is tokenized once (with BOS when the model's tokenizer
//! adds one); it is cut into consecutive non-overlapping chunks of `ctx` tokens (the
//! incomplete tail dropped); each chunk runs from an empty cache at positions 0…ctx−1, its
//! first token replaced by BOS when the tokenizer adds BOS; with `first = ctx/2`, the tokens at
//! positions `first+1 … ctx−1` are scored, each from the logits one position earlier (the
//! first half only gives the scored tokens context). `ppl = exp(mean NLL)`, and its standard
//! error is `ppl · sqrt(var(NLL) / (n − 1))`, with the population variance, as llama.cpp
//! prints it.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::model::Model;

use super::score::log_sum_exp;
use super::{KvType, Session, SessionOptions};

/// The smallest `--ctx`: fewer positions leave almost nothing to score per chunk.
pub const MIN_CTX: usize = 8;
/// The context llama-perplexity uses by default.
pub const DEFAULT_CTX: usize = 512;

/// The token ids of a text file's bytes, as `llama-perplexity` tokenizes them (the whole text
/// at once, BOS first when the tokenizer adds one). Bytes that are not UTF-8 and a text with no
/// tokens are errors that say where and what.
pub fn tokenize_text(model: &Model, bytes: &[u8], what: &str) -> Result<Vec<u32>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::Request(format!(
            "{what} is not UTF-8 text: invalid byte(s) at offset {}; convert it to UTF-8 first",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(Error::Request(format!(
            "{what} is empty: perplexity needs a text of at least two chunks of --ctx tokens"
        )));
    }
    model.tokenizer.encode(text, true)
}

/// Which tokens are evaluated: `chunks` chunks of `ctx` tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The evaluated tokens, `chunks × ctx` of them (the tail of the text dropped).
    pub tokens: Vec<u32>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// The BOS id each chunk starts with, when the tokenizer adds BOS.
    pub bos: Option<u32>,
}

impl Plan {
    /// The plan for `tokens` (the whole text's) with chunks of `ctx` tokens, at most
    /// `max_chunks` of them. Like llama-perplexity, the text must hold at least two chunks;
    /// `ctx` must be at least [`MIN_CTX`] and at most the positions the model was trained for.
    pub fn new(
        model: &Model,
        tokens: &[u32],
        ctx: usize,
        max_chunks: Option<usize>,
    ) -> Result<Plan> {
        let trained = model.config.max_position_embeddings;
        if ctx < MIN_CTX {
            return Err(Error::Request(format!(
                "--ctx {ctx} is too small for perplexity: use at least {MIN_CTX} (llama.cpp's \
                 default is {DEFAULT_CTX})"
            )));
        }
        if trained > 0 && ctx > trained {
            return Err(Error::Request(format!(
                "--ctx {ctx} is beyond the {trained} positions {} was trained for: use at most \
                 {trained}",
                model.name
            )));
        }
        if max_chunks == Some(0) {
            return Err(Error::Request("--chunks must be at least 1".into()));
        }
        if tokens.len() < 2 * ctx {
            return Err(Error::Request(format!(
                "the text tokenizes to {} tokens, but perplexity with --ctx {ctx} needs at least \
                 {} (two chunks); use a longer text or a smaller --ctx",
                tokens.len(),
                2 * ctx
            )));
        }
        let all = tokens.len() / ctx;
        let chunks = max_chunks.map_or(all, |k| k.min(all));
        let bos = if model.tokenizer.add_bos_token() {
            model.tokenizer.bos_id()
        } else {
            None
        };
        Ok(Plan {
            tokens: tokens[..chunks * ctx].to_vec(),
            ctx,
            chunks,
            bos,
        })
    }

    /// The first position whose logits are used: `ctx / 2`.
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Tokens scored per chunk: `ctx − 1 − ctx/2`.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first()
    }

    /// Chunk `i` as it runs: its first token replaced by BOS when the tokenizer adds one.
    pub fn chunk(&self, i: usize) -> Vec<u32> {
        let mut c = self.tokens[i * self.ctx..(i + 1) * self.ctx].to_vec();
        if let Some(bos) = self.bos {
            c[0] = bos;
        }
        c
    }
}

/// Sums of negative log-likelihoods, for the mean and its uncertainty.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllStats {
    /// Σ nll.
    pub sum: f64,
    /// Σ nll².
    pub sum2: f64,
    /// Tokens.
    pub count: usize,
}

impl NllStats {
    /// Add one token's NLL.
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }

    /// Mean NLL (0 without tokens).
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }

    /// Standard error of the mean NLL: `sqrt((E[nll²] − E[nll]²) / (n − 1))` (0 with fewer
    /// than two tokens or no spread).
    pub fn mean_stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let m = self.mean();
        let var = self.sum2 / self.count as f64 - m * m;
        if var > 0.0 {
            (var / (self.count - 1) as f64).sqrt()
        } else {
            0.0
        }
    }

    /// `exp(mean NLL)`.
    pub fn ppl(&self) -> f64 {
        self.mean().exp()
    }

    /// The perplexity's standard error, `ppl · stderr(mean NLL)`.
    pub fn ppl_stderr(&self) -> f64 {
        self.ppl() * self.mean_stderr()
    }
}

/// One scored token: the logits (at `pos − 1`) that predict `target` (at `pos`).
pub struct Scored<'a> {
    /// Chunk index.
    pub chunk: usize,
    /// The target's position in its chunk.
    pub pos: usize,
    /// The token predicted.
    pub target: u32,
    /// The logits at `pos − 1`, the whole vocabulary.
    pub logits: &'a [f32],
    /// Their log-sum-exp (the log-softmax normaliser).
    pub lse: f64,
}

impl Scored<'_> {
    /// `−log p(target)`.
    pub fn nll(&self) -> f64 {
        self.lse - self.logits[self.target as usize] as f64
    }
}

/// The outcome of [`run`].
#[derive(Clone, Debug)]
pub struct Perplexity {
    /// The NLL sums over every scored token.
    pub stats: NllStats,
    /// Each scored token's NLL, in order (chunk by chunk).
    pub nlls: Vec<f64>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens run through the model (`chunks × ctx`).
    pub tokens_evaluated: usize,
    /// Wall-clock seconds of each chunk's model runs and logits readback (the CPU's scoring
    /// excluded).
    pub chunk_seconds: Vec<f64>,
}

impl Perplexity {
    /// Prefill tokens per second (logits of every row read back). The first chunk also compiles
    /// the graphs, so it is left out when there are others.
    pub fn tokens_per_s(&self) -> f64 {
        let timed = match self.chunk_seconds.as_slice() {
            [only] => std::slice::from_ref(only),
            [_, rest @ ..] => rest,
            [] => return 0.0,
        };
        let secs: f64 = timed.iter().sum();
        (timed.len() * self.ctx) as f64 / secs.max(1e-9)
    }
}

/// Evaluate `plan` on `model` with a KV cache of `kv` type: every chunk from an empty cache,
/// every scored token passed to `observe` (to save or compare distributions), and
/// `progress(done, stats)` after each chunk.
pub fn run(
    model: &Arc<Model>,
    plan: &Plan,
    kv: KvType,
    observe: &mut dyn FnMut(&Scored) -> Result<()>,
    progress: &mut dyn FnMut(usize, &NllStats),
) -> Result<Perplexity> {
    let mut session = Session::with_options(
        model.clone(),
        SessionOptions {
            ctx: plan.ctx,
            kv_type: kv,
        },
    )?;
    let vocab = model.config.vocab_size;
    let mut stats = NllStats::default();
    let mut nlls = Vec::with_capacity(plan.chunks * plan.scored_per_chunk());
    let mut chunk_seconds = Vec::with_capacity(plan.chunks);
    for chunk in 0..plan.chunks {
        let tokens = plan.chunk(chunk);
        session.reset();
        let t0 = Instant::now();
        let mut scoring = 0.0;
        let mut on_row = |pos: usize, logits: &[f32]| -> Result<()> {
            if pos + 1 >= tokens.len() {
                return Ok(()); // the last row predicts past the chunk
            }
            let t = Instant::now();
            let target = tokens[pos + 1];
            if target as usize >= vocab {
                return Err(Error::Request(format!(
                    "token id {target} is outside the vocabulary (size {vocab})"
                )));
            }
            let s = Scored {
                chunk,
                pos: pos + 1,
                target,
                logits,
                lse: log_sum_exp(logits),
            };
            let nll = s.nll();
            stats.add(nll);
            nlls.push(nll);
            observe(&s)?;
            scoring += t.elapsed().as_secs_f64();
            Ok(())
        };
        session.prefill_scored(&tokens, plan.first(), &mut on_row)?;
        chunk_seconds.push((t0.elapsed().as_secs_f64() - scoring).max(0.0));
        progress(chunk + 1, &stats);
    }
    Ok(Perplexity {
        stats,
        nlls,
        ctx: plan.ctx,
        chunks: plan.chunks,
        tokens_evaluated: plan.chunks * plan.ctx,
        chunk_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::NllStats;

    #[test]
    fn stats_follow_llama_perplexity() {
        let mut s = NllStats::default();
        for x in [1.0, 2.0, 3.0, 4.0] {
            s.add(x);
        }
        assert!((s.mean() - 2.5).abs() < 1e-12);
        // Population variance 1.25, over n − 1 = 3.
        assert!((s.mean_stderr() - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((s.ppl_stderr() - 2.5f64.exp() * (1.25f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(NllStats::default().mean_stderr(), 0.0);
    }
}
