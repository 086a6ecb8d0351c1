#!/bin/sh
# make demo: the whole signing flow against a real qwickd on loopback.
#   1. qwickd init in a fresh directory (dev PKI, first API key)
#   2. qwickd serve on a free loopback port
#   3. cross-compile demo/hello.c into a PE
#   4. qwick sign it through the API (only the digest is sent), timestamped by
#      the server's /tsa
#   5. verify it with qwick verify and with osslsigncode, against the dev roots
#   6. stop the server
# Exits non-zero on any failure; the server is always stopped.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
QWICKD=$BUILD/qwickd

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-demo.XXXXXX")
pid=""
stop_server() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
    echo "demo: FAILED: $*" >&2
    if [ -s "$tmp/server.log" ]; then
        echo "--- qwickd log (last lines) ---" >&2
        tail -n 20 "$tmp/server.log" >&2
    fi
    exit 1
}
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

echo "qwick demo: digest proxy signing, end to end"

# 1. A fresh data directory.
"$QWICKD" init --data "$tmp/data" --json >"$tmp/init.json" 2>"$tmp/init.log" ||
    { cat "$tmp/init.log" >&2; fail "qwickd init"; }
QWICK_API_KEY=$(jget "$tmp/init.json" api_key)
export QWICK_API_KEY
root_ca=$(jget "$tmp/init.json" root_ca)
tsa_root_ca=$(jget "$tmp/init.json" tsa_root_ca)
tls_ca=$(jget "$tmp/init.json" tls_ca)
echo "  init     $tmp/data: dev root CA, code-signing key (encrypted), TSA, TLS cert, API key"

# 2. Serve on a port the kernel picks.
"$QWICKD" serve --data "$tmp/data" --listen 127.0.0.1:0 --port-file "$tmp/port" \
    2>"$tmp/server.log" &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
    kill -0 "$pid" 2>/dev/null || { pid=""; fail "qwickd serve exited"; }
    i=$((i + 1))
    [ "$i" -le 100 ] || fail "qwickd serve did not write its port file"
    sleep 0.1
done
sleep 0.1 # the port file may be written in more than one step
port=$(sed 's/.*://' "$tmp/port" | tr -d ' \n')
server="https://127.0.0.1:$port"
echo "  serve    qwickd on $server (pid $pid)"

# 3. A sample PE.
x86_64-w64-mingw32-gcc -O2 -o "$tmp/hello.exe" "$SRC/demo/hello.c" || fail "building hello.exe"
echo "  build    hello.exe: $(wc -c <"$tmp/hello.exe" | tr -d ' ') bytes," \
    "digest $("$QWICK" digest "$tmp/hello.exe" | cut -c1-16)..."

# 4. Sign through the API; timestamp from the URL the server names.
"$QWICK" sign --server "$server" --cacert "$tls_ca" --json \
    --description "Qwick demo" --url "https://example.invalid/qwick-demo" \
    "$tmp/hello.exe" >"$tmp/sign.json" 2>"$tmp/sign.log" ||
    { cat "$tmp/sign.log" >&2; fail "qwick sign"; }
rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["files"][0]["requestId"])' \
    "$tmp/sign.json")
echo "  sign     hello.exe signed by the server (request $rid), timestamped via $server/tsa"

# 5. Two independent verifiers, both against the dev roots.
"$QWICK" verify --json --ca "$root_ca" --tsa-ca "$tsa_root_ca" "$tmp/hello.exe" >"$tmp/verify.json" \
    2>"$tmp/verify.err" || { cat "$tmp/verify.json" "$tmp/verify.err" >&2; fail "qwick verify"; }
echo "  verify   qwick verify: $(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["files"][0]["signatures"][0]
print("valid; signer \"%s\", %s, timestamp %s" % (s["signer"], s["digest_algorithm"], s["timestamp"]["time"]))
' "$tmp/verify.json")"
osslsigncode verify -CAfile "$root_ca" -TSA-CAfile "$tsa_root_ca" -in "$tmp/hello.exe" \
    >"$tmp/ossl.txt" 2>&1 || { cat "$tmp/ossl.txt" >&2; fail "osslsigncode verify"; }
grep -q "^Signature verification: ok" "$tmp/ossl.txt" &&
    grep -q "^Timestamp Server Signature verification: ok" "$tmp/ossl.txt" ||
    { cat "$tmp/ossl.txt" >&2; fail "osslsigncode verify"; }
echo "  verify   osslsigncode verify: signature ok, timestamp ok," \
    "$(grep -m1 '^Number of verified signatures' "$tmp/ossl.txt" | tr 'N' 'n')"
if command -v wine >/dev/null 2>&1; then
    echo "  run      $(wine "$tmp/hello.exe" 2>/dev/null | tr -d '\r')"
fi

# 6. Graceful stop (SIGTERM lets in-flight requests finish).
stop_server
echo "  stop     qwickd stopped"
echo "demo: OK: hello.exe signed through the API without leaving this machine"
