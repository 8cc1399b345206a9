#!/bin/sh
# Compile stencilcheck's own stencil templates (corpus/templates/*.c) for one
# target triple with CPython's JIT flags; objects go to corpus/TRIPLE/.
# A template may add flags for one architecture with a line
# `// stencilcheck-flags(ARCH): ...` (ARCH: the triple's first part).
# Usage: scripts/build-corpus.sh [TRIPLE]   (default x86_64-unknown-linux-gnu)
set -eu
triple=${1:-x86_64-unknown-linux-gnu}
root=$(cd "$(dirname "$0")/.." && pwd)
cc=${CLANG:-clang-19}
out="$root/corpus/$triple"
mkdir -p "$out"
for src in "$root"/corpus/templates/*.c; do
    name=$(basename "$src" .c)
    extra=$(sed -n "s|^// stencilcheck-flags(${triple%%-*}): *||p" "$src")
    # COFF has no -fpic (Windows code is position-independent by RIP-relative
    # addressing); CPython passes -fms-runtime-lib=dll there instead.
    case $triple in
        *-windows-*) pic=-fms-runtime-lib=dll ;;
        *) pic=-fpic ;;
    esac
    # shellcheck disable=SC2086
    "$cc" -O3 $pic -fno-plt -fno-builtin -fno-asynchronous-unwind-tables \
        -fno-stack-protector -c --target="$triple" $extra \
        -I"$root/corpus/templates" "$src" -o "$out/$name.o"
    echo "$out/$name.o"
done
