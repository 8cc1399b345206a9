#!/usr/bin/env bash
# Make sure CPython 3.13's real stencils (and the source they came from) are
# built for every target CPython 3.13 builds its JIT for (x86-64 and aarch64
# Linux and macOS, x86-64 and i686 Windows), with
# ../shared/cpython/make-stencils.sh; only the missing targets are built, so
# a machine builds each once. Prints the x86-64 Linux header's path.
# Env: STENCILS_DIR (default /tmp/cpython-stencils), SHARED_DIR (default: the
# shared/ folder beside this checkout), TRIPLES (default: all six).
# Sources land in /tmp/cpython-src.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_DIR:-$here/../shared}
out=${STENCILS_DIR:-/tmp/cpython-stencils}
all="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-msvc i686-pc-windows-msvc"
find_header() { ls "$out"/3.13.*/"$1"/jit_stencils.h 2>/dev/null | sort -V | tail -n 1 || true; }
missing=""
for t in ${TRIPLES:-$all}; do
  [ -n "$(find_header "$t")" ] || missing="$missing $t"
done
if [ -n "$missing" ]; then
  if [ ! -f "$shared/cpython/make-stencils.sh" ]; then
    echo "cpython-stencils: no $shared/cpython/make-stencils.sh (set SHARED_DIR)" >&2
    exit 2
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -E"
  TRIPLES="${missing# }" $SUDO bash "$shared/cpython/make-stencils.sh" "$out" >&2
fi
header=$(find_header x86_64-unknown-linux-gnu)
[ -n "$header" ] || { echo "cpython-stencils: build produced no x86-64 header" >&2; exit 2; }
echo "$header"
