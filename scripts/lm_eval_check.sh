#!/usr/bin/env bash
# lm-evaluation-harness against `fado serve` (outside CI): the team's small multiple-choice task
# in European Portuguese (tests/fixtures/eval/pt_facts.{yaml,jsonl}, 32 questions) through
# lm-eval's `local-completions` model, i.e. /v1/completions with echo + logprobs (one request
# per context + choice, token-id prompts).
#
# What it does:
#   1. builds fado (dev profile by default; PROFILE=release for a release build);
#   2. makes a venv ($VENV, default target/lm-eval-venv) with lm-eval[api]==0.4.13,
#      transformers (tokenizer only; no torch is installed or needed) and gguf;
#   3. exports the model's tokenizer from the GGUF (scripts/export_tokenizer.py) so that
#      lm-eval splits context and continuation with the model's own token ids;
#   4. starts `fado serve` on a free port with the model, runs the task, stops the server.
#
# Usage: scripts/lm_eval_check.sh [MODEL.gguf]   (default: the default model)
# Env: PROFILE=dev|release, VENV=DIR, LIMIT=N (first N questions only), KV_TYPE=f16|f32.
# Results (JSON) land in target/lm-eval/; the accuracy table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-${FADO_DEFAULT_MODEL:-$HOME/.cache/fado/SmolLM2-135M-Instruct.Q4_1.gguf}}
PROFILE=${PROFILE:-dev}
VENV=${VENV:-target/lm-eval-venv}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=target/lm-eval
[ -f "$MODEL" ] || { echo "no model at $MODEL (scripts/fetch-default-model.sh)" >&2; exit 1; }

cargo build --bin fado --profile "$PROFILE"
dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
FADO="$TARGET/$dir/fado"

if [ ! -x "$VENV/bin/lm_eval" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "lm-eval[api]==0.4.13" transformers "gguf==0.19.0"
fi
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "note: torch is importable in $VENV (not needed here)" >&2
fi

mkdir -p "$OUT"
TOK="$OUT/tokenizer"
"$VENV/bin/python" scripts/export_tokenizer.py "$MODEL" "$TOK"

PORT=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NAME=fado-eval
"$FADO" serve --model "$MODEL" --port "$PORT" --parallel 1 --ctx 1024 \
  --kv-type "${KV_TYPE:-f16}" --served-model-name "$NAME" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not up" >&2; exit 1; }

export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ARGS="model=$NAME,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer_backend=huggingface"
ARGS="$ARGS,tokenizer=$TOK,tokenized_requests=True,num_concurrent=1,max_retries=1,max_length=1024"
echo "fado: $("$FADO" --version 2>/dev/null || echo "$FADO"), commit $(git rev-parse --short HEAD)" >&2
"$VENV/bin/lm_eval" --model local-completions --model_args "$ARGS" \
  --tasks pt_facts --include_path tests/fixtures/eval --batch_size 1 \
  --output_path "$OUT" --log_samples ${LIMIT:+--limit "$LIMIT"}
