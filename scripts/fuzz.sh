#!/bin/sh
# Runs every libFuzzer harness of a fuzzing build for SECONDS each, starting
# from its committed seed corpus (tests/fuzz/corpus/<harness>/, read-only
# here). New interesting inputs go to BUILD_DIR/fuzz-corpus/<harness>/ and
# crashes to BUILD_DIR/fuzz-artifacts/. Used by `make fuzz`.
#
#   sh scripts/fuzz.sh BUILD_DIR [SECONDS]
#
# Exit status 1 if any harness crashed, leaked, timed out or hit an invariant.
# To keep a crash as a regression seed, copy it to the harness's corpus as
# regress-<what>; the fuzz-replay tests will then run it in every build.
set -u
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR [SECONDS]" >&2; exit 2; }
BUILD=$1
SECONDS_EACH=${2:-60}
SRC=$(cd "$(dirname "$0")/.." && pwd)
SEEDS=$SRC/tests/fuzz/corpus

found=0
failed=""
for h in "$BUILD"/tests/fuzz/fuzz_*; do
    name=$(basename "$h")
    case $name in *-replay | *.p) continue ;; esac
    [ -x "$h" ] && [ -f "$h" ] || continue
    found=$((found + 1))
    work=$BUILD/fuzz-corpus/$name
    art=$BUILD/fuzz-artifacts
    mkdir -p "$work" "$art"
    echo "fuzz: $name for ${SECONDS_EACH}s" >&2
    log=$BUILD/fuzz-artifacts/$name.log
    if ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
        UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
        "$h" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/$name-" \
        "$work" "$SEEDS/$name" >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$log" |
            sed "s/^/fuzz: $name: /" >&2
    else
        echo "fuzz: $name FAILED; log: $log" >&2
        grep -E 'ERROR|invariant failed|SUMMARY|Test unit written' "$log" | head -n 10 >&2
        failed="$failed $name"
    fi
done

if [ "$found" -eq 0 ]; then
    echo "fuzz: no harnesses in $BUILD/tests/fuzz (configure with CC=clang -Dfuzzing=true)" >&2
    exit 1
fi
if [ -n "$failed" ]; then
    echo "fuzz: failures:$failed" >&2
    exit 1
fi
echo "fuzz: $found harnesses ran ${SECONDS_EACH}s each without failures" >&2
