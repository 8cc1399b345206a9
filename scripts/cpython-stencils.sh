#!/usr/bin/env bash
# Make sure CPython 3.13's real stencils (and the source they came from) are
# built, with ../shared/cpython/make-stencils.sh; print the x86-64 header's path.
# Env: STENCILS_DIR (default /tmp/cpython-stencils), SHARED_DIR (default: the
# shared/ folder beside this checkout). Sources land in /tmp/cpython-src.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_DIR:-$here/../shared}
out=${STENCILS_DIR:-/tmp/cpython-stencils}
find_header() { ls "$out"/3.13.*/x86_64-unknown-linux-gnu/jit_stencils.h 2>/dev/null | sort -V | tail -n 1 || true; }
header=$(find_header)
if [ -z "$header" ]; then
  if [ ! -f "$shared/cpython/make-stencils.sh" ]; then
    echo "cpython-stencils: no $shared/cpython/make-stencils.sh (set SHARED_DIR)" >&2
    exit 2
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO bash "$shared/cpython/make-stencils.sh" "$out" >&2
  header=$(find_header)
fi
[ -n "$header" ] || { echo "cpython-stencils: build produced no x86-64 header" >&2; exit 2; }
echo "$header"
