//! Slots and the request queue.
//!
//! `parallel` worker threads each own one [`Session`] (its own KV cache) and take jobs from one
//! bounded FIFO queue. A job streams its text back through an unbounded channel; when the
//! receiving side is gone (the client disconnected, so axum dropped the response) the next send
//! fails, the generate callback returns `false` and the slot is free for the next job.
//!
//! With several slots, the sessions are a [`Batcher`]'s: their KV caches are slices of one
//! pool, and each decode step of every slot that is decoding runs as one batched step (each
//! weight read once for all of them; `session::batch`). Each slot's thread keeps its own
//! generation loop — prefill, stop strings, streaming, cancellation — as with one slot.
//!
//! A slot keeps its KV cache after a job; the next job on that slot prefills only what follows
//! the longest common prefix of its prompt and the cached tokens (a multi-turn chat re-sends
//! the conversation, so most of it is reused). Across slots: when another, idle slot holds a
//! longer prefix of the job's prompt (a shared system prompt, a conversation that ran on
//! another slot), its keys and values are copied into the taking slot's cache on the GPU
//! before the prefill. The copy is queued while the queue's lock is held, and a slot takes a
//! job only under that lock, so the source's rows cannot be overwritten before the copy.
//!
//! The pool's rows are shared out per job: a slot taking a job gets a region of
//! `prompt + max_tokens` rows (`model::regions::place`): its own when large enough, else
//! grown or moved (its cached prefix copied along) over free rows or over idle slots' cached
//! rows, which those slots then forget. Running slots' rows never move. So one long
//! conversation can use what short ones leave free; a job that does not fit while others run
//! waits for one of them to finish (a job larger than the whole pool was refused with a 400).

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use super::metrics::Metrics;
use crate::error::{Error, Result};
use crate::generate::{generate_text_with_logprobs, TextRequest};
use crate::model::regions::place;
use crate::model::{Held, KvCache, Model};
use crate::session::{
    common_prefix, Batcher, FinishReason, Session, SessionOptions, TokenLogprobs,
};

/// What a job sends back.
#[derive(Debug)]
pub enum Event {
    /// The next piece of text, with the log-probabilities of the tokens it completes (empty
    /// unless asked for). The last piece before `Done` may have empty text and carry the
    /// entries of tokens whose text never came (e.g. cut by a stop string).
    Text(String, Vec<TokenLogprobs>),
    /// For `echo`, before any text: the prompt's text (its tokens' bytes), its token ids and,
    /// when log-probabilities were asked for, those of its tokens after the first (entry `i` is
    /// about token `i + 1`).
    Prompt(String, Vec<u32>, Vec<TokenLogprobs>),
    /// One of the request's `n` answers ended (they come one after another, in index order;
    /// the text events before it belong to it).
    EndChoice(FinishReason),
    /// Generation ended normally (every answer).
    Done(Finished),
    /// Generation failed (the message is for the client).
    Failed(Error),
}

/// The outcome of a job that ended normally (the counts are the response's `usage`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finished {
    /// Why generation ended (the last answer's, with `n` > 1); a stop string gives `Stop`.
    pub finish_reason: FinishReason,
    /// The whole prompt, including any part reused from the slot's cache (counted once for
    /// `n` answers).
    pub prompt_tokens: usize,
    /// Tokens generated over all answers, counting an end-of-sequence token and the tokens
    /// that completed a stop string, although their text is not part of the answer.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the slot's cache.
    pub cached_tokens: usize,
    /// Seconds of prefill (up to the first token's candidates).
    pub prefill_seconds: f64,
    /// Seconds from the end of the prefill to the end of generation.
    pub decode_seconds: f64,
}

/// One request for a slot.
pub struct Job {
    /// The response id (`chatcmpl-…`), for the server's log.
    pub id: String,
    /// The whole prompt's token ids; with the prefix cache the slot prefills only what follows
    /// the prefix its cache already holds.
    pub prompt: Vec<u32>,
    /// Sampling, token limit and stop strings, already checked against the server's limits.
    pub req: TextRequest,
    /// Report log-probabilities with this many alternatives per token.
    pub top_logprobs: Option<usize>,
    /// Send the prompt back first ([`Event::Prompt`]), scored when `top_logprobs` is set.
    pub echo: bool,
    /// Answers to generate (OpenAI's `n`): one after another on the slot, each continuing
    /// from the prompt's cached rows (prefilled once), answer `i` sampled with seed + `i`.
    pub n: usize,
    /// Where the slot sends the job's [`Event`]s: text pieces, then one `Done` or `Failed`.
    /// Once the receiver is dropped the job is cancelled (skipped if still queued).
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived (latency metrics count from here).
    pub arrived: Instant,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue holds `capacity` waiting jobs already.
    QueueFull {
        /// The queue's capacity (`--queue`).
        capacity: usize,
    },
    /// The server is shutting down.
    Closed,
}

/// Counters for `/health`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Slots (sessions that can generate at the same time).
    pub slots: usize,
    /// Slots running a job now.
    pub busy: usize,
    /// Jobs waiting for a slot (including any whose client has already left).
    pub queued: usize,
    /// Most jobs that may wait.
    pub queue_capacity: usize,
    /// Jobs that ended normally, on a stop condition or the token limit.
    pub completed: u64,
    /// Stopped early because the client went away (before or during generation).
    pub cancelled: u64,
    /// Ended with an error (sent to the client).
    pub failed: u64,
    /// Refused because the queue was full.
    pub rejected: u64,
    /// KV-cache rows the slots hold (running and cached sequences), as of their last job.
    pub kv_used: usize,
    /// Batched decode steps run (one step for every slot decoding at the time).
    pub batched_steps: u64,
    /// Rows (slot decode steps) those advanced.
    pub batched_rows: u64,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// What each slot's cache holds, for prefix sharing across slots.
    slots: Vec<SlotCache>,
}

/// A slot's cache as other slots see it.
struct SlotCache {
    /// Running a job (its cache is changing: not a source).
    busy: bool,
    /// The tokens its cache holds after its last job.
    history: Vec<u32>,
    /// Its cache's shared handles.
    kv: KvCache,
    /// Another slot took its rows while it was idle: its session must forget its cache.
    evicted: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    slots: usize,
    busy: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    /// Per slot: the KV rows its session holds after its last job.
    kv_used: Vec<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// The slots' batcher, with several slots.
    batcher: Option<Arc<Batcher>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker never panics while holding the lock; recover the data if one did.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The slots, their worker threads and the queue in front of them.
pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Create `slots` sessions set up as `opts` says (KV caches are allocated now, so a server
    /// that starts has the memory it needs) and start one worker thread per slot.
    pub fn start(
        model: Arc<Model>,
        slots: usize,
        opts: SessionOptions,
        queue_capacity: usize,
        prefix_cache: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler> {
        if slots == 0 {
            return Err(Error::Config("--parallel must be at least 1".into()));
        }
        // Several slots share one pooled cache and batcher, so their decode steps run as one
        // batched step (each weight read once for all of them); one slot needs neither.
        let mut sessions = Vec::with_capacity(slots);
        let mut batcher = None;
        if slots > 1 {
            let b = Batcher::new(model.clone(), slots, opts)?;
            for i in 0..slots {
                sessions.push(b.session(i)?);
            }
            batcher = Some(b);
        } else {
            sessions.push(Session::with_options(model.clone(), opts)?);
        }
        let caches = sessions
            .iter()
            .map(|s| SlotCache {
                busy: false,
                history: Vec::new(),
                kv: s.kv_cache(),
                evicted: false,
            })
            .collect();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
                slots: caches,
            }),
            ready: Condvar::new(),
            capacity: queue_capacity,
            slots,
            busy: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            kv_used: (0..slots).map(|_| AtomicUsize::new(0)).collect(),
            metrics,
            batcher,
        });
        let mut workers = Vec::with_capacity(slots);
        for (i, session) in sessions.into_iter().enumerate() {
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("fado-slot-{i}"))
                .spawn(move || worker(sh, i, session, prefix_cache))
                .map_err(|e| Error::Config(format!("could not start slot thread {i}: {e}")))?;
            workers.push(h);
        }
        Ok(Scheduler {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Queue a job, or refuse it at once when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Rejected> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err(Rejected::Closed);
        }
        // Jobs whose client already left do not hold a place.
        q.jobs.retain(|j| !j.events.is_closed());
        if q.jobs.len() >= self.shared.capacity {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.rejected();
            return Err(Rejected::QueueFull {
                capacity: self.shared.capacity,
            });
        }
        q.jobs.push_back(job);
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// The most tokens one request's sequence may hold: `--ctx`, or with a pool (several
    /// slots) the whole pool's rows.
    pub fn max_sequence(&self, ctx: usize) -> usize {
        self.shared.batcher.as_ref().map_or(ctx, |b| b.max_tokens())
    }

    /// KV-cache rows of all slots together.
    pub fn kv_capacity(&self, ctx: usize) -> usize {
        self.shared.batcher.as_ref().map_or(ctx, |b| b.total_rows())
    }

    /// A snapshot of the counters (each read separately, so not one atomic picture).
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let queued = s.lock().jobs.len();
        Stats {
            slots: s.slots,
            busy: s.busy.load(Ordering::SeqCst),
            queued,
            queue_capacity: s.capacity,
            completed: s.completed.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            kv_used: s.kv_used.iter().map(|k| k.load(Ordering::Relaxed)).sum(),
            batched_steps: s.batcher.as_ref().map_or(0, |b| b.stats().batches),
            batched_rows: s.batcher.as_ref().map_or(0, |b| b.stats().rows),
        }
    }

    /// Refuse new jobs, drop the queued ones (their clients see the stream end), let running
    /// jobs finish and join the workers. Blocking.
    pub fn shutdown(&self) {
        {
            let mut q = self.shared.lock();
            q.closed = true;
            q.jobs.clear();
        }
        self.shared.ready.notify_all();
        let handles: Vec<_> = self
            .workers
            .lock()
            .map(|mut w| w.drain(..).collect())
            .unwrap_or_default();
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Let the worker threads end; they hold sessions (GPU memory).
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
            q.jobs.clear();
        }
        self.shared.ready.notify_all();
    }
}

/// The next job for `slot` (blocking), its cache marked busy; with `share`, the longest prefix
/// of the job's prompt that an idle slot holds is copied into `session` first when it is
/// longer than what `session` holds.
fn next_job(sh: &Shared, slot: usize, session: &mut Session, share: bool) -> Option<Job> {
    let mut q = sh.lock();
    loop {
        if q.closed {
            return None;
        }
        if q.slots[slot].evicted {
            // Another slot took this one's rows while it was idle.
            session.reset();
            q.slots[slot].evicted = false;
        }
        if let Some(j) = q.jobs.pop_front() {
            if let (Some(b), false) = (&sh.batcher, j.events.is_closed()) {
                match place_job(&mut q, b, slot, session, &j, share) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Running slots hold the rows it needs: wait for one to finish.
                        q.jobs.push_front(j);
                        q = sh.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!("slot {slot}: no KV rows for {}: {e}", j.id);
                        // The move may have stopped half-way: give the region up, so the next
                        // job rebuilds the session's views instead of trusting them.
                        session.reset();
                        b.release(slot);
                        sh.failed.fetch_add(1, Ordering::Relaxed);
                        sh.metrics.failed();
                        let _ = j.events.send(Event::Failed(e));
                        continue;
                    }
                }
            }
            q.slots[slot].busy = true;
            if share && !j.echo && !j.events.is_closed() {
                adopt_best_prefix(&q.slots, slot, session, &j.prompt);
            }
            return Some(j);
        }
        q = sh.ready.wait(q).unwrap_or_else(|p| p.into_inner());
    }
}

/// Give `session` (slot `me`) a region of the pool for `job`'s `prompt + max_tokens` rows
/// (see the module docs); `Ok(false)` while running slots leave no such room. Idle slots whose
/// rows it takes forget what they held; `me` keeps its cached prefix of the prompt (`share`).
fn place_job(
    q: &mut Queue,
    b: &Batcher,
    me: usize,
    session: &mut Session,
    job: &Job,
    share: bool,
) -> Result<bool> {
    let need = job.prompt.len() + job.req.max_tokens;
    let regions = b.regions();
    let held: Vec<Held> = (regions.iter().zip(&q.slots))
        .map(|(r, c)| Held {
            region: *r,
            busy: c.busy,
        })
        .collect();
    let Some(region) = place(b.total_rows(), b.granule(), &held, me, need) else {
        return Ok(false);
    };
    for (i, r) in regions.iter().enumerate() {
        if i != me && r.is_some_and(|r| r.overlap(&region) > 0) {
            q.slots[i].history.clear();
            q.slots[i].evicted = true;
            b.release(i);
        }
    }
    if regions[me] != Some(region) {
        let keep = if share {
            session.common_prefix(&job.prompt)
        } else {
            0
        };
        b.move_session(session, me, region, keep)?;
        q.slots[me].kv = session.kv_cache();
    }
    Ok(true)
}

/// Copy into `session` (slot `me`) the longest prefix of `prompt` an idle slot holds, when it
/// is longer than `session`'s own. A failed copy only loses the reuse (logged).
fn adopt_best_prefix(slots: &[SlotCache], me: usize, session: &mut Session, prompt: &[u32]) {
    let own = session.common_prefix(prompt);
    let best = slots
        .iter()
        .enumerate()
        .filter(|(i, c)| *i != me && !c.busy)
        .map(|(i, c)| (common_prefix(&c.history, prompt), i))
        .max();
    if let Some((n, i)) = best.filter(|&(n, _)| n > own) {
        let c = &slots[i];
        match session.adopt_prefix(&c.kv, &c.history[..n]) {
            Ok(()) => tracing::debug!("slot {me}: {n} prompt tokens copied from slot {i}'s cache"),
            Err(e) => {
                tracing::warn!("slot {me}: copying slot {i}'s prefix failed ({e}); prefilling it");
                session.reset();
            }
        }
    }
}

fn worker(sh: Arc<Shared>, slot: usize, mut session: Session, prefix_cache: bool) {
    while let Some(job) = next_job(&sh, slot, &mut session, prefix_cache) {
        sh.metrics.queue_time(job.arrived.elapsed().as_secs_f64());
        if job.events.is_closed() {
            sh.cancelled.fetch_add(1, Ordering::Relaxed);
            sh.metrics.finished(FinishReason::Cancelled, 0, 0, 0);
            publish(&sh, slot, &session);
            continue;
        }
        sh.busy.fetch_add(1, Ordering::SeqCst);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_job(&mut session, &job, prefix_cache, &sh.metrics)
        }));
        let outcome = match r {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!("slot panicked: {msg}");
                Err(Error::Config(format!(
                    "internal error while generating: {msg}"
                )))
            }
        };
        log_job(&job, &outcome);
        // Counters first: a client that sees its answer end sees the slot free.
        let event = match outcome {
            Ok(f) => {
                if f.finish_reason == FinishReason::Cancelled {
                    sh.cancelled.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.completed.fetch_add(1, Ordering::Relaxed);
                }
                let m = &sh.metrics;
                m.finished(
                    f.finish_reason,
                    f.prompt_tokens,
                    f.cached_tokens,
                    f.completion_tokens,
                );
                m.end_to_end(job.arrived.elapsed().as_secs_f64());
                Event::Done(f)
            }
            Err(e) => {
                // The cache may hold a partial prompt; start clean next time.
                session.reset();
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.metrics.failed();
                Event::Failed(e)
            }
        };
        sh.kv_used[slot].store(session.history().len(), Ordering::Relaxed);
        publish(&sh, slot, &session);
        sh.busy.fetch_sub(1, Ordering::SeqCst);
        let _ = job.events.send(event);
    }
}

/// Slot `slot` is idle again: others may copy from what its cache holds.
fn publish(sh: &Shared, slot: usize, session: &Session) {
    let mut q = sh.lock();
    q.slots[slot].busy = false;
    q.slots[slot].history = session.history().to_vec();
    drop(q);
    // A job waiting for rows may fit now.
    sh.ready.notify_all();
}

/// One line per generation request at info level: what `fado serve` prints by default.
fn log_job(job: &Job, outcome: &Result<Finished>) {
    match outcome {
        Ok(f) => tracing::info!(
            "{} {}: prompt {} tokens ({} cached) in {:.2} s, generated {} in {:.2} s ({:.1} tok/s)",
            job.id,
            f.finish_reason.as_str(),
            f.prompt_tokens,
            f.cached_tokens,
            f.prefill_seconds,
            f.completion_tokens,
            f.decode_seconds,
            f.completion_tokens.saturating_sub(1) as f64 / f.decode_seconds.max(1e-9)
        ),
        Err(e) => tracing::info!("{} failed: prompt {} tokens: {e}", job.id, job.prompt.len()),
    }
}

fn run_job(
    session: &mut Session,
    job: &Job,
    prefix_cache: bool,
    metrics: &Metrics,
) -> Result<Finished> {
    let prompt = &job.prompt;
    let events = &job.events;
    if job.echo {
        // Score the whole prompt from an empty cache; generation then reuses its KV.
        session.reset();
        let lps = match job.top_logprobs {
            Some(top) => session.prompt_logprobs(prompt, top)?,
            None => Vec::new(),
        };
        let tok = &session.model().tokenizer;
        let bytes: Vec<u8> = prompt.iter().flat_map(|&t| tok.token_bytes(t)).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = events.send(Event::Prompt(text, prompt.clone(), lps));
    }
    let common = if prefix_cache || job.echo {
        session.reuse_prefix(prompt)
    } else {
        session.reset();
        0
    };
    let mut last: Option<Instant> = None;
    let mut generated = 0usize;
    let mut out = None;
    for i in 0..job.n.max(1) {
        if i > 0 {
            // The prompt's rows are cached: only its last token runs again.
            session.reuse_prefix(prompt);
        }
        let from = session.history().len();
        let mut req = job.req.clone();
        req.params.seed = req.params.seed.wrapping_add(i as u64);
        let mut sent = 0usize;
        let o = generate_text_with_logprobs(
            session,
            &prompt[from..],
            &req,
            job.top_logprobs,
            &mut |t, lps| {
                sent += lps.len();
                if !t.is_empty() {
                    let now = Instant::now();
                    match last {
                        None => metrics.first_token((now - job.arrived).as_secs_f64()),
                        Some(l) => metrics.inter_token((now - l).as_secs_f64()),
                    }
                    last = Some(now);
                }
                events
                    .send(Event::Text(t.to_string(), lps.to_vec()))
                    .is_ok()
            },
        )?;
        if o.logprobs.len() > sent {
            let _ = events.send(Event::Text(String::new(), o.logprobs[sent..].to_vec()));
        }
        generated += o.generation.tokens.len();
        let _ = events.send(Event::EndChoice(o.generation.finish_reason));
        let cancelled = o.generation.finish_reason == FinishReason::Cancelled;
        out = Some(o);
        if cancelled {
            break;
        }
    }
    let Some(out) = out else {
        return Err(Error::Request("nothing was generated".into()));
    };
    Ok(Finished {
        finish_reason: out.generation.finish_reason,
        prompt_tokens: prompt.len(),
        completion_tokens: generated,
        cached_tokens: common,
        prefill_seconds: out.generation.prefill_seconds,
        decode_seconds: out.generation.decode_seconds,
    })
}
