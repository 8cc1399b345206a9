#!/usr/bin/env bash
# The whole test suite: setup, rustfmt and clippy, every unit/integration/
# property test, then the real CPython 3.13 stencils verified end to end.
# This is what CI runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/setup.sh
# The real stencils first, so the tests that use them run instead of skipping.
scripts/cpython-stencils.sh >/dev/null
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
cargo test --release
scripts/verify-cpython.sh
