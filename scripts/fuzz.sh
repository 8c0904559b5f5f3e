#!/usr/bin/env bash
# Fuzz smoke run for CI: replays the saved crash inputs on stable, then runs every cargo-fuzz
# target (fuzz/) for a bounded time on nightly. Exits non-zero on any crash, hang (>10 s per
# input) or out-of-memory (>2 GiB RSS); the input that failed is left under
# fuzz/artifacts/<target>/ — add it to tests/fixtures/fuzz/<target>/ with the fix.
#
# It installs what it needs when it can: the nightly toolchain through rustup (when rustup is
# there) and cargo-fuzz through `cargo install`. Without them (and no way to install them) only
# the regression tests run, and the script says so.
#
# Environment: FUZZ_SECS (seconds per target, default 30), FUZZ_TARGETS (space-separated
# subset), FUZZ_TARGET_DIR (cargo target dir for the nightly builds, default fuzz/target; keep
# it apart from the stable one, the flags differ).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECS:-30}"
# A new target: a `harness::<name>` function in fuzz/harness.rs, fuzz/fuzz_targets/<name>.rs
# (copy any other target), its [[bin]] in fuzz/Cargo.toml, seeds under fuzz/corpus/<name>/, a
# replay test in tests/fuzz_regressions.rs, and its name in this list.
TARGETS=(${FUZZ_TARGETS:-gguf safetensors hf_config gguf_tokenizer chat_template http_body})

echo "== fuzz.sh: regression inputs (stable)"
cargo test --quiet --test fuzz_regressions

if ! cargo +nightly --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        echo "== fuzz.sh: installing the nightly toolchain (rustup)"
        rustup toolchain install nightly --profile minimal || true
    fi
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "fuzz.sh: SKIPPED fuzzing: no nightly toolchain and none could be installed" \
             "(needs rustup: rustup toolchain install nightly); ran the regression tests only"
        exit 0
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== fuzz.sh: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz.sh: SKIPPED fuzzing: cargo-fuzz could not be installed" \
             "(cargo install cargo-fuzz); ran the regression tests only"
        exit 0
    fi
fi

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
# -a: debug assertions (overflow checks) on; -s none: no sanitizer (the code under test is
# safe Rust; libFuzzer still catches panics, timeouts and RSS over the limit).
FLAGS=(-a -s none --fuzz-dir fuzz)
echo "== fuzz.sh: building targets (nightly)"
cargo +nightly fuzz build "${FLAGS[@]}"

work="$(mktemp -d "${TMPDIR:-/tmp}/fado-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${TARGETS[@]}"; do
    echo "== fuzz.sh: $t for ${SECS}s"
    mkdir -p "$work/$t"
    # New inputs go to the scratch corpus; the committed seeds (second dir) are only read.
    if ! cargo +nightly fuzz run "${FLAGS[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>"$work/$t.log"; then
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
