#!/usr/bin/env bash
# Fuzz smoke run for CI: replays the saved crash inputs, then builds every libFuzzer target in
# fuzz/ and runs each for a bounded time. Exits non-zero on any crash, hang (>10 s per input) or
# out-of-memory (>2 GiB RSS); the input that failed is left under fuzz/artifacts/<target>/ —
# add it to tests/fixtures/fuzz/<target>/ with the fix.
#
# Everything runs on the stable toolchain and needs nothing beyond cargo and a C++ compiler
# (libfuzzer-sys compiles libFuzzer): no nightly, no cargo-fuzz. The targets are built with
# plain `cargo build` and the RUSTFLAGS that `cargo fuzz build -a -s none` sets (cargo-fuzz
# 0.13's src/project.rs), and the binaries are run directly. The fuzz/ crate is still an
# ordinary cargo-fuzz project: with cargo-fuzz and nightly installed,
# `cargo +nightly fuzz run -a -s none --fuzz-dir fuzz <target>` works as before (fuzz/README.md).
# To build with another toolchain here, set RUSTUP_TOOLCHAIN (e.g. nightly).
#
# Environment: FUZZ_QUICK=1 (faster build, slower fuzzers: see below), FUZZ_SECS (seconds per
# target, default 30), FUZZ_TARGETS (space-separated
# subset), FUZZ_TARGET_DIR (cargo target dir for the instrumented builds, default fuzz/target;
# keep it apart from the main one, the flags differ).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECS:-30}"
# A new target: a `harness::<name>` function in fuzz/harness.rs, fuzz/fuzz_targets/<name>.rs
# (copy any other target), its [[bin]] in fuzz/Cargo.toml, seeds under fuzz/corpus/<name>/, a
# replay test in tests/fuzz_regressions.rs, and its name in this list.
read -r -a TARGETS <<<"${FUZZ_TARGETS:-gguf safetensors hf_config gguf_tokenizer chat_template http_body}"

echo "== fuzz.sh: regression inputs"
cargo test --quiet --test fuzz_regressions

TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
# An explicit --target keeps RUSTFLAGS away from build scripts and proc macros (only the code
# that runs in the fuzzer is instrumented), as cargo-fuzz does.
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

# What `cargo fuzz build -a -s none` passes (cargo-fuzz 0.13.2, release mode): SanitizerCoverage
# with inline 8-bit counters, the PC table and compare tracing (libFuzzer's feedback);
# `--cfg fuzzing`; no branch folding (keeps the branches the coverage sees); stack-depth
# tracing on Linux; -Cdebug-assertions (-a: integer overflow checks and debug_assert! on); one
# codegen unit (the sancov pass otherwise blocks ThinLTO imports: ~3x slower code). No
# sanitizer (-s none): the code under test is safe Rust apart from the memory maps, libFuzzer
# still catches panics, timeouts and RSS over the limit, and runs ~2x faster than with ASan.
RUSTFLAGS_FUZZ=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
)
case "$TRIPLE" in
*-linux-*) RUSTFLAGS_FUZZ+=(-Cllvm-args=-sanitizer-coverage-stack-depth) ;;
esac
RUSTFLAGS_FUZZ+=(-Cdebug-assertions)
# FUZZ_QUICK=1 (CI's smoke run): opt-level 1 and the default codegen units — the cold build
# (every dependency instrumented) is the step's cost, the fuzzers run slower but 10 s is a
# smoke test either way. Otherwise cargo-fuzz's settings: opt-level 3, one codegen unit.
PROFILE=()
if [ "${FUZZ_QUICK:-0}" = 1 ]; then
    PROFILE=(--config 'profile.release.opt-level=1')
else
    RUSTFLAGS_FUZZ+=(-Ccodegen-units=1)
fi

echo "== fuzz.sh: building targets ($(rustc --version), $TRIPLE)"
# Any RUSTFLAGS from the environment go last, so they win (cargo-fuzz does the same).
# debug="line-tables-only": file:line in panic backtraces, as cargo-fuzz sets it.
RUSTFLAGS="${RUSTFLAGS_FUZZ[*]}${RUSTFLAGS:+ $RUSTFLAGS}" \
    cargo build --manifest-path fuzz/Cargo.toml --release --target "$TRIPLE" \
    --config 'profile.release.debug="line-tables-only"' "${PROFILE[@]}" --target-dir "$TARGET_DIR" \
    "${TARGETS[@]/#/--bin=}"
BIN_DIR="$TARGET_DIR/$TRIPLE/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/fado-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${TARGETS[@]}"; do
    echo "== fuzz.sh: $t for ${SECS}s"
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    # New inputs go to the scratch corpus; the committed seeds (second dir) are only read.
    # A crashing, hanging or over-allocating input is written to fuzz/artifacts/<target>/.
    if ! "$BIN_DIR/$t" "$work/$t" "fuzz/corpus/$t" \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" 2>"$work/$t.log"; then
        failed+=("$t")
        tail -n 60 "$work/$t.log"
    else
        grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "$work/$t.log" || true
    fi
done
if ((${#failed[@]})); then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)"
    exit 1
fi
echo "fuzz.sh: all targets clean"
