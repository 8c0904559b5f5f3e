#!/usr/bin/env bash
# The whole test suite: kernels on the machine's Vulkan adapter (lavapipe without a GPU),
# loaders, tokenizers, model end-to-end against transformers' fixtures, server, the C ABI
# (compiled with cc); the Python package (pip install into a fresh venv, pytest); then the
# kernels that need what only Mesa 26.1's lavapipe has (cooperative matrices, integer dot
# products) under that driver, from a private root (scripts/mesa26.sh). FADO_SKIP_MESA26=1
# skips the second part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FADO_DEFAULT_MODEL="$(scripts/fetch-default-model.sh)"
export FADO_DEFAULT_MODEL
cargo test "$@"
if [ $# -eq 0 ]; then
  # The Python package (bindings/python) in a fresh venv; the `fado` binary cargo test built
  # is the CLI its tests compare with.
  FADO_BIN="$PWD/target/debug/fado" scripts/test-python.sh
fi
if [ "${FADO_SKIP_MESA26:-0}" != 1 ] && [ $# -eq 0 ]; then
  scripts/mesa26.sh setup
  FADO_EXPECT_COOPMAT=1 scripts/mesa26.sh test --test mesa26_caps --test kernels_matmul_int_dot \
    --test kernels_matmul_coopmat --test model_coopmat
fi
