#!/bin/sh
# bench/server.sh [BUILD_DIR]: sustained POST /api/v1/sign/digest throughput.
#   server:    qwickd on loopback (HTTPS, RSA-3072 dev key, every request
#              audited in a durable group commit) driven by wrk with CONNS
#              keep-alive connections for DURATION seconds (default 20).
#   baseline:  `openssl speed -multi $(nproc) rsa3072` on the same cores: the
#              RSA signing limit (each request costs one RSA-3072 signature).
# Prints requests/s, p50/p99 latency, sign/s and the ratio server/openssl;
# the target is >= 0.8. The load generator shares the cores with the server.
#
# Server load and baseline alternate in ROUNDS slices (DURATION/ROUNDS seconds
# of load, then BASELINE/ROUNDS seconds of openssl speed), so a change in
# background load (shared or virtual machines) hits both sides alike. The ratio
# is total requests/s over the mean sign/s; each round's ratio is shown too.
# Environment: DURATION (20), BASELINE (10), ROUNDS (4), CONNS, THREADS (wrk
# threads), FORMAT (authenticode-pe).
set -eu
BUILD=$(cd "${1:-build}" && pwd)
QWICKD=$BUILD/qwickd
DURATION=${DURATION:-20}
BASELINE=${BASELINE:-10}
ROUNDS=${ROUNDS:-4}
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
optok=$(jget "$tmp/init.json" operator_token)
# All the load comes from one address (127.0.0.1): room for CONNS connections from it.
python3 - "$tmp/data/qwickd.json" "$CONNS" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
need = int(sys.argv[2]) + 16
c["limits"]["max_connections"] = max(c["limits"]["max_connections"], need + 1)
c["limits"]["max_connections_per_ip"] = max(c["limits"].get("max_connections_per_ip", 0), need)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF
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
echo "baseline: openssl speed -seconds $((BASELINE / ROUNDS)) -multi $NCPU rsa3072; $ROUNDS interleaved rounds"
# A short warm-up so TLS handshakes and the signer cache are not measured.
wrk -t "$THREADS" -c "$CONNS" -d 2s -s "$tmp/sign.lua" "https://127.0.0.1:$port/api/v1/sign/digest" \
    >/dev/null 2>&1 || true
slice=$((DURATION / ROUNDS))
bslice=$((BASELINE / ROUNDS))
if [ "$slice" -lt 1 ] || [ "$bslice" -lt 1 ]; then
    echo "bench/server.sh: DURATION and BASELINE must be >= ROUNDS" >&2
    exit 1
fi
: >"$tmp/rounds"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    # The client shares the cores: its CPU time is reported so its share of
    # the machine (taken from the server's) is visible.
    t0=$(cut -d' ' -f16,17 /proc/$$/stat | awk '{print $1 + $2}')
    wrk -t "$THREADS" -c "$CONNS" -d "${slice}s" --latency -s "$tmp/sign.lua" \
        "https://127.0.0.1:$port/api/v1/sign/digest" >"$tmp/wrk.out" 2>&1
    t1=$(cut -d' ' -f16,17 /proc/$$/stat | awk '{print $1 + $2}')
    client_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) / hz}')
    line=$(grep '^WRK ' "$tmp/wrk.out") || {
        cat "$tmp/wrk.out" >&2
        exit 1
    }
    openssl speed -seconds "$bslice" -multi "$NCPU" rsa3072 >"$tmp/speed.out" 2>/dev/null
    sign_s=$(awk '/^rsa 3072 bits/ {print $(NF-1)}' "$tmp/speed.out" | tail -n 1)
    if [ -z "$sign_s" ]; then
        cat "$tmp/speed.out" >&2
        exit 1
    fi
    echo "$line sign_s=$sign_s client_cpu_s=$client_cpu" >>"$tmp/rounds"
    r=$((r + 1))
done

cat >"$tmp/summary.py" <<'PYEOF'
import sys
rows = []
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    rows.append({k: float(v) for k, v in kv.items()})
req = sum(r["requests"] for r in rows)
sec = sum(r["seconds"] for r in rows)
rps = req / sec
sign = sum(r["sign_s"] for r in rows) / len(rows)
errors = int(sum(r["errors"] for r in rows))
non2xx = int(sum(r["non2xx"] for r in rows))
for i, r in enumerate(rows, 1):
    print(f"  round {i}      {r['requests'] / r['seconds']:.1f} req/s, p99 {r['p99_ms']:.2f} ms, "
          f"{r['sign_s']:.1f} sign/s, ratio {r['requests'] / r['seconds'] / r['sign_s']:.2f}")
p50 = sorted(r["p50_ms"] for r in rows)[len(rows) // 2]
p99 = max(r["p99_ms"] for r in rows)
ncpu = int(sys.argv[2])
client = sum(r["client_cpu_s"] for r in rows) / (sec * ncpu)
print(f"  requests/s   {rps:.1f}  ({int(req)} in {sec:.1f}s, errors {errors}, non-2xx {non2xx})")
print(f"  latency      p50 {p50:.2f} ms (median round), p99 {p99:.2f} ms (worst round)")
print(f"  sign/s       {sign:.1f} (openssl speed, mean of rounds)")
print(f"  client CPU   {100 * client:.1f}% of {ncpu} CPUs (wrk, during the load slices)")
print(f"ratio server_rps / openssl_sign_per_s = {rps / sign:.2f} (target >= 0.8)")
print(f"ERRORS {errors} {non2xx}")
PYEOF
python3 "$tmp/summary.py" "$tmp/rounds" "$NCPU" >"$tmp/summary"
grep -v '^ERRORS' "$tmp/summary"

# Every acknowledged request has its audit row (warm-up included).
audited=$(python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM audit WHERE action = '"'"'sign.digest'"'"' AND outcome = 0").fetchone()[0])' \
    "$tmp/data/qwick.db")
echo "  audit rows   $audited (warm-up included)"
# Group commit as the server saw it (warm-up included).
python3 - "$port" "$tmp/data/tls-ca.pem" "$optok" <<'PYEOF' || true
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(f"https://127.0.0.1:{sys.argv[1]}/metrics",
                             headers={"Authorization": f"Bearer {sys.argv[3]}"})
text = urllib.request.urlopen(req, context=ctx).read().decode()
v = {l.split()[0]: float(l.split()[1]) for l in text.splitlines()
     if l.startswith("qwickd_store_") and not l.startswith("#")}
c, w, d, k = (v.get(f"qwickd_store_{n}_total", 0)
              for n in ("commits", "writes", "delayed_commits", "checkpoints"))
if c:
    print(f"  commits      {int(c)} for {int(w)} writes ({w / c:.1f} per fsync, {int(d)} delayed), "
          f"{int(k)} checkpoints")
PYEOF

kill -TERM "$pid"
wait "$pid" || true
pid=""
# shellcheck disable=SC2046
set -- $(sed -n 's/^ERRORS //p' "$tmp/summary")
if [ "$1" != 0 ] || [ "$2" != 0 ]; then
    echo "bench/server.sh: $1 errors, $2 non-2xx responses" >&2
    exit 1
fi
