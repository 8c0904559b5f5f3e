#!/usr/bin/env bash
# One prepared run on a lent NVIDIA machine (the `device` tool): Vulkan loader from carried
# .debs, prebuilt binaries in .devbin/ (fado, gpuprobe), copy bandwidth, then synthetic
# AMALIA-9B decode/prefill for several weight types. Prints one table at the end.
#   carry: [".gl", ".devbin"]
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=.devbin
$B/fado devices 2>&1 | head -12 | tee "$OUT/devices.txt"
$B/gpuprobe --only copy --copy-mib 1024 2>&1 | tee "$OUT/copy.txt" | grep -iE "copy" | tail -4
P=${P:-128}; N=${N:-64}; R=${R:-2}
for d in ${DTYPES:-bf16 q8_0 q4_k}; do
  timeout 150 $B/fado bench --synthetic amalia-9b --dtype "$d" -p "$P" -n "$N" -r "$R" --json \
    > "$OUT/bench-$d.json" 2> "$OUT/bench-$d.err" || echo "bench $d failed: $(tail -2 "$OUT/bench-$d.err")"
done
echo "== summary"
for d in ${DTYPES:-bf16 q8_0 q4_k}; do echo "$d $(cat "$OUT/bench-$d.json" 2>/dev/null)"; done
