//! Generation one step at a time, with the CPU sampler: the reference path.

#![warn(missing_docs)]

use std::time::Instant;

use super::{check_request, FinishReason, Generation, Session, TokenLogprobs};
use crate::error::Result;
use crate::model::NO_TOKEN;
use crate::rng::uniform_at;
use crate::sampling::{sample, SamplingParams};

impl Session {
    /// [`Session::generate_with_logprobs`] one step at a time: each step's candidates come back
    /// (a blocking wait per token) and the CPU sampler ([`sample`]) picks the token, which the
    /// host then writes for the next step. The reference the pipelined path is tested against:
    /// the same tokens for the same seed.
    pub fn generate_step_by_step(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        top_logprobs: Option<usize>,
        on_token: &mut dyn FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation> {
        check_request(params, top_logprobs)?;
        let want_lp = top_logprobs.is_some();
        // The candidates serve both sampling and the top log-probabilities.
        let k = params.candidates().max(top_logprobs.unwrap_or(0)).max(1);
        let t0 = Instant::now();
        let mut out = self.prefill_with(prompt, k, params, want_lp)?;
        self.model.ctx.sync()?;
        let prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let eos = self.model.config.eos_token_ids.clone();
        let mut tokens = Vec::new();
        let mut finish = FinishReason::Length;
        while tokens.len() < max_tokens {
            // Sampling sees only the candidates it asked for; extra ones are for top_logprobs.
            // The token's position seeds its draw, as the GPU sampler's does.
            let u = uniform_at(params.seed, self.history.len() as u32);
            let t = sample(&out.cands[..params.candidates().min(k)], params, u);
            tokens.push(t);
            if eos.contains(&t) && !params.ignore_eos {
                finish = FinishReason::Stop;
                break;
            }
            let lp = match (top_logprobs, out.logsumexp) {
                (Some(n), Some(lse)) => Some(token_logprobs(t, &out.cands, n, lse)),
                _ => None,
            };
            if !on_token(t, lp.as_ref()) {
                finish = FinishReason::Cancelled;
                break;
            }
            if tokens.len() >= max_tokens {
                break;
            }
            if self.history.len() >= self.seq.capacity() {
                finish = FinishReason::Length;
                break;
            }
            out = self.step(&[t], k, params, want_lp)?;
        }
        Ok(Generation {
            tokens,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            prefill_seconds,
            decode_seconds: t1.elapsed().as_secs_f64(),
        })
    }
}

/// Log-probabilities of `token` and of the `n` best candidates, given `lse = log Σ exp(logits)`.
/// The sampled token is always among the candidates (it was sampled from them).
pub(super) fn token_logprobs(
    token: u32,
    cands: &[(u32, f32)],
    n: usize,
    lse: f32,
) -> TokenLogprobs {
    let logprob = cands
        .iter()
        .find(|c| c.0 == token)
        .map_or(f32::NEG_INFINITY, |c| c.1 - lse);
    TokenLogprobs {
        token,
        logprob,
        top: cands
            .iter()
            .filter(|c| c.0 != NO_TOKEN)
            .take(n)
            .map(|&(id, l)| (id, l - lse))
            .collect(),
    }
}
