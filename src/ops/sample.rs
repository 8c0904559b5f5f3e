//! [`Sample`]: the next token chosen on the GPU from [`super::topk::TopK`]'s candidates and
//! written into the token history, so a decode loop needs no host round trip between steps.
//! The decode graph runs it folded into the top-k's final pass ([`TopKSample`]); the two share
//! `shaders/sampler_choose.wgsl`.
//!
//! The sampler's settings live in a storage buffer ([`SamplerParams`], written by the host per
//! request) rather than in compiled params, so one compiled graph serves every request. The
//! random number for the token at position `p` is [`uniform_at`]`(seed, p)`: stateless, so the
//! GPU needs no RNG state either. [`choose`] is the one definition of the sampling arithmetic;
//! the CPU sampler (`crate::sampling::sample`) calls it, so CPU and GPU agree token for token.
//!
//! [`TopKSampleRows`] is [`TopKSample`] for a batched step: one logits row per sequence, each
//! with its own slot of pooled sampler params and its own slice of a pooled history.

#![warn(missing_docs)]

use super::topk::{batch_vocab, topk_cpu, TopK, MAX_K, NO_TOKEN};
use super::{expect_dtype, expect_inputs, expect_rank, Arg, KernelCall, Op, RowStep};
use crate::error::{Error, Result};
use crate::gpu::Caps;
use crate::rng::uniform_at;
use crate::tensor::{DType, TensorDesc};

/// Words of [`SamplerParams`] (the size of its buffer, u32 `[16]`).
pub const SAMPLER_PARAMS_WORDS: usize = 16;

/// The sampler's settings as the kernels read them: u32 `[16]`, floats as f32 bits. The one
/// definition of the layout; `struct SamplerParams` in `shaders/sample.wgsl` and
/// `shaders/topk.wgsl` mirror it. Build it with `SamplerParams::from(&SamplingParams)`.
///
/// | word | field | meaning |
/// |---|---|---|
/// | 0 | `temperature` f32 | ≤ 0: greedy (the first candidate) |
/// | 1 | `top_k` u32 | candidates considered; 0 = all |
/// | 2 | `top_p` f32 | ≥ 1 = off |
/// | 3 | `min_p` f32 | 0 = off |
/// | 4, 5 | `seed_lo`, `seed_hi` u32 | the 64-bit seed of [`uniform_at`] |
/// | 6 | `repeat_penalty` f32 | 1 = off |
/// | 7 | `presence` f32 | 0 = off |
/// | 8 | `frequency` f32 | 0 = off |
/// | 9 | `window` u32 | tokens of history penalised; 0 = no penalties |
/// | 10 | `inv_temperature` f32 | 1 / temperature (0 when greedy), computed once on the host |
/// | 11 ..= 15 | reserved, 0 | |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SamplerParams {
    /// ≤ 0: greedy.
    pub temperature: f32,
    /// Candidates considered (0 = all the candidates given).
    pub top_k: u32,
    /// Nucleus mass; ≥ 1 disables.
    pub top_p: f32,
    /// Minimum probability relative to the most likely token; 0 disables.
    pub min_p: f32,
    /// Low 32 bits of the seed.
    pub seed_lo: u32,
    /// High 32 bits of the seed.
    pub seed_hi: u32,
    /// Repetition penalty (1 = off).
    pub repeat_penalty: f32,
    /// Presence penalty (0 = off).
    pub presence: f32,
    /// Frequency penalty (0 = off).
    pub frequency: f32,
    /// Penalty window in tokens (0 = no penalties).
    pub window: u32,
    /// `1 / temperature`, clamped to `f32::MAX`; 0 when greedy. A host-side reciprocal so the
    /// kernels multiply (correctly rounded everywhere) instead of dividing (2.5 ulp in Vulkan).
    pub inv_temperature: f32,
    /// Zero.
    pub reserved: [u32; 5],
}

impl SamplerParams {
    /// The seed as one number.
    pub fn seed(&self) -> u64 {
        u64::from(self.seed_lo) | (u64::from(self.seed_hi) << 32)
    }

    /// The 16 words the kernels read.
    pub fn words(&self) -> [u32; SAMPLER_PARAMS_WORDS] {
        bytemuck::cast(*self)
    }
}

/// Whether `x` is neither infinite nor NaN, by its bits (as the kernel tests it: WGSL has no
/// `isinf`, and compilers may assume floats are finite).
fn finite_bits(x: f32) -> bool {
    x.to_bits() & 0x7f80_0000 != 0x7f80_0000
}

/// Pick a token from candidates sorted by logit, descending (as [`super::topk::TopK`] writes
/// them; the list ends at the first [`NO_TOKEN`]), with `u` uniform in [0, 1). This is the
/// sampling arithmetic of `shaders/sample.wgsl`, in f32 and in the same order:
///
/// 1. n = the candidates, at most `top_k` of them (0 = all). Greedy — the first candidate —
///    when the temperature is ≤ 0, n ≤ 1 or the best logit is not finite.
/// 2. Weights `w_i = exp((l_i − l_0) · inv_temperature)`, `w_0 = 1` (probabilities up to the
///    common factor Σw, so min-p compares `w_i` itself with `min_p`).
/// 3. min-p: keep the prefix with `w_i ≥ min_p` (at least one).
/// 4. top-p (when < 1): keep the shortest prefix of those whose running sum of `w` reaches
///    `top_p · Σ_{i<n} w_i` (summed left to right).
/// 5. Draw: the first kept `i` with `u · Σ_kept w < w_0 + … + w_i` (left to right); the last
///    kept one if rounding leaves none.
///
/// Both sides compute every step the same way; they could only disagree where a cut or the
/// draw falls within the GPU's `exp` error (a few ulp) of a boundary.
pub fn choose(cands: &[(u32, f32)], p: &SamplerParams, u: f32) -> u32 {
    let Some(&(first, best)) = cands.first() else {
        return 0;
    };
    let mut n = cands.iter().take_while(|c| c.0 != NO_TOKEN).count();
    if p.top_k > 0 {
        n = n.min(p.top_k as usize);
    }
    if p.temperature <= 0.0 || n <= 1 || !finite_bits(best) {
        return first;
    }
    let mut w = [0f32; MAX_K];
    let n = n.min(MAX_K);
    w[0] = 1.0;
    let mut sum = 1.0f32;
    for (x, c) in w[1..n].iter_mut().zip(&cands[1..n]) {
        *x = ((c.1 - best) * p.inv_temperature).exp();
        sum += *x;
    }
    let mut keep = n;
    if p.min_p > 0.0 {
        keep = w[..n].iter().take_while(|&&x| x >= p.min_p).count().max(1);
    }
    if p.top_p < 1.0 {
        let mass = p.top_p * sum;
        let mut acc = 0.0f32;
        for (i, &x) in w[..keep].iter().enumerate() {
            acc += x;
            if acc >= mass {
                keep = i + 1;
                break;
            }
        }
    }
    let mut total = 0.0f32;
    for &x in &w[..keep] {
        total += x;
    }
    let r = u * total;
    let mut acc = 0.0f32;
    for (i, &x) in w[..keep].iter().enumerate() {
        acc += x;
        if r < acc {
            return cands[i].0;
        }
    }
    cands[keep - 1].0
}

/// Candidates as [`super::topk::TopK`] writes them (k ids, then k logits as f32 bits) as
/// (id, logit) pairs.
pub fn candidates_from_words(words: &[u32]) -> Vec<(u32, f32)> {
    let k = words.len() / 2;
    (0..k)
        .map(|i| (words[i], f32::from_bits(words[k + i])))
        .collect()
}

/// Choose the next token on the GPU and write it into the history: inputs (0) candidates u32
/// `[2k]` as [`super::topk::TopK`] writes them, (1) [`SamplerParams`] u32 `[16]`, (2) history
/// u32 `[capacity]`, written in place at `Step::kv_len` (the position of the token being
/// chosen) when `kv_len < capacity`. No outputs. One dispatch of one thread.
#[derive(Clone, Debug)]
pub struct Sample;

impl Op for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 3)?;
        let (cands, params, history) = (inputs[0], inputs[1], inputs[2]);
        expect_candidates(name, cands)?;
        expect_params(name, params)?;
        expect_history(name, history)?;
        Ok(Vec::new())
    }

    fn kernels(&self, _caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let k = (inputs[0].numel() / 2) as u32;
        let capacity = inputs[2].numel() as u32;
        Ok(vec![KernelCall::new("sample.wgsl", "sample")
            .define("MAX_K", MAX_K)
            .params(&[k, capacity, 0, 0])
            .args(&[Arg::In(0), Arg::In(1), Arg::InOut(2)])
            .workgroups(1, 1, 1)])
    }
}

/// [`super::topk::TopK`] with [`Sample`] folded into its final pass (one dispatch fewer per
/// decode step): inputs (0) logits f32 `[1, V]`, (1) [`SamplerParams`] u32 `[16]`, (2) history
/// u32 `[capacity]`, written in place at `Step::kv_len` when `kv_len < capacity`; output the
/// top-k candidates u32 `[2k]` exactly as TopK's. The chosen token is [`sample_cpu`] of them.
///
/// With `masked`, input (3) is an allowed-token mask u32 `[≥ ceil(V / 32)]` (bit `i & 31` of
/// word `i >> 5`, as `crate::constrain` writes it): the first pass drops every disallowed logit
/// before the top-k, so the candidates are [`mask_logits_cpu`]'s top-k and no vocabulary-sized
/// row is read back. Unmasked graphs compile the kernel without it.
#[derive(Clone, Debug)]
pub struct TopKSample {
    /// Candidates kept (1 ..= [`MAX_K`]).
    pub k: usize,
    /// Read an allowed-token mask (input 3).
    pub masked: bool,
}

/// CPU reference of the mask: disallowed logits become NaN, which top-k skips (as the kernel
/// drops them: they are no candidate, not a -inf one).
pub fn mask_logits_cpu(logits: &[f32], mask: &[u32]) -> Vec<f32> {
    logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let on = mask.get(i >> 5).is_some_and(|w| (w >> (i & 31)) & 1 == 1);
            if on {
                l
            } else {
                f32::NAN
            }
        })
        .collect()
}

impl Op for TopKSample {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        expect_inputs(name, inputs, 3 + self.masked as usize)?;
        expect_params(name, inputs[1])?;
        expect_history(name, inputs[2])?;
        if self.masked {
            let (v, mask) = (inputs[0].cols(), inputs[3]);
            expect_dtype(name, "mask", mask, &[DType::U32])?;
            if mask.rank() != 1 || mask.numel() < v.div_ceil(32) {
                return Err(Error::op(
                    name,
                    format!(
                        "mask is {mask}: expected u32 [≥ {}] (one bit per logit)",
                        v.div_ceil(32)
                    ),
                ));
            }
        }
        TopK { k: self.k }.infer(&inputs[..1])
    }

    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        TopK { k: self.k }.scratch(&inputs[..1])
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let mut calls = TopK { k: self.k }.kernels(caps, &inputs[..1])?;
        if self.masked {
            let first = &mut calls[0];
            first.defines.insert("MASK".into(), "1".into());
            first.args.push(Arg::In(3));
        }
        fold_sampler(self.name(), &mut calls, self.k, inputs[2].numel())?;
        Ok(calls)
    }
}

/// The sampler folded into the top-k's final pass: params (input 1) and history (input 2)
/// bound after the candidates; `history_words` (the capacity, or the per-sequence length of a
/// batched step) bounds the position written.
fn fold_sampler(
    op: &'static str,
    calls: &mut [KernelCall],
    k: usize,
    history_words: usize,
) -> Result<()> {
    let last = calls
        .last_mut()
        .ok_or_else(|| Error::op(op, "top-k built no final pass"))?;
    // The final pass's last params word is free for it.
    last.params[7] = history_words as u32;
    last.defines.insert("SAMPLE".into(), "1".into());
    last.defines.insert("MAX_K".into(), k.to_string());
    last.args.extend([Arg::In(1), Arg::InOut(2)]);
    Ok(())
}

/// [`TopKSample`] for a batched step (one row per sequence, see [`RowStep`]): inputs (0)
/// logits f32 `[B, V]`, 1 ≤ B ≤ [`super::MAX_ROWS`], (1) the pooled [`SamplerParams`] u32 `[S·16]`
/// (slot `s` at words `16s ..`), (2) the pooled token history u32 `[H]`, written in place;
/// output u32 `[B, 2k]`, row `t` its logits' top-k exactly as [`TopKSample`]'s `[2k]`. With
/// `Step::rows[t] = (pos, _, base, slot)`, row `t`'s token is [`sample_cpu`] of its candidates
/// with slot `slot`'s params at `kv_len = pos + 1`, written to `history[base + pos + 1]` when
/// `pos + 1 < history_len` — bit for bit what [`TopKSample`] does on that row alone. No
/// allowed-token mask: constrained sequences are not batched (a fourth input is an error).
#[derive(Clone, Debug)]
pub struct TopKSampleRows {
    /// Candidates kept per row (1 ..= [`MAX_K`]).
    pub k: usize,
    /// Words of each sequence's history (its context + 1), the same for every sequence.
    pub history_len: usize,
}

impl Op for TopKSampleRows {
    fn name(&self) -> &'static str {
        "topk_sample_rows"
    }

    fn infer(&self, inputs: &[&TensorDesc]) -> Result<Vec<TensorDesc>> {
        let name = self.name();
        if inputs.len() == 4 {
            return Err(Error::op(
                name,
                format!(
                    "4 inputs (logits, sampler params, history and a mask {}): masked \
                     (constrained) sampling is not supported in a batched step; run \
                     constrained sequences alone with TopKSample {{ masked: true }}",
                    inputs[3]
                ),
            ));
        }
        expect_inputs(name, inputs, 3)?;
        let (b, _) = batch_vocab(name, inputs[0])?;
        expect_params_pool(name, inputs[1])?;
        expect_history_pool(name, inputs[2], self.history_len)?;
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::op(
                name,
                format!("k = {}: expected 1 ..= {MAX_K}", self.k),
            ));
        }
        Ok(vec![TensorDesc::new(DType::U32, [b, 2 * self.k])])
    }

    fn scratch(&self, inputs: &[&TensorDesc]) -> Vec<u64> {
        let (b, v) = inputs.first().map_or((1, 1), |l| (l.rows(), l.cols()));
        vec![TopK { k: self.k }.scratch_bytes(v, b)]
    }

    fn kernels(&self, caps: &Caps, inputs: &[&TensorDesc]) -> Result<Vec<KernelCall>> {
        let (b, v) = batch_vocab(self.name(), inputs[0])?;
        let mut calls = TopK { k: self.k }.calls(caps, v, Some(b))?;
        fold_sampler(self.name(), &mut calls, self.k, self.history_len)?;
        Ok(calls)
    }
}

/// CPU reference of [`TopKSampleRows`]: each row's candidate words ([`topk_cpu`], u32 `[2k]`
/// per row, concatenated) and, in `history`, each row's token at `base + pos + 1` when
/// `pos + 1 < history_len`. Slots and history windows must lie inside `params` and `history`.
pub fn topk_sample_rows_cpu(
    logits: &[f32],
    k: usize,
    rows: &[RowStep],
    params: &[SamplerParams],
    history: &mut [u32],
    history_len: usize,
) -> Vec<u32> {
    let v = logits.len() / rows.len().max(1);
    let mut out = Vec::with_capacity(rows.len() * 2 * k);
    for (l, r) in logits.chunks(v).zip(rows) {
        let (ids, vals) = topk_cpu(l, k);
        let words: Vec<u32> = ids
            .into_iter()
            .chain(vals.iter().map(|x| x.to_bits()))
            .collect();
        let at = r.pos + 1;
        if (at as usize) < history_len {
            history[r.history_base as usize + at as usize] =
                sample_cpu(&words, &params[r.slot as usize], at);
        }
        out.extend(words);
    }
    out
}

/// Candidates u32 `[2k]`, 1 ≤ k ≤ [`MAX_K`].
fn expect_candidates(op: &'static str, t: &TensorDesc) -> Result<()> {
    expect_dtype(op, "candidates", t, &[DType::U32])?;
    expect_rank(op, "candidates", t, 1)?;
    let n = t.numel();
    if n == 0 || !n.is_multiple_of(2) || n / 2 > MAX_K {
        return Err(Error::op(
            op,
            format!("candidates is {t}: expected [2k] (k ids, then k logits), 1 ≤ k ≤ {MAX_K}"),
        ));
    }
    Ok(())
}

/// The [`SamplerParams`] buffer, u32 `[16]`.
pub(crate) fn expect_params(op: &'static str, t: &TensorDesc) -> Result<()> {
    expect_dtype(op, "sampler params", t, &[DType::U32])?;
    if t.shape != [SAMPLER_PARAMS_WORDS] {
        return Err(Error::op(
            op,
            format!("sampler params is {t}: expected u32 [{SAMPLER_PARAMS_WORDS}] (SamplerParams)"),
        ));
    }
    Ok(())
}

/// The token history, u32 `[capacity]`, capacity ≥ 1.
pub(crate) fn expect_history(op: &'static str, t: &TensorDesc) -> Result<()> {
    expect_dtype(op, "history", t, &[DType::U32])?;
    expect_rank(op, "history", t, 1)?;
    if t.numel() == 0 {
        return Err(Error::op(
            op,
            format!("history is {t}: expected at least one slot"),
        ));
    }
    Ok(())
}

/// The pooled [`SamplerParams`] of a batched step, u32 `[S·16]`, S ≥ 1.
pub(crate) fn expect_params_pool(op: &'static str, t: &TensorDesc) -> Result<()> {
    expect_dtype(op, "sampler params", t, &[DType::U32])?;
    let n = t.numel();
    if t.rank() != 1 || n == 0 || !n.is_multiple_of(SAMPLER_PARAMS_WORDS) {
        return Err(Error::op(
            op,
            format!(
                "sampler params is {t}: expected u32 [slots · {SAMPLER_PARAMS_WORDS}] (one \
                 SamplerParams per slot, at least one)"
            ),
        ));
    }
    Ok(())
}

/// The pooled token history of a batched step, u32 `[H]`, holding at least one sequence's
/// `history_len ≥ 1` words.
pub(crate) fn expect_history_pool(
    op: &'static str,
    t: &TensorDesc,
    history_len: usize,
) -> Result<()> {
    expect_history(op, t)?;
    if history_len == 0 || history_len > t.numel() {
        return Err(Error::op(
            op,
            format!(
                "history is {t} with history_len {history_len}: expected 1 ≤ history_len ≤ {} \
                 (each sequence's words in the pooled history)",
                t.numel()
            ),
        ));
    }
    Ok(())
}

/// CPU reference of [`Sample`]: the token it writes at `history[kv_len]`, from the candidate
/// words, the params and `kv_len`.
pub fn sample_cpu(cand_words: &[u32], p: &SamplerParams, kv_len: u32) -> u32 {
    choose(
        &candidates_from_words(cand_words),
        p,
        uniform_at(p.seed(), kv_len),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, min_p: f32) -> SamplerParams {
        SamplerParams {
            temperature,
            top_k,
            top_p,
            min_p,
            inv_temperature: 1.0 / temperature,
            ..Default::default()
        }
    }

    #[test]
    fn layout_is_sixteen_words_in_documented_order() {
        let p = SamplerParams {
            seed_lo: 5,
            window: 9,
            ..params(2.0, 3, 0.5, 0.25)
        };
        let w = p.words();
        assert_eq!(w.len(), SAMPLER_PARAMS_WORDS);
        assert_eq!((f32::from_bits(w[0]), w[1], w[4], w[9]), (2.0, 3, 5, 9));
        assert_eq!(f32::from_bits(w[10]), 0.5);
    }

    #[test]
    fn padding_and_non_finite_best_fall_back_to_the_first() {
        let p = params(1.0, 0, 1.0, 0.0);
        let c = [(4, 1.0), (NO_TOKEN, f32::NEG_INFINITY)];
        assert!((0..50).all(|i| choose(&c, &p, i as f32 / 50.0) == 4));
        let c = [(4, f32::INFINITY), (5, 1.0)];
        assert_eq!(choose(&c, &p, 0.99), 4);
        assert_eq!(choose(&[], &p, 0.5), 0);
    }

    #[test]
    fn draw_walks_the_cumulative_weights() {
        // Equal logits: w = 1, 1, 1; u · 3 falls in the third of [0, 3) that names the token.
        let p = params(1.0, 0, 1.0, 0.0);
        let c = [(1, 0.0), (2, 0.0), (3, 0.0)];
        assert_eq!(choose(&c, &p, 0.0), 1);
        assert_eq!(choose(&c, &p, 0.34), 2);
        assert_eq!(choose(&c, &p, 0.99), 3);
        // top_k 2 drops the third.
        assert_eq!(choose(&c, &params(1.0, 2, 1.0, 0.0), 0.99), 2);
    }
}
