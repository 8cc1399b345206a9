#!/bin/sh
# Assemble tests/fixtures/objects/*.s (Mach-O and COFF stencils written for
# stencilcheck's tests) into .o files next to them. The triple is the file
# name's prefix: macho_x86_64 → x86_64-apple-darwin, macho_arm64 →
# arm64-apple-darwin, coff_x86_64 → x86_64-pc-windows-msvc, coff_arm64 →
# aarch64-pc-windows-msvc.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
mc=${LLVM_MC:-llvm-mc-19}
for src in "$root"/tests/fixtures/objects/*.s; do
    name=$(basename "$src" .s)
    case $name in
        macho_x86_64*) triple=x86_64-apple-darwin ;;
        macho_arm64*) triple=arm64-apple-darwin ;;
        coff_x86_64*) triple=x86_64-pc-windows-msvc ;;
        coff_arm64*) triple=aarch64-pc-windows-msvc ;;
        *) echo "$src: no triple for this name" >&2; exit 1 ;;
    esac
    "$mc" -triple "$triple" -filetype=obj "$src" -o "${src%.s}.o"
    echo "${src%.s}.o"
done
