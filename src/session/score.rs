//! Scoring a text: the logits of every position of a prefill, not only the last one's
//! candidates. Perplexity, KL divergence and prompt log-probabilities all start here.

use crate::error::{Error, Result};
use crate::model::{StepSpec, PREFILL_CHUNK};
use crate::sampling::{SamplingParams, MAX_TOP_LOGPROBS};

use super::{check_prompt, Session, TokenLogprobs};

/// The log-softmax normaliser of one row of logits, `log Σ exp(l)`, summed in f64 (as
/// llama-perplexity does) so that a 100k-token vocabulary loses no precision.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max as f64;
    }
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

impl Session {
    /// Append `tokens` to the cache (as [`Session::prefill`] does) and call `on_row(pos,
    /// logits)` with the logits computed at every position `pos ≥ from` (absolute positions:
    /// the logits at `pos` predict the token at `pos + 1`), in order. Steps wholly before `from`
    /// run the plain prefill graphs; the others project every row to the vocabulary and read
    /// it back, in steps small enough for one logits buffer to fit the adapter.
    pub fn prefill_scored(
        &mut self,
        tokens: &[u32],
        from: usize,
        on_row: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        check_prompt(tokens, vocab, self.history.len(), self.capacity())
            .map_err(|p| Error::Request(p.to_string()))?;
        let row_bytes = (vocab as u64 * 4).max(1);
        let fit = (self.model.ctx.caps.max_buffer / row_bytes).max(1) as usize;
        let step = PREFILL_CHUNK.min(fit);
        for chunk in tokens.chunks(step) {
            let pos = self.history.len();
            if pos + chunk.len() <= from {
                self.step(chunk, 1, &SamplingParams::greedy(), false)?;
                continue;
            }
            let logits = self.step_logits(chunk)?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                if pos + i >= from {
                    on_row(pos + i, row)?;
                }
            }
        }
        Ok(())
    }

    /// The log-probability of every token of `tokens` after the first, given those before it
    /// (teacher forcing, as an evaluation harness's log-likelihood requests need), with the
    /// `top` (≤ [`MAX_TOP_LOGPROBS`]) most likely tokens at each position; the tokens are
    /// appended to the cache. Entry `i` is about `tokens[i + 1]`: the first token has no
    /// log-probability (OpenAI's `null`).
    pub fn prompt_logprobs(&mut self, tokens: &[u32], top: usize) -> Result<Vec<TokenLogprobs>> {
        if top > MAX_TOP_LOGPROBS {
            return Err(Error::Request(format!(
                "logprobs = {top}: at most {MAX_TOP_LOGPROBS} are supported"
            )));
        }
        let start = self.history.len();
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
        self.prefill_scored(tokens, start, &mut |pos, logits| {
            let Some(&token) = tokens.get(pos - start + 1) else {
                return Ok(()); // the last row predicts past the prompt
            };
            let lse = log_sum_exp(logits);
            let lp = |id: u32| (logits[id as usize] as f64 - lse) as f32;
            out.push(TokenLogprobs {
                token,
                logprob: lp(token),
                top: top_ids(logits, top)
                    .into_iter()
                    .map(|i| (i, lp(i)))
                    .collect(),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Run `tokens` (≤ PREFILL_CHUNK) at the current position through a scoring step; returns
    /// every row's logits.
    fn step_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.ctx.check_alive("running the model")?;
        let pos = self.history.len();
        let spec = StepSpec::scoring(tokens.len());
        self.seq.write_tokens(&self.model, pos, tokens)?;
        let logits = self.graph(spec)?.run_logits(pos, tokens.len())?;
        self.history.extend_from_slice(tokens);
        // The scoring graph's logits tensor has every row, not the last one's: `last_logits`
        // must not read it.
        self.last = None;
        Ok(logits)
    }
}

/// The ids of the `k` largest logits, largest first (ties: lower id first).
fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    let better = |a: u32, b: u32| logits[a as usize] > logits[b as usize];
    for i in 0..logits.len() as u32 {
        if best.len() == k && best.last().is_none_or(|&w| !better(i, w)) {
            continue;
        }
        let at = best.partition_point(|&b| !better(i, b));
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::{log_sum_exp, top_ids};

    #[test]
    fn top_ids_are_the_largest_first_with_lower_ids_on_ties() {
        let l = [0.5f32, 3.0, 1.0, 3.0, -2.0];
        assert_eq!(top_ids(&l, 3), vec![1, 3, 2]);
        assert_eq!(top_ids(&l, 0), Vec::<u32>::new());
        assert_eq!(top_ids(&l, 9), vec![1, 3, 2, 0, 4]);
    }

    #[test]
    fn log_sum_exp_is_stable_and_exact() {
        let l = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&l) - (1000.0 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(log_sum_exp(&[0.0]), 0.0);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
    }
}
