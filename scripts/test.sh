#!/usr/bin/env bash
# The whole test suite: kernels on the machine's Vulkan adapter (lavapipe without a GPU),
# loaders, tokenizers, model end-to-end against transformers' fixtures, server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Mesa's WSI complains without a runtime dir even for compute-only use.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
FADO_DEFAULT_MODEL="$(scripts/fetch-default-model.sh)"
export FADO_DEFAULT_MODEL
cargo test "$@"
