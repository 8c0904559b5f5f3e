//! Continuous batching of the decode steps of several sessions.
//!
//! Sessions made by [`Batcher::session`] share one [`Pool`]. Each keeps running its own
//! generation loop (prefill, stop strings, log-probabilities, cancellation: `pipeline.rs`
//! unchanged), but hands each plain decode step to the batcher instead of submitting it. The
//! batcher gathers the steps of every session in its decode loop and submits them as one
//! [`BatchGraph`] run — each weight read once for all of them — whose rows table says where
//! each session's token, cache rows and sampler live. A session's request waits until every
//! session in its decode loop has a step pending (they run in lockstep, each with its pipeline
//! of steps in flight), or the GPU is down to its last queued batch (waiting longer would leave
//! it idle), or a timeout passes (a slow session does not hold the others).
//! Each row's token (and its candidates and log-sum-exp, when asked for) is copied into that
//! session's own readback buffer, so the session reads it exactly as it reads its own steps.
//!
//! The batched head is the same for all rows: the largest candidate count any row needs (the
//! top-k of a larger k begins with the top-k of a smaller one; the sampler cuts to each row's
//! own top-k), penalties when any row has them (a row without has a window of 0) and the
//! log-sum-exp when any row wants log-probabilities. Constrained steps are not batched: their
//! mask is per sequence and written between steps, so those sessions submit their own.

#![warn(missing_docs)]

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Generation, Session, SessionOptions};
use crate::error::{Error, Result};
use crate::model::{BatchGraph, Model, Pool, Region, RowsHead, MAX_ROWS};
use crate::sampling::{SamplingParams, MAX_CANDIDATES};

/// A pending step waits for the other sessions' while the GPU has at least this many batches
/// queued (so waiting costs nothing), and no longer than [`GATHER`].
const MIN_QUEUED: usize = 2;

/// The longest a pending step waits for the other sessions' before it is submitted without them.
const GATHER: Duration = Duration::from_millis(200);

/// How long a pending step waits for the others' even when the GPU is running out of work:
/// their turn-around (reading a token, a callback) takes about this long. (On lavapipe a submit
/// runs the batch before it returns, so there the GPU never has a batch queued.)
const GRACE: Duration = Duration::from_millis(5);

/// How often a waiting step looks at the GPU's progress.
const RECHECK: Duration = Duration::from_millis(2);

/// The longest a prefilling session waits for the decoding sessions' next batch (the wait
/// ends as soon as one is submitted). Longer than one batched step on a slow device (2.3–2.8 s
/// in a debug build on lavapipe): a shorter limit let a chunk start before the streams' next
/// step, so they waited two chunks.
const YIELD_LIMIT: Duration = Duration::from_secs(10);

/// Counters of batched decoding, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batched runs submitted.
    pub batches: u64,
    /// Rows (decode steps of sessions) they advanced.
    pub rows: u64,
    /// Batches submitted before every session had a step (the GPU was running out of work,
    /// or the gather timed out).
    pub timeouts: u64,
}

/// One session's pending decode step.
struct Ticket {
    id: u64,
    slot: usize,
    pos: usize,
    k: usize,
    penalize: bool,
    logprobs: bool,
    readback: wgpu::Buffer,
}

#[derive(Default)]
struct State {
    /// Sessions in their decode loop.
    active: usize,
    pending: Vec<Ticket>,
    /// Submitted tickets' outcomes, taken by their sessions.
    done: HashMap<u64, std::result::Result<wgpu::SubmissionIndex, String>>,
    next_id: u64,
    graphs: HashMap<(usize, RowsHead), BatchGraph>,
    stats: BatchStats,
}

/// The batcher of a pool's sessions (see the module docs).
pub struct Batcher {
    model: Arc<Model>,
    pool: Pool,
    state: Mutex<State>,
    submitted: Condvar,
    /// Batches submitted and not yet finished on the GPU.
    queued: Arc<AtomicUsize>,
}

/// A session's membership in its batcher's decode loop (see [`Batcher::enter`]).
pub(super) struct Active(Arc<Batcher>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active = s.active.saturating_sub(1);
        drop(s);
        // Sessions waiting for this one now have every step they wait for.
        self.0.submitted.notify_all();
    }
}

impl Batcher {
    /// A pool of `slots` sequences set up as `opts` says, and its batcher.
    pub fn new(model: Arc<Model>, slots: usize, opts: SessionOptions) -> Result<Arc<Batcher>> {
        let pool = Pool::new(&model, slots, opts.ctx, opts.kv_type)?;
        Ok(Arc::new(Batcher {
            model,
            pool,
            state: Mutex::new(State::default()),
            submitted: Condvar::new(),
            queued: Arc::new(AtomicUsize::new(0)),
        }))
    }

    /// Slot `slot`'s session (each slot at most once: sessions of one slot would share a
    /// cache).
    pub fn session(self: &Arc<Self>, slot: usize) -> Result<Session> {
        let seq = self.pool.sequence(&self.model, slot)?;
        let mut s = Session::from_sequence(self.model.clone(), seq);
        s.batch = Some((self.clone(), slot));
        Ok(s)
    }

    /// Give slot `slot`'s `session` the pooled rows `region` ([`Pool::sequence_in`]; whole
    /// granules), keeping its first `keep` cached tokens: copied on the GPU queue when the
    /// region starts elsewhere (through a staging buffer: both live in the pool), left where
    /// they are when it starts at the same row. Its compiled graphs are dropped (they bound
    /// the old rows). The session must be idle, and the caller keeps other slots' running
    /// work off `region`; idle slots it overlaps must be [`Batcher::release`]d.
    pub fn move_session(
        &self,
        session: &mut Session,
        slot: usize,
        region: Region,
        keep: usize,
    ) -> Result<()> {
        if session.batch.as_ref().map(|(_, s)| *s) != Some(slot) {
            return Err(Error::op(
                "batch",
                format!("moving slot {slot}: the session is not that slot's"),
            ));
        }
        let before = self.pool.regions().get(slot).copied().flatten();
        let keep = keep.min(session.history.len()).min(region.rows - 1);
        let old = session.seq.cache().clone();
        let seq = self.pool.sequence_in(&self.model, slot, region)?;
        if keep > 0 && before.map(|r| r.base) != Some(region.base) {
            seq.copy_prefix_from(&self.model, &old, keep)?;
            seq.write_tokens(&self.model, 0, &session.history[..keep])?;
        }
        session.seq = seq;
        session.graphs.clear();
        session.history.truncate(keep);
        session.last = None;
        Ok(())
    }

    /// Slot `slot`'s rows now belong to another slot: its session holds nothing until
    /// [`Batcher::move_session`] gives it rows again (reset it first).
    pub fn release(&self, slot: usize) {
        self.pool.release(slot);
    }

    /// Each slot's region of the pool now.
    pub fn regions(&self) -> Vec<Option<Region>> {
        self.pool.regions()
    }

    /// Rows of the pool (see [`Pool::total_rows`]).
    pub fn total_rows(&self) -> usize {
        self.pool.total_rows()
    }

    /// Regions are whole multiples of this many rows.
    pub fn granule(&self) -> usize {
        self.pool.granule()
    }

    /// The most tokens one sequence of the pool can hold.
    pub fn max_tokens(&self) -> usize {
        self.pool.max_tokens()
    }

    /// Generate for several prompts at once, one slot each (at most [`Batcher::slots`] of
    /// them): `(prompt, sampling, max_tokens)` per request; the outcomes in the same order.
    /// Each request runs on its own thread with its slot's session, so their decode steps are
    /// batched; slot caches start empty.
    pub fn generate_all(
        self: &Arc<Self>,
        requests: &[(Vec<u32>, SamplingParams, usize)],
    ) -> Result<Vec<Generation>> {
        if requests.len() > self.pool.slots() {
            return Err(Error::Request(format!(
                "{} requests for a pool of {} slots: at most one per slot",
                requests.len(),
                self.pool.slots()
            )));
        }
        let sessions = (0..requests.len())
            .map(|i| self.session(i))
            .collect::<Result<Vec<_>>>()?;
        std::thread::scope(|sc| {
            let handles: Vec<_> = sessions
                .into_iter()
                .zip(requests)
                .map(|(mut s, (prompt, params, max))| {
                    sc.spawn(move || s.generate(prompt, params, *max, &mut |_| true))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::op("batch", "a generation panicked")))
                })
                .collect()
        })
    }

    /// Sequences the pool holds.
    pub fn slots(&self) -> usize {
        self.pool.slots()
    }

    /// Counters so far.
    pub fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the data if something did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a session into the decode loop until the guard drops.
    pub(super) fn enter(self: &Arc<Self>) -> Active {
        self.lock().active += 1;
        Active(self.clone())
    }

    /// Wait until a batch after the `seen`-th has been submitted, or no session is decoding
    /// (then there is nothing to wait for); returns the batches submitted so far. A session
    /// prefilling calls this between its chunks so the others' steps run in between. Waits
    /// at most [`YIELD_LIMIT`].
    pub(super) fn after_a_batch(&self, seen: u64) -> u64 {
        let since = Instant::now();
        let mut s = self.lock();
        while s.stats.batches <= seen && s.active > 0 && since.elapsed() < YIELD_LIMIT {
            s = self
                .submitted
                .wait_timeout(s, YIELD_LIMIT)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        s.stats.batches
    }

    /// Queue slot `slot`'s decode step at `pos` in the next batch: `k` candidates, penalties,
    /// log-probabilities (candidates and log-sum-exp copied after the token, as
    /// `pipeline::Readback` lays them out). Returns the submission that fills `readback`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &self,
        slot: usize,
        pos: usize,
        k: usize,
        penalize: bool,
        logprobs: bool,
        readback: &wgpu::Buffer,
    ) -> Result<wgpu::SubmissionIndex> {
        let mut s = self.lock();
        let id = s.next_id;
        s.next_id += 1;
        s.pending.push(Ticket {
            id,
            slot,
            pos,
            k,
            penalize,
            logprobs,
            readback: readback.clone(),
        });
        let since = Instant::now();
        loop {
            if let Some(out) = s.done.remove(&id) {
                return out.map_err(|e| Error::op("batch", e));
            }
            // Completed batches count themselves out during device polls.
            let _ = self.model.ctx.device.poll(wgpu::PollType::Poll);
            let everyone = s.pending.len() >= s.active.min(MAX_ROWS);
            let waited = since.elapsed();
            let starving = self.queued.load(Ordering::SeqCst) < MIN_QUEUED && waited >= GRACE;
            if everyone || starving || waited >= GATHER {
                s.stats.timeouts += !everyone as u64;
                self.flush(&mut s);
                self.submitted.notify_all();
                continue;
            }
            s = self
                .submitted
                .wait_timeout(s, RECHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Submit up to [`MAX_ROWS`] pending steps as one batch and record their outcome.
    fn flush(&self, s: &mut State) {
        let n = s.pending.len().min(MAX_ROWS);
        let batch: Vec<Ticket> = s.pending.drain(..n).collect();
        let out = self.submit(s, &batch).map_err(|e| e.to_string());
        if out.is_ok() {
            let queued = self.queued.clone();
            queued.fetch_add(1, Ordering::SeqCst);
            self.model.ctx.queue.on_submitted_work_done(move || {
                queued.fetch_sub(1, Ordering::SeqCst);
            });
        }
        s.stats.batches += 1;
        s.stats.rows += batch.len() as u64;
        for t in &batch {
            s.done.insert(t.id, out.clone());
        }
    }

    /// The batched graph of `rows` rows with `head`, compiled on first use.
    fn graph<'s>(&self, s: &'s mut State, rows: usize, head: RowsHead) -> Result<&'s BatchGraph> {
        Ok(match s.graphs.entry((rows, head)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.pool.compile(&self.model, rows, head)?),
        })
    }

    /// Compute dispatches of a batched step of `rows` rows (greedy head): one step for all of
    /// them, so per sequence this divided by `rows`.
    pub fn dispatches(&self, rows: usize) -> Result<usize> {
        let head = RowsHead {
            k: 1,
            penalize: false,
            logsumexp: false,
        };
        Ok(self.graph(&mut self.lock(), rows, head)?.num_dispatches())
    }

    /// Time every dispatch of one greedy batched step of slots `0..rows`, each at position
    /// `pos` (whatever their caches hold: for timing only).
    pub fn profile(&self, rows: usize, pos: usize) -> Result<crate::model::Profile> {
        let head = RowsHead {
            k: 1,
            penalize: false,
            logsumexp: false,
        };
        let table: Vec<_> = (0..rows).map(|i| self.pool.row(i, pos)).collect();
        self.graph(&mut self.lock(), rows, head)?.profile(&table)
    }

    fn submit(&self, s: &mut State, batch: &[Ticket]) -> Result<wgpu::SubmissionIndex> {
        let k = batch.iter().map(|t| t.k).max().unwrap_or(1);
        let head = RowsHead {
            // Powers of two bound the number of graphs.
            k: k.next_power_of_two().min(MAX_CANDIDATES).max(k),
            penalize: batch.iter().any(|t| t.penalize),
            logsumexp: batch.iter().any(|t| t.logprobs),
        };
        let g = self.graph(s, batch.len(), head)?;
        let rows: Vec<_> = batch.iter().map(|t| self.pool.row(t.slot, t.pos)).collect();
        let history = self.pool.history();
        let topk = g.topk_tensor();
        let lse = g.logsumexp_tensor();
        let kb = head.k as u64;
        let mut copies = Vec::new();
        for (i, (t, r)) in batch.iter().zip(&rows).enumerate() {
            let at = (r.history_base + r.pos + 1) as u64 * 4;
            copies.push((history, at, &t.readback, 0, 4));
            if t.logprobs {
                let (i, kt) = (i as u64, t.k as u64);
                copies.push((topk, i * 8 * kb, &t.readback, 4, 4 * kt));
                copies.push((topk, (i * 2 * kb + kb) * 4, &t.readback, 4 + 4 * kt, 4 * kt));
                let lse = lse.ok_or_else(|| Error::op("batch", "no log-sum-exp"))?;
                copies.push((lse, i * 4, &t.readback, 4 + 8 * kt, 4));
            }
        }
        g.submit(&rows, &copies)
    }
}
