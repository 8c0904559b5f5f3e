#!/usr/bin/env bash
# Runs Fado (or any binary built here) on Mesa 26.1's lavapipe from Debian trixie-backports,
# without changing the host: an extracted trixie root under ~/.cache holds the driver, the
# Vulkan loader and their libraries (glibc included), and binaries run through that root's
# own dynamic loader. See `scripts/mesa26.sh --help`.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${FADO_MESA26_ROOT:-$HOME/.cache/fado/mesa26-root}"
MIRROR="${FADO_MESA26_MIRROR:-http://deb.debian.org/debian}"
SUITE=trixie
# The extracted root's marker: written last by `setup`, so a root without it is incomplete.
STAMP=.fado-mesa26

usage() {
  cat <<EOF
Usage: scripts/mesa26.sh COMMAND [ARGS…]

Runs binaries built on this (Debian 12) machine against Mesa 26.1's lavapipe from Debian
trixie-backports (VK_KHR_cooperative_matrix, integer dot products), installed into a private
root instead of the host system.

Commands:
  setup [--force]      Extract trixie + trixie-backports' mesa-vulkan-drivers, libvulkan1 and
                       vulkan-tools (vulkaninfo), with their dependencies, into the root with
                       mmdebstrap (installed with apt-get when missing). Does nothing when the
                       root is already complete; --force rebuilds it. ~10-20 s, ~310 MB.
  run CMD [ARGS…]      Run CMD through the root's dynamic loader (ld-linux … --library-path),
                       with the Vulkan loader reading only the root's lavapipe manifest.
                       Processes CMD spawns do NOT inherit this: they run on the host's Mesa.
  test [CARGO_ARGS…] [-- TEST_ARGS…]
                       cargo test --no-run CARGO_ARGS, then run every test binary it built under
                       the root (\`run\`), from the repository root, with TEST_ARGS.
                       e.g.  scripts/mesa26.sh test --test kernels_matmul
                             FADO_EXPECT_COOPMAT=1 scripts/mesa26.sh test --test mesa26_caps -- --nocapture
                       With --chroot (first argument) the binaries run as \`chroot\` does.
  chroot CMD [ARGS…]   Run CMD inside the root (as root: a private mount namespace with /proc,
                       /sys, /dev, /tmp, \$HOME, the current folder, the repository, the cargo
                       target folder and CMD's folder bind-mounted at the same paths). Children
                       CMD spawns (e.g. a test spawning target/debug/fado) run on Mesa 26 too.
  info                 Print the root, its Mesa version and the environment \`run\` uses.
  -h, --help           This text.

The root's vulkaninfo:  scripts/mesa26.sh chroot vulkaninfo
Fado's view of it:      scripts/mesa26.sh run target/debug/fado devices

Environment:
  FADO_MESA26_ROOT     The root (default: \$HOME/.cache/fado/mesa26-root).
  FADO_MESA26_MIRROR   Debian mirror (default: http://deb.debian.org/debian).
  FADO_MESA26_BINDS    Extra colon-separated host folders for \`chroot\` to bind-mount.
  CARGO_TARGET_DIR     Honoured by \`test\` (cargo reports where the binaries are).
EOF
}

die() {
  echo "mesa26: $*" >&2
  exit 1
}
say() { echo "mesa26: $*" >&2; }

arch_triplet() {
  case "$(uname -m)" in
    x86_64) TRIPLET=x86_64-linux-gnu LDSO=ld-linux-x86-64.so.2 ELF_INTERP=/lib64/ld-linux-x86-64.so.2 ;;
    aarch64) TRIPLET=aarch64-linux-gnu LDSO=ld-linux-aarch64.so.1 ELF_INTERP=/lib/ld-linux-aarch64.so.1 ;;
    *) die "unsupported machine $(uname -m) (x86_64 and aarch64 only)" ;;
  esac
}
arch_triplet
LIBDIR="usr/lib/$TRIPLET"
ICD_OUT=".fado/icd.d/lvp_icd.json"
ICD_CHROOT=".fado/icd.d/lvp_icd.chroot.json"

# The files everything depends on; a root lacking one is rebuilt by `setup`.
root_complete() {
  local r="$1" f
  [ -f "$r/$STAMP" ] || return 1
  for f in "$LIBDIR/$LDSO" "$LIBDIR/libc.so.6" "$LIBDIR/libvulkan.so.1" \
    "$LIBDIR/libvulkan_lvp.so" "$ICD_OUT" "$ICD_CHROOT"; do
    [ -e "$r/$f" ] || return 1
  done
}

mesa_version() { sed -n 's/^mesa=//p' "$ROOT/$STAMP" 2>/dev/null || true; }

need_root() {
  root_complete "$ROOT" ||
    die "no complete Mesa 26 root at $ROOT; run \`scripts/mesa26.sh setup\` first"
}

# Version of package $2 from its Debian changelog inside root $1 (dpkg's status is empty in
# an extract-variant root: nothing was configured).
pkg_version() {
  local cl="$1/usr/share/doc/$2/changelog.Debian.gz"
  [ -f "$cl" ] || { echo "?"; return; }
  gzip -dc "$cl" | sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p'
}

install_mmdebstrap() {
  command -v mmdebstrap >/dev/null && return
  command -v apt-get >/dev/null ||
    die "mmdebstrap is missing and this is not a Debian/Ubuntu machine (no apt-get); install mmdebstrap and rerun"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "mmdebstrap is missing; install it as root: apt-get install -y mmdebstrap"
    sudo=sudo
  fi
  say "installing mmdebstrap…"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq mmdebstrap >/dev/null
}

cmd_setup() {
  local force=""
  case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    *) die "setup: unknown argument \`$1\` (setup takes only --force)" ;;
  esac
  if [ -z "$force" ] && root_complete "$ROOT"; then
    say "root $ROOT is complete (Mesa $(mesa_version)); nothing to do (\`setup --force\` rebuilds it)"
    return
  fi
  if [ -e "$ROOT" ] && [ ! -f "$ROOT/$STAMP" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
    die "$ROOT exists, is not empty and was not made by this script; remove it or set FADO_MESA26_ROOT"
  fi
  install_mmdebstrap
  local t0 new old
  t0=$(date +%s.%N)
  mkdir -p "$(dirname "$ROOT")"
  new="$ROOT.new.$$"
  rm -rf "$new"
  # shellcheck disable=SC2064  # expand $new now
  trap "rm -rf '$new'" EXIT
  say "extracting $SUITE + $SUITE-backports' mesa-vulkan-drivers, libvulkan1 and vulkan-tools into $ROOT (mmdebstrap --variant=extract)…"
  # `pkg/suite` makes apt take that package from trixie-backports; its dependencies come from
  # trixie (or backports where the backport needs them). Nothing is configured or run: the
  # packages (and the dependencies apt resolves) are only unpacked.
  mmdebstrap --quiet --variant=extract --mode=auto \
    --include="mesa-vulkan-drivers/$SUITE-backports,libvulkan1,vulkan-tools" \
    "$SUITE" "$new" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-backports main" ||
    die "mmdebstrap failed (see above); check that $MIRROR is reachable, and without root that unprivileged user namespaces work (mmdebstrap --mode=unshare)"
  [ -e "$new/$LIBDIR/libvulkan_lvp.so" ] || die "the extracted root has no $LIBDIR/libvulkan_lvp.so"
  [ -e "$new/$LIBDIR/$LDSO" ] || die "the extracted root has no $LIBDIR/$LDSO"

  # The ICD manifest names its library by file name ("libvulkan_lvp.so"), which the loader
  # would look up in the process's library path; point it at the root's copy explicitly.
  mkdir -p "$new/$(dirname "$ICD_OUT")"
  sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$ROOT/$LIBDIR/libvulkan_lvp.so\"|" \
    "$new/usr/share/vulkan/icd.d/lvp_icd.json" >"$new/$ICD_OUT"
  grep -q "\"library_path\": \"$ROOT/" "$new/$ICD_OUT" ||
    die "could not rewrite library_path in $new/usr/share/vulkan/icd.d/lvp_icd.json"
  # The same for `chroot`, where the root is /.
  sed "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"/$LIBDIR/libvulkan_lvp.so\"|" \
    "$new/usr/share/vulkan/icd.d/lvp_icd.json" >"$new/$ICD_CHROOT"

  # For `chroot`: the merged-/usr links (base-files and usr-is-merged are not extracted) and
  # the ELF interpreter path that binaries built here ask for.
  local d
  for d in bin lib sbin; do [ -e "$new/$d" ] || ln -s "usr/$d" "$new/$d"; done
  if [ ! -e "$new$ELF_INTERP" ]; then
    if [ "$ELF_INTERP" = /lib64/ld-linux-x86-64.so.2 ]; then
      [ -e "$new/lib64" ] || ln -s usr/lib64 "$new/lib64"
      mkdir -p "$new/usr/lib64"
      ln -sf "/$LIBDIR/$LDSO" "$new/usr/lib64/$LDSO"
    else
      ln -sf "$TRIPLET/$LDSO" "$new/usr/lib/$LDSO"
    fi
  fi

  local mesa loader libc
  mesa=$(pkg_version "$new" mesa-vulkan-drivers)
  loader=$(pkg_version "$new" libvulkan1)
  libc=$(pkg_version "$new" libc6)
  printf 'mesa=%s\nlibvulkan1=%s\nlibc6=%s\nmirror=%s\n' "$mesa" "$loader" "$libc" "$MIRROR" >"$new/$STAMP"

  old="$ROOT.old.$$"
  if [ -e "$ROOT" ]; then mv "$ROOT" "$old"; fi
  mv "$new" "$ROOT"
  trap - EXIT
  rm -rf "$old"
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  say "done in ${secs} s: $ROOT ($(du -sh "$ROOT" | cut -f1)): mesa-vulkan-drivers $mesa, libvulkan1 $loader, libc6 $libc"
  case "$mesa" in
    26.1*) ;;
    *) say "note: expected mesa-vulkan-drivers 26.1.x from $SUITE-backports, got $mesa" ;;
  esac
}

# The environment `run` and `chroot` give CMD: only the root's lavapipe, and no implicit layer
# from the host (its Mesa 22 device-select layer would load into this process).
vulkan_env() {
  local icd="$1" share="$2"
  export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
  export VK_IMPLICIT_LAYER_PATH="$share/implicit_layer.d" VK_LAYER_PATH="$share/explicit_layer.d"
  unset VK_ADD_DRIVER_FILES VK_ADD_LAYER_PATH VK_ADD_IMPLICIT_LAYER_PATH
  # Headless: the device-select layer only ranks devices by a display (Fado sets this too).
  if [ -z "${MESA_VK_DEVICE_SELECT:-}" ]; then export NODEVICE_SELECT="${NODEVICE_SELECT:-1}"; fi
}

resolve_cmd() {
  local c="$1"
  case "$c" in
    */*) [ -e "$c" ] || die "no such file: $c" ;;
    *) c=$(command -v -- "$c") || die "command not found: $1" ;;
  esac
  [ -x "$c" ] || die "not executable: $c"
  (cd "$(dirname "$c")" && echo "$(pwd)/$(basename "$c")")
}

cmd_run() {
  [ $# -gt 0 ] || die "run: which command? e.g. scripts/mesa26.sh run target/debug/fado devices"
  need_root
  local cmd
  cmd=$(resolve_cmd "$1")
  shift
  if [ "$(head -c 2 "$cmd")" = '#!' ]; then
    die "$cmd is a script; \`run\` loads ELF binaries only (its interpreter would run on the host's libraries). Use \`chroot\` or run a binary"
  fi
  vulkan_env "$ROOT/$ICD_OUT" "$ROOT/usr/share/vulkan"
  exec "$ROOT/$LIBDIR/$LDSO" --library-path "$ROOT/$LIBDIR:$ROOT/usr/lib" --argv0 "$cmd" "$cmd" "$@"
}

cmd_chroot() {
  [ $# -gt 0 ] || die "chroot: which command? e.g. scripts/mesa26.sh chroot target/debug/fado devices"
  need_root
  [ "$(id -u)" = 0 ] || die "chroot needs root (it bind-mounts folders and calls chroot); use \`run\` instead"
  command -v unshare >/dev/null || die "chroot needs unshare (util-linux)"
  local cmd
  case "$1" in
    */*) cmd=$(resolve_cmd "$1") ;;
    *) if [ -x "$ROOT/usr/bin/$1" ]; then cmd="/usr/bin/$1"; else cmd=$(resolve_cmd "$1"); fi ;;
  esac
  shift
  case "$cmd" in
    /usr/* | /bin/* | /sbin/* | /lib*)
      [ -x "$ROOT$cmd" ] || die "$cmd is a host system program, not in the root (only folders outside /usr are bind-mounted); run a binary from your build or \`run\`" ;;
  esac
  # Host folders to see inside at the same paths. Nested ones are fine: each is its own bind.
  local binds=(/proc /sys /dev /tmp "$HOME" "$PWD" "$REPO" "$(dirname "$cmd")")
  if [ -n "${CARGO_TARGET_DIR:-}" ]; then binds+=("$(cd "$CARGO_TARGET_DIR" 2>/dev/null && pwd || echo "$CARGO_TARGET_DIR")"); fi
  if [ -n "${FADO_MESA26_TARGET_DIR:-}" ]; then binds+=("$FADO_MESA26_TARGET_DIR"); fi
  if [ -n "${FADO_MESA26_BINDS:-}" ]; then
    local extra
    IFS=: read -r -a extra <<<"$FADO_MESA26_BINDS"
    binds+=("${extra[@]}")
  fi
  vulkan_env "/$ICD_CHROOT" /usr/share/vulkan
  # shellcheck disable=SC2016  # the inner script's variables are its own
  # unshare -m: the binds vanish with the namespace; nothing is mounted on the host.
  # unshare --root/--wd: chroot into the root and cd to the same folder there.
  exec unshare --mount --propagation private -- bash -euo pipefail -c '
    root=$1 wd=$2 cmd=$3
    shift 3
    binds=()
    while [ "$1" != -- ]; do binds+=("$1"); shift; done
    shift
    for d in "${binds[@]}"; do
      [ -d "$d" ] || continue
      # Never hide the root'"'"'s own system folders (or itself) behind the host'"'"'s.
      case "$d" in / | /usr | /usr/* | /lib* | /bin | /sbin | /etc | /etc/* | "$root" | "$root"/*) continue ;; esac
      mkdir -p "$root$d"
      case "$d" in /proc | /sys | /dev) mount --rbind "$d" "$root$d" ;; *) mount --bind "$d" "$root$d" ;; esac
    done
    exec unshare --root="$root" --wd="$wd" -- "$cmd" "$@"
  ' mesa26-chroot "$ROOT" "$PWD" "$cmd" "${binds[@]}" -- "$@"
}

cmd_test() {
  local mode=run
  if [ "${1:-}" = --chroot ]; then mode=chroot; shift; fi
  command -v cargo >/dev/null || die "test needs cargo (a Rust toolchain)"
  command -v python3 >/dev/null || die "test needs python3 (to read cargo's JSON); run scripts/setup.sh"
  need_root
  local cargo_args=() test_args=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; test_args=("$@"); break; fi
    cargo_args+=("$1")
    shift
  done
  cd "$REPO"
  say "building: cargo test --no-run ${cargo_args[*]}"
  local list
  list=$(cargo test --no-run --message-format=json-render-diagnostics "${cargo_args[@]}" |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
') || die "cargo test --no-run failed (see above)"
  [ -n "$list" ] || die "cargo built no test binary for: ${cargo_args[*]}"
  if [ "$mode" = chroot ]; then
    # Tests spawn target/…/fado (CARGO_BIN_EXE_fado): the whole target folder must be inside.
    FADO_MESA26_TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    export FADO_MESA26_TARGET_DIR
  fi
  local name exe rc failed=() t0 t1
  while IFS=$'\t' read -r name exe; do
    say "── $name under Mesa $(mesa_version) ($mode): $exe ${test_args[*]}"
    t0=$(date +%s)
    rc=0
    (
      export CARGO_MANIFEST_DIR="$REPO"
      "cmd_$mode" "$exe" "${test_args[@]}"
    ) || rc=$?
    t1=$(date +%s)
    if [ "$rc" = 0 ]; then
      say "── $name: ok ($((t1 - t0)) s)"
    else
      say "── $name: FAILED (exit $rc, $((t1 - t0)) s)"
      failed+=("$name")
    fi
  done <<<"$list"
  if [ ${#failed[@]} -gt 0 ]; then die "failed under Mesa $(mesa_version): ${failed[*]}"; fi
  say "all test binaries passed under Mesa $(mesa_version)"
}

cmd_info() {
  echo "root:    $ROOT"
  if root_complete "$ROOT"; then
    sed 's/^/         /' "$ROOT/$STAMP"
    echo "loader:  $ROOT/$LIBDIR/$LDSO --library-path $ROOT/$LIBDIR:$ROOT/usr/lib"
    echo "ICD:     $ROOT/$ICD_OUT"
    grep library_path "$ROOT/$ICD_OUT" | sed 's/^ */         /'
  else
    echo "         (missing or incomplete: run scripts/mesa26.sh setup)"
  fi
}

case "${1:-}" in
  setup) shift; cmd_setup "$@" ;;
  run) shift; cmd_run "$@" ;;
  chroot) shift; cmd_chroot "$@" ;;
  test) shift; cmd_test "$@" ;;
  info) shift; cmd_info ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command \`$1\`; see scripts/mesa26.sh --help" ;;
esac
