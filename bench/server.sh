#!/bin/sh
# bench/server.sh [BUILD_DIR]: sustained POST /api/v1/sign/digest throughput.
#   server:    qwickd on loopback (HTTPS, RSA-3072 dev key, every request
#              audited in a durable group commit) driven by wrk with CONNS
#              keep-alive connections for DURATION seconds (default 20).
#   baseline:  `openssl speed -multi $(nproc) rsa3072` on the same cores: the
#              RSA signing limit (each request costs one RSA-3072 signature).
# Prints requests/s, p50/p99 latency, sign/s and the ratio server/openssl;
# the target is >= 0.8. The load generator shares the cores with the server.
# Environment: DURATION, CONNS, THREADS (wrk threads), FORMAT (authenticode-pe).
set -eu
BUILD=$(cd "${1:-build}" && pwd)
QWICKD=$BUILD/qwickd
DURATION=${DURATION:-20}
NCPU=$(nproc)
CONNS=${CONNS:-$((NCPU * 8))}
THREADS=${THREADS:-1}
FORMAT=${FORMAT:-authenticode-pe}

for tool in wrk openssl python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench/server.sh: $tool is missing (make setup installs it)" >&2
        exit 1
    }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-bench-server.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# --- server ------------------------------------------------------------------
"$QWICKD" init --data "$tmp/data" --json >"$tmp/init.json"
key=$(jget "$tmp/init.json" api_key)
"$QWICKD" serve --data "$tmp/data" --listen 127.0.0.1:0 --port-file "$tmp/port" \
    2>"$tmp/server.log" &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "bench/server.sh: qwickd serve did not start" >&2
        cat "$tmp/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
port=$(cat "$tmp/port")

# --- load ----------------------------------------------------------------------
digest=$(head -c 32 /dev/urandom | base64 -w0)
cat >"$tmp/sign.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"digest":"$digest","algorithm":"sha256","format":"$FORMAT","profile":"default","metadata":{"filename":"bench.exe"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d non2xx=%d\n",
        summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000,
        e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
echo "server: ${DURATION}s of POST /api/v1/sign/digest ($FORMAT, sha256), $CONNS connections, $NCPU CPUs"
# A short warm-up so TLS handshakes and the signer cache are not measured.
wrk -t "$THREADS" -c "$CONNS" -d 2s -s "$tmp/sign.lua" "https://127.0.0.1:$port/api/v1/sign/digest" \
    >/dev/null 2>&1 || true
wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency -s "$tmp/sign.lua" \
    "https://127.0.0.1:$port/api/v1/sign/digest" >"$tmp/wrk.out" 2>&1
line=$(grep '^WRK ' "$tmp/wrk.out") || {
    cat "$tmp/wrk.out" >&2
    exit 1
}
val() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
requests=$(val requests)
seconds=$(val seconds)
errors=$(val errors)
non2xx=$(val non2xx)
rps=$(python3 -c "print(f'{$requests / $seconds:.1f}')")
echo "  requests/s   $rps  (${requests} in ${seconds}s, errors $errors, non-2xx $non2xx)"
echo "  latency      p50 $(val p50_ms) ms, p99 $(val p99_ms) ms, max $(val max_ms) ms"

# Every acknowledged request has its audit row: count them against wrk's tally.
audited=$(python3 - "$tmp/data/qwick.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM audit WHERE action = 'sign.digest' AND outcome = 0").fetchone()[0])
EOF
)
echo "  audit rows   $audited (warm-up included)"

kill -TERM "$pid"
wait "$pid" || true
pid=""

# --- baseline ------------------------------------------------------------------
echo "baseline: openssl speed -seconds 10 -multi $NCPU rsa3072"
openssl speed -seconds 10 -multi "$NCPU" rsa3072 >"$tmp/speed.out" 2>/dev/null
sign_s=$(awk '/^rsa 3072 bits/ {print $(NF-1)}' "$tmp/speed.out" | tail -n 1)
[ -n "$sign_s" ] || {
    cat "$tmp/speed.out" >&2
    exit 1
}
echo "  sign/s       $sign_s"

ratio=$(python3 -c "print(f'{$rps / $sign_s:.2f}')")
echo "ratio server_rps / openssl_sign_per_s = $ratio (target >= 0.8)"
if [ "$errors" != 0 ] || [ "$non2xx" != 0 ]; then
    echo "bench/server.sh: $errors errors, $non2xx non-2xx responses" >&2
    exit 1
fi
