#!/usr/bin/env bash
# Build CPython 3.13's real JIT stencils (every target; each once per
# machine) with ../shared/cpython/make-stencils.sh, then verify each Linux
# target's header, the objects it was generated from, and diff the two; the
# macOS and Windows headers and objects; then patch with CPython's own jit.c (--jit-c)
# and diff the ports against it (diff-patch).
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
# macOS and Windows headers. x86-64 macOS has one CPython bug on record:
# 3.13 patches a relocation against a Mach-O section (X86_64_RELOC_SIGNED
# against __cstring, a C string literal) with the section's offset counted
# twice, so the `lea` points past the string (README, "Findings in
# CPython"). That header must give exactly those findings and nothing else.
for triple in aarch64-apple-darwin x86_64-pc-windows-msvc i686-pc-windows-msvc; do
  "$bin" verify "$root/$triple/jit_stencils.h" --placements "${PLACEMENTS:-64}" "$@"
done
set +e
report=$("$bin" verify "$root/x86_64-apple-darwin/jit_stencils.h" --placements "${PLACEMENTS:-64}" "$@")
rc=$?
set -e
known='^FINDING [_A-Z0-9]+ \[wrong_value\]: X86_64_RELOC_SIGNED at code\+0x[0-9a-f]+ referred to 0x[0-9a-f]+ (\(data\+0x[0-9a-f]+\) )?instead of data\+0x[0-9a-f]+ '
if [ $rc -ne 1 ] || ! grep -qE "$known" <<<"$report" || grep '^FINDING' <<<"$report" | grep -vqE "$known"; then
  echo "$report"
  echo "verify-cpython: x86_64-apple-darwin: expected exactly CPython's X86_64_RELOC_SIGNED findings (exit $rc)" >&2
  exit 1
fi
echo "verify-cpython: x86_64-apple-darwin: $(grep -c '^FINDING' <<<"$report") findings, all CPython's section-relative X86_64_RELOC_SIGNED"
# The macOS and Windows objects: clean (the object loader computes the true
# referent of a section-relative relocation), cross-checked, and diffed
# against their headers: identical but for that bug's holes on x86-64 macOS.
for triple in aarch64-apple-darwin x86_64-pc-windows-msvc i686-pc-windows-msvc x86_64-apple-darwin; do
  [ -d "$root/$triple/objs" ] || continue
  "$bin" verify "$root/$triple/objs" --placements "${PLACEMENTS:-64}" --cross-check-objdump "$@"
  if [ "$triple" != x86_64-apple-darwin ]; then
    "$bin" diff "$root/$triple/jit_stencils.h" "$root/$triple/objs"
    continue
  fi
  set +e
  diffs=$("$bin" diff "$root/$triple/jit_stencils.h" "$root/$triple/objs")
  rc=$?
  set -e
  other=$(grep ': ' <<<"$diffs" | grep -v 'header stencils' | grep -vE ': hole only in the (header \(line [0-9]+\)|object): patch_32r\(code \+ 0x[0-9a-f]+, \(uintptr_t\)data \+ -?0x[0-9a-f]+\)$' || true)
  if [ $rc -ne 1 ] || [ -n "$other" ]; then
    echo "$diffs"
    echo "verify-cpython: $triple: diff beyond CPython's X86_64_RELOC_SIGNED holes (exit $rc)" >&2
    exit 1
  fi
  echo "verify-cpython: $triple: $(tail -n 1 <<<"$diffs") (CPython's X86_64_RELOC_SIGNED holes, each against ours)"
done
# The whole build in one run (what a CI gate over a build directory does):
# one summary line per input; exit 1, from x86-64 macOS's header alone.
set +e
summary=$("$bin" verify "$root" --placements 8 "$@" | sed -n '/^== build summary/,$p')
rc=$?
set -e
echo "$summary"
unexpected=$(grep -E ' [1-9][0-9]* findings ' <<<"$summary" | grep -v '^x86_64-apple-darwin/jit_stencils.h ' || true)
if ! grep -q '^total: 12 inputs, exit 1 (findings)$' <<<"$summary" || [ -n "$unexpected" ]; then
  echo "verify-cpython: the build summary is not 12 inputs clean but x86-64 macOS's header" >&2
  exit 1
fi
# CPython's own patch functions: both headers patched by them, and a
# differential test of the ports against them.
if [ -f "$jit_c" ]; then
  for triple in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu; do
    h=$root/$triple/jit_stencils.h
    "$bin" verify "$h" --placements "${PLACEMENTS:-64}" --jit-c "$jit_c" "$@"
    "$bin" diff-patch --jit-c "$jit_c" --header "$h"
  done
  # The same patch functions on the macOS arm64 and Windows x64 headers
  # (x86-64 macOS carries CPython's SIGNED bug; i686's jit.c is 32-bit).
  for triple in aarch64-apple-darwin x86_64-pc-windows-msvc; do
    "$bin" verify "$root/$triple/jit_stencils.h" --placements "${PLACEMENTS:-64}" --jit-c "$jit_c" "$@"
  done
else
  echo "verify-cpython: no $jit_c: --jit-c checks skipped" >&2
fi
