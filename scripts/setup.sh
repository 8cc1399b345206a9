#!/usr/bin/env bash
# Install what stencilcheck needs beside Rust, on Debian, only when missing:
#   cmake        Unicorn's C is built with it (the unicorn-engine crate)
#   clang-19     CPython 3.13's stencils are built with it (scripts/verify-cpython.sh)
#   llvm-19      llvm-objdump / llvm-readobj for the same
# Safe to run again: it does nothing when everything is there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang-19 >/dev/null 2>&1 || need+=(clang-19)
command -v llvm-objdump-19 >/dev/null 2>&1 || need+=(llvm-19)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ ${#need[@]} -eq 0 ] && exit 0
echo "setup: installing ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
