#!/usr/bin/env bash
# Verify the embedded default corpus (corpus/x86_64-unknown-linux-gnu), after
# installing what the build needs when missing. Extra arguments go to
# `stencilcheck verify` (e.g. a header or an object directory instead).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
cargo build --release --quiet
exec "${CARGO_TARGET_DIR:-$here/target}/release/stencilcheck" verify "$@"
