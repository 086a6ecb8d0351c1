#!/bin/sh
# Authenticode digest throughput: `qwick digest` against `openssl dgst -sha256`
# (the same SHA-256 code, plain file hashing) on one PE of at least 1 GiB.
#
#   sh bench/digest.sh [BUILD_DIR]        (default: build)
#
# The file is a mingw fixture plus a large random overlay, written under
# $TMPDIR (default /tmp) and removed afterwards; the page cache is warmed
# first, then the two commands run alternately RUNS times (default 5). Prints
# the median wall time of each and the ratio qwick/openssl (lower is better;
# 1.00 = same speed).
# Env: RUNS, SIZE_MIB (overlay size, default 1100).
set -eu
BUILD=${1:-build}
RUNS=${RUNS:-5}
SIZE_MIB=${SIZE_MIB:-1100}
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
. "$SRC_ROOT/tests/integration/lib.sh"
t_init bench-digest
[ -x "$QWICK" ] || die "$QWICK not built"
[ "$SIZE_MIB" -ge 1024 ] || echo "bench: note: SIZE_MIB=$SIZE_MIB is below 1 GiB" >&2

sh "$SRC_ROOT/tests/fixtures/gen.sh" "$BUILD/fixtures"
f=$tmp/big.exe
cp "$BUILD/fixtures/x64-hello.exe" "$f"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >>"$f"
bytes=$(wc -c <"$f")

# Both tools must read from memory, not disk.
cat "$f" >/dev/null
cat "$f" >/dev/null

now_ns() { date +%s%N; }
run_ms() { # command... -> elapsed milliseconds on stdout
    t0=$(now_ns)
    "$@" >/dev/null
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000000))
}
median() { sort -n | sed -n "$(((RUNS + 1) / 2))p"; }

: >"$tmp/q"
: >"$tmp/o"
i=0
while [ "$i" -lt "$RUNS" ]; do
    run_ms "$QWICK" digest "$f" >>"$tmp/q"
    run_ms openssl dgst -sha256 "$f" >>"$tmp/o"
    i=$((i + 1))
done
q=$(median <"$tmp/q")
o=$(median <"$tmp/o")
mib=$((bytes / 1048576))
echo "file: $mib MiB PE (x64 mingw image + random overlay), $RUNS runs each, page cache warm"
echo "qwick digest      median ${q} ms  ($((mib * 1000 / (q > 0 ? q : 1))) MiB/s)   runs: $(tr '\n' ' ' <"$tmp/q")"
echo "openssl dgst      median ${o} ms  ($((mib * 1000 / (o > 0 ? o : 1))) MiB/s)   runs: $(tr '\n' ' ' <"$tmp/o")"
awk -v q="$q" -v o="$o" 'BEGIN { printf "ratio qwick/openssl: %.2f\n", (o > 0 ? q / o : 0) }'
