#!/bin/sh
# bench/tlog.sh [BUILD_DIR]: the transparency log's cost.
#   tlog-bench appends N entries (default 1048576) to a fresh store with 16
#   threads (group commits, as under load), then times inclusion and
#   consistency proofs at size 1000 and at size N: proof cost should grow
#   with log n, not n. The effect of appends on signing throughput is
#   measured by bench/server.sh (which signs through the log).
set -eu
BUILD=$(cd "${1:-build}" && pwd)
N=${N:-1048576}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT INT TERM
echo "== transparency log: $N entries"
"$BUILD/tests/tlog-bench" "$dir" "$N"
