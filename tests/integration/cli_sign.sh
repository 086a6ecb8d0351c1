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
. "$SRC_ROOT/tests/integration/lib.sh"
t_init cli_sign

# --- server ---------------------------------------------------------------
start_qwickd "$tmp/data"
qwick_env
root=$QWICKD_ROOT_CA
tsaroot=$QWICKD_TSA_ROOT_CA
tlsca=$QWICKD_TLS_CA
# No config file from the machine running the tests.
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME

# --- fixtures -------------------------------------------------------------
build_pe "$tmp/pe64.exe" x64
build_pe "$tmp/pe32.exe" x86

osslverify() { ossl_verify "$root" "$tsaroot" "$@"; } # FILE [EXPECTED_SIGNATURE_COUNT]
qverify() { "$QWICK" verify --ca "$root" --tsa-ca "$tsaroot" "$@"; }

# --- every architecture x algorithm ---------------------------------------
for arch in pe32 pe64; do
    for alg in sha256 sha384 sha512; do
        f=$tmp/$arch-$alg.exe
        cp "$tmp/$arch.exe" "$f"
        check "$arch $alg: sign" "$QWICK" sign --alg "$alg" --description "cli_sign test" "$f"
        check "$arch $alg: qwick verify" qverify "$f"
        check "$arch $alg: osslsigncode verify" osslverify "$f"
        if [ "$alg" = sha256 ]; then
            if signing_leaf "$f" "$tmp/leaf.pem"; then
                check "$arch $alg: sbverify --cert leaf" sbverify --cert "$tmp/leaf.pem" "$f"
            else
                fail "$arch $alg: could not extract the signing leaf"
            fi
        fi
    done
done

# --- re-sign replaces, --append nests ------------------------------------
f=$tmp/pe64-sha256.exe
check "re-sign a signed file" "$QWICK" sign "$f"
check "re-signed: one signature, osslsigncode accepts" osslverify "$f" 1
"$QWICK" verify --json --ca "$root" --tsa-ca "$tsaroot" "$f" >"$tmp/v.json" 2>&1 || true
# The objects with a "nested" member: one per signature.
walk='
def walk(o):
    if isinstance(o, dict):
        if "nested" in o: yield o
        for v in o.values(): yield from walk(v)
    elif isinstance(o, list):
        for v in o: yield from walk(v)
'
check_py "re-signed: qwick verify sees one signature" "$tmp/v.json" "$walk
n = len(list(walk(d)))
assert n == 1, n"

check "--append sha512" "$QWICK" sign --append --alg sha512 "$f"
check "appended: osslsigncode sees 2 signatures" osslverify "$f" 2
check "appended: qwick verify" qverify "$f"
qverify --json "$f" >"$tmp/v.json" 2>&1 || true
check_py "appended: qwick verify --json shows nested:true" "$tmp/v.json" "$walk
assert any(s['nested'] is True for s in walk(d)), d"

# --- parallel batch, quoted glob, --json ----------------------------------
mkdir "$tmp/batch"
for i in $(seq 1 20); do cp "$tmp/pe64.exe" "$tmp/batch/app$i.exe"; done
check_status 0 "-j 4 over 20 files" "$QWICK" sign -j 4 --json "$tmp/batch/*.exe"
cp "$tmp/out" "$tmp/batch.json"
check_eq "-j 4: 20 files signed" "$(json_get "$tmp/batch.json" signed 2>/dev/null)" 20
bad=0
for i in $(seq 1 20); do osslverify "$tmp/batch/app$i.exe" >/dev/null || bad=$((bad + 1)); done
check_eq "-j 4: all 20 verify (files that do not)" "$bad" 0
check_py "--json shape" "$tmp/batch.json" '
assert d["failed"] == 0 and len(d["files"]) == 20
for f in d["files"]:
    assert f["ok"] is True and f["error"] is None and isinstance(f["requestId"], str), f
'

# --- who timestamps: the server by default, the CLI with --timestamp-url -------
# POST /tsa requests, from the server's own metrics.
tsa_posts() {
    curl -sS --fail --cacert "$tlsca" -H "Authorization: Bearer $QWICKD_OPERATOR_TOKEN" \
        "$QWICKD_URL/metrics" | python3 -c '
import re, sys
n = 0
for line in sys.stdin:
    m = re.match(r"qwickd_http_requests_total\{([^}]*)\} (\d+)", line)
    if m and "route=\"tsa\"" in m.group(1):
        n += int(m.group(2))
print(n)'
}
mkdir "$tmp/who"
for i in 1 2 3; do cp "$tmp/pe64.exe" "$tmp/who/s$i.exe"; cp "$tmp/pe32.exe" "$tmp/who/c$i.exe"; done
n0=$(tsa_posts)
check "default: 3 files signed, stamped by the server" "$QWICK" sign -j 2 "$tmp/who/s*.exe"
n1=$(tsa_posts)
check_eq "default: no POST /tsa from the CLI" "$((n1 - n0))" 0
check "--timestamp-url: 3 files signed, stamped by the CLI" "$QWICK" sign -j 2 \
    --timestamp-url "$QWICKD_URL/tsa" "$tmp/who/c*.exe"
n2=$(tsa_posts)
check_eq "--timestamp-url: one POST /tsa per file" "$((n2 - n1))" 3
bad=0
for f in "$tmp"/who/*.exe; do osslverify "$f" 1 yes >/dev/null || bad=$((bad + 1)); done
check_eq "both ways: osslsigncode verifies signature and timestamp (files that do not)" "$bad" 0

# --- --out ------------------------------------------------------------------
cp "$tmp/pe32.exe" "$tmp/orig.exe"
cp "$tmp/orig.exe" "$tmp/orig.copy"
check "--out" "$QWICK" sign --out "$tmp/out.exe" "$tmp/orig.exe"
check "--out leaves the input alone" cmp "$tmp/orig.exe" "$tmp/orig.copy"
check "--out result verifies" osslverify "$tmp/out.exe"
check_status 2 "--out with two inputs: exit 2" "$QWICK" sign --out "$tmp/x.exe" "$tmp/orig.exe" "$tmp/pe64.exe"

# --- symbolic links: the file a link names is signed, the link stays -------------
mkdir "$tmp/real"
cp "$tmp/pe64.exe" "$tmp/real/app.exe"
chmod 0750 "$tmp/real/app.exe"
ln -s real/app.exe "$tmp/link.exe"
check "sign through a symlink" "$QWICK" sign "$tmp/link.exe"
[ -L "$tmp/link.exe" ] && ok "symlink: the link is still a link" || fail "symlink: the link was replaced"
check "symlink: the target verifies" osslverify "$tmp/real/app.exe"
check_eq "symlink: the target keeps its mode" "$(stat -c %a "$tmp/real/app.exe")" 750
ls -a "$tmp/real" | grep -q qwick && fail "symlink: temporary file left" || ok "symlink: no temporary file left"
# --out is never written through a link (more in cli_symlink.sh); in place, a
# link to a missing file is an error.
ln -s missing.exe "$tmp/dangling.exe"
check_status 1 "--out to a dangling symlink fails" "$QWICK" sign --out "$tmp/dangling.exe" "$tmp/pe32.exe"
grep -q "refusing to write through symlink" "$tmp/err" && ok "dangling symlink: clear error" ||
    fail "dangling symlink: clear error ($(cat "$tmp/err"))"
[ -L "$tmp/dangling.exe" ] && [ ! -e "$tmp/missing.exe" ] && ok "dangling symlink: nothing written" ||
    fail "dangling symlink: something was written"
ln -s missing.txt "$tmp/dangling.txt.p7s"
printf 'notes\n' >"$tmp/dangling.txt"
check_status 1 "--detached: FILE.p7s a dangling symlink fails" "$QWICK" sign --detached "$tmp/dangling.txt"
check_grep "--detached: dangling FILE.p7s: clear error" "symbolic link to a missing file" "$tmp/err"
[ ! -e "$tmp/missing.txt" ] && ok "--detached: dangling FILE.p7s: nothing written" ||
    fail "--detached: dangling FILE.p7s: something was written"
printf 'notes\n' >"$tmp/notes-link.txt"
: >"$tmp/real/notes.sig"
ln -s real/notes.sig "$tmp/notes-link.txt.p7s"
check "--detached: FILE.p7s a symlink" "$QWICK" sign --detached "$tmp/notes-link.txt"
[ -L "$tmp/notes-link.txt.p7s" ] && [ -s "$tmp/real/notes.sig" ] &&
    ok "--detached: the .p7s link's target holds the signature" ||
    fail "--detached: the .p7s link was replaced"

# --- a file name that is not UTF-8 (a Latin-1 name) ---------------------------
latin1=$(printf 'caf\351.exe')
cp "$tmp/pe32.exe" "$tmp/$latin1"
check_status 0 "non-UTF-8 file name: signed" "$QWICK" sign --json "$tmp/$latin1"
cp "$tmp/out" "$tmp/latin1.json"
check "non-UTF-8 file name: verifies" osslverify "$tmp/$latin1"
rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["files"][0]["requestId"])' \
    "$tmp/latin1.json" 2>/dev/null || true)
if store_is_pg; then
    got=$(echo "SELECT filename FROM sign_requests WHERE id = :'rid'" |
        pg_store_sql -v rid="$rid" 2>/dev/null || true)
else
    got=$(python3 -c 'import sqlite3,sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT filename FROM sign_requests WHERE id = ?",
      (sys.argv[2],)).fetchone()[0])' "$QWICKD_DATA/qwick.db" "$rid" 2>/dev/null || true)
fi
check_eq "non-UTF-8 file name: recorded with ? for the stray byte" "$got" "caf?.exe"

# --- detached ----------------------------------------------------------------
printf 'release notes\nnot a PE file at all\n' >"$tmp/notes.txt"
cms_verify() {
    openssl cms -verify -binary -inform DER -in "$tmp/notes.txt.p7s" -content "$tmp/notes.txt" \
        -CAfile "$root" -purpose any -out /dev/null
}
check "--detached" "$QWICK" sign --detached "$tmp/notes.txt"
check "openssl cms -verify accepts the .p7s" cms_verify
check "qwick verify --detached" qverify --detached "$tmp/notes.txt.p7s" "$tmp/notes.txt"
# The timestamp: RFC 3161 Appendix A's id-aa-timeStampToken, found and checked
# by qwick verify, and a token openssl ts accepts over the signature value.
qverify --json --detached "$tmp/notes.txt.p7s" "$tmp/notes.txt" >"$tmp/det.json" 2>&1 || true
check_py "qwick verify --detached --json: timestamp ok" "$tmp/det.json" \
    't = d["files"][0]["signatures"][0]["timestamp"]; assert d["files"][0]["valid"] and t["ok"] and t["time"], t'
det_token() { # P7S TOKEN SIGVALUE: the id-aa-timeStampToken and the signature it covers
    python3 - "$@" <<'EOF'
import sys
d = open(sys.argv[1], "rb").read()
def kids(s, e):  # (tag, start, content start, end) of each DER element in [s, e)
    out = []
    while s < e:
        t, n, c = d[s], d[s + 1], s + 2
        if n & 0x80:
            n, c = int.from_bytes(d[c:c + (n & 0x7f)], "big"), c + (n & 0x7f)
        out.append((t, s, c, c + n))
        s = c + n
    return out
ci = kids(0, len(d))[0]
sd = kids(*kids(*kids(ci[2], ci[3])[1][2:])[0][2:])
si = kids(*kids(*sd[-1][2:])[0][2:])
sig = [x for x in si if x[0] == 0x04][-1]
assert si[-1][0] == 0xA1, "no unsigned attributes"
for a in kids(*si[-1][2:]):
    oid, vals = kids(*a[2:])
    if d[oid[2]:oid[3]] == bytes.fromhex("2a864886f70d010910020e"):
        tok = kids(*vals[2:])[0]
        open(sys.argv[2], "wb").write(d[tok[1]:tok[3]])
        open(sys.argv[3], "wb").write(d[sig[2]:sig[3]])
        sys.exit(0)
sys.exit("no id-aa-timeStampToken")
EOF
}
check "token under id-aa-timeStampToken" det_token "$tmp/notes.txt.p7s" "$tmp/det.tok" "$tmp/det.sig"
check "openssl ts -verify accepts the token" openssl ts -verify -token_in -in "$tmp/det.tok" \
    -data "$tmp/det.sig" -CAfile "$tsaroot"
echo tampered >>"$tmp/notes.txt"
check_fails "changed content rejected by openssl cms" cms_verify

# --- settings: config file, then env, flags first ---------------------------
mkdir -p "$XDG_CONFIG_HOME/qwick"
cp "$tlsca" "$XDG_CONFIG_HOME/qwick/tls-ca.pem"
printf '{"server":"%s","api_key":"%s","cacert":"tls-ca.pem","profile":"default"}\n' \
    "$QWICK_SERVER" "$QWICK_API_KEY" >"$XDG_CONFIG_HOME/qwick/config.json"
chmod 600 "$XDG_CONFIG_HOME/qwick/config.json"
cp "$tmp/pe64.exe" "$tmp/cfg.exe"
check "settings from the config file alone" env -u QWICK_SERVER -u QWICK_API_KEY -u QWICK_CACERT \
    "$QWICK" sign "$tmp/cfg.exe"
cp "$tmp/pe64.exe" "$tmp/cfg.exe"
check "--api-key beats a bad QWICK_API_KEY" env QWICK_API_KEY=qk_wrong \
    "$QWICK" sign --api-key "$QWICK_API_KEY" "$tmp/cfg.exe"
rm -rf "$XDG_CONFIG_HOME/qwick"

# --- failures ----------------------------------------------------------------
cp "$tmp/pe64.exe" "$tmp/bad.exe"
cp "$tmp/bad.exe" "$tmp/bad.copy"
check_status 1 "bad API key: exit 1" env QWICK_API_KEY=qk_notarealkey00000000000000000000 \
    "$QWICK" sign "$tmp/bad.exe"
check_grep "bad API key: server error shown" "bad.exe: server: " "$tmp/err"
check_fails "API key not printed" grep -q "qk_notarealkey" "$tmp/err" "$tmp/out"
check "bad API key: file unchanged" cmp "$tmp/bad.exe" "$tmp/bad.copy"

cp "$tmp/pe32.exe" "$tmp/good1.exe"
cp "$tmp/pe64.exe" "$tmp/good2.exe"
check_status 1 "non-PE input: exit 1" "$QWICK" sign "$tmp/good1.exe" "$tmp/notes.txt" "$tmp/good2.exe"
check_grep "non-PE input: clear error" "notes.txt: .*PE" "$tmp/err"
check_grep "non-PE input: summary" "signed 2, failed 1" "$tmp/out"
check "non-PE input: the others are signed" osslverify "$tmp/good1.exe"
check "non-PE input: the others are signed (2)" osslverify "$tmp/good2.exe"

# --- client behaviour against a scripted server (plain http on loopback) -----
# 503 + Retry-After, then 429, then a JSON error; then an oversize body.
cat >"$tmp/mock.py" <<'PYEOF'
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
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
PYEOF
python3 "$tmp/mock.py" "$tmp/mock.port" "$tmp/mock.log" 2>"$tmp/mock.err" &
mpid=$!
track_pid "$mpid"
wait_port "$mpid" "$tmp/mock.port" "the scripted server" "$tmp/mock.err"
mock="http://127.0.0.1:$port"
cp "$tmp/pe64.exe" "$tmp/retry.exe"
t0=$(date +%s)
check_status 1 "scripted: exit 1" "$QWICK" sign --server "$mock" --profile rel "$tmp/retry.exe"
t1=$(date +%s)
check_grep "scripted: error surfaced" "retry.exe: server: forbidden: profile not allowed" "$tmp/err"
check_eq "scripted: retried 503 and 429, then stopped (requests)" "$(wc -l <"$tmp/mock.log")" 3
[ $((t1 - t0)) -ge 2 ] && ok "scripted: Retry-After honoured" || fail "scripted: no wait"
check_grep "scripted: bearer, format, profile" "^Bearer qk_ authenticode-pe rel$" "$tmp/mock.log"
cp "$tmp/pe64.exe" "$tmp/huge.exe"
check_status 1 "scripted: oversize response: exit 1" "$QWICK" sign --server "$mock" "$tmp/huge.exe"
check_grep "scripted: oversize response refused" "larger than" "$tmp/err"
check "scripted: file untouched" cmp "$tmp/huge.exe" "$tmp/pe64.exe"
stop_pid "$mpid"
check_status 2 "plain http off loopback: exit 2" "$QWICK" sign --server "http://192.0.2.1:8080" "$tmp/huge.exe"
check_grep "plain http off loopback refused" "https" "$tmp/err"
# A host name that merely starts with "127." is not a loopback address: the key
# would go in clear to wherever it resolves (issue: prefix match).
for u in http://127.attacker.example:8080 http://127.0.0.1.nip.example http://localhost:8080 \
    http://[::ffff:7f00:1]:8080; do
    check_status 2 "plain http to $u refused" "$QWICK" sign --server "$u" "$tmp/huge.exe"
    check_grep "plain http to $u: says why" "loopback IP" "$tmp/err"
done

# --- a killed CLI leaves the original intact ----------------------------------
# ~200 MiB (an overlay is hashed like the rest), killed at several points of
# its run: digest, API call, write of the temporary, verification, rename.
mkdir "$tmp/big"
cp "$tmp/pe64.exe" "$tmp/big/big.exe"
head -c 200000000 /dev/urandom >>"$tmp/big/big.exe"
cp "$tmp/big/big.exe" "$tmp/big.copy"
# kill_sign SIGNAL DELAY: qwick sign big.exe, sent SIGNAL after DELAY seconds.
kill_sign() {
    "$QWICK" sign "$tmp/big/big.exe" >/dev/null 2>&1 &
    cpid=$!
    sleep "$2"
    kill "-$1" "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
}
for delay in 0.05 0.2 0.4 0.7 1.0 1.5; do
    kill_sign KILL "$delay"
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
kill_sign TERM 0.3
if cmp -s "$tmp/big/big.exe" "$tmp/big.copy" || osslverify "$tmp/big/big.exe" >/dev/null; then
    ok "SIGTERM: file intact or completely signed"
else fail "SIGTERM: file damaged"; fi
check_eq "SIGTERM: temporaries left" "$(find "$tmp/big" -name '.big.exe.qwick-*' | wc -l)" 0

t_done
