#!/usr/bin/env bash
# Build CPython 3.13's real JIT stencils (x86-64 and aarch64 Linux) with
# ../shared/cpython/make-stencils.sh, then verify the x86-64 header, the
# objects it was generated from, and diff the two; then patch with CPython's
# own jit.c (--jit-c) and diff the ports against it (diff-patch).
#
#   scripts/verify-cpython.sh [extra stencilcheck verify options]
#
# Env: STENCILS_DIR (default /tmp/cpython-stencils), SHARED_DIR (default:
# the shared/ folder beside this checkout), PLACEMENTS (default 64),
# JIT_C (default: the jit.c of the source the stencils were built from).
# Exit status is stencilcheck's (the first failing step): 0 all correct,
# 1 findings or differences, 2 bad input.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
header=$("$here/scripts/cpython-stencils.sh")
version=$(basename "$(dirname "$(dirname "$header")")")
jit_c=${JIT_C:-/tmp/cpython-src/Python-$version/Python/jit.c}
cd "$here"
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/stencilcheck
objs=$(dirname "$header")/objs
"$bin" verify "$header" --placements "${PLACEMENTS:-64}" "$@"
if [ -d "$objs" ]; then
  "$bin" verify "$objs" --placements "${PLACEMENTS:-64}" --cross-check-objdump "$@"
  "$bin" diff "$header" "$objs"
fi
# CPython's own patch functions: the header patched by them, and a
# differential test of the ports against them (both targets' headers).
if [ -f "$jit_c" ]; then
  "$bin" verify "$header" --placements "${PLACEMENTS:-64}" --jit-c "$jit_c" "$@"
  a64=$(dirname "$(dirname "$header")")/aarch64-unknown-linux-gnu/jit_stencils.h
  "$bin" diff-patch --jit-c "$jit_c" --header "$header"
  [ ! -f "$a64" ] || "$bin" diff-patch --jit-c "$jit_c" --header "$a64"
else
  echo "verify-cpython: no $jit_c: --jit-c checks skipped" >&2
fi
