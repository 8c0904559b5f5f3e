#!/usr/bin/env bash
# Runs CMD on Mesa 26.1's lavapipe (cooperative matrices, integer dot products) from this
# Debian 12 machine: prepares the private root once (cached; scripts/mesa26.sh setup), then
#   scripts/lavapipe-next.sh cargo test [ARGS…] [-- TEST_ARGS…]   every test binary under it
#   scripts/lavapipe-next.sh BINARY [ARGS…]                       one binary under it
# e.g.  scripts/lavapipe-next.sh target/release/fado devices
#       scripts/lavapipe-next.sh cargo test --test kernels_matmul_coopmat
# As a cargo runner (each test binary cargo runs goes through it):
#       CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/lavapipe-next.sh" cargo test …
# A thin front for scripts/mesa26.sh (its `run` and `test`); see scripts/README.md. It fails
# with the reason when the root cannot be prepared: it never falls back to the host's Mesa.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
"$HERE/mesa26.sh" setup >&2
if [ "$1" = cargo ] && [ "${2:-}" = test ]; then
  shift 2
  exec "$HERE/mesa26.sh" test "$@"
fi
exec "$HERE/mesa26.sh" run "$@"
