#!/bin/sh
# qwickd against slow and abusive clients (tests/tools/slow_clients.py), with
# short deadlines from qwickd.json so the run stays under a minute:
#  - the new limits.* and tsa.* settings are range-checked, naming the key;
#  - one source address (127.0.0.2: all of 127.0.0.0/8 is loopback) holding
#    320 slow connections of every kind (idle TCP, a ClientHello or a request
#    head trickled a byte a second, idle after the handshake, a trickled body,
#    a trickled second request) and topping them up every second for 20 s:
#    beyond limits.max_connections_per_ip its connections are refused, while
#    127.0.0.1 gets every /healthz answered within a second, and each held
#    connection is closed by its deadline, long before the idle timeout;
#  - each deadline on its own (handshake, head, body, kept-alive head), over
#    TLS and plain HTTP, counted in qwickd_connections_dropped_total;
#  - POST /tsa: a burst beyond the address's bucket gets 429 + Retry-After
#    (another address is unaffected), tsa.require_api_key answers 401 without
#    a key and a verifiable timestamp with one, and a flood of timestamps does
#    not hold up /healthz (the RSA work runs on the signing threads).
set -eu
: "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init server_dos
need openssl curl
# The system interpreter (stdlib only): a version manager's shim costs half
# a second a start, and this script starts Python often.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
slow="$SRC_ROOT/tests/tools/slow_clients.py"

data="$tmp/data"
qwickd_init "$data"
tlsca=$QWICKD_TLS_CA
tsaroot=$QWICKD_TSA_ROOT_CA
key=$QWICKD_API_KEY

# py_checks FILE CODE: CODE calls check(DESC, CONDITION[, INFO]) once per check
# on the JSON in FILE (as d): many checks for one interpreter start.
py_checks() {
    "$py" -c 'import json, sys
d = json.load(open(sys.argv[1]))
def check(desc, cond, info=None):
    print(("ok" if cond else "fail") + "\t" + desc + ("" if cond else ": %s" % (info or d)))
exec(sys.argv[2])' "$1" "$2" >"$tmp/checks.out" 2>&1 || fail "checks on $1: $(tail -n 3 "$tmp/checks.out")"
    while IFS="$(printf '\t')" read -r _r _d; do
        case $_r in
        ok) ok "$_d" ;;
        fail) fail "$_d" ;;
        *) echo "    $_r $_d" ;;
        esac
    done <"$tmp/checks.out"
}

# conf PYTHON: edits qwickd.json, its object being `c`.
conf() {
    "$py" -c 'import json,sys; c = json.load(open(sys.argv[1])); exec(sys.argv[2]); json.dump(c, open(sys.argv[1], "w"))' \
        "$data/qwickd.json" "$1"
}
# Deadlines of 2 s (TLS handshake) and 3 s (head, body) against an idle
# timeout of 30 s; 40 connections per address out of 256. /metrics open to
# read the counters without a credential.
conf 'c["limits"].update(max_connections=256, max_connections_per_ip=40,
        connection_timeout_seconds=30, tls_handshake_timeout_seconds=2,
        request_head_timeout_seconds=3, request_body_timeout_seconds=3)
c["metrics"]["anonymous"] = True'
cp "$data/qwickd.json" "$tmp/base.json"

# --- the settings are range-checked ------------------------------------------------
bad_config() { # DESC PYTHON-EDIT EXPECTED-MESSAGE
    conf "$2"
    if timeout 20 "$QWICKD" serve --data "$data" --listen 127.0.0.1:0 >"$tmp/serve.out" 2>&1; then
        fail "$1 (serve started)"
    elif grep -q -- "$3" "$tmp/serve.out"; then
        ok "$1"
    else
        fail "$1"
        cat "$tmp/serve.out" >&2
    fi
    cp "$tmp/base.json" "$data/qwickd.json"
}
bad_config "max_connections_per_ip 0 refused" \
    'c["limits"]["max_connections_per_ip"] = 0' 'limits.max_connections_per_ip'
bad_config "max_connections_per_ip not below max_connections refused" \
    'c["limits"]["max_connections_per_ip"] = 256' 'limits.max_connections_per_ip'
bad_config "tls_handshake_timeout_seconds 0 refused" \
    'c["limits"]["tls_handshake_timeout_seconds"] = 0' 'limits.tls_handshake_timeout_seconds'
bad_config "request_head_timeout_seconds over an hour refused" \
    'c["limits"]["request_head_timeout_seconds"] = 3601' 'limits.request_head_timeout_seconds'
bad_config "request_body_timeout_seconds not an integer refused" \
    'c["limits"]["request_body_timeout_seconds"] = "30"' 'limits.request_body_timeout_seconds'
bad_config "tsa.rate_per_ip_per_second 0 refused" \
    'c["tsa"]["rate_per_ip_per_second"] = 0' 'tsa.rate_per_ip_per_second'
bad_config "tsa.burst_per_ip 0 refused" 'c["tsa"]["burst_per_ip"] = 0' 'tsa.burst_per_ip'
bad_config "tsa.require_api_key must be a boolean" \
    'c["tsa"]["require_api_key"] = 1' 'tsa.require_api_key'
bad_config "unknown tsa key refused" 'c["tsa"]["rate"] = 1' 'tsa.rate'

# --- one address cannot starve the others ------------------------------------------
start_qwickd "$data"
port=$QWICKD_PORT
"$py" "$slow" healthz --port "$port" --cafile "$tlsca" --src 127.0.0.1 --duration 20 \
    --interval 0.2 --timeout 1 >"$tmp/healthz.json" 2>"$tmp/healthz.err" &
hz=$!
"$py" "$slow" flood --port "$port" --src 127.0.0.2 --count 320 --duration 20 --interval 1 \
    >"$tmp/flood.json" 2>"$tmp/flood.err" || fail "flood client: $(tail -n 3 "$tmp/flood.err")"
wait "$hz" || fail "healthz client: $(tail -n 3 "$tmp/healthz.err")"
echo "flood: $(cat "$tmp/flood.json")"
echo "healthz: $(cat "$tmp/healthz.json")"
py_checks "$tmp/healthz.json" 'check("127.0.0.1: every /healthz answered within 1 s during the flood",
      d["polls"] >= 50 and d["failures"] == 0)'
# Every held connection was closed by a deadline: 2 s for the handshake, then
# 3 s for the head or the body, against 30 s idle.
py_checks "$tmp/flood.json" 'check("127.0.0.2: connections beyond max_connections_per_ip refused",
      d["refused"] >= 280 and 0 < d["max_held"] <= 40)
check("127.0.0.2: every slow connection closed by its deadline, not the idle timeout",
      len(d["max_lived"]) == 6 and all(v < 7 for v in d["max_lived"].values()))'

# --- each deadline on its own --------------------------------------------------------
probe() { # OUT [slow_clients.py ARGS...]
    _o=$1
    shift
    "$py" "$slow" probe --host 127.0.0.1 --timeout 15 --interval 1 "$@" >"$_o" 2>"$_o.err" ||
        fail "probe client: $(tail -n 3 "$_o.err")"
    echo "probe: $(cat "$_o")"
}
# closed_at(KIND, DEADLINE): the server closed KIND's connection DEADLINE s
# (within a sweep and a scheduling delay) after the start of what it waited
# for ("stuck": from connect, the handshake's end, the head, or the answer).
closed_at='def closed_at(kind, deadline):
    r = d[kind]
    return r["how"] in ("eof", "reset") and deadline - 0.3 <= r["stuck"] <= deadline + 1.5
'
probe "$tmp/probe.json" --port "$port" --src 127.0.0.3
py_checks "$tmp/probe.json" "$closed_at"'
check("TLS: an idle TCP connection closed at the handshake deadline", closed_at("tcp-idle", 2))
check("TLS: a trickled ClientHello closed at the handshake deadline", closed_at("hello-trickle", 2))
check("TLS: silence after the handshake closed at the head deadline", closed_at("tls-idle", 3))
check("TLS: a trickled request head closed at the head deadline", closed_at("head-trickle", 3))
check("TLS: a trickled body closed at the body deadline", closed_at("body-trickle", 3))
check("TLS: a trickled second request closed at the head deadline",
      closed_at("keepalive-trickle", 3) and d["keepalive-trickle"]["answered"])'

curl -sS --cacert "$tlsca" "$QWICKD_URL/metrics" >"$tmp/metrics.txt" 2>&1 || true
for r in per_ip_limit handshake_deadline head_deadline body_deadline; do
    check_grep "metrics: connections dropped ($r)" \
        "^qwickd_connections_dropped_total{reason=\"$r\"} [1-9]" "$tmp/metrics.txt"
done
stop_qwickd
[ "$stopped" = 0 ] && ok "server stops cleanly after the flood" || fail "exit $stopped"

# --- plain HTTP: the head deadline runs from accept ---------------------------------------
start_qwickd "$data" --plain-http
probe "$tmp/plain.json" --port "$QWICKD_PORT" --src 127.0.0.3 --plain \
    --kinds tcp-idle,head-trickle,body-trickle,keepalive-trickle
py_checks "$tmp/plain.json" "$closed_at"'
check("plain HTTP: an idle connection closed at the head deadline", closed_at("tcp-idle", 3))
check("plain HTTP: a trickled head closed at the head deadline", closed_at("head-trickle", 3))
check("plain HTTP: a trickled body closed at the body deadline", closed_at("body-trickle", 3))
check("plain HTTP: a trickled second request closed at the head deadline",
      closed_at("keepalive-trickle", 3) and d["keepalive-trickle"]["answered"])'
stop_qwickd

# --- POST /tsa: a token bucket per client address -------------------------------------------
openssl rand 64 >"$tmp/content.bin"
openssl ts -query -data "$tmp/content.bin" -sha256 -cert -out "$tmp/q.tsq" 2>/dev/null
# tsa SRC KEY N: POST /tsa from SRC (KEY "-": none); $tmp/tsa.N.{code,body,hdr}.
tsa() {
    _auth="X-No-Key: 1"
    [ "$2" = - ] || _auth="Authorization: Bearer $2"
    curl -sS --interface "$1" --cacert "$tlsca" -o "$tmp/tsa.$3.body" -D "$tmp/tsa.$3.hdr" \
        -w '%{http_code}\n' -H 'Content-Type: application/timestamp-query' -H "$_auth" \
        --data-binary @"$tmp/q.tsq" "$QWICKD_URL/tsa" >"$tmp/tsa.$3.code" 2>>"$tmp/curl.err" || true
}
verify_tsr() { # N
    openssl ts -verify -in "$tmp/tsa.$1.body" -queryfile "$tmp/q.tsq" -CAfile "$tsaroot" \
        >"$tmp/verify.out" 2>&1 && grep -q 'Verification: OK' "$tmp/verify.out"
}
conf 'c["tsa"].update(rate_per_ip_per_second=1, burst_per_ip=3)'
start_qwickd "$data"
for i in $(seq 1 15); do tsa 127.0.0.1 - "$i"; done
n200=$(cat "$tmp"/tsa.*.code | grep -c '^200$' || true)
n429=$(cat "$tmp"/tsa.*.code | grep -c '^429$' || true)
echo "/tsa burst of 15 (bucket 3, 1/s): $n200 x 200, $n429 x 429"
if [ "$n200" -ge 3 ] && [ "$n429" -ge 5 ] && [ $((n200 + n429)) = 15 ]; then
    ok "/tsa: a burst beyond the bucket gets 429"
else fail "/tsa burst: $n200 x 200, $n429 x 429"; fi
check "/tsa: the admitted timestamps verify" verify_tsr 1
last=$(grep -l '^429$' "$tmp"/tsa.*.code | tail -n 1)
last=${last%.code}
ra=$(tr -d '\r' <"$last.hdr" | sed -n 's/^[Rr]etry-[Aa]fter: *//p')
case $ra in
[1-9] | [1-9][0-9]*) ok "/tsa: 429 carries Retry-After ($ra s)" ;;
*) fail "/tsa: 429 Retry-After '$ra'" ;;
esac
py_checks "$last.body" 'check("/tsa: 429 body is the rate_limited JSON error",
      d["error"]["code"] == "rate_limited" and d["error"]["message"])'
tsa 127.0.0.3 - other
check_eq "/tsa: another address keeps its own bucket" "$(cat "$tmp/tsa.other.code")" 200
stop_qwickd

# --- POST /tsa with tsa.require_api_key ----------------------------------------------------
conf 'c["tsa"]["require_api_key"] = True'
start_qwickd "$data"
tsa 127.0.0.1 - nokey
check_eq "/tsa without a key -> 401" "$(cat "$tmp/tsa.nokey.code")" 401
py_checks "$tmp/tsa.nokey.body" 'check("/tsa without a key: missing_api_key",
      d["error"]["code"] == "missing_api_key")'
tsa 127.0.0.1 qk_0000000000000000000000000000000000000000000 badkey
check_eq "/tsa with an unknown key -> 401" "$(cat "$tmp/tsa.badkey.code")" 401
tsa 127.0.0.1 "$key" withkey
check_eq "/tsa with a key -> 200" "$(cat "$tmp/tsa.withkey.code")" 200
check "/tsa with a key: the timestamp verifies" verify_tsr withkey
if openssl ts -reply -in "$tmp/tsa.withkey.body" -text 2>/dev/null | grep -q 'Status: Granted'; then
    ok "/tsa with a key: granted"
else fail "/tsa with a key: not granted"; fi
# qwick sends its API key to the server's own TSA (and only there).
qwick_env
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME
build_pe "$tmp/ts.exe" x64
check "qwick sign timestamps through a /tsa that requires a key" "$QWICK" sign "$tmp/ts.exe"
check "  and the result verifies" ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/ts.exe" 1 yes
stop_qwickd

# --- a flood of timestamps does not hold up the HTTP threads ---------------------------------
# One HTTP thread and one signing thread: were the RSA work done on the HTTP
# thread, /healthz would wait behind every queued timestamp (~150 ms median
# here before the work moved to the signing threads; ~10 ms since).
conf 'c["tsa"].update(rate_per_ip_per_second=1000000, burst_per_ip=1000000,
        require_api_key=False); c["limits"]["threads"] = 1'
start_qwickd "$data"
"$py" "$slow" healthz --port "$QWICKD_PORT" --cafile "$tlsca" --duration 6 --interval 0.1 \
    --timeout 2 >"$tmp/hz2.json" 2>"$tmp/hz2.err" &
hz=$!
"$py" "$slow" tsa-flood --port "$QWICKD_PORT" --cafile "$tlsca" --query "$tmp/q.tsq" \
    --src 127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7 --conns 8 --duration 6 >"$tmp/tsaflood.json" \
    2>"$tmp/tsaflood.err" || fail "tsa flood client: $(tail -n 3 "$tmp/tsaflood.err")"
wait "$hz" || fail "healthz client: $(tail -n 3 "$tmp/hz2.err")"
echo "tsa flood: $(cat "$tmp/tsaflood.json"); healthz: $(cat "$tmp/hz2.json")"
py_checks "$tmp/tsaflood.json" 'check("tsa flood: timestamps were made", d["statuses"].get("200", 0) >= 100)'
py_checks "$tmp/hz2.json" 'check("tsa flood: /healthz stays fast (median under 75 ms)",
      d["failures"] == 0 and d["p50"] < 0.075)'
stop_qwickd
[ "$stopped" = 0 ] && ok "server stops cleanly after the TSA flood" || fail "exit $stopped"

t_done
