#!/usr/bin/env bash
# The whole test suite: kernels on the machine's Vulkan adapter (lavapipe without a GPU),
# loaders, tokenizers, model end-to-end against transformers' fixtures, server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FADO_DEFAULT_MODEL="$(scripts/fetch-default-model.sh)"
export FADO_DEFAULT_MODEL
cargo test "$@"
