//! Choosing the next token from the top candidates the GPU returns.
//!
//! The GPU applies the penalties to the logits and returns the `k` best (id, logit) pairs
//! (k = 1 for greedy); temperature, top-k, top-p and min-p then run here over those few
//! candidates. With top-k disabled, [`MAX_CANDIDATES`] candidates stand in for the whole
//! vocabulary: tokens beyond the 64 most likely carry negligible mass after top-p/min-p.

#![warn(missing_docs)]

use std::sync::Arc;

use crate::constrain::Constraint;
use crate::ops::sample::{choose, SamplerParams};

/// The most candidates a decode step reads back.
pub const MAX_CANDIDATES: usize = 64;
/// The most alternatives a token's log-probabilities may list (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How the next token is chosen. The default is greedy decoding (temperature 0) without
/// penalties; its top-k 40, top-p 0.95 and min-p 0.05 take effect once a temperature is set.
/// [`SamplingParams::validate`] checks the ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled. Divides positive logits (multiplies negative ones) of tokens seen in the
    /// last `repeat_last_n` tokens (prompt and generated, capped at the context size).
    pub repeat_penalty: f32,
    /// 0 = disabled. Subtracted once from the logit of each token seen in the window.
    pub presence_penalty: f32,
    /// 0 = disabled. Subtracted per occurrence in the window.
    pub frequency_penalty: f32,
    /// The penalty window in tokens; 0 disables all three penalties.
    pub repeat_last_n: usize,
    /// Keep generating past end-of-sequence tokens (vLLM's `ignore_eos`): benchmarks and tests
    /// that need a fixed number of tokens.
    pub ignore_eos: bool,
    /// Seed of the sampler: the token at position `p` is drawn with
    /// [`crate::rng::uniform_at`]`(seed, p)`, so the same seed, parameters and prompt give the
    /// same tokens on the same adapter. Unused when greedy.
    pub seed: u64,
    /// Constrained decoding: only tokens that keep the output inside this grammar (a JSON
    /// schema, any JSON object, a Lark grammar) can be chosen, with every sampler setting
    /// above. Compile it once with [`crate::model::Model::constraint`]; generation ends when
    /// the grammar is complete (finish reason `stop`) or at `max_tokens` (`length`, the
    /// output then incomplete).
    pub constraint: Option<Arc<Constraint>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            ignore_eos: false,
            seed: 0,
            constraint: None,
        }
    }
}

/// A seed from the clock (nanoseconds since the epoch), for callers that were given none.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token, no penalties. Currently equal to
    /// [`SamplingParams::default`]; the name states the intent.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// How many candidates the GPU must return.
    pub fn candidates(&self) -> usize {
        if self.temperature <= 0.0 {
            1
        } else if self.top_k == 0 {
            MAX_CANDIDATES
        } else {
            self.top_k.min(MAX_CANDIDATES)
        }
    }

    /// Whether any penalty is active: a non-neutral repetition, presence or frequency penalty
    /// and a non-zero `repeat_last_n`. Active penalties are applied to the logits on the GPU,
    /// before the top-k candidates are taken (also when greedy).
    pub fn has_penalties(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    /// Check ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |name: &str, v: f32, range: &str| {
            Err(format!("{name} = {v} is out of range (expected {range})"))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, "≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty, "> 0");
        }
        if !(self.presence_penalty.is_finite() && (-2.0..=2.0).contains(&self.presence_penalty)) {
            return bad("presence_penalty", self.presence_penalty, "in [-2, 2]");
        }
        if !(self.frequency_penalty.is_finite() && (-2.0..=2.0).contains(&self.frequency_penalty)) {
            return bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]");
        }
        Ok(())
    }
}

/// Pick a token from candidates sorted by logit, descending (a [`crate::ops::topk::NO_TOKEN`] id ends the list):
/// the first one when greedy (or when there is only one), else a draw after top-k,
/// temperature, min-p and top-p, in that order, with `u` uniform in [0, 1). Returns 0 when
/// `cands` is empty.
///
/// Callers pass `u = uniform_at(seed, position)`, `position` being the sequence position the
/// chosen token will occupy: a token depends on (seed, position) and the candidates only, not
/// on how many draws came before, so the GPU sampler (`ops::sample::Sample`) draws the same
/// number without state. The same seed, parameters and prompt give the same tokens. (Before,
/// draws came one after another from a seeded [`crate::rng::Rng`], so seeded outputs differ
/// from those of earlier versions.) The arithmetic is `ops::sample::choose`, in f32: this
/// function is the GPU kernel's reference, and the two agree token for token.
pub fn sample(cands: &[(u32, f32)], p: &SamplingParams, u: f32) -> u32 {
    choose(cands, &SamplerParams::from(p), u)
}

impl From<&SamplingParams> for SamplerParams {
    /// The kernels' view of `p`. A temperature below the smallest normal f32 counts as 0
    /// (greedy): GPUs may flush it to 0, and its reciprocal would overflow. The penalty window
    /// is 0 unless [`SamplingParams::has_penalties`].
    fn from(p: &SamplingParams) -> Self {
        let temperature = if p.temperature >= f32::MIN_POSITIVE {
            p.temperature
        } else {
            0.0
        };
        let inv_temperature = if temperature > 0.0 {
            (1.0 / temperature).min(f32::MAX)
        } else {
            0.0
        };
        let window = if p.has_penalties() {
            u32::try_from(p.repeat_last_n).unwrap_or(u32::MAX)
        } else {
            0
        };
        SamplerParams {
            temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            repeat_penalty: p.repeat_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            window,
            inv_temperature,
            reserved: [0; 5],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform_at;

    fn c() -> Vec<(u32, f32)> {
        vec![(7, 5.0), (3, 4.0), (9, 1.0), (1, -3.0)]
    }

    /// The tokens at positions `from .. from + n` for `seed`.
    fn draws(p: &SamplingParams, seed: u64, from: u32, n: u32) -> Vec<u32> {
        (from..from + n)
            .map(|pos| sample(&c(), p, uniform_at(seed, pos)))
            .collect()
    }

    #[test]
    fn greedy_takes_the_first_candidate() {
        assert_eq!(sample(&c(), &SamplingParams::greedy(), 0.99), 7);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let p = SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let a = draws(&p, 42, 0, 50);
        assert_eq!(a, draws(&p, 42, 0, 50));
        assert_ne!(a, draws(&p, 43, 0, 50), "another seed, other tokens");
        // A token depends on (seed, position) only: starting later gives the same tail.
        assert_eq!(a[20..], draws(&p, 42, 20, 30));
        assert!(a.iter().any(|&t| t != 7), "temperature 1.5 should explore");
        let p1 = SamplingParams { top_k: 1, ..p };
        assert!(draws(&p1, 3, 0, 20).iter().all(|&t| t == 7));
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..Default::default()
        };
        // p(7) = e^5/(e^5+e^4+e^1+e^-3) ≈ 0.72 ≥ 0.5: only token 7 survives.
        assert!(draws(&p, 9, 0, 50).iter().all(|&t| t == 7));
        let p = SamplingParams {
            top_p: 1.0,
            min_p: 0.2,
            ..p
        };
        // p(3)/p(7) = e^-1 ≈ 0.37 ≥ 0.2 survives; p(9)/p(7) = e^-4 does not.
        let picks = draws(&p, 9, 0, 200);
        assert!(picks.contains(&3) && !picks.contains(&9) && !picks.contains(&1));
    }

    #[test]
    fn frequencies_follow_the_probabilities() {
        // Temperature 2 over logits 5, 4, 1, -3: p ∝ e^(l/2).
        let p = SamplingParams {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let n = 20_000;
        let picks = draws(&p, 5, 0, n);
        let w: Vec<f64> = c().iter().map(|x| (x.1 as f64 / 2.0).exp()).collect();
        let sum: f64 = w.iter().sum();
        for (i, (id, _)) in c().iter().enumerate() {
            let f = picks.iter().filter(|&&t| t == *id).count() as f64 / n as f64;
            let want = w[i] / sum;
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!(
                (f - want).abs() < 5.0 * sd + 1e-9,
                "token {id}: {f} vs {want}"
            );
        }
    }

    #[test]
    fn sampler_params_carry_the_settings() {
        let p = SamplingParams {
            temperature: 0.5,
            top_k: 7,
            seed: 0x1234_5678_9abc_def0,
            repeat_penalty: 1.1,
            repeat_last_n: 32,
            ..Default::default()
        };
        let s = SamplerParams::from(&p);
        assert_eq!((s.inv_temperature, s.top_k, s.window), (2.0, 7, 32));
        assert_eq!(s.seed(), p.seed);
        // No active penalty: no window; a denormal temperature is greedy.
        let q = SamplingParams {
            temperature: 1e-40,
            ..Default::default()
        };
        let s = SamplerParams::from(&q);
        assert_eq!((s.temperature, s.inv_temperature, s.window), (0.0, 0.0, 0));
    }

    #[test]
    fn validation_names_the_parameter() {
        let p = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("top_p"));
    }
}
