#!/usr/bin/env bash
# Build CPython 3.13's real JIT stencils (x86-64 and aarch64 Linux) with
# ../shared/cpython/make-stencils.sh, then verify the x86-64 header, the
# objects it was generated from, and diff the two.
#
#   scripts/verify-cpython.sh [extra stencilcheck verify options]
#
# Env: STENCILS_DIR (default /tmp/cpython-stencils), SHARED_DIR (default:
# the shared/ folder beside this checkout), PLACEMENTS (default 64).
# Exit status is stencilcheck's (the first failing step): 0 all correct,
# 1 findings or differences, 2 bad input.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED_DIR:-$here/../shared}
out=${STENCILS_DIR:-/tmp/cpython-stencils}
"$here/scripts/setup.sh"
header=$(ls "$out"/3.13.*/x86_64-unknown-linux-gnu/jit_stencils.h 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$header" ]; then
  if [ ! -x "$shared/cpython/make-stencils.sh" ] && [ ! -f "$shared/cpython/make-stencils.sh" ]; then
    echo "verify-cpython: no $shared/cpython/make-stencils.sh (set SHARED_DIR)" >&2
    exit 2
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO bash "$shared/cpython/make-stencils.sh" "$out"
  header=$(ls "$out"/3.13.*/x86_64-unknown-linux-gnu/jit_stencils.h | sort -V | tail -n 1)
fi
cd "$here"
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/stencilcheck
objs=$(dirname "$header")/objs
"$bin" verify "$header" --placements "${PLACEMENTS:-64}" "$@"
if [ -d "$objs" ]; then
  "$bin" verify "$objs" --placements "${PLACEMENTS:-64}" --cross-check-objdump "$@"
  "$bin" diff "$header" "$objs"
fi
