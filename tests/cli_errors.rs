//! Hostile inputs through the real `fado` binary: every one must end with a non-zero exit code,
//! no panic, and exactly one line on stderr that names the file, tensor or field at fault and
//! says what to do. The inputs are built in a scratch folder from the tiny-llama fixtures.

mod common;
use common::{fixtures, Scratch};

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const FADO: &str = env!("CARGO_BIN_EXE_fado");

fn scratch(name: &str) -> Scratch {
    common::scratch("cli-errors", name)
}

/// A copy of the sharded bf16 tiny-llama folder to break.
fn tiny_llama_copy(name: &str) -> Scratch {
    let d = scratch(name);
    for e in std::fs::read_dir(fixtures().join("tiny-llama")).expect("read fixture folder") {
        let p = e.expect("fixture entry").path();
        std::fs::copy(&p, d.join(p.file_name().expect("file name"))).expect("copy fixture");
    }
    d
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

/// A safetensors file's JSON header and data section.
fn st_split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header is JSON");
    (header, bytes[8 + n..].to_vec())
}

/// Reassemble a safetensors file with a new header (padded to 8 bytes, as writers do).
fn st_join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).expect("serialize header");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Rewrite one tensor's header entry in a shard.
fn edit_tensor(dir: &Path, shard: &str, tensor: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(shard);
    let (mut header, data) = st_split(&std::fs::read(&p).expect("read shard"));
    f(header.get_mut(tensor).expect("tensor in fixture shard"));
    std::fs::write(&p, st_join(&header, &data)).expect("write shard");
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("read config")).expect("config JSON");
    f(v.as_object_mut().expect("config object"));
    std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("serialize")).expect("write config");
}

/// Byte offset of the GGUF tensor-info `type` field of tensor `name` in the fixture: the name is
/// stored as a u64 length plus bytes, then n_dims (u32), the dims (u64 each), then the type (u32).
fn gguf_type_offset(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .expect("tensor info in fixture GGUF");
    let ndims_at = at + pat.len();
    let n_dims = u32::from_le_bytes(bytes[ndims_at..ndims_at + 4].try_into().expect("4 bytes"));
    ndims_at + 4 + 8 * n_dims as usize
}

struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Run `fado run` on a model with a short prompt (or stdin bytes when `prompt` is None).
fn run_fado(model: &Path, prompt: Option<&str>, stdin: Option<&[u8]>, extra: &[&str]) -> Outcome {
    let mut cmd = Command::new(FADO);
    cmd.arg("run")
        .arg("--model")
        .arg(model)
        .args(["--max-tokens", "2", "--temperature", "0"])
        .args(extra)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .env_remove("RUST_LOG")
        .env_remove("FADO_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = prompt {
        cmd.args(["--prompt", p]);
    }
    let mut child = cmd.spawn().expect("spawn fado");
    {
        let mut si = child.stdin.take().expect("stdin");
        if let Some(b) = stdin {
            si.write_all(b).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("wait for fado");
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Non-zero exit, no panic, exactly one stderr line `error: …` mentioning every part of `names`
/// (what is at fault) and at least one of `todo` (what to do).
#[track_caller]
fn assert_one_line_error(case: &str, o: &Outcome, names: &[&str], todo: &[&str]) {
    let err = o.stderr.trim_end();
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{case}: fado panicked:\n{err}"
    );
    assert!(
        matches!(o.code, Some(c) if c != 0),
        "{case}: exit code {:?}, expected a failure; stderr:\n{err}",
        o.code
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{case}: stderr should be one line, got {}:\n{err}",
        lines.len()
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{case}: {line:?}");
    for n in names {
        assert!(line.contains(n), "{case}: {line:?} should name {n:?}");
    }
    assert!(
        todo.iter().any(|t| line.contains(t)),
        "{case}: {line:?} should say what to do (one of {todo:?})"
    );
}

/// What to do about a damaged or inconsistent download.
const REDOWNLOAD: &[&str] = &["re-download", "download"];

#[test]
fn truncated_safetensors_shard_is_one_line_naming_the_file() {
    let d = tiny_llama_copy("st-truncated");
    let p = d.join(SHARD2);
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error("truncated shard", &o, &[SHARD2], REDOWNLOAD);
}

#[test]
fn safetensors_header_length_beyond_the_file_is_one_line() {
    let d = tiny_llama_copy("st-header-len");
    let p = d.join(SHARD1);
    let mut b = std::fs::read(&p).unwrap();
    let too_long = b.len() as u64 + 1000;
    b[..8].copy_from_slice(&too_long.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error("header length", &o, &[SHARD1, "header"], REDOWNLOAD);
}

#[test]
fn safetensors_tensor_with_the_wrong_shape_names_tensor_and_shapes() {
    let d = tiny_llama_copy("st-shape");
    // Same element count, so the file itself is consistent; only the model shape is wrong.
    let t = "model.layers.0.self_attn.q_proj.weight";
    edit_tensor(&d, SHARD1, t, |e| e["shape"] = serde_json::json!([64, 256]));
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error(
        "wrong shape",
        &o,
        &[t, "[64, 256]", "[128, 128]"],
        &["config", "download", "convert"],
    );
}

#[test]
fn safetensors_unsupported_and_unknown_dtypes_name_the_tensor() {
    let t = "model.layers.0.self_attn.k_proj.weight";
    // I16 is a safetensors dtype Fado does not load (same size as BF16, so the file is
    // consistent); "X16" is no safetensors dtype at all.
    for dt in ["I16", "X16"] {
        let d = tiny_llama_copy(&format!("st-dtype-{dt}"));
        edit_tensor(&d, SHARD1, t, |e| e["dtype"] = serde_json::json!(dt));
        let o = run_fado(&d, Some("hi"), None, &[]);
        assert_one_line_error(
            &format!("dtype {dt}"),
            &o,
            &[SHARD1, dt],
            &["F32, F16 or BF16", "convert", "download"],
        );
        if dt == "I16" {
            assert_one_line_error(&format!("dtype {dt}"), &o, &[t], &["F32"]);
        }
    }
}

#[test]
fn missing_shard_named_in_the_index_is_one_line() {
    let d = tiny_llama_copy("st-missing-shard");
    std::fs::remove_file(d.join(SHARD2)).unwrap();
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error("missing shard", &o, &[SHARD2], REDOWNLOAD);
}

#[test]
fn config_without_hidden_size_names_the_field() {
    let d = tiny_llama_copy("cfg-hidden");
    edit_config(&d, |c| {
        c.remove("hidden_size");
    });
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error(
        "no hidden_size",
        &o,
        &["config.json", "hidden_size"],
        &["add it", "original"],
    );
}

#[test]
fn config_with_unsupported_rope_scaling_names_the_type() {
    let d = tiny_llama_copy("cfg-rope");
    edit_config(&d, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        );
    });
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error(
        "rope yarn",
        &o,
        &["config.json", "yarn"],
        &["supported: linear, llama3"],
    );
}

#[test]
fn config_with_unknown_architecture_names_it() {
    let d = tiny_llama_copy("cfg-arch");
    edit_config(&d, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["GPTNeoXForCausalLM"]),
        );
    });
    let o = run_fado(&d, Some("hi"), None, &[]);
    assert_one_line_error(
        "architecture",
        &o,
        &["config.json", "GPTNeoXForCausalLM"],
        &["supported: LlamaForCausalLM"],
    );
}

#[test]
fn truncated_gguf_is_one_line_naming_the_file() {
    let d = scratch("gguf-truncated");
    let b = std::fs::read(fixtures().join("tiny-llama-f16.gguf")).unwrap();
    // Cut inside the metadata, inside the tensor infos region, and inside the tensor data.
    for (i, cut) in [100, 20_000, b.len() / 2, b.len() - 1]
        .into_iter()
        .enumerate()
    {
        let p = d.join(format!("cut{i}.gguf"));
        std::fs::write(&p, &b[..cut]).unwrap();
        let o = run_fado(&p, Some("hi"), None, &[]);
        assert_one_line_error(
            &format!("gguf cut at {cut}"),
            &o,
            &[&format!("cut{i}.gguf")],
            REDOWNLOAD,
        );
    }
}

#[test]
fn gguf_tensor_of_unknown_or_unsupported_type_names_the_tensor_and_type() {
    let d = scratch("gguf-type");
    let fixture = std::fs::read(fixtures().join("tiny-llama-f16.gguf")).unwrap();
    let at = gguf_type_offset(&fixture, "output_norm.weight");
    // 99 is no ggml type; 6 is ggml's Q5_0, which Fado does not run.
    for (ty, named) in [(99u32, "type 99 (no ggml type"), (6, "Q5_0 (6)")] {
        let mut b = fixture.clone();
        b[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        let p = d.join(format!("type-{ty}.gguf"));
        std::fs::write(&p, &b).unwrap();
        let o = run_fado(&p, Some("hi"), None, &[]);
        assert_one_line_error(
            &format!("gguf type {ty}"),
            &o,
            &[&format!("type-{ty}.gguf"), "output_norm.weight", named],
            &["re-quantize"],
        );
    }
}

#[test]
fn prompt_longer_than_ctx_is_one_line() {
    let long = "hello world ".repeat(40);
    let o = run_fado(
        &fixtures().join("tiny-llama"),
        Some(&long),
        None,
        &["--ctx", "16"],
    );
    assert_one_line_error("prompt > ctx", &o, &["16"], &["--ctx", "shorten"]);
}

#[test]
fn invalid_utf8_on_stdin_is_one_line() {
    let o = run_fado(
        &fixtures().join("tiny-llama"),
        None,
        Some(b"hello \xff\xfe world"),
        &[],
    );
    assert_one_line_error("stdin utf-8", &o, &["UTF-8", "byte 6"], &["pass UTF-8"]);
}

#[test]
fn nonexistent_model_path_is_one_line() {
    let d = scratch("missing");
    let p = d.join("no-such-model.gguf");
    let o = run_fado(&p, Some("hi"), None, &[]);
    assert_one_line_error(
        "missing model",
        &o,
        &["no-such-model.gguf"],
        &["--model", "check the path"],
    );
}
