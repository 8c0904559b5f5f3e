#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (the `device` tool). Two halves:
#
#   scripts/gpu-bench.sh prepare   — here, before the device call: builds fado, the GPU kernel
#       test binaries (kernels_*, texels, graph_block; stripped, xz-compressed) and gpuprobe
#       (from ../shared/tools/gpuprobe, built outside shared/) into .devbin/ (git-ignored), so
#       the device needs no Rust toolchain or crates.
#   scripts/gpu-bench.sh           — on the device: Vulkan loader from the carried .debs, the
#       kernel tests on the real GPU (each binary's pass/fail line), copy bandwidth (gpuprobe),
#       then synthetic AMALIA-9B decode/prefill for several weight types. One table at the end.
#       carry: [".gl", ".devbin"]; env P, N, R (bench sizes), DTYPES, SKIP_TESTS=1.
set -u
B=.devbin
TESTS="kernels_matmul kernels_matmul_quant kernels_matmul_int_dot kernels_matmul_coopmat kernels_attention kernels_attention_decode kernels_norm_matmul kernels_swiglu_matmul kernels_elementwise kernels_sampling texels graph_block"
if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p "$B/tests"
  # Release: on a fast GPU the host's per-token work (recording ~300 dispatches) shows.
  cargo build --release
  strip -o "$B/fado" "${CARGO_TARGET_DIR:-target}/release/fado"
  args=(); for t in $TESTS; do args+=(--test "$t"); done
  cargo test --no-run "${args[@]}" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("executable") and j.get("profile", {}).get("test"):
        print(j["target"]["name"], j["executable"])' | while read -r name exe; do
    strip -o "$B/tests/$name" "$exe" && xz -f -T2 "$B/tests/$name"
  done
  if [ -d ../shared/tools/gpuprobe ]; then
    cargo build --release --manifest-path ../shared/tools/gpuprobe/Cargo.toml --target-dir /tmp/gpuprobe-target
    strip -o "$B/gpuprobe" "$(ls /tmp/gpuprobe-target/release/gpuprobe)"
  fi
  du -sh "$B"
  exit 0
fi

for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
$B/fado devices 2>&1 | head -14 | tee "$OUT/devices.txt"
if [ "${SKIP_TESTS:-0}" != 1 ] && [ -d "$B/tests" ]; then
  echo "== kernel tests on this GPU"
  for x in "$B"/tests/*.xz; do
    t=$(basename "$x" .xz); xz -dc "$x" > "/tmp/$t"; chmod +x "/tmp/$t"
    timeout 300 "/tmp/$t" --test-threads=2 > "$OUT/test-$t.txt" 2>&1
    echo "$t: $(grep -E '^test result' "$OUT/test-$t.txt" | tail -1 || echo 'no result (see test-'$t'.txt)')"
    grep -E "^test .* FAILED|panicked" "$OUT/test-$t.txt" | head -5
  done
fi
[ -x $B/gpuprobe ] && $B/gpuprobe --only copy --copy-mib 1024 2>&1 | tee "$OUT/copy.txt" | grep -iE "copy" | tail -4
P=${P:-512}; N=${N:-128}; R=${R:-2}
# A row per weight type; the quantized ones again with the integer GEMV path off
# (FADO_INT_DOT=0, row `<dtype>/float`): before/after of the int8-x dot products in one run;
# and each with the SIMT tiled prefill (FADO_COOPMAT=0, row `<dtype>/tiled`): before/after of
# the cooperative-matrix prefill.
ROWS=""
for d in ${DTYPES:-bf16 q8_0 q4_k}; do
  ROWS="$ROWS $d $d/tiled"; case $d in q*) ROWS="$ROWS $d/float";; esac
done
for row in $ROWS; do
  d=${row%/*}; f=${row//\//-}; int=${FADO_INT_DOT:-}; coop=${FADO_COOPMAT:-}
  case $row in */float) int=0;; */tiled) coop=0;; esac
  FADO_COOPMAT=$coop FADO_INT_DOT=$int timeout 150 $B/fado bench --synthetic amalia-9b --dtype "$d" --prompt-tokens "$P" --gen-tokens "$N" -r "$R" --json \
    > "$OUT/bench-$f.json" 2> "$OUT/bench-$f.err" || echo "bench $row failed: $(tail -2 "$OUT/bench-$f.err")"
done
timeout 120 $B/fado bench --synthetic amalia-9b --dtype bf16 --prompt-tokens 16 --gen-tokens 8 -r 1 --profile \
  > /dev/null 2> "$OUT/profile-bf16.txt"; tail -12 "$OUT/profile-bf16.txt"
# Batched decode (issue 19): aggregate tg at 1, 4 and 16 streams.
timeout 150 $B/fado bench --synthetic amalia-9b --dtype bf16 --prompt-tokens 32 --gen-tokens 64 -r 1 --batch 1,4,16 --json \
  > "$OUT/batch.json" 2> "$OUT/batch.err" || echo "batch bench failed: $(tail -2 "$OUT/batch.err")"
echo "== summary"
echo "batch $(cat "$OUT/batch.json" 2>/dev/null)"
for row in $ROWS; do echo "$row $(cat "$OUT/bench-${row//\//-}.json" 2>/dev/null)"; done
# One table: tg as a share of the copy bandwidth (the largest GB/s figure gpuprobe printed).
python3 - "$OUT" $ROWS <<'PY' || true
import json, re, sys, os
out, dtypes = sys.argv[1], sys.argv[2:]
copy = 0.0
if os.path.exists(f"{out}/copy.txt"):
    nums = [float(x) for x in re.findall(r"([0-9.]+)\s*GB/s", open(f"{out}/copy.txt").read())]
    copy = max(nums, default=0.0)
print(f"copy bandwidth: {copy:.0f} GB/s")
print("| dtype | pp tok/s | tg tok/s | GB/s in tg | % of copy | dispatches/token | host waits/token |")
print("|---|---:|---:|---:|---:|---:|---:|")
for d in dtypes:
    try:
        j = json.load(open(f"{out}/bench-{d.replace('/', '-')}.json"))
    except Exception:
        print(f"| {d} | failed | | | | | |"); continue
    gbs = j["effective_gb_per_s"]
    pct = f"{100 * gbs / copy:.0f} %" if copy else "?"
    print(f"| {d} | {j['pp_tokens_per_s']['mean']:.0f} | {j['tg_tokens_per_s']['mean']:.1f} | {gbs:.0f} | {pct} "
          f"| {j.get('dispatches_per_token')} | {j.get('host_waits_per_token', 0):.3f} |")
PY
