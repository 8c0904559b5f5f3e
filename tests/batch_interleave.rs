//! Chunked prefill interleaved with batched decode, on the default model (SmolLM2-135M): a
//! request arriving while four sequences decode gets its first token after about its own
//! prefill plus a few steps, and the four keep producing tokens during that prefill — no gap
//! between two of their tokens comes near the prefill's length. Timings are compared as
//! ratios of each other, measured in the same run, never against absolute times.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fado::sampling::SamplingParams;
use fado::session::{Batcher, SessionOptions, DEPTH, INTERLEAVED_CHUNK};

const CTX: usize = 512;
/// The newcomer's prompt: six interleaved chunks.
const PROMPT: usize = 6 * INTERLEAVED_CHUNK;

fn greedy() -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

#[test]
fn a_newcomers_prefill_runs_between_the_running_streams_steps() {
    let model = load(default_model());
    let batcher = Batcher::new(model.clone(), 5, SessionOptions::new(CTX)).unwrap();
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + (i * 7) % 3000).collect();

    // Alone: the newcomer's time to first token with nothing else running (its graphs
    // compiled by a first run).
    let mut newcomer = batcher.session(4).unwrap();
    newcomer
        .generate(&prompt, &greedy(), 1, &mut |_| true)
        .unwrap();
    newcomer.reset();
    let t0 = Instant::now();
    newcomer
        .generate(&prompt, &greedy(), 1, &mut |_| true)
        .unwrap();
    let alone = t0.elapsed();
    newcomer.reset();

    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let times: Vec<Mutex<Vec<Instant>>> = (0..4).map(|_| Mutex::new(Vec::new())).collect();
    let (submitted, first) = std::thread::scope(|sc| {
        for (i, t) in times.iter().enumerate() {
            let mut s = batcher.session(i).unwrap();
            let (stop, started) = (&stop, &started);
            sc.spawn(move || {
                let p = [1, 40 + i as u32, 50, 60];
                let mut n = 0;
                s.generate(&p, &greedy(), CTX - 8, &mut |_| {
                    t.lock().unwrap().push(Instant::now());
                    n += 1;
                    if n == 3 {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                    !stop.load(Ordering::SeqCst)
                })
                .unwrap();
            });
        }
        while started.load(Ordering::SeqCst) < 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let submitted = Instant::now();
        let mut first = None;
        newcomer
            .generate(&prompt, &greedy(), 1, &mut |_| {
                first.get_or_insert(Instant::now());
                true
            })
            .unwrap();
        // Let the streams show their pace after the prefill, then stop them.
        std::thread::sleep(alone / 4);
        stop.store(true, Ordering::SeqCst);
        (submitted, first.unwrap())
    });
    let ttft = first - submitted;

    // The streams' pace: the median gap between tokens while all five ran.
    let mut gaps = Vec::new();
    let mut worst = Duration::ZERO;
    for t in &times {
        let t = t.lock().unwrap();
        for w in t.windows(2) {
            let gap = w[1] - w[0];
            if w[0] >= submitted && w[1] <= first {
                worst = worst.max(gap);
                gaps.push(gap);
            }
        }
        let during = t.iter().filter(|&&x| x >= submitted && x <= first).count();
        // Steps already queued when the newcomer came give DEPTH tokens even without
        // interleaving; interleaved, each chunk is followed by a step.
        eprintln!("a stream's tokens during the prefill: {during}");
        assert!(
            during >= DEPTH + 2,
            "a stream produced {during} tokens during the {ttft:?} prefill: it was starved"
        );
    }
    gaps.sort();
    let step = gaps[gaps.len() / 2];
    eprintln!("alone {alone:?}, under load {ttft:?}, median step {step:?}, longest gap {worst:?}");
    // Its own prefill (slower by the steps between chunks) plus a few steps.
    let chunks = PROMPT.div_ceil(INTERLEAVED_CHUNK) as u32;
    let bound = alone.mul_f64(1.5) + step * (chunks + DEPTH as u32 + 2);
    assert!(
        ttft <= bound,
        "first token after {ttft:?}: more than {bound:?}"
    );
    // Without interleaving a stream would wait out the whole prefill.
    assert!(
        worst < alone.mul_f64(0.4),
        "a stream waited {worst:?} for a token during a {alone:?} prefill"
    );
}
