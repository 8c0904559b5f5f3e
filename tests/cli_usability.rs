//! `fado chat`, `run` and `devices` through the real binary, as a new user meets them: commands are
//! never sent to the model, /reset confirms, a conversation that outgrows the context drops its
//! oldest turns with a note instead of jamming, --ctx limits name what fits, and no Mesa/Wayland
//! noise without a runtime dir.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const FADO: &str = env!("CARGO_BIN_EXE_fado");

fn tiny_llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

/// Run `fado` with `cmd` (arguments after the binary) and `input` on stdin.
fn fado_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fado");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait for fado")
}

/// Run `fado chat` on the tiny model with `input` on stdin; returns (exit ok, stdout, stderr).
fn chat(input: &str, extra: &[&str]) -> (bool, String, String) {
    let out = fado_with_stdin(
        Command::new(FADO)
            .arg("chat")
            .arg("--model")
            .arg(tiny_llama())
            .args(["--temperature", "0", "--max-tokens", "6"])
            .args(extra),
        input.as_bytes(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The generation summaries on stderr (one per reply).
fn replies(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("[prompt:")).count()
}

#[test]
fn chat_commands_are_not_sent_to_the_model() {
    let (ok, _, err) = chat("/help\n/nonsense\nhello\n/reset\n/exit\nnot read\n", &[]);
    assert!(ok, "{err}");
    assert_eq!(replies(&err), 1, "only `hello` is a message: {err}");
    assert!(err.contains("unknown command /nonsense"), "{err}");
    assert!(err.contains("/reset clears the conversation"), "{err}");
    assert!(err.contains("(conversation cleared)"), "{err}");
}

#[test]
fn a_full_context_drops_the_oldest_turns_with_a_note_and_keeps_answering() {
    let turns = "hello there\nhello again and again\nmore words here please\nand one more\n";
    let (ok, _, err) = chat(turns, &["--ctx", "40"]);
    assert!(ok, "{err}");
    assert_eq!(replies(&err), 4, "every turn answered: {err}");
    assert!(err.contains("dropped the oldest"), "{err}");
    assert!(!err.contains("error:"), "{err}");
}

#[test]
fn a_message_longer_than_the_context_is_refused_and_the_chat_goes_on() {
    let long = "word ".repeat(200);
    let (ok, _, err) = chat(&format!("{long}\nhi\n"), &["--ctx", "40"]);
    assert!(ok, "{err}");
    assert!(err.contains("raise --ctx"), "{err}");
    assert_eq!(replies(&err), 1, "{err}");
}

#[test]
fn no_runtime_dir_noise_without_xdg_runtime_dir() {
    let out = Command::new(FADO)
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .expect("run fado devices");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend"));
}

/// `fado run` on the tiny model with `args`; returns (exit ok, stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(FADO)
        .arg("run")
        .arg("--model")
        .arg(tiny_llama())
        .args(["--temperature", "0", "--max-tokens", "2", "--prompt", "hi"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run fado");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_huge_ctx_names_what_fits_and_the_trained_context() {
    let (ok, err) = run(&["--ctx", "100000000"]);
    assert!(!ok);
    assert!(
        err.contains("at most") && err.contains("tokens fit"),
        "{err}"
    );
    assert!(err.contains("trained for 256"), "{err}");
    // The limit is a number that really fits: running with it is not refused for memory.
    let fit: usize = err
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a token count in the message");
    assert!(fit < 100_000_000, "{err}");
}

#[test]
fn a_ctx_beyond_the_trained_context_warns() {
    let (ok, err) = run(&["--ctx", "300"]);
    assert!(ok, "{err}");
    assert!(err.contains("beyond the 256 tokens"), "{err}");
    let (ok, err) = run(&["--ctx", "200"]);
    assert!(ok, "{err}");
    assert!(!err.contains("beyond"), "{err}");
}

#[test]
fn kv_type_takes_f16_or_f32_and_names_them_when_wrong() {
    for kv in ["f16", "f32", "F32"] {
        let (ok, err) = run(&["--kv-type", kv]);
        assert!(ok, "--kv-type {kv}: {err}");
    }
    let (ok, err) = run(&["--kv-type", "q4"]);
    assert!(!ok);
    assert!(err.contains("`q4`") && err.contains("f16 or f32"), "{err}");
}

/// Every weight type `fado bench --synthetic` lists works on the small preset, whose rows of
/// 576 are not whole K-quant blocks: those matrices fall back as `fado quantize` does, said in
/// one line.
#[test]
fn every_synthetic_dtype_benches_on_the_small_preset() {
    for dtype in fado::tensor::DType::WEIGHT_TYPES {
        let out = Command::new(FADO)
            .args([
                "bench",
                "--synthetic",
                "smollm2-135m",
                "--dtype",
                dtype.name(),
            ])
            .args([
                "--prompt-tokens",
                "3",
                "--gen-tokens",
                "2",
                "--reps",
                "1",
                "--json",
            ])
            .env_remove("RUST_LOG")
            .output()
            .expect("run fado bench");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dtype}: {err}");
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("bench --json prints one object");
        assert!(
            v["tg_tokens_per_s"]["mean"]
                .as_f64()
                .is_some_and(|t| t > 0.0),
            "{dtype}: {v}"
        );
        let fell_back = err.lines().filter(|l| l.contains("fell back")).count();
        let expected = usize::from(dtype.block_len() == 256);
        assert_eq!(fell_back, expected, "{dtype}: {err}");
    }
}

#[test]
fn quant_on_an_already_quantized_model_says_it_is_not_applied() {
    // The default model: every matrix Q4_1 (scripts/test.sh fetches it).
    let default = std::env::var("FADO_DEFAULT_MODEL")
        .expect("FADO_DEFAULT_MODEL (scripts/test.sh sets it after fetching the default model)");
    let out = Command::new(FADO)
        .arg("run")
        .arg("--model")
        .arg(&default)
        .args(["--quant", "q4_0", "--prompt", "hi", "--max-tokens", "1"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run fado");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("already block-quantized"), "{err}");
    // A float model is quantized as asked, without that note.
    let (ok, err) = run(&["--quant", "q8_0"]);
    assert!(ok, "{err}");
    assert!(!err.contains("already block-quantized"), "{err}");
}

#[test]
fn small_cli_rules_hold() {
    // -n 0 is refused as the server refuses max_tokens 0.
    let (ok, err) = run(&["--max-tokens", "0"]);
    assert!(!ok && err.contains("--max-tokens"), "{err}");
    // A negative value reaches validation, which names the range.
    let (ok, err) = run(&["--min-p", "-0.5"]);
    assert!(!ok && err.contains("min_p = -0.5"), "{err}");
    // bench --dtype without --synthetic is an error, not ignored.
    let out = Command::new(FADO)
        .args(["bench", "--dtype", "q4_k"])
        .output()
        .expect("run fado bench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--synthetic"),
        "{err}"
    );
    // The prompt on stdin loses its final line break.
    let out = fado_with_stdin(
        Command::new(FADO)
            .arg("run")
            .arg("--model")
            .arg(tiny_llama())
            .args(["--max-tokens", "1", "--json"]),
        b"hello\n",
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let with_newline = v["prompt_tokens"].as_array().expect("prompt ids").len();
    let out = Command::new(FADO)
        .arg("run")
        .arg("--model")
        .arg(tiny_llama())
        .args(["--max-tokens", "1", "--json", "--prompt", "hello"])
        .output()
        .expect("fado run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        v["prompt_tokens"].as_array().expect("prompt ids").len(),
        with_newline
    );
}

#[test]
fn quantize_names_the_missing_folder_and_input() {
    let out = Command::new(FADO)
        .arg("quantize")
        .arg(tiny_llama())
        .arg("/nonexistent-fado-dir/out.gguf")
        .args(["--type", "q8_0"])
        .output()
        .expect("run fado quantize");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("output folder /nonexistent-fado-dir does not exist"),
        "{err}"
    );
    assert!(!err.contains(".part"), "{err}");
    let out = Command::new(FADO)
        .args([
            "quantize",
            "/nonexistent-fado-model",
            "/tmp/x.gguf",
            "--type",
            "q8_0",
        ])
        .output()
        .expect("run fado quantize");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("check the input path") && !err.contains("--model"),
        "{err}"
    );
}
