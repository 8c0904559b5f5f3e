//! Choosing the next token from the top candidates the GPU returns.
//!
//! The GPU applies the penalties to the logits and returns the `k` best (id, logit) pairs
//! (k = 1 for greedy); temperature, top-k, top-p and min-p then run here over those few
//! candidates. With top-k disabled, [`MAX_CANDIDATES`] candidates stand in for the whole
//! vocabulary: tokens beyond the 64 most likely carry negligible mass after top-p/min-p.

#![warn(missing_docs)]

use crate::rng::Rng;

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
    /// Seed of the sampler's [`Rng`], restarted at each generation: the same seed, parameters
    /// and prompt give the same tokens on the same adapter. Unused when greedy.
    pub seed: u64,
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
            seed: 0,
        }
    }
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

/// Pick a token from candidates sorted by logit, descending: the first one when greedy (or
/// when there is only one), else a draw after top-k, temperature, min-p and top-p, in that
/// order. Returns 0 when `cands` is empty.
pub fn sample(cands: &[(u32, f32)], p: &SamplingParams, rng: &mut Rng) -> u32 {
    if cands.is_empty() {
        return 0;
    }
    if p.temperature <= 0.0 || cands.len() == 1 {
        return cands[0].0;
    }
    let k = if p.top_k == 0 {
        cands.len()
    } else {
        p.top_k.min(cands.len())
    };
    let cands = &cands[..k];
    let max = cands[0].1;
    let mut probs: Vec<f64> = cands
        .iter()
        .map(|(_, l)| (((l - max) / p.temperature) as f64).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= sum);
    // min-p: relative to the most likely token.
    let mut keep = probs.len();
    if p.min_p > 0.0 {
        let thr = probs[0] * p.min_p as f64;
        keep = probs.iter().take_while(|&&x| x >= thr).count().max(1);
    }
    // top-p: smallest prefix with mass ≥ top_p.
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, x) in probs[..keep].iter().enumerate() {
            acc += x;
            if acc >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut r = rng.f32() as f64 * total;
    for (i, x) in probs[..keep].iter().enumerate() {
        r -= x;
        if r <= 0.0 {
            return cands[i].0;
        }
    }
    cands[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Vec<(u32, f32)> {
        vec![(7, 5.0), (3, 4.0), (9, 1.0), (1, -3.0)]
    }

    #[test]
    fn greedy_takes_the_first_candidate() {
        assert_eq!(sample(&c(), &SamplingParams::greedy(), &mut Rng::new(1)), 7);
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
        let a: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&c(), &p, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = Rng::new(42);
            (0..50).map(|_| sample(&c(), &p, &mut r)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != 7), "temperature 1.5 should explore");
        let p1 = SamplingParams { top_k: 1, ..p };
        let mut r = Rng::new(3);
        assert!((0..20).all(|_| sample(&c(), &p1, &mut r) == 7));
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
        let mut r = Rng::new(9);
        // p(7) = e^5/(e^5+e^4+e^1+e^-3) ≈ 0.72 ≥ 0.5: only token 7 survives.
        assert!((0..50).all(|_| sample(&c(), &p, &mut r) == 7));
        let p = SamplingParams {
            top_p: 1.0,
            min_p: 0.2,
            ..p
        };
        // p(3)/p(7) = e^-1 ≈ 0.37 ≥ 0.2 survives; p(9)/p(7) = e^-4 does not.
        let picks: Vec<u32> = (0..200).map(|_| sample(&c(), &p, &mut r)).collect();
        assert!(picks.contains(&3) && !picks.contains(&9) && !picks.contains(&1));
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
