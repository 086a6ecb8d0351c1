#!/bin/sh
# Runs every registered test: all suites on the plain build, then all again
# under ASan+UBSan and under TSan (the integration scripts drive the
# sanitizer builds of qwick and qwickd; a report in a server's log fails the
# script). Ends with "N passed, N failed".
set -u
BUILD=${1:-build}
ASAN=${2:-build-asan}
TSAN=${3:-}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# A race report makes a process exit 66 at its end; servers' reports are
# caught in their logs by the integration scripts.
export TSAN_OPTIONS=${TSAN_OPTIONS:-second_deadlock_stack=1}
pass=0
fail=0
logs=""

run() { # dir label args...
    dir=$1; label=$2; shift 2
    log=$(mktemp)
    meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" >"$log" 2>&1
    cat "$log"
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    ko=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    [ -n "$ok" ] || { echo "$label: meson test produced no summary" >&2; ko=$((${ko:-0} + 1)); }
    pass=$((pass + ${ok:-0}))
    fail=$((fail + ${ko:-0} + ${to:-0}))
    rm -f "$log"
}

run "$BUILD" plain
run "$ASAN" asan --suite unit --suite fuzz-replay --suite integration
[ -z "$TSAN" ] || run "$TSAN" tsan --suite unit --suite integration

echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
