//! Tokenizer tests against ids Hugging Face produced (tests/fixtures/tokenizer-cases.json,
//! smollm2-expected.json, tiny-llama-expected.json, spm-synthetic/expected.json): through
//! tokenizer.json and through the tokenizer rebuilt from GGUF metadata (byte-level BPE and
//! SentencePiece), plus the streaming detokenizer. CPU only.

mod common;
mod gguf_meta;

use common::{default_model, fixture_json, fixtures, json_ids};
use gguf_meta::GgufMeta;

use fado::loader::gguf::vocab::{tokenizer_from_map, tokenizer_from_metadata, Meta};
use fado::tokenizer::{merges_from_scores, Tokenizer};
use serde_json::Value;

fn tiny_json() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("tiny-llama/tokenizer.json")).expect("tiny tokenizer.json")
}

fn from_gguf(path: &std::path::Path) -> Tokenizer {
    let meta = GgufMeta::read(path);
    tokenizer_from_metadata(&|k| meta.get(k)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn smollm2() -> Tokenizer {
    from_gguf(&default_model())
}

/// Stream every id through a StreamDecoder; the pieces must join to `decode(ids)`.
fn stream_all(tok: &Tokenizer, ids: &[u32]) -> String {
    let mut d = tok.stream_decoder();
    let mut s: String = ids.iter().map(|&id| d.push(id)).collect();
    s.push_str(&d.finish());
    s
}

/// Checks one fixture column: ids without / with special tokens, token spellings, decode,
/// streaming decode.
fn check_column(tok: &Tokenizer, column: &str, require_special: bool) {
    let cases = fixture_json("tokenizer-cases.json");
    let cases = cases["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8, "fixture has too few cases");
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = &case[column];
        assert!(want.is_object(), "case {text:?} has no column {column}");
        let got = tok.encode(text, false).expect("encode");
        assert_eq!(got, json_ids(&want["ids"]), "{column}: ids of {text:?}");
        if let Some(tokens) = want["tokens"].as_array() {
            let got_tokens: Vec<String> = got
                .iter()
                .map(|&id| tok.id_to_token(id).unwrap_or_default())
                .collect();
            let want_tokens: Vec<&str> = tokens.iter().map(|t| t.as_str().unwrap_or("")).collect();
            assert_eq!(got_tokens, want_tokens, "{column}: tokens of {text:?}");
        }
        if require_special {
            let with = tok.encode(text, true).expect("encode");
            assert_eq!(
                with,
                json_ids(&want["ids_with_special_tokens"]),
                "{column}: ids+special of {text:?}"
            );
        }
        let decoded = want["decoded"].as_str().expect("decoded");
        assert_eq!(tok.decode(&got), decoded, "{column}: decode of {text:?}");
        assert_eq!(
            stream_all(tok, &got),
            decoded,
            "{column}: streamed decode of {text:?}"
        );
    }
}

#[test]
fn tokenizer_json_matches_hf_ids() {
    let tok = tiny_json();
    check_column(&tok, "tiny_tokenizer_json", true);
    assert_eq!(tok.bos_id(), Some(0));
    assert!(
        tok.add_bos_token(),
        "tiny tokenizer.json's post-processor prepends <s>"
    );
    let mut eos = tok.eos_ids().to_vec();
    eos.sort();
    assert_eq!(
        eos,
        vec![1, 3],
        "eos: tokenizer_config's <|im_end|> + generation_config's [1, 3]"
    );
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(2));
    assert_eq!(tok.vocab_size(), 512);
}

#[test]
fn tokenizer_json_matches_model_prompts() {
    let tok = tiny_json();
    let exp = fixture_json("tiny-llama-expected.json");
    for p in exp["prompts"].as_array().expect("prompts") {
        let want = json_ids(&p["ids"]);
        let got = match p["source_text"].as_str() {
            Some(text) => tok.encode(text, true).expect("encode"),
            None => tok.encode("", true).expect("encode"),
        };
        // The fixture truncates long prompts to a fixed length: compare the prefix.
        assert!(
            got.len() >= want.len(),
            "{}: {got:?} shorter than {want:?}",
            p["name"]
        );
        assert_eq!(&got[..want.len()], &want[..], "prompt {}", p["name"]);
    }
    let chat = &exp["chat_example"];
    let got = tok
        .encode(chat["rendered"].as_str().expect("rendered"), false)
        .expect("encode");
    assert_eq!(got, json_ids(&chat["ids"]), "chat example ids");
}

#[test]
fn tiny_gguf_matches_hf_ids() {
    let tok = from_gguf(&fixtures().join("tiny-llama-f16.gguf"));
    check_column(&tok, "tiny_gguf_transformers", true);
    assert!(tok.add_bos_token(), "tiny GGUF says add_bos_token = true");
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_ids(), &[3]);
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
}

#[test]
fn smollm2_gguf_matches_hf_ids() {
    let tok = smollm2();
    check_column(&tok, "smollm2_gguf_transformers", true);
    // llama.cpp's 'smollm' pre-tokenizer (digits split first) gives the same ids on every case.
    check_column(&tok, "smollm2_llamacpp_pretokenizer", false);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.eos_token(), Some("<|im_end|>"));
    assert!(
        !tok.add_bos_token(),
        "SmolLM2's GGUF says add_bos_token = false"
    );
    for (i, name) in [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<repo_name>",
        "<empty_output>",
    ]
    .iter()
    .enumerate()
    {
        let want = if i < 4 { i as u32 } else { 16 };
        assert_eq!(tok.token_to_id(name), Some(want), "{name}");
        assert!(tok.is_special(want), "{name} is a control token");
    }
}

#[test]
fn smollm2_prompt_ids_match_transformers() {
    let tok = smollm2();
    let exp = fixture_json("smollm2-expected.json");
    assert_eq!(exp["tokenizer"]["add_bos_token"], Value::Bool(false));
    let mut n = 0;
    for p in exp["prompts"].as_array().expect("prompts") {
        let text = p["rendered_prompt"].as_str().expect("rendered_prompt");
        let got = tok.encode(text, true).expect("encode");
        assert_eq!(got, json_ids(&p["prompt_ids"]), "prompt {:?}", p["text"]);
        assert_eq!(tok.decode(&got), text);
        let want_eos = json_ids(&p["eos_token_ids"]);
        assert_eq!(tok.eos_ids(), &want_eos[..]);
        // The greedy continuation decodes to transformers' text, token by token too.
        let greedy = json_ids(&p["greedy_tokens"]);
        let greedy_text = p["greedy_text"].as_str().expect("greedy_text");
        assert_eq!(tok.decode(&greedy), greedy_text);
        assert_eq!(stream_all(&tok, &greedy), greedy_text);
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn sentencepiece_gguf_matches_hf_ids() {
    let tok = from_gguf(&fixtures().join("spm-synthetic/tokenizer.gguf"));
    let exp = fixture_json("spm-synthetic/expected.json");
    assert_eq!(
        tok.vocab_size() as u64,
        exp["vocab_size"].as_u64().expect("vocab_size")
    );
    assert!(tok.add_bos_token());
    assert_eq!(tok.bos_token(), exp["bos_token"].as_str());
    for case in exp["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let got = tok.encode(text, false).expect("encode");
        assert_eq!(got, json_ids(&case["ids"]), "ids of {text:?}");
        let got_tokens: Vec<String> = got
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap_or_default())
            .collect();
        let want_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().unwrap_or(""))
            .collect();
        assert_eq!(got_tokens, want_tokens, "tokens of {text:?}");
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            json_ids(&case["ids_with_special_tokens"]),
            "ids+special of {text:?}"
        );
        let decoded = case["decoded"].as_str().expect("decoded");
        assert_eq!(tok.decode(&got), decoded, "decode of {text:?}");
        assert_eq!(
            stream_all(&tok, &got),
            decoded,
            "streamed decode of {text:?}"
        );
    }
}

/// transformers' `generate_merges`: best score first; equal scores → longer left piece, then
/// longer right piece; remaining ties in vocabulary order.
#[test]
fn merges_from_scores_follow_transformers_order() {
    let tokens = ["a", "b", "c", "ab", "bc", "abc", "ca", "cab"];
    let scores = [0.0, 0.0, 0.0, -1.0, -1.0, -2.0, -1.0, -3.0];
    let got = merges_from_scores(&tokens, &scores);
    let want = [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("ab", "c"),
        ("a", "bc"),
        ("ca", "b"),
        ("c", "ab"),
    ];
    let got: Vec<(&str, &str)> = got.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
    assert_eq!(got, want);
}

#[test]
fn stream_decoder_holds_partial_characters() {
    let tok = tiny_json();
    // 👋 is four byte-level tokens in the tiny vocabulary: nothing comes out until the last.
    let wave = tok.encode("👋", false).expect("encode");
    assert_eq!(wave.len(), 4, "{wave:?}");
    let mut d = tok.stream_decoder();
    for &id in &wave[..3] {
        assert_eq!(d.push(id), "", "half an emoji must not be emitted");
    }
    assert_eq!(d.pending_bytes(), 3);
    assert_eq!(d.push(wave[3]), "👋");
    assert_eq!(d.pending_bytes(), 0);

    // Flag emoji (two regional indicators) and accents split across tokens, piece by piece.
    let text = "Olá, mundo! 👋🇵🇹 日本語 naïve";
    let all = tok.encode(text, false).expect("encode");
    let mut d = tok.stream_decoder();
    let mut out = String::new();
    let mut emitted_pieces = 0;
    for &id in &all {
        let piece = d.push(id);
        assert!(
            !piece.contains('\u{FFFD}'),
            "no replacement characters mid-stream: {piece:?}"
        );
        if !piece.is_empty() {
            emitted_pieces += 1;
        }
        out.push_str(&piece);
        assert!(
            text.starts_with(&out),
            "stream so far {out:?} is not a prefix of {text:?}"
        );
    }
    assert_eq!(d.finish(), "");
    assert_eq!(out, text);
    assert!(
        emitted_pieces < all.len(),
        "some tokens must have been held back"
    );

    // Truncated: flushing an incomplete character yields U+FFFD.
    let mut d = tok.stream_decoder();
    assert_eq!(d.push(wave[0]) + &d.push(wave[1]), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn stream_decoder_sentencepiece_bytes_and_leading_space() {
    let tok = from_gguf(&fixtures().join("spm-synthetic/tokenizer.gguf"));
    let id = |t: &str| {
        tok.token_to_id(t)
            .unwrap_or_else(|| panic!("{t} not in vocab"))
    };
    // "á" as two byte-fallback tokens.
    let mut d = tok.stream_decoder();
    assert_eq!(
        d.push(id("▁hello")),
        "hello",
        "leading space stripped at the start of a text"
    );
    assert_eq!(d.push(id("<0xC3>")), "");
    assert_eq!(d.push(id("<0xA1>")), "á");
    assert_eq!(d.push(id("▁world")), " world");
    // 😀 = F0 9F 98 80
    for b in ["<0xF0>", "<0x9F>", "<0x98>"] {
        assert_eq!(d.push(id(b)), "");
    }
    assert_eq!(d.push(id("<0x80>")), "😀");
    // A byte that can never start a character is replaced at once, not held.
    assert_eq!(d.push(id("<0xFF>")), "\u{FFFD}");
    assert_eq!(d.push(id("a")), "a");
    assert_eq!(d.finish(), "");

    // Continuing a prompt: the space is part of the continuation.
    let mut d = tok.stream_decoder().continuing();
    assert_eq!(d.push(id("▁world")), " world");

    // Special tokens can be left out of streamed text.
    let mut d = tok.stream_decoder().skip_special_tokens(true);
    assert_eq!(d.push(id("▁hello")) + &d.push(id("</s>")), "hello");
    let mut d = tok.stream_decoder();
    assert_eq!(d.push(id("▁hello")) + &d.push(id("</s>")), "hello</s>");
}

#[test]
fn gguf_metadata_errors_are_named() {
    let none = |_: &str| -> Option<Meta<'static>> { None };
    let err = tokenizer_from_metadata(&none)
        .expect_err("no metadata")
        .to_string();
    assert!(err.contains("tokenizer.ggml.model"), "{err}");

    let bert = |k: &str| -> Option<Meta<'static>> {
        match k {
            "tokenizer.ggml.model" => Some(Meta::Str("bert")),
            "tokenizer.ggml.tokens" => Some(Meta::StrArray(vec!["a", "b"])),
            _ => None,
        }
    };
    let err = tokenizer_from_metadata(&bert)
        .expect_err("bert")
        .to_string();
    assert!(
        err.contains("\"bert\"") && err.contains("not supported"),
        "{err}"
    );

    let bad_bos = |k: &str| -> Option<Meta<'static>> {
        match k {
            "tokenizer.ggml.model" => Some(Meta::Str("gpt2")),
            "tokenizer.ggml.tokens" => Some(Meta::StrArray(vec!["a", "b"])),
            "tokenizer.ggml.merges" => Some(Meta::StrArray(vec!["a b"])),
            "tokenizer.ggml.bos_token_id" => Some(Meta::U32(7)),
            _ => None,
        }
    };
    let err = tokenizer_from_metadata(&bad_bos)
        .expect_err("bos out of range")
        .to_string();
    assert!(err.contains("bos_token_id") && err.contains('7'), "{err}");

    let err = Tokenizer::from_file(fixtures().join("no-such/tokenizer.json"))
        .expect_err("missing")
        .to_string();
    assert!(err.contains("no-such"), "{err}");
}

#[test]
fn tokenizer_and_template_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<fado::chat_template::ChatTemplate>();
}

/// The runtime's own GGUF loader feeds the tokenizer the same metadata as the test reader.
#[test]
fn tokenizer_from_loader_metadata() {
    let path = fixtures().join("tiny-llama-f16.gguf");
    let file = fado::loader::gguf::GgufFile::open(&path).expect("open GGUF");
    let tok = tokenizer_from_map(file.metadata()).expect("tokenizer from loader metadata");
    let reference = from_gguf(&path);
    for text in [
        "<|im_start|>user\nOlá 👋<|im_end|>",
        "123456789012345 and 3.14159",
        "",
    ] {
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            reference.encode(text, true).expect("encode"),
            "{text:?}"
        );
    }
    assert_eq!(tok.vocab_size(), reference.vocab_size());
    assert_eq!(tok.chat_template(), reference.chat_template());
}
