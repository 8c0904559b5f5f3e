//! Fuzzing regressions: every input the fuzzers (`fuzz/`, run by `scripts/fuzz.sh`)
//! found to crash, hang or over-allocate replays here through the very same harness
//! (`fuzz/harness.rs`), together with the seed corpora. Inputs live as files under
//! `tests/fixtures/fuzz/<target>/` (raw fuzz inputs) or as literals in the named tests below,
//! each with a note on what broke and how it was fixed.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(dirs: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            if p.is_file() {
                let b = std::fs::read(&p).expect("read fuzz input");
                out.push((p, b));
            }
        }
    }
    out
}

/// Replays the seeds and saved crash inputs of one target; returns how many ran.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let all = inputs(&[
        &format!("fuzz/corpus/{target}"),
        &format!("tests/fixtures/fuzz/{target}"),
    ]);
    for (p, b) in &all {
        eprintln!("{target}: {}", p.display());
        run(b);
    }
    all.len()
}

#[test]
fn http_body_corpus_and_crashes() {
    assert!(replay("http_body", harness::http_body) > 0);
}

#[test]
fn gguf_corpus_and_crashes() {
    assert!(replay("gguf", harness::gguf) > 0, "no gguf seeds found");
}

#[test]
fn safetensors_corpus_and_crashes() {
    assert!(replay("safetensors", harness::safetensors) > 0);
}

#[test]
fn hf_config_corpus_and_crashes() {
    assert!(replay("hf_config", harness::hf_config) > 0);
}

#[test]
fn gguf_tokenizer_corpus_and_crashes() {
    assert!(replay("gguf_tokenizer", harness::gguf_tokenizer) > 0);
}

#[test]
fn chat_template_corpus_and_crashes() {
    assert!(replay("chat_template", harness::chat_template) > 0);
}

#[path = "../fuzz/gen_corpus.rs"]
mod gen_corpus;

/// Rewrites `fuzz/corpus/*/` seeds (each is also run through its harness as it is written).
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the seeds"]
fn regenerate_seed_corpora() {
    gen_corpus::generate();
}

/// Resident set size of this process in KiB (Linux), for the leak regression below.
fn rss_kib() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// Found by `gguf_tokenizer`: its RSS grew by ~1 KiB per execution until the 2 GiB limit.
/// tokenizers 0.23 keeps BPE word caches in a thread-local map keyed by model instance and
/// never frees an instance's entries when the model is dropped, so every tokenizer built and
/// used leaked. Fado now builds its BPE models without that cache (`BPE_CACHE_CAPACITY` in
/// src/tokenizer/bpe.rs). Before the fix, 6000 tokenizers here leaked ~6 MiB.
#[test]
fn tokenizers_built_repeatedly_do_not_leak() {
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gguf_tokenizer/bpe"))
            .expect("bpe seed");
    let meta = harness::tok_structured(&seed[1..]);
    let tiny_json =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama/tokenizer.json");
    let round = |n: usize| {
        for i in 0..n {
            let tok = fado::loader::gguf::vocab::tokenizer_from_map(&meta).expect("seed tokenizer");
            tok.encode("Hello world, hello words", false)
                .expect("encode");
            if i % 20 == 0 {
                let tok =
                    fado::tokenizer::Tokenizer::from_file(&tiny_json).expect("tokenizer.json");
                tok.encode("Hello world, hello words", false)
                    .expect("encode");
            }
        }
    };
    round(500); // warm up allocator arenas
    let Some(before) = rss_kib() else {
        return; // not Linux: nothing to measure
    };
    round(6000);
    let after = rss_kib().unwrap_or(before);
    assert!(
        after < before + 3 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 6000 tokenizers: BPE cache leak is back"
    );
}

/// Renders `source` with one user message; the error text if it fails.
fn render_err(source: &str) -> String {
    let t = fado::chat_template::ChatTemplate::new(source).expect("template compiles");
    let msgs = [fado::chat_template::Message::new("user", "hi")];
    match t.render(&msgs, true, "<s>", "</s>") {
        Ok(out) => panic!("expected an error, rendered {} bytes", out.len()),
        Err(e) => e.to_string(),
    }
}

/// Found while writing the `chat_template` target: `tojson(indent=N)` built the N-space indent
/// string before writing anything, so a hostile template asked for a 100 GB allocation (an
/// abort, or the OOM killer) whatever the output cap. The indent is now capped at 64.
#[test]
fn tojson_huge_indent_is_an_error() {
    let e = render_err("{{ messages|tojson(indent=99999999999) }}");
    assert!(e.contains("indent"), "{e}");
    harness::chat_template(b"{{ 1|tojson(indent=99999999999) }}");
}

/// Same review: `tojson` collected a sequence before writing it, and minijinja's `[0] * n` is
/// lazy with n up to 10^8, so `([0] * 100000000)|tojson` allocated gigabytes of values before the
/// output cap could apply. Sequences are now streamed and the JSON text is capped at 16 MiB.
#[test]
fn tojson_huge_lazy_sequence_is_an_error() {
    let e = render_err("{{ ([0] * 100000000)|tojson }}");
    assert!(e.contains("limit"), "{e}");
}
