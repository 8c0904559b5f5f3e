//! `fado perplexity`: the default model's perplexity on a committed text against an independent
//! numpy reference (scripts/reference_ppl.py → tests/fixtures/eval/ppl-reference.json), a model
//! compared with itself through a saved logits file (KLD 0, same top token everywhere), and
//! hostile inputs through the real binary (non-zero exit, a clear message, no panic).
//! Needs the default model (FADO_DEFAULT_MODEL or scripts/fetch-default-model.sh).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use fado::session::perplexity::{self, Plan};
use fado::session::KvType;

const FADO: &str = env!("CARGO_BIN_EXE_fado");

fn text() -> PathBuf {
    fixture("eval/ppl.txt")
}

fn tiny_gguf() -> PathBuf {
    fixture("tiny-llama-f16.gguf")
}

#[test]
fn default_model_perplexity_matches_the_numpy_reference_within_0_2_percent() {
    let exp = fixture_json("eval/ppl-reference.json");
    let model = load(default_model());
    let bytes = std::fs::read(text()).unwrap();
    let tokens = perplexity::tokenize_text(&model, &bytes, "ppl.txt").unwrap();
    assert_eq!(tokens, json_ids(&exp["tokens"]), "token ids of the text");
    let ctx = exp["settings"]["ctx"].as_u64().unwrap() as usize;
    let chunks = exp["settings"]["chunks"].as_u64().unwrap() as usize;
    let plan = Plan::new(&model, &tokens, ctx, Some(chunks)).unwrap();
    assert_eq!(plan.bos, None, "SmolLM2's GGUF does not add BOS");
    let p = perplexity::run(&model, &plan, KvType::F16, &mut |_| Ok(()), &mut |_, _| {}).unwrap();
    let want_nll = json_f64s(&exp["nll"]);
    assert_eq!(p.nlls.len(), want_nll.len(), "tokens scored");
    assert_eq!(p.chunks, chunks);
    let worst = p
        .nlls
        .iter()
        .zip(&want_nll)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    let want = exp["ppl"].as_f64().unwrap();
    let got = p.stats.ppl();
    let rel = (got - want).abs() / want;
    eprintln!(
        "ppl {got:.6} vs reference {want:.6} ({:.4} %); worst token |Δnll| {worst:.5}",
        100.0 * rel
    );
    assert!(
        rel < 2e-3,
        "ppl {got} vs reference {want}: {:.4} % apart",
        100.0 * rel
    );
    let want_err = exp["ppl_stderr"].as_f64().unwrap();
    assert!(
        (p.stats.ppl_stderr() - want_err).abs() / want_err < 1e-2,
        "stderr {} vs {want_err}",
        p.stats.ppl_stderr()
    );
}

/// `fado perplexity` with `args`; returns (exit ok, stdout, stderr).
fn fado(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(FADO)
        .arg("perplexity")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("FADO_MODEL")
        .output()
        .expect("run fado");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_run(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = fado(args);
    assert!(ok, "fado perplexity {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A failing run: non-zero exit, `want` in the error, no panic.
fn fails_with(args: &[&str], want: &str) {
    let (ok, _, err) = fado(args);
    assert!(!ok, "fado perplexity {args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.contains(want), "{args:?}: expected `{want}` in: {err}");
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Save a run's logits, compare the same model with them: KLD 0, same top token 100 %, the
/// same perplexity.
fn self_comparison(model: &Path, ctx: &str) {
    let s = scratch("perplexity", &format!("self-{ctx}"));
    let logits = s.join("ref.logits");
    let text = text();
    let (m, t, l) = (p(model), p(&text), p(&logits));
    let base = json_run(&[
        "-m",
        m,
        "-f",
        t,
        "--ctx",
        ctx,
        "--chunks",
        "2",
        "--json",
        "--save-logits",
        l,
    ]);
    assert_eq!(base["chunks"], 2);
    let cmp = json_run(&["-m", m, "-f", t, "--json", "--kl-divergence", l]);
    let k = &cmp["kl_divergence"];
    assert_eq!(cmp["ctx"], base["ctx"], "--ctx comes from the logits file");
    assert_eq!(cmp["ppl"], base["ppl"]);
    assert!(k["mean_kld"].as_f64().unwrap().abs() < 1e-9, "{cmp}");
    assert!(k["max_kld"].as_f64().unwrap().abs() < 1e-9, "{cmp}");
    assert_eq!(k["same_top"], 1.0, "{cmp}");
    // The reference's perplexity comes from its stored f32 log-probabilities: equal to 1e-6.
    assert!(k["ln_ppl_ratio"].as_f64().unwrap().abs() < 1e-6, "{cmp}");
}

#[test]
fn the_default_model_against_itself_has_zero_kld_and_the_same_top_token() {
    // 49152 tokens: the top-128 + rest format.
    self_comparison(&default_model(), "64");
}

#[test]
fn a_small_vocabulary_model_against_itself_has_zero_kld_too() {
    // 512 tokens: stored whole; the tiny model adds BOS, so each chunk starts with it.
    self_comparison(&tiny_gguf(), "32");
    // Without --json: llama-perplexity's final line and the comparison's figures.
    let s = scratch("perplexity", "text-out");
    let l = s.join("ref.logits");
    let (m, t) = (tiny_gguf(), text());
    let base = ["-m", p(&m), "-f", p(&t), "--ctx", "32", "--chunks", "2"];
    let (ok, out, err) = fado(&[&base[..], &["--save-logits", p(&l)]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("Final estimate: PPL = "), "{out}");
    assert!(
        err.contains("2 chunks of 32 (scoring 15 tokens each), BOS first"),
        "{err}"
    );
    let (ok, out, err) = fado(&[&base[..], &["--kl-divergence", p(&l)]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("Mean    KLD:   0.000000"), "{out}");
    assert!(out.contains("Same top p: 100.000"), "{out}");
}

#[test]
fn hostile_texts_and_contexts_are_clear_errors() {
    let s = scratch("perplexity", "hostile");
    let m = default_model();
    let m = p(&m);
    let empty = s.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(&["-m", m, "-f", p(&empty)], "is empty");
    let short = s.join("short.txt");
    std::fs::write(
        &short,
        "Uma frase curta, longe de dois pedaços de contexto.",
    )
    .unwrap();
    fails_with(
        &["-m", m, "-f", p(&short), "--ctx", "64"],
        "needs at least 128",
    );
    let latin1 = s.join("latin1.txt");
    std::fs::write(&latin1, b"Ol\xe1, isto n\xe3o \xe9 UTF-8.".repeat(50)).unwrap();
    fails_with(
        &["-m", m, "-f", p(&latin1)],
        "not UTF-8 text: invalid byte(s) at offset 2",
    );
    fails_with(&["-m", m, "-f", p(&text()), "--ctx", "4"], "at least 8");
    fails_with(
        &["-m", m, "-f", p(&text()), "--ctx", "100000"],
        "at most 8192",
    );
    fails_with(&["-m", m, "-f", p(&text()), "--chunks", "0"], "at least 1");
    fails_with(&["-m", m, "-f", p(&s.join("missing.txt"))], "missing.txt");
}

#[test]
fn logits_files_from_another_model_or_text_or_not_logits_are_clear_errors() {
    let s = scratch("perplexity", "logits");
    let m = default_model();
    let m = p(&m);
    let text = text();
    let t = p(&text);
    // Another model: the tiny model's vocabulary has 512 tokens.
    let tiny = s.join("tiny.logits");
    let (tg, tl) = (tiny_gguf(), p(&tiny));
    json_run(&[
        "-m",
        p(&tg),
        "-f",
        t,
        "--ctx",
        "32",
        "--chunks",
        "2",
        "--json",
        "--save-logits",
        tl,
    ]);
    fails_with(
        &["-m", m, "-f", t, "--kl-divergence", tl],
        "vocabulary of 512 tokens",
    );
    // Another text: the same model, different tokens.
    let other = s.join("other.txt");
    std::fs::write(
        &other,
        "The quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let l = s.join("other.logits");
    json_run(&[
        "-m",
        m,
        "-f",
        p(&other),
        "--ctx",
        "32",
        "--chunks",
        "2",
        "--json",
        "--save-logits",
        p(&l),
    ]);
    fails_with(
        &["-m", m, "-f", t, "--kl-divergence", p(&l)],
        "another text",
    );
    fails_with(
        &["-m", m, "-f", t, "--ctx", "64", "--kl-divergence", p(&l)],
        "use --ctx 32",
    );
    // Not a logits file at all, and a truncated one.
    fails_with(
        &["-m", m, "-f", t, "--kl-divergence", t],
        "is not a Fado logits file",
    );
    let bytes = std::fs::read(&l).unwrap();
    let cut = s.join("cut.logits");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(
        &["-m", m, "-f", t, "--kl-divergence", p(&cut)],
        "inconsistent",
    );
}

#[test]
fn prompt_logprobs_sum_to_the_perplexity_paths_nll() {
    let model = load(default_model());
    let bytes = std::fs::read(text()).unwrap();
    let tokens = perplexity::tokenize_text(&model, &bytes, "ppl.txt").unwrap();
    let plan = Plan::new(&model, &tokens, 64, Some(1)).unwrap();
    let p = perplexity::run(&model, &plan, KvType::F16, &mut |_| Ok(()), &mut |_, _| {}).unwrap();
    let mut s = fado::session::Session::new(model.clone(), 64).unwrap();
    let lps = s.prompt_logprobs(&plan.chunk(0), 5).unwrap();
    assert_eq!(lps.len(), 63, "one entry per token after the first");
    // Entry i is about token i + 1; perplexity scores tokens first + 1 … ctx − 1.
    let scored = &lps[plan.first()..];
    assert_eq!(scored.len(), p.nlls.len());
    let sum: f64 = scored.iter().map(|e| e.logprob as f64).sum();
    let nll: f64 = p.nlls.iter().sum();
    assert!(
        (sum + nll).abs() < 1e-3,
        "Σ logprob {sum} vs −Σ nll {}",
        -nll
    );
    for (e, t) in lps.iter().zip(&plan.chunk(0)[1..]) {
        assert_eq!(e.token, *t);
        assert_eq!(e.top.len(), 5);
        assert!(e.top.windows(2).all(|w| w[0].1 >= w[1].1), "top sorted");
        assert!(
            e.logprob <= e.top[0].1 + 1e-6,
            "nothing beats the top token"
        );
    }
}
