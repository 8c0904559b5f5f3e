//! The C ABI from C: `examples/c/chat.c` and `tests/hostile.c` compiled with the system C
//! compiler against the committed `include/fado.h` and `libfado.so`, run on the tiny fixture
//! model. The example's greedy output must equal `fado run --temperature 0`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>`: where this test runs from, where `libfado.so` and `fado` are built.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// Build `libfado.so` and the `fado` binary. Cargo does not build a cdylib for integration
/// tests, so this runs cargo once more; `--tests` keeps the dev-dependencies' features, so the
/// units `cargo test` already built are reused and only the C library is linked.
fn build() -> PathBuf {
    let dir = profile_dir();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args([
        "build",
        "-p",
        "fado",
        "-p",
        "fado-capi",
        "--lib",
        "--bins",
        "--tests",
    ]);
    if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo");
    assert!(st.success(), "cargo build of libfado failed");
    assert!(
        dir.join("libfado.so").is_file(),
        "no libfado.so in {}",
        dir.display()
    );
    dir
}

/// Compile a C file against include/fado.h and libfado.so (found through the rpath).
fn compile(src: &Path, lib_dir: &Path, out: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(src)
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lfado")
        .status()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(st.success(), "{cc} failed on {}", src.display());
}

fn tiny_model() -> PathBuf {
    root().join("tests/fixtures/tiny-llama")
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn c_example_and_hostile_calls() {
    let lib = build();
    let tmp = std::env::temp_dir().join(format!("fado-c-api-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let chat = tmp.join("chat");
    compile(&root().join("examples/c/chat.c"), &lib, &chat);
    let hostile = tmp.join("hostile");
    compile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile.c"),
        &lib,
        &hostile,
    );

    // Hostile calls: each check in hostile.c holds, nothing crashes.
    let out = Command::new(&hostile)
        .arg(tiny_model())
        .output()
        .expect("run hostile");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hostile.c failed:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));

    // Greedy output of the C example equals `fado run --temperature 0`, raw and as a chat turn.
    let prompt = "The capital of Portugal is";
    for chat_mode in [false, true] {
        let mut c = Command::new(&chat);
        c.arg(tiny_model()).args(["-t", "0", "-n", "24"]);
        if !chat_mode {
            c.arg("--raw");
        }
        let from_c = stdout_of(c.arg(prompt));
        let mut f = Command::new(lib.join("fado"));
        f.args([
            "run",
            "--temperature",
            "0",
            "-n",
            "24",
            "--prompt",
            prompt,
            "--model",
        ])
        .arg(tiny_model());
        if chat_mode {
            f.arg("--chat");
        }
        // The tiny model's random weights can emit a NUL byte, which a C string cannot carry:
        // the ABI drops it from pieces (documented in fado.h).
        let from_cli = stdout_of(&mut f).replace('\0', "");
        assert!(!from_c.trim().is_empty(), "the C example generated nothing");
        assert_eq!(from_c, from_cli, "chat: {chat_mode}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
