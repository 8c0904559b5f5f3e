#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to generated text: installs the Vulkan
# driver if needed, fetches the default model, builds Fado (release) and runs it.
#   scripts/run.sh                      # default prompt
#   scripts/run.sh "Your prompt"        # your prompt, as a chat message
#   scripts/run.sh "Prompt" --max-tokens 64 --temperature 0.7
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "scripts/run.sh needs a Rust toolchain (cargo ≥ 1.87); install it with rustup first" >&2
  exit 1
fi
scripts/setup.sh
PROMPT="${1:-Write one sentence about Lisbon.}"
shift || true
# `cargo run` rather than target/release/fado: the binary lands elsewhere when CARGO_TARGET_DIR
# or a cargo config's target-dir is set.
exec cargo run --release --quiet --bin fado -- run --chat --prompt "$PROMPT" "$@"
