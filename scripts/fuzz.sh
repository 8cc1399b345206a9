#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60), seeded from the
# repository's own fixtures and embedded corpus. Exit non-zero on the first
# crash (its input is left in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain it
# runs with RUSTC_BOOTSTRAP=1, as here. CI runs `scripts/fuzz.sh 10` as a smoke.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(load_header load_object patch_judge)
fi
export RUSTC_BOOTSTRAP=1
# Seeds besides each target's own (growing) corpus in fuzz/corpus/<target>.
seeds_for() {
    case "$1" in
        load_header) echo tests/fixtures tests/fixtures/3.14-x86_64 tests/fixtures/3.14-aarch64 ;;
        load_object) echo tests/fixtures/objects corpus/*/ ;;
        *) ;;
    esac
}
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== fuzz $t for ${seconds}s"
    log=$(mktemp)
    status=0
    # shellcheck disable=SC2046
    cargo fuzz run --release "$t" "fuzz/corpus/$t" $(seeds_for "$t") -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|SUMMARY|thread .* panicked)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz $t: failed (exit $status); crash inputs, if any, in fuzz/artifacts/$t/" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
