//! The KV pool shared out per request (`model::regions`, `Batcher::move_session`): a sequence
//! of a pool's slot moved to a region larger than its even share generates past that share,
//! a sequence moved elsewhere keeps its cached prefix (copied on the GPU, also when the old
//! and new rows overlap), and sessions on moved regions decode batched — each exactly as a
//! lone session of the same capacity does.

mod common;
use common::*;

use std::sync::Arc;

use fado::model::{Model, Region};
use fado::sampling::SamplingParams;
use fado::session::{Batcher, Session, SessionOptions};

/// Each slot's even share, in tokens.
const CTX: usize = 100;

fn greedy() -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

/// `n` greedy tokens after `prompt` from a fresh lone session of `cap` tokens.
fn alone(m: &Arc<Model>, cap: usize, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(m.clone(), cap).expect("session");
    s.generate(prompt, &greedy(), n, &mut |_| true)
        .expect("generate")
        .tokens
}

#[test]
fn a_sequence_grows_past_its_share_and_keeps_its_prefix_when_it_moves() {
    let m = tiny_model();
    let b = Batcher::new(m.clone(), 2, SessionOptions::new(CTX)).expect("pool");
    let (total, g) = (b.total_rows(), b.granule());
    assert!(total >= 2 * (CTX + 1), "{total} rows");
    assert_eq!(b.max_tokens(), total - 1);
    let mut s0 = b.session(0).expect("slot 0");
    let mut s1 = b.session(1).expect("slot 1");
    assert_eq!(s0.capacity(), total / 2 - 1, "an even share first");

    // Slot 0 takes the whole pool (slot 1 gives its rows away) and generates past its share.
    b.release(1);
    let whole = Region {
        base: 0,
        rows: total,
    };
    b.move_session(&mut s0, 0, whole, 0).expect("move");
    assert_eq!(s0.capacity(), total - 1);
    let prompt: Vec<u32> = (3..23).collect();
    let n = total - prompt.len() - 8;
    assert!(n > CTX, "{n} tokens: more than an even share");
    let got = s0
        .generate(&prompt, &greedy(), n, &mut |_| true)
        .expect("generate")
        .tokens;
    assert_eq!(got, alone(&m, total - 1, &prompt, n), "past the share");

    // Move it to the upper half, keeping 90 cached tokens: the rows overlap the old ones.
    let seq: Vec<u32> = prompt.iter().chain(&got).copied().collect();
    let upper = Region {
        base: total / 2,
        rows: total / 2,
    };
    assert!(upper.base.is_multiple_of(g));
    b.move_session(&mut s0, 0, upper, 90).expect("move");
    assert_eq!(s0.history(), &seq[..90], "the kept prefix");
    let next: Vec<u32> = seq[..90].iter().chain(&[7, 8, 9]).copied().collect();
    assert_eq!(s0.reuse_prefix(&next), 90);
    let cont = s0
        .generate(&next[90..], &greedy(), 12, &mut |_| true)
        .expect("generate")
        .tokens;
    assert_eq!(cont, alone(&m, total / 2 - 1, &next, 12), "after the move");

    // Slot 1 gets the lower half; both decode at once (batched, through the rows table).
    let lower = Region {
        base: 0,
        rows: total / 2,
    };
    b.move_session(&mut s1, 1, lower, 0).expect("move");
    s0.reset();
    let (p0, p1): (Vec<u32>, Vec<u32>) = ((40..60).collect(), vec![1, 5, 9, 200, 31]);
    let (a, c) = std::thread::scope(|sc| {
        let h0 = sc.spawn(|| s0.generate(&p0, &greedy(), 60, &mut |_| true));
        let h1 = sc.spawn(|| s1.generate(&p1, &greedy(), 60, &mut |_| true));
        (h0.join().expect("join"), h1.join().expect("join"))
    });
    let (a, c) = (a.expect("slot 0").tokens, c.expect("slot 1").tokens);
    assert_eq!(a, alone(&m, total / 2 - 1, &p0, 60), "slot 0 batched");
    assert_eq!(c, alone(&m, total / 2 - 1, &p1, 60), "slot 1 batched");
    assert!(b.stats().rows >= b.stats().batches + 20, "{:?}", b.stats());
}

#[test]
fn regions_outside_the_pool_or_off_granule_are_refused() {
    let m = tiny_model();
    let b = Batcher::new(m, 2, SessionOptions::new(CTX)).expect("pool");
    let mut s = b.session(0).expect("slot 0");
    let (total, g) = (b.total_rows(), b.granule());
    for bad in [
        Region {
            base: 0,
            rows: total + g,
        },
        Region { base: 1, rows: g },
        Region {
            base: 0,
            rows: g + 1,
        },
    ] {
        let e = b.move_session(&mut s, 0, bad, 0).expect_err("refused");
        assert!(e.to_string().contains("granules"), "{e}");
    }
    let mut other = b.session(1).expect("slot 1");
    let e = b
        .move_session(&mut other, 0, Region { base: 0, rows: g }, 0)
        .expect_err("another slot's session");
    assert!(e.to_string().contains("not that slot's"), "{e}");
}
