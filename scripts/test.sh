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
# A test whose real data is missing says SKIPPED; in CI the data was just
# built, so a missing file fails the test instead of passing it quietly.
skips=$(mktemp)
if [ "${CI:-}" = true ]; then export STENCILCHECK_REQUIRE_REAL_DATA=1; fi
STENCILCHECK_SKIP_LOG=$skips cargo test --release
if [ -s "$skips" ]; then
    echo "tests skipped for want of real data ($(wc -l <"$skips")):"
    sed 's/^/  /' "$skips"
fi
rm -f "$skips"
scripts/verify-cpython.sh
# Every cargo-fuzz target, 10 s each: the smoke of scripts/fuzz.sh.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
scripts/fuzz.sh 10
