//! `/v1/completions` with `echo` and `logprobs` (what lm-evaluation-harness's
//! `local-completions` model sends for log-likelihood tasks): the prompt comes back with its
//! tokens' log-probabilities in the legacy layout, the first one `null`, equal to the scoring
//! path's ([`Session::prompt_logprobs`], whose sums equal `fado perplexity`'s NLL: see
//! tests/perplexity.rs). Tiny fixture model over loopback HTTP.

mod common;
#[path = "common/server.rs"]
mod server_common;
use server_common::*;

use fado::generate::encode_raw;
use fado::session::{log_sum_exp, Session};
use serde_json::{json, Value};

const TOL: f64 = 1e-4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_the_prompts_logprobs_as_the_scoring_path_computes_them() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let m = model();
    let url = format!("{base}/v1/completions");
    let prompt = "The sea was calm and the boats came home early.";
    let ids = encode_raw(&m, prompt).unwrap();
    let n = ids.len();
    let body = json!({"prompt": prompt, "echo": true, "logprobs": 2, "max_tokens": 0,
                      "temperature": 0});
    let v: Value = post_json(&c, url.as_str(), &body, "echo").await;
    let ch = &v["choices"][0];
    let lp = &ch["logprobs"];
    let bytes: Vec<Vec<u8>> = ids.iter().map(|&t| m.tokenizer.token_bytes(t)).collect();
    let text: Vec<u8> = bytes.concat();
    assert_eq!(ch["text"], String::from_utf8_lossy(&text).as_ref(), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 0, "{v}");
    for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[k].as_array().map(Vec::len), Some(n), "{k}: {lp}");
    }
    assert!(lp["token_logprobs"][0].is_null(), "{lp}");
    assert!(lp["top_logprobs"][0].is_null(), "{lp}");

    let mut s = Session::new(m.clone(), CTX).unwrap();
    let want = s.prompt_logprobs(&ids, 2).unwrap();
    let (mut sum, mut want_sum, mut offset) = (0.0, 0.0, 0);
    for i in 0..n {
        assert_eq!(lp["tokens"][i], String::from_utf8_lossy(&bytes[i]).as_ref());
        assert_eq!(lp["text_offset"][i], offset, "token {i}");
        offset += bytes[i].len();
        if i == 0 {
            continue;
        }
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        let w = want[i - 1].logprob as f64;
        assert!((got - w).abs() < TOL, "token {i}: {got} vs {w}");
        sum += got;
        want_sum += w;
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
    }
    assert!((sum - want_sum).abs() < 1e-3, "Σ {sum} vs {want_sum}");

    // With new tokens: the completion follows the prompt, its entries after the prompt's.
    let body = json!({"prompt": prompt, "echo": true, "logprobs": 1, "max_tokens": 3,
                      "temperature": 0});
    let v: Value = post_json(&c, url.as_str(), &body, "echo + 3").await;
    let ch = &v["choices"][0];
    let k = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert!(ch["text"]
        .as_str()
        .unwrap()
        .starts_with(&*String::from_utf8_lossy(&text)));
    assert_eq!(
        ch["logprobs"]["token_logprobs"].as_array().map(Vec::len),
        Some(n + k)
    );
    // Without echo, no token is still an error; echo is not streamed.
    let r = post(
        &c,
        url.as_str(),
        &json!({"prompt": prompt, "max_tokens": 0}),
        "0",
    )
    .await;
    expect_error(r, 400, "max_tokens 0 without echo").await;
    let body = json!({"prompt": prompt, "echo": true, "stream": true});
    let e = expect_error(
        post(&c, url.as_str(), &body, "stream").await,
        400,
        "echo + stream",
    )
    .await;
    assert_eq!(e["error"]["param"], "echo");
    h.shutdown().await;
}

/// Σ log P(continuation | context) as lm-evaluation-harness's `local-completions` computes it
/// from one response: `sum(token_logprobs[ctxlen:-1])` (the last entry is the one generated
/// token), with lm-eval's greedy flag (every continuation token is its position's top one).
fn lm_eval_loglikelihood(v: &Value, ctxlen: usize, n: usize) -> (f64, bool) {
    let lp = &v["choices"][0]["logprobs"];
    let lps = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(
        lps.len(),
        n + 1,
        "the prompt's entries and the generated token's: {v}"
    );
    let mut greedy = true;
    let mut sum = 0.0;
    for i in ctxlen..n {
        let x = lps[i].as_f64().unwrap();
        sum += x;
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = top
            .values()
            .map(|t| t.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        greedy &= x >= best;
    }
    (sum, greedy)
}

/// What lm-evaluation-harness's `local-completions` sends for a multiple-choice question (one
/// request per choice: context + choice as token ids, `[[ids]]`, or as text; echo, logprobs 1,
/// max_tokens 1) gives per-choice log-likelihoods equal to the sums of the scoring path that
/// `fado perplexity` uses ([`Session::prefill_scored`] + `log_sum_exp`, in f64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm_eval_choice_loglikelihoods_equal_the_scoring_paths_sums() {
    let (h, base) = start(cfg(1)).await;
    let c = client();
    let m = model();
    let url = format!("{base}/v1/completions");
    let context = "Pergunta: Qual é a capital de Portugal?\nResposta:";
    let ctxlen = encode_raw(&m, context).unwrap().len();
    let mut s = Session::new(m.clone(), CTX).unwrap();
    for choice in [" Lisboa", " Porto", " Coimbra"] {
        let whole = encode_raw(&m, &format!("{context}{choice}")).unwrap();
        let n = whole.len();
        assert!(n > ctxlen, "{choice}: the continuation has tokens");
        // The scoring path: the row at position p predicts whole[p + 1].
        s.reset();
        let mut want = 0.0f64;
        let mut greedy = true;
        s.prefill_scored(&whole, 0, &mut |pos, logits| {
            if pos + 1 >= ctxlen && pos + 1 < n {
                let t = whole[pos + 1] as usize;
                want += logits[t] as f64 - log_sum_exp(logits);
                greedy &= logits.iter().all(|&l| l <= logits[t]);
            }
            Ok(())
        })
        .unwrap();
        for prompt in [json!([whole]), json!(format!("{context}{choice}"))] {
            let body = json!({"prompt": prompt, "echo": true, "logprobs": 1,
                              "max_tokens": 1, "temperature": 0, "seed": 1234});
            let v: Value = post_json(&c, url.as_str(), &body, choice).await;
            let (got, got_greedy) = lm_eval_loglikelihood(&v, ctxlen, n);
            let tol = 1e-4 * (n - ctxlen) as f64;
            assert!(
                (got - want).abs() <= tol,
                "{choice} ({prompt}): server {got} vs scoring path {want}"
            );
            assert_eq!(got_greedy, greedy, "{choice}: is_greedy");
        }
    }
    h.shutdown().await;
}
