//! Batched decode (`session::batch`): sessions of one pool generating at the same time, their
//! decode steps run as batched steps, give what each request gives alone in its own session —
//! greedy, seeded sampling, penalties, log-probabilities, a cancelled stream beside the others
//! — and the steps really were batched. In every kernel style.

mod common;
use common::*;

use std::sync::{Arc, Barrier};

use fado::model::Model;
use fado::sampling::SamplingParams;
use fado::session::{Batcher, Session, SessionOptions, TokenLogprobs};

const CTX: usize = 96;

/// One request: prompt, parameters, tokens, log-probabilities, stop after this many tokens.
#[derive(Clone)]
struct Req {
    prompt: Vec<u32>,
    params: SamplingParams,
    max_tokens: usize,
    logprobs: Option<usize>,
    cancel_after: Option<usize>,
}

fn requests() -> Vec<Req> {
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy()
    };
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.02,
        seed: 7,
        ignore_eos: true,
        ..Default::default()
    };
    let penalized = SamplingParams {
        repeat_penalty: 1.3,
        presence_penalty: 0.4,
        frequency_penalty: 0.2,
        repeat_last_n: 16,
        ..greedy.clone()
    };
    let req = |prompt: Vec<u32>, params: &SamplingParams, n: usize| Req {
        prompt,
        params: params.clone(),
        max_tokens: n,
        logprobs: None,
        cancel_after: None,
    };
    vec![
        req(vec![1, 5, 9, 200, 31], &greedy, 40),
        req((10..40).collect(), &sampled, 33),
        req(vec![1, 77, 78, 79], &penalized, 45),
        Req {
            logprobs: Some(3),
            ..req(vec![1, 300, 12], &greedy, 24)
        },
        Req {
            cancel_after: Some(9),
            ..req(vec![1, 2, 3, 4, 5, 6, 7], &sampled, 40)
        },
        req(vec![42; 20], &greedy, 12),
    ]
}

fn run(s: &mut Session, r: &Req) -> (Vec<u32>, Vec<TokenLogprobs>) {
    let mut lps = Vec::new();
    let mut seen = 0;
    let mut cb = |_, l: Option<&TokenLogprobs>| {
        lps.extend(l.cloned());
        seen += 1;
        r.cancel_after.is_none_or(|n| seen < n)
    };
    let g = s
        .generate_with_logprobs(&r.prompt, &r.params, r.max_tokens, r.logprobs, &mut cb)
        .expect("generate");
    (g.tokens, lps)
}

fn check_style(label: &str, m: Arc<Model>) {
    let reqs = requests();
    let alone: Vec<_> = reqs
        .iter()
        .map(|r| run(&mut Session::new(m.clone(), CTX).unwrap(), r))
        .collect();
    let batcher = Batcher::new(m.clone(), reqs.len(), SessionOptions::new(CTX)).unwrap();
    // Two rounds on the same slots: the second reuses caches that held other sequences.
    for round in 0..2 {
        let start = Arc::new(Barrier::new(reqs.len()));
        let together: Vec<_> = std::thread::scope(|sc| {
            let hs: Vec<_> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let slot = (i + round) % reqs.len();
                    let mut s = batcher.session(slot).unwrap();
                    let start = start.clone();
                    sc.spawn(move || {
                        start.wait();
                        run(&mut s, r)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.0, b.0, "{label} round {round}: request {i}'s tokens");
            assert_eq!(a.1.len(), b.1.len(), "{label}: request {i}'s logprobs");
            for (x, y) in a.1.iter().zip(&b.1) {
                assert_eq!(x.token, y.token, "{label}: request {i}");
                assert!(
                    (x.logprob - y.logprob).abs() < 1e-3,
                    "{label}: {x:?} vs {y:?}"
                );
                let ids = |t: &TokenLogprobs| t.top.iter().map(|c| c.0).collect::<Vec<_>>();
                assert_eq!(ids(x), ids(y), "{label}: request {i}'s alternatives");
            }
        }
    }
    let st = batcher.stats();
    eprintln!("{label}: {st:?}");
    // Six sessions decoding together: most steps share a batch.
    assert!(
        st.rows as f64 >= 2.5 * st.batches as f64,
        "{label}: {st:?}: the steps were hardly batched"
    );
}

#[test]
fn batched_sessions_generate_what_each_request_generates_alone() {
    for (label, c) in variant_contexts() {
        check_style(label, load_on(c, fixture("tiny-llama")));
    }
}
