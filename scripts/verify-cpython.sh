#!/usr/bin/env bash
# Build CPython 3.13's real JIT stencils (x86-64 and aarch64 Linux) with
# ../shared/cpython/make-stencils.sh, then verify each target's header, the
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
root=$(dirname "$(dirname "$header")")
# Every Linux target the build made: the header, the objects it came from
# (with llvm-objdump's relocations cross-checked), and the two diffed.
for triple in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
  h=$root/$triple/jit_stencils.h
  [ -f "$h" ] || { echo "verify-cpython: no $h" >&2; exit 2; }
  "$bin" verify "$h" --placements "${PLACEMENTS:-64}" "$@"
  if [ -d "$root/$triple/objs" ]; then
    "$bin" verify "$root/$triple/objs" --placements "${PLACEMENTS:-64}" --cross-check-objdump "$@"
    "$bin" diff "$h" "$root/$triple/objs"
  fi
done
# CPython's own patch functions: both headers patched by them, and a
# differential test of the ports against them.
if [ -f "$jit_c" ]; then
  for triple in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
    h=$root/$triple/jit_stencils.h
    "$bin" verify "$h" --placements "${PLACEMENTS:-64}" --jit-c "$jit_c" "$@"
    "$bin" diff-patch --jit-c "$jit_c" --header "$h"
  done
else
  echo "verify-cpython: no $jit_c: --jit-c checks skipped" >&2
fi
