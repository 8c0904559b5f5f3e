#!/usr/bin/env bash
# The whole test suite: kernels on the machine's Vulkan adapter (lavapipe without a GPU),
# loaders, tokenizers, model end-to-end against transformers' fixtures, server; then the
# kernels that need what only Mesa 26.1's lavapipe has (cooperative matrices, integer dot
# products) under that driver, from a private root (scripts/mesa26.sh). FADO_SKIP_MESA26=1
# skips the second part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FADO_DEFAULT_MODEL="$(scripts/fetch-default-model.sh)"
export FADO_DEFAULT_MODEL
cargo test "$@"
if [ "${FADO_SKIP_MESA26:-0}" != 1 ] && [ $# -eq 0 ]; then
  scripts/mesa26.sh setup
  FADO_EXPECT_COOPMAT=1 scripts/mesa26.sh test --test mesa26_caps --test kernels_matmul_int_dot
fi
