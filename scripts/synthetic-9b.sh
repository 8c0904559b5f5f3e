#!/usr/bin/env bash
# Synthetic AMALIA-9B through its first decode step in each listed weight type, on whatever
# adapter Fado picks (lavapipe without a GPU): `fado bench --synthetic amalia-9b --dtype D`
# with one prompt token and one generated token. Types whose weights do not fit in the
# available memory are skipped with a note (bf16/f16 need ~18 GB, f32 ~36 GB).
# Usage: scripts/synthetic-9b.sh [FADO_BINARY] [DTYPE...]
set -euo pipefail
cd "$(dirname "$0")/.."
FADO="${1:-target/release/fado}"
shift || true
TYPES=("$@")
[ ${#TYPES[@]} -gt 0 ] || TYPES=(q4_0 q4_1 q4_k q5_k q6_k q8_0 bf16 f16 f32)
avail_gb=$(awk '/MemAvailable/ {print int($2 / 1048576)}' /proc/meminfo)
fail=0
for d in "${TYPES[@]}"; do
  case "$d" in
    f32) need=40 ;;
    bf16|f16) need=21 ;;
    q8_0) need=12 ;;
    *) need=8 ;;
  esac
  if [ "$avail_gb" -lt "$need" ]; then
    echo "$d: skipped (needs ~${need} GB, ${avail_gb} GB available)"
    continue
  fi
  start=$(date +%s)
  if out=$("$FADO" bench --synthetic amalia-9b --dtype "$d" --prompt-tokens 1 --gen-tokens 1 \
      --reps 1 --json 2>/tmp/synthetic-9b-"$d".err); then
    tg=$(echo "$out" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tg_tokens_per_s"]["mean"], 3))')
    echo "$d: ok, first decode step done ($tg tok/s, $(( $(date +%s) - start )) s in all)"
  else
    echo "$d: FAILED: $(tail -1 /tmp/synthetic-9b-"$d".err)"
    fail=1
  fi
done
exit $fail
