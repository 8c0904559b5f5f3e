#!/usr/bin/env bash
# The Python package's tests: a fresh venv, `pip install ./bindings/python` (maturin builds the
# extension; FADO_PY_PROFILE=dev by default here, a faster build that reuses cargo's dev
# artifacts — plain `pip install` builds release), then pytest on the tiny fixture model.
# Needs the `fado` binary for the CLI comparisons (`cargo build`, or FADO_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FADO_PY_VENV:-target/python-venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check pytest
MATURIN_PEP517_ARGS="--profile ${FADO_PY_PROFILE:-dev}" \
  "$venv/bin/python" -m pip install -q --disable-pip-version-check ./bindings/python
"$venv/bin/python" -m pytest -q bindings/python/tests "$@"
