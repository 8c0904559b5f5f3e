//! Pipelined generation: decode steps queued ahead of the host.
//!
//! Every step's graph ends in the sampler ([`crate::ops::sample::Sample`]), which writes the
//! chosen token into the sequence's history where the next step's embedding reads it. So step
//! t + 1 is submitted before the host has seen step t's token, and the GPU never waits for the
//! host between steps. Up to [`DEPTH`] steps are in flight; each copies its token (and, for
//! log-probabilities, its candidates and log-sum-exp) into its own small readback buffer,
//! which the host maps when it needs that token — for streaming, stop strings, log-probs.
//! When generation ends (EOS, a stop string, cancellation) with steps still queued, their
//! tokens are discarded, and so are the cache rows they wrote: the history the session keeps
//! ends at the last token the caller saw, and later steps overwrite the rest.
//!
//! Constrained decoding ([`SamplingParams::constraint`]): step t + 1's allowed-token mask
//! depends on token t, but only its sampling head reads the mask. So step t + 1 is queued in
//! two parts: its forward pass (everything before the first dispatch that reads the mask,
//! [`crate::model::StepGraph::submit_forward`]) before the host waits for token t; then, while
//! the GPU runs that forward pass, the host reads token t, advances the grammar, writes the
//! mask (6 KiB for a 49k vocabulary) and queues the masked head. The mask work overlaps the
//! GPU's; one step's head is in flight at a time (`examples/constrained_speed.rs` measures
//! what is left).

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::Instant;

use super::{
    check_prompt, check_request, stepwise::token_logprobs, FinishReason, Generation, Session,
    TokenLogprobs, PREFILL_CHUNK,
};
use crate::constrain::{Constraint, ConstraintMatcher};
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::{Penalty, SamplerParams, StepSpec};
use crate::sampling::SamplingParams;

/// Prompt tokens per prefill chunk of a pool's session ([`super::Batcher`]): between two of
/// them the sessions decoding run a batched step, so a long prompt delays their next tokens by
/// a chunk of this size, not by the whole prefill (vLLM's chunked prefill).
pub const INTERLEAVED_CHUNK: usize = 64;

/// Steps in flight at most: enough to hide the host's turn-around (reading a token,
/// detokenizing, a callback) behind the GPU's work; more only adds steps to discard at a stop.
pub const DEPTH: usize = 4;

/// Host-side counters of pipelined decoding, cumulative over a session's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Tokens handed to callers.
    pub tokens: u64,
    /// Steps submitted (prefill's last chunk included; some may be discarded after a stop).
    pub steps: u64,
    /// Blocking waits on the GPU for a token, all of them (while later steps run, too).
    pub syncs: u64,
    /// Blocking waits made with no later step queued, so the GPU ran dry while the host
    /// waited: the waits that cost time between steps. Steady-state decoding makes none; the
    /// last token of a generation is one.
    pub idle_waits: u64,
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// One step's readback: a small mappable buffer, its pending map and, once the map's
/// callback has run, its outcome.
struct Slot {
    buf: wgpu::Buffer,
    mapped: Option<mpsc::Receiver<MapResult>>,
    outcome: Option<MapResult>,
}

/// [`DEPTH`] readback slots. Layout of a slot, in u32 words: the token, then (with
/// log-probabilities) the `2k` top-k words (ids, then logits as bits) and the log-sum-exp.
struct Readback {
    slots: Vec<Slot>,
    k: usize,
    logprobs: bool,
}

impl Readback {
    fn new(ctx: &GpuContext, k: usize, logprobs: bool) -> Readback {
        let words = if logprobs { 2 + 2 * k } else { 1 };
        let slots = (0..DEPTH)
            .map(|_| Slot {
                buf: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("token readback"),
                    size: (words * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                mapped: None,
                outcome: None,
            })
            .collect();
        Readback { slots, k, logprobs }
    }

    /// Start mapping slot `i` (after the submission that fills it).
    fn map(&mut self, i: usize) {
        let (tx, rx) = mpsc::channel();
        self.slots[i]
            .buf
            .map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        self.slots[i].mapped = Some(rx);
    }

    /// Whether slot `i`'s map has completed (callbacks run during device polls).
    fn ready(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        if slot.outcome.is_none() {
            if let Some(rx) = &slot.mapped {
                slot.outcome = rx.try_recv().ok();
            }
        }
        slot.outcome.is_some()
    }

    /// The words of slot `i` (after a wait for its submission); unmaps it for reuse.
    fn take(&mut self, i: usize) -> Result<Vec<u32>> {
        let slot = &mut self.slots[i];
        let rx = slot
            .mapped
            .take()
            .ok_or_else(|| Error::gpu("reading a token", "the readback was never mapped"))?;
        let outcome = match slot.outcome.take() {
            Some(o) => o,
            None => rx.recv().map_err(|e| Error::gpu("reading a token", e))?,
        };
        outcome.map_err(|e| Error::gpu("mapping a token readback", e))?;
        let words = {
            let view = slot
                .buf
                .get_mapped_range(..)
                .map_err(|e| Error::gpu("mapping a token readback", e))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        slot.buf.unmap();
        Ok(words)
    }
}

/// The log-probabilities of a readback's token: `words` as [`Readback`] lays them out.
fn readback_logprobs(words: &[u32], k: usize, n: usize) -> TokenLogprobs {
    let cands: Vec<(u32, f32)> = (0..k)
        .map(|i| (words[1 + i], f32::from_bits(words[1 + k + i])))
        .collect();
    token_logprobs(words[0], &cands, n, f32::from_bits(words[1 + 2 * k]))
}

/// The shape of a sampling step of `tokens` tokens for `params` (`k` candidates, log-sum-exp for
/// log-probabilities).
fn sampling_spec(
    params: &SamplingParams,
    k: usize,
    logsumexp: bool,
) -> impl Fn(usize) -> StepSpec + Copy {
    let penalty = params.has_penalties().then_some(Penalty::History);
    let masked = params.constraint.is_some();
    move |tokens| StepSpec {
        tokens,
        k,
        penalty,
        logsumexp,
        sample: true,
        masked,
        all_logits: false,
    }
}

/// A step in flight: its submission and its readback slot.
struct InFlight {
    index: wgpu::SubmissionIndex,
    slot: usize,
}

impl Session {
    /// Counters of pipelined decoding so far ([`DecodeStats`]).
    pub fn decode_stats(&self) -> DecodeStats {
        self.stats
    }

    /// Submit one sampling step of `tokens` tokens at `pos` filling readback slot `slot`; with
    /// a constraint, its mask for this step is written first. `forwarded`: the step's forward
    /// pass is queued already ([`crate::model::StepGraph::submit_forward`]); only the masked
    /// head is submitted.
    fn submit_sampled(
        &mut self,
        spec: StepSpec,
        pos: usize,
        rb: &mut Readback,
        slot: usize,
        matcher: Option<&mut ConstraintMatcher>,
        forwarded: bool,
    ) -> Result<InFlight> {
        if let Some(m) = matcher {
            self.seq.write_mask(&self.model, m.mask()?)?;
        }
        let batched = self.batching && spec.tokens == 1 && !spec.masked && !forwarded;
        let index = match (&self.batch, batched) {
            (Some((b, bslot)), true) => {
                let penalize = spec.penalty.is_some();
                b.step(
                    *bslot,
                    pos,
                    rb.k,
                    penalize,
                    rb.logprobs,
                    &rb.slots[slot].buf,
                )?
            }
            _ => self.submit_alone(spec, pos, rb, slot, forwarded)?,
        };
        rb.map(slot);
        self.stats.steps += 1;
        Ok(InFlight { index, slot })
    }

    /// With a batcher, the decode steps from here on go through it (module docs of
    /// `session::batch`), which counts this session in until the guard drops. Constrained
    /// steps run alone (their masks are per sequence): such a session is not counted.
    fn enter_batch(&mut self, unconstrained: bool) -> Option<super::batch::Active> {
        let active = (self.batch.as_ref())
            .filter(|_| unconstrained)
            .map(|(b, _)| b.enter());
        self.batching = active.is_some();
        active
    }

    /// Out of the batcher's decode loop (the guard [`Session::enter_batch`] gave).
    fn leave_batch(&mut self, active: Option<super::batch::Active>) {
        self.batching = false;
        drop(active);
    }

    /// [`Session::submit_sampled`]'s step through this session's own graph.
    fn submit_alone(
        &mut self,
        spec: StepSpec,
        pos: usize,
        rb: &Readback,
        slot: usize,
        forwarded: bool,
    ) -> Result<wgpu::SubmissionIndex> {
        self.graph(spec)?;
        let g = &self.graphs[&spec];
        let kv_len = (pos + spec.tokens) as u64;
        let buf = &rb.slots[slot].buf;
        let k = rb.k as u64;
        let mut copies = vec![(self.seq.history(), kv_len * 4, buf, 0, 4)];
        if rb.logprobs {
            copies.push((g.topk_tensor()?, 0, buf, 4, 8 * k));
            let lse = g.logsumexp_tensor().ok_or_else(|| {
                Error::op(
                    "generate",
                    "log-probabilities asked of a graph without them",
                )
            })?;
            copies.push((lse, 0, buf, 4 + 8 * k, 4));
        }
        if forwarded {
            g.submit_masked_head(&copies)
        } else {
            g.submit(pos, spec.tokens, &copies)
        }
    }

    /// Wait for a step's readback. `idle` says no later step is queued (the wait leaves the
    /// GPU without work; see [`DecodeStats::idle_waits`]).
    fn wait_for(&mut self, rb: &mut Readback, f: &InFlight, idle: bool) -> Result<Vec<u32>> {
        let ctx = &self.model.ctx;
        // Callbacks of finished work run on any poll; a token already there costs no wait.
        ctx.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| Error::gpu("polling the GPU", e))?;
        if !rb.ready(f.slot) {
            self.stats.syncs += 1;
            self.stats.idle_waits += idle as u64;
            ctx.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(f.index.clone()),
                    timeout: None,
                })
                .map_err(|e| Error::gpu("waiting for the GPU", e))?;
        }
        rb.take(f.slot)
    }

    /// Queue `prompt`'s prefill: every chunk but the last runs the plain graph and nothing
    /// comes back; the last one samples the first token (`spec(tokens)` gives its shape).
    fn queue_prefill(
        &mut self,
        prompt: &[u32],
        spec: impl Fn(usize) -> StepSpec,
        rb: &mut Readback,
        matcher: Option<&mut ConstraintMatcher>,
    ) -> Result<InFlight> {
        // A pool's session prefills in smaller chunks, each after a batch of the others'
        // decode steps, so the sequences decoding keep producing tokens meanwhile.
        let batcher = self.batch.as_ref().map(|(b, _)| b.clone());
        let size = if batcher.is_some() {
            INTERLEAVED_CHUNK
        } else {
            PREFILL_CHUNK
        };
        let chunks: Vec<&[u32]> = prompt.chunks(size).collect();
        let (last, rest) = chunks
            .split_last()
            .ok_or_else(|| Error::Request("the prompt is empty".into()))?;
        let mut turn = batcher.as_ref().map_or(0, |b| b.stats().batches);
        for (i, chunk) in rest.iter().enumerate() {
            if let (Some(b), true) = (&batcher, i > 0) {
                turn = b.after_a_batch(turn);
            }
            let pos = self.history.len();
            self.seq.write_tokens(&self.model, pos, chunk)?;
            self.graph(StepSpec::plain(chunk.len(), 1))?
                .submit(pos, chunk.len(), &[])?;
            self.history.extend_from_slice(chunk);
        }
        if let (Some(b), false) = (&batcher, rest.is_empty()) {
            b.after_a_batch(turn);
        }
        let pos = self.history.len();
        self.seq.write_tokens(&self.model, pos, last)?;
        let first = self.submit_sampled(spec(last.len()), pos, rb, 0, matcher, false)?;
        self.history.extend_from_slice(last);
        Ok(first)
    }

    /// [`Session::generate_with_logprobs`] through the pipeline (see the module docs).
    pub(super) fn generate_pipelined(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        top_logprobs: Option<usize>,
        on_token: &mut dyn FnMut(u32, Option<&TokenLogprobs>) -> bool,
    ) -> Result<Generation> {
        if max_tokens == 0 {
            // Nothing to sample: the prompt is only prefilled, as step by step.
            return self.generate_step_by_step(prompt, params, 0, top_logprobs, on_token);
        }
        let mut matcher = self.check_generation(prompt, params, top_logprobs)?;
        let want_lp = top_logprobs.is_some();
        let k = params.candidates().max(top_logprobs.unwrap_or(0)).max(1);
        // With a constraint one step's head is in flight (see the module docs).
        let depth = if matcher.is_some() { 1 } else { DEPTH };
        let spec = sampling_spec(params, k, want_lp);
        self.seq
            .write_sampler(&self.model, &SamplerParams::from(params))?;
        let mut rb = Readback::new(&self.model.ctx, k, want_lp);
        let t0 = Instant::now();

        let mut queue =
            VecDeque::from([self.queue_prefill(prompt, spec, &mut rb, matcher.as_mut())?]);
        self.last = None;
        let active = self.enter_batch(matcher.is_none());

        // Token i comes from the step at position `first + i − 1`; `submitted` counts tokens
        // whose step is queued.
        let first = self.history.len();
        let capacity = self.capacity();
        let eos = self.model.config.eos_token_ids.clone();
        let mut submitted = 1usize;
        let mut tokens: Vec<u32> = Vec::new();
        let mut finish = FinishReason::Length;
        let mut prefill_seconds = 0.0;
        let mut t1 = Instant::now();
        // A constrained step's forward pass is queued (its masked head is not yet).
        let mut forwarded = false;
        let result = loop {
            let mut failed = None;
            while queue.len() < depth && submitted < max_tokens && first + submitted - 1 < capacity
            {
                let slot = submitted % DEPTH;
                let pos = first + submitted - 1;
                let m = matcher.as_mut();
                match self.submit_sampled(spec(1), pos, &mut rb, slot, m, forwarded) {
                    Ok(f) => queue.push_back(f),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                forwarded = false;
                submitted += 1;
            }
            if let Some(e) = failed {
                break Err(e);
            }
            let Some(f) = queue.pop_front() else {
                break Ok(());
            };
            // Constrained: the next step's forward pass runs while the host waits for this
            // token and computes the next mask.
            if matcher.is_some() && submitted < max_tokens && first + submitted - 1 < capacity {
                let pos = first + submitted - 1;
                if let Err(e) = self.graph(spec(1)).and_then(|g| g.submit_forward(pos, 1)) {
                    break Err(e);
                }
                forwarded = true;
            }
            let words = match self.wait_for(&mut rb, &f, queue.is_empty() && !forwarded) {
                Ok(w) => w,
                Err(e) => break Err(e),
            };
            if tokens.is_empty() {
                prefill_seconds = t0.elapsed().as_secs_f64();
                t1 = Instant::now();
            }
            let t = words[0];
            tokens.push(t);
            self.stats.tokens += 1;
            if let Err(e) = matcher.as_mut().map_or(Ok(()), |m| m.consume(t)) {
                break Err(e);
            }
            if eos.contains(&t) && (!params.ignore_eos || matcher.is_some()) {
                finish = FinishReason::Stop;
                break Ok(());
            }
            let lp = top_logprobs.map(|n| readback_logprobs(&words, k, n));
            if !on_token(t, lp.as_ref()) {
                finish = FinishReason::Cancelled;
                break Ok(());
            }
            // The grammar is complete (a JSON value closed): nothing more may follow.
            if matcher.as_ref().is_some_and(|m| m.is_stopped()) {
                finish = FinishReason::Stop;
                break Ok(());
            }
            if tokens.len() >= max_tokens || first + tokens.len() > capacity {
                break Ok(());
            }
        };
        // Steps still queued ran past the end: drain them (one wait) so their readbacks can
        // be reused, and keep only what the caller saw.
        self.leave_batch(active);
        let drained = self.drain(&mut rb, queue);
        self.history
            .extend_from_slice(&tokens[..tokens.len().saturating_sub(1)]);
        result?;
        drained?;
        Ok(Generation {
            tokens,
            finish_reason: finish,
            prompt_tokens: prompt.len(),
            prefill_seconds,
            decode_seconds: t1.elapsed().as_secs_f64(),
        })
    }

    /// The request's checks (parameters, prompt, device) and, for a constrained one, its
    /// grammar's matcher.
    fn check_generation(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        top_logprobs: Option<usize>,
    ) -> Result<Option<ConstraintMatcher>> {
        check_request(params, top_logprobs)?;
        let vocab = self.model.config.vocab_size;
        check_prompt(prompt, vocab, self.history.len(), self.capacity())
            .map_err(|p| Error::Request(p.to_string()))?;
        self.model.ctx.check_alive("running the model")?;
        (params.constraint.as_deref())
            .map(|c| self.constraint_matcher(c))
            .transpose()
    }

    /// A fresh matcher of `c`, which must have been compiled for this session's model (its
    /// masks must cover the logits).
    fn constraint_matcher(&self, c: &Constraint) -> Result<ConstraintMatcher> {
        let words = self.model.config.vocab_size.div_ceil(32);
        if c.mask_words() != words {
            return Err(Error::Request(format!(
                "the constraint was compiled for a vocabulary of {} words of mask, this model's \
                 logits need {words}: compile it with this model (Model::constraint)",
                c.mask_words()
            )));
        }
        Ok(c.matcher())
    }

    /// Wait for the steps still in flight and release their readbacks.
    fn drain(&mut self, rb: &mut Readback, queue: VecDeque<InFlight>) -> Result<()> {
        let Some(last) = queue.back() else {
            return Ok(());
        };
        self.model
            .ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(last.index.clone()),
                timeout: None,
            })
            .map_err(|e| Error::gpu("waiting for the GPU", e))?;
        for f in &queue {
            rb.take(f.slot)?;
        }
        Ok(())
    }
}
