#!/bin/sh
# qwick sign against a real qwickd on an ephemeral loopback port:
#  - PE32 and PE32+ with every digest algorithm; each result accepted by
#    qwick verify, osslsigncode verify (dev root + TSA root) and, for sha256
#    (the only hash sbsigntool implements), sbverify with the signing leaf;
#  - re-signing replaces the table, --append nests; -j 4 over 20 files; quoted
#    globs; --out; --detached checked by openssl cms and qwick verify --detached;
#  - settings from the config file and the environment, flags winning;
#  - failures: bad API key (file untouched), non-PE input among good ones,
#    --out with two inputs (usage), killed CLI (original byte-identical).
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-cli-sign.XXXXXX")
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

fails=0
checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL: $*"; }
# expect DESCRIPTION COMMAND...: the command must succeed.
expect() {
    d=$1
    shift
    if "$@" >"$tmp/last.out" 2>&1; then ok "$d"; else
        fail "$d (exit $?)"
        sed 's/^/    /' "$tmp/last.out" | tail -n 20
    fi
}
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# --- server ---------------------------------------------------------------
"$QWICKD" init --data "$tmp/data" --json >"$tmp/init.json"
QWICK_API_KEY=$(jget "$tmp/init.json" api_key)
root=$(jget "$tmp/init.json" root_ca)
tsaroot=$(jget "$tmp/init.json" tsa_root_ca)
tlsca=$(jget "$tmp/init.json" tls_ca)
"$QWICKD" serve --data "$tmp/data" --listen 127.0.0.1:0 --port-file "$tmp/port" \
    2>"$tmp/server.log" &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
    i=$((i + 1))
    if [ "$i" -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "FAIL: qwickd serve did not start"
        cat "$tmp/server.log"
        exit 1
    fi
    sleep 0.1
done
sleep 0.1
port=$(sed 's/.*://' "$tmp/port" | tr -d ' \n')
QWICK_SERVER="https://127.0.0.1:$port"
QWICK_CACERT=$tlsca
export QWICK_API_KEY QWICK_SERVER QWICK_CACERT
# No config file from the machine running the tests.
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME

# --- fixtures -------------------------------------------------------------
x86_64-w64-mingw32-gcc -O2 -o "$tmp/pe64.exe" "$SRC_ROOT/demo/hello.c"
i686-w64-mingw32-gcc -O2 -o "$tmp/pe32.exe" "$SRC_ROOT/demo/hello.c"

# The code-signing leaf out of a signed file, for sbverify.
leaf_of() { # FILE OUT
    rm -f "$tmp/sig.der"
    osslsigncode extract-signature -in "$1" -out "$tmp/sig.der" >/dev/null 2>&1 || return 1
    openssl pkcs7 -inform DER -in "$tmp/sig.der" -print_certs -out "$tmp/certs.pem" || return 1
    rm -f "$tmp"/cert-*.pem
    awk -v d="$tmp" '/BEGIN CERT/{n++} n{print > (d "/cert-" n ".pem")}' "$tmp/certs.pem"
    for c in "$tmp"/cert-*.pem; do
        if openssl x509 -in "$c" -noout -ext extendedKeyUsage 2>/dev/null | grep -q "Code Signing"; then
            cp "$c" "$2"
            return 0
        fi
    done
    return 1
}

osslverify() { # FILE [EXPECTED_SIGNATURE_COUNT]
    osslsigncode verify -CAfile "$root" -TSA-CAfile "$tsaroot" -in "$1" >"$tmp/ossl.out" 2>&1 ||
        { cat "$tmp/ossl.out"; return 1; }
    grep -q "Number of verified signatures: ${2:-1}\$" "$tmp/ossl.out" || { cat "$tmp/ossl.out"; return 1; }
}

qverify() { "$QWICK" verify --ca "$root" --tsa-ca "$tsaroot" "$@"; }

# --- every architecture x algorithm ---------------------------------------
for arch in pe32 pe64; do
    for alg in sha256 sha384 sha512; do
        f=$tmp/$arch-$alg.exe
        cp "$tmp/$arch.exe" "$f"
        expect "$arch $alg: sign" "$QWICK" sign --alg "$alg" --description "cli_sign test" "$f"
        expect "$arch $alg: qwick verify" qverify "$f"
        expect "$arch $alg: osslsigncode verify" osslverify "$f"
        if [ "$alg" = sha256 ]; then
            if leaf_of "$f" "$tmp/leaf.pem"; then
                expect "$arch $alg: sbverify --cert leaf" sbverify --cert "$tmp/leaf.pem" "$f"
            else
                fail "$arch $alg: could not extract the signing leaf"
            fi
        fi
    done
done

# --- re-sign replaces, --append nests ------------------------------------
f=$tmp/pe64-sha256.exe
expect "re-sign a signed file" "$QWICK" sign "$f"
expect "re-signed: one signature, osslsigncode accepts" osslverify "$f" 1
"$QWICK" verify --json --ca "$root" --tsa-ca "$tsaroot" "$f" >"$tmp/v.json" 2>&1 || true
n=$(python3 -c '
import json,sys
def walk(o):
    if isinstance(o, dict):
        if "nested" in o: yield o
        for v in o.values(): yield from walk(v)
    elif isinstance(o, list):
        for v in o: yield from walk(v)
print(len(list(walk(json.load(open(sys.argv[1]))))))' "$tmp/v.json" 2>/dev/null || echo "?")
[ "$n" = 1 ] && ok "re-signed: qwick verify sees one signature" ||
    fail "re-signed: qwick verify sees '$n' signatures"

expect "--append sha512" "$QWICK" sign --append --alg sha512 "$f"
expect "appended: osslsigncode sees 2 signatures" osslverify "$f" 2
expect "appended: qwick verify" qverify "$f"
qverify --json "$f" >"$tmp/v.json" 2>&1 || true
if python3 -c '
import json,sys
def walk(o):
    if isinstance(o, dict):
        if o.get("nested") is True: return True
        return any(walk(v) for v in o.values())
    if isinstance(o, list): return any(walk(v) for v in o)
    return False
sys.exit(0 if walk(json.load(open(sys.argv[1]))) else 1)' "$tmp/v.json"; then
    ok "appended: qwick verify --json shows nested:true"
else
    fail "appended: no nested:true in qwick verify --json"
    cat "$tmp/v.json"
fi

# --- parallel batch, quoted glob, --json ----------------------------------
mkdir "$tmp/batch"
for i in $(seq 1 20); do cp "$tmp/pe64.exe" "$tmp/batch/app$i.exe"; done
if "$QWICK" sign -j 4 --json "$tmp/batch/*.exe" >"$tmp/batch.json" 2>"$tmp/batch.err"; then
    s=$(jget "$tmp/batch.json" signed)
    [ "$s" = 20 ] && ok "-j 4: 20 files signed" || fail "-j 4: signed=$s"
else
    fail "-j 4 over 20 files (exit $?)"
    cat "$tmp/batch.err"
fi
bad=0
for i in $(seq 1 20); do osslverify "$tmp/batch/app$i.exe" >/dev/null || bad=$((bad + 1)); done
[ "$bad" = 0 ] && ok "-j 4: all 20 verify" || fail "-j 4: $bad files do not verify"
python3 -c '
import json,sys
d=json.load(open(sys.argv[1]))
assert d["failed"] == 0 and len(d["files"]) == 20
for f in d["files"]:
    assert f["ok"] is True and f["error"] is None and isinstance(f["requestId"], str), f
' "$tmp/batch.json" && ok "--json shape" || fail "--json shape"

# --- --out ------------------------------------------------------------------
cp "$tmp/pe32.exe" "$tmp/orig.exe"
cp "$tmp/orig.exe" "$tmp/orig.copy"
expect "--out" "$QWICK" sign --out "$tmp/out.exe" "$tmp/orig.exe"
cmp -s "$tmp/orig.exe" "$tmp/orig.copy" && ok "--out leaves the input alone" || fail "--out changed the input"
expect "--out result verifies" osslverify "$tmp/out.exe"
set +e
"$QWICK" sign --out "$tmp/x.exe" "$tmp/orig.exe" "$tmp/pe64.exe" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 2 ] && ok "--out with two inputs: exit 2" || fail "--out with two inputs: exit $rc"

# --- detached ----------------------------------------------------------------
printf 'release notes\nnot a PE file at all\n' >"$tmp/notes.txt"
expect "--detached" "$QWICK" sign --detached "$tmp/notes.txt"
expect "openssl cms -verify accepts the .p7s" openssl cms -verify -binary -inform DER \
    -in "$tmp/notes.txt.p7s" -content "$tmp/notes.txt" -CAfile "$root" -purpose any -out /dev/null
expect "qwick verify --detached" qverify --detached "$tmp/notes.txt.p7s" "$tmp/notes.txt"
echo tampered >>"$tmp/notes.txt"
if openssl cms -verify -binary -inform DER -in "$tmp/notes.txt.p7s" -content "$tmp/notes.txt" \
    -CAfile "$root" -purpose any -out /dev/null >/dev/null 2>&1; then
    fail "openssl cms accepted a changed file"
else ok "changed content rejected"; fi

# --- settings: config file, then env, flags first ---------------------------
mkdir -p "$XDG_CONFIG_HOME/qwick"
cp "$tlsca" "$XDG_CONFIG_HOME/qwick/tls-ca.pem"
printf '{"server":"%s","api_key":"%s","cacert":"tls-ca.pem","profile":"default"}\n' \
    "$QWICK_SERVER" "$QWICK_API_KEY" >"$XDG_CONFIG_HOME/qwick/config.json"
chmod 600 "$XDG_CONFIG_HOME/qwick/config.json"
cp "$tmp/pe64.exe" "$tmp/cfg.exe"
expect "settings from the config file alone" env -u QWICK_SERVER -u QWICK_API_KEY -u QWICK_CACERT \
    "$QWICK" sign "$tmp/cfg.exe"
cp "$tmp/pe64.exe" "$tmp/cfg.exe"
expect "--api-key beats a bad QWICK_API_KEY" env QWICK_API_KEY=qk_wrong \
    "$QWICK" sign --api-key "$QWICK_API_KEY" "$tmp/cfg.exe"
rm -rf "$XDG_CONFIG_HOME/qwick"

# --- failures ----------------------------------------------------------------
cp "$tmp/pe64.exe" "$tmp/bad.exe"
cp "$tmp/bad.exe" "$tmp/bad.copy"
set +e
QWICK_API_KEY=qk_notarealkey00000000000000000000 "$QWICK" sign "$tmp/bad.exe" >"$tmp/o" 2>"$tmp/e"
rc=$?
set -e
[ "$rc" = 1 ] && ok "bad API key: exit 1" || fail "bad API key: exit $rc"
grep -q "bad.exe: server: " "$tmp/e" && ok "bad API key: server error shown" ||
    { fail "bad API key: message"; cat "$tmp/e"; }
grep -q "qk_notarealkey" "$tmp/e" "$tmp/o" && fail "the API key was printed" || ok "API key not printed"
cmp -s "$tmp/bad.exe" "$tmp/bad.copy" && ok "bad API key: file unchanged" || fail "bad API key: file changed"

cp "$tmp/pe32.exe" "$tmp/good1.exe"
cp "$tmp/pe64.exe" "$tmp/good2.exe"
set +e
"$QWICK" sign "$tmp/good1.exe" "$tmp/notes.txt" "$tmp/good2.exe" >"$tmp/o" 2>"$tmp/e"
rc=$?
set -e
[ "$rc" = 1 ] && ok "non-PE input: exit 1" || fail "non-PE input: exit $rc"
grep -q "notes.txt: .*PE" "$tmp/e" && ok "non-PE input: clear error" || { fail "non-PE message"; cat "$tmp/e"; }
grep -q "signed 2, failed 1" "$tmp/o" && ok "non-PE input: summary" || { fail "summary"; cat "$tmp/o"; }
expect "non-PE input: the others are signed" osslverify "$tmp/good1.exe"
expect "non-PE input: the others are signed (2)" osslverify "$tmp/good2.exe"

# --- client behaviour against a scripted server (plain http on loopback) -----
# 503 + Retry-After, then 429, then a JSON error; then an oversize body.
cat >"$tmp/mock.py" <<'EOF'
import http.server, json, sys, time
hits = []
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra: self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        req = json.loads(self.rfile.read(n))
        hits.append(time.time())
        with open(sys.argv[2], "a") as f:
            f.write("%s %s %s\n" % (self.headers.get("Authorization", "")[:10], req.get("format"), req.get("profile")))
        name = req["metadata"]["filename"]
        if name.startswith("retry"):
            k = len([h for h in hits]) % 3
            if k == 1: return self.send(503, b'{"error":{"code":"unavailable","message":"busy"}}', [("Retry-After", "1")])
            if k == 2: return self.send(429, b'{"error":{"code":"rate_limited","message":"slow down"}}', [("Retry-After", "1")])
            return self.send(403, b'{"error":{"code":"forbidden","message":"profile not allowed"}}')
        return self.send(200, b'{"signature":"' + b"A" * (2 * 1024 * 1024) + b'"}')
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
EOF
python3 "$tmp/mock.py" "$tmp/mock.port" "$tmp/mock.log" 2>/dev/null &
mpid=$!
i=0
while [ ! -s "$tmp/mock.port" ] && [ "$i" -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
mport=$(cat "$tmp/mock.port")
cp "$tmp/pe64.exe" "$tmp/retry.exe"
set +e
t0=$(date +%s)
"$QWICK" sign --server "http://127.0.0.1:$mport" --profile rel "$tmp/retry.exe" >"$tmp/o" 2>"$tmp/e"
rc=$?
t1=$(date +%s)
set -e
[ "$rc" = 1 ] && ok "scripted: exit 1" || fail "scripted: exit $rc"
grep -q "retry.exe: server: forbidden: profile not allowed" "$tmp/e" && ok "scripted: error surfaced" ||
    { fail "scripted: message"; cat "$tmp/e"; }
[ "$(wc -l <"$tmp/mock.log")" = 3 ] && ok "scripted: retried 503 and 429, then stopped" ||
    { fail "scripted: $(wc -l <"$tmp/mock.log") requests"; cat "$tmp/mock.log"; }
[ $((t1 - t0)) -ge 2 ] && ok "scripted: Retry-After honoured" || fail "scripted: no wait"
grep -q "^Bearer qk_ authenticode-pe rel$" "$tmp/mock.log" && ok "scripted: bearer, format, profile" ||
    { fail "scripted: request shape"; cat "$tmp/mock.log"; }
cp "$tmp/pe64.exe" "$tmp/huge.exe"
set +e
"$QWICK" sign --server "http://127.0.0.1:$mport" "$tmp/huge.exe" >"$tmp/o" 2>"$tmp/e"
rc=$?
set -e
[ "$rc" = 1 ] && grep -q "larger than" "$tmp/e" && ok "scripted: oversize response refused" ||
    { fail "scripted: oversize ($rc)"; cat "$tmp/e"; }
cmp -s "$tmp/huge.exe" "$tmp/pe64.exe" && ok "scripted: file untouched" || fail "scripted: file changed"
kill "$mpid" 2>/dev/null || true
wait "$mpid" 2>/dev/null || true
set +e
"$QWICK" sign --server "http://192.0.2.1:8080" "$tmp/huge.exe" >/dev/null 2>"$tmp/e"
rc=$?
set -e
[ "$rc" = 2 ] && grep -q "https" "$tmp/e" && ok "plain http off loopback refused" ||
    { fail "plain http off loopback: exit $rc"; cat "$tmp/e"; }

# --- a killed CLI leaves the original intact ----------------------------------
# ~200 MiB (an overlay is hashed like the rest), killed at several points of
# its run: digest, API call, write of the temporary, verification, rename.
mkdir "$tmp/big"
cp "$tmp/pe64.exe" "$tmp/big/big.exe"
head -c 200000000 /dev/urandom >>"$tmp/big/big.exe"
cp "$tmp/big/big.exe" "$tmp/big.copy"
for delay in 0.05 0.2 0.4 0.7 1.0 1.5; do
    "$QWICK" sign "$tmp/big/big.exe" >/dev/null 2>&1 &
    cpid=$!
    sleep "$delay"
    kill -9 "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    if cmp -s "$tmp/big/big.exe" "$tmp/big.copy"; then
        ok "SIGKILL after ${delay}s: original intact"
    elif osslverify "$tmp/big/big.exe" >/dev/null; then
        ok "SIGKILL after ${delay}s: the run had completed; file validly signed"
        cp "$tmp/big.copy" "$tmp/big/big.exe"
    else
        fail "SIGKILL after ${delay}s: original damaged"
        cp "$tmp/big.copy" "$tmp/big/big.exe"
    fi
    # Only the documented temporary may be left behind.
    for x in "$tmp"/big/.[!.]* "$tmp"/big/*; do
        [ -e "$x" ] || continue
        case $(basename "$x") in
        big.exe) ;;
        .big.exe.qwick-??????) rm -f "$x" ;;
        *) fail "unexpected file left behind: $x" ;;
        esac
    done
done
# SIGTERM is handled: the run stops, the temporary is removed.
"$QWICK" sign "$tmp/big/big.exe" >/dev/null 2>&1 &
cpid=$!
sleep 0.3
kill -TERM "$cpid" 2>/dev/null || true
wait "$cpid" 2>/dev/null || true
if cmp -s "$tmp/big/big.exe" "$tmp/big.copy" || osslverify "$tmp/big/big.exe" >/dev/null; then
    ok "SIGTERM: file intact or completely signed"
else fail "SIGTERM: file damaged"; fi
left=$(find "$tmp/big" -name '.big.exe.qwick-*' | wc -l)
[ "$left" = 0 ] && ok "SIGTERM: no temporary left" || fail "SIGTERM: $left temporaries left"

echo "$((checks - fails)) of $checks checks passed"
[ "$fails" -eq 0 ]
