#!/bin/sh
# make demo: the whole signing flow against a real qwickd on loopback.
#   1. qwickd init in a fresh directory (dev PKI, first API key)
#   2. qwickd serve on a free loopback port
#   3. cross-compile demo/hello.c into a PE
#   4. qwick sign it through the API (only the digest is sent), timestamped by
#      the server's TSA within the same request
#   5. verify it with qwick verify and with osslsigncode, against the dev roots
#   6. stop the server
# Exits non-zero on any failure; the server is always stopped.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
QWICKD=$BUILD/qwickd
. "$SRC_ROOT/tests/integration/lib.sh"
t_init demo

# die MSG [LOG]: what failed, its log, and the end of the server's log.
die() {
    if [ -n "${2:-}" ] && [ "$2" != "$tmp/server.log" ]; then cat "$2" >&2; fi
    echo "demo: FAILED: $1" >&2
    if [ -s "$tmp/server.log" ]; then
        echo "--- qwickd log (last lines) ---" >&2
        tail -n 20 "$tmp/server.log" >&2
    fi
    exit 1
}

echo "qwick demo: digest proxy signing, end to end"

# 1. A fresh data directory.
qwickd_init "$tmp/data"
echo "  init     $tmp/data: dev root CA, code-signing key (encrypted), TSA, TLS cert, API key"

# 2. Serve on a port the kernel picks.
start_qwickd "$tmp/data"
echo "  serve    qwickd on $QWICKD_URL (pid $QWICKD_PID)"

# 3. A sample PE.
build_pe "$tmp/hello.exe" x64 "$SRC_ROOT/demo/hello.c"
echo "  build    hello.exe: $(wc -c <"$tmp/hello.exe" | tr -d ' ') bytes," \
    "digest $(qdigest sha256 "$tmp/hello.exe" | cut -c1-16)..."

# 4. Sign through the API; timestamp from the URL the server names.
QWICK_API_KEY=$QWICKD_API_KEY
export QWICK_API_KEY
"$QWICK" sign --server "$QWICKD_URL" --cacert "$QWICKD_TLS_CA" --json \
    --description "Qwick demo" --url "https://example.invalid/qwick-demo" \
    "$tmp/hello.exe" >"$tmp/sign.json" 2>"$tmp/sign.log" || die "qwick sign" "$tmp/sign.log"
rid=$(json_get "$tmp/sign.json" files.0.requestId)
echo "  sign     hello.exe signed by the server (request $rid), timestamped by its TSA in the same request"

# 5. Two independent verifiers, both against the dev roots.
"$QWICK" verify --json --ca "$QWICKD_ROOT_CA" --tsa-ca "$QWICKD_TSA_ROOT_CA" "$tmp/hello.exe" \
    >"$tmp/verify.json" 2>"$tmp/verify.err" || { cat "$tmp/verify.json" >&2; die "qwick verify" "$tmp/verify.err"; }
echo "  verify   qwick verify: $(python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["files"][0]["signatures"][0]
print("valid; signer \"%s\", %s, timestamp %s" % (s["signer"], s["digest_algorithm"], s["timestamp"]["time"]))
' "$tmp/verify.json")"
ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/hello.exe" 1 yes >&2 || die "osslsigncode verify"
echo "  verify   osslsigncode verify: signature ok, timestamp ok," \
    "$(grep -m1 '^Number of verified signatures' "$tmp/ossl.out" | tr 'N' 'n')"
if command -v wine >/dev/null 2>&1; then
    echo "  run      $(wine "$tmp/hello.exe" 2>/dev/null | tr -d '\r')"
fi

# 6. The signature is on record: the transparency log, checked from outside
#    under the log key init printed.
logkey=$(json_get "$tmp/init.json" log_public_key)
XDG_STATE_HOME=$tmp/state "$QWICK" log inclusion --server "$QWICKD_URL" --cacert "$QWICKD_TLS_CA" \
    --log-key "$logkey" "$tmp/hello.exe" \
    >"$tmp/incl.out" 2>"$tmp/incl.err" || die "qwick log inclusion" "$tmp/incl.err"
echo "  log      $(sed 's|^.*/hello.exe: ||' "$tmp/incl.out")"
XDG_STATE_HOME=$tmp/state "$QWICK" log verify --server "$QWICKD_URL" --cacert "$QWICKD_TLS_CA" \
    --log-key "$logkey" >"$tmp/lv.out" 2>"$tmp/lv.err" ||
    die "qwick log verify" "$tmp/lv.err"
echo "  log      checkpoint verified: $(cat "$tmp/lv.out")"

# 7. Graceful stop (SIGTERM lets in-flight requests finish).
stop_qwickd
echo "  stop     qwickd stopped"
echo "demo: OK: hello.exe signed through the API without leaving this machine"
