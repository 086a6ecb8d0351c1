#!/bin/sh
# qwick sign through qwickd's queue, and qwick requests:
#  - against a real qwickd: `sign --async` on 3 PE files prints FILE<TAB>ID
#    and leaves them byte-identical; `requests list --json` names the 3 ids;
#    `sign --resume ID FILE` finishes each (osslsigncode verify accepts it);
#    --resume with another file fails on the digest, file untouched; `requests
#    show` says SIGNED; cancelling a signed request is not_cancellable; an
#    --async --detached request resumes into FILE.p7s (openssl cms accepts it);
#    a plain sign with a profile that signs only through the queue (asyncOnly)
#    gets 202s, waits and writes files that verify;
#  - against a scripted server: a request that stays QUEUED until
#    --wait-timeout (exit 1, file untouched, the id and the --resume command
#    printed), Retry-After honoured and the poll delay capped at 10 s, the
#    "async" body field, list following nextCursor, cancel's 200 and 409,
#    control characters from the server never reaching the terminal;
#  - usage errors before any network call: a bad --wait-timeout, a malformed
#    request id, --resume with --async or two files.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init cli_async

# No config file from the machine running the tests.
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME

# --- usage errors: no server is needed, none is asked ------------------------------
build_pe "$tmp/pe64.exe" x64
cp "$tmp/pe64.exe" "$tmp/pe64.exe.copy"
nonet="--server http://127.0.0.1:9 --api-key qk_unused"
for d in 5x m -3 1h5 10ms 1.5s 99999999h ""; do
    # shellcheck disable=SC2086
    check_status 2 "--wait-timeout '$d': exit 2" "$QWICK" sign $nonet --wait-timeout "$d" "$tmp/pe64.exe"
done
check_grep "bad --wait-timeout: says why" "is not a duration" "$tmp/err"
for id in req_0123 REQ_0123456789abcdef0123456789abcdef req_0123456789ABCDEF0123456789ABCDEF \
    req_0123456789abcdef0123456789abcdefa "req_../../../api/v1/keys" req_0123456789abcdef0123456789abcdeg; do
    # shellcheck disable=SC2086
    check_status 2 "--resume '$id' refused" "$QWICK" sign $nonet --resume "$id" "$tmp/pe64.exe"
    check_grep "--resume '$id': says why" "not a request id" "$tmp/err"
    # shellcheck disable=SC2086
    check_status 2 "requests show '$id' refused" "$QWICK" requests show $nonet "$id"
    check_fails "requests show '$id': no network call" grep -q "cannot reach" "$tmp/err"
    # shellcheck disable=SC2086
    check_status 2 "requests cancel '$id' refused" "$QWICK" requests cancel $nonet "$id"
done
good_id=req_0123456789abcdef0123456789abcdef
# shellcheck disable=SC2086
check_status 2 "--resume with --async" "$QWICK" sign $nonet --async --resume "$good_id" "$tmp/pe64.exe"
# shellcheck disable=SC2086
check_status 2 "--resume with two files" "$QWICK" sign $nonet --resume "$good_id" "$tmp/pe64.exe" "$tmp/pe64.exe.copy"
# shellcheck disable=SC2086
check_status 2 "--resume with --alg" "$QWICK" sign $nonet --resume "$good_id" --alg sha384 "$tmp/pe64.exe"
# shellcheck disable=SC2086
check_status 2 "--async with --out" "$QWICK" sign $nonet --async --out "$tmp/x.exe" "$tmp/pe64.exe"
# shellcheck disable=SC2086
check_status 2 "requests list --status BOGUS" "$QWICK" requests list $nonet --status BOGUS
# shellcheck disable=SC2086
check_status 2 "requests list --limit 0" "$QWICK" requests list $nonet --limit 0
# shellcheck disable=SC2086
check_status 2 "requests frobnicate" "$QWICK" requests frobnicate $nonet
check_status 0 "requests --help" "$QWICK" requests --help
check_status 0 "qwick --help" "$QWICK" --help
check_grep "qwick --help names requests" "^  requests " "$tmp/out"
check_status 0 "qwick sign --help" "$QWICK" sign --help
for o in --async --resume --wait-timeout; do check_grep "sign --help: $o" "^  $o" "$tmp/out"; done

# --- the queue of a real qwickd ----------------------------------------------------------
qwickd_init "$tmp/data"
# A profile every request of which is queued (202), whatever the client asks.
make_cert "$tmp/queued" "Queued Test Signer"
printf '{"backend": "local", "key": "queued.key", "chain": "queued.pem", "asyncOnly": true}\n' \
    >"$tmp/queued.json"
"$QWICKD" profile create --data "$tmp/data" --name queued --config "$tmp/queued.json" \
    >"$tmp/profile.log" 2>&1 || die "profile create queued" "$tmp/profile.log"
start_qwickd "$tmp/data"
qwick_env
root=$QWICKD_ROOT_CA
tsaroot=$QWICKD_TSA_ROOT_CA

# Three different files (a few bytes of overlay each: their digests differ).
for n in a b c; do
    cp "$tmp/pe64.exe" "$tmp/$n.exe"
    printf 'overlay %s\n' "$n" >>"$tmp/$n.exe"
done
sha256sum "$tmp/a.exe" "$tmp/b.exe" "$tmp/c.exe" >"$tmp/before.sha"

check_status 0 "sign --async: 3 files accepted" "$QWICK" sign --async "$tmp/a.exe" "$tmp/b.exe" "$tmp/c.exe"
cp "$tmp/out" "$tmp/async.out"
check_eq "sign --async: 3 lines" "$(wc -l <"$tmp/async.out" | tr -d ' ')" 3
for n in a b c; do
    id=$(awk -F '\t' -v f="$tmp/$n.exe" '$1 == f { print $2 }' "$tmp/async.out")
    if echo "$id" | grep -qx 'req_[0-9a-f]\{32\}'; then ok "sign --async: $n.exe<TAB>request id"; else
        fail "sign --async: no request id for $n.exe"
        _show "$tmp/async.out"
    fi
    eval "id_$n=\$id"
done
check "sign --async: files untouched" sha256sum -c --quiet "$tmp/before.sha"

check_status 0 "requests list --json" "$QWICK" requests list --json
cp "$tmp/out" "$tmp/list.json"
check_py "requests list --json names the 3 ids" "$tmp/list.json" "
ids = {r['requestId'] for r in d['requests']}
assert {'$id_a', '$id_b', '$id_c'} <= ids, ids"
check_status 0 "requests list (table)" "$QWICK" requests list --limit 10
check_grep "requests list: header" "^ID  *STATUS  *CREATED  *PROFILE  *FILE" "$tmp/out"
check_grep "requests list: a.exe's row" "^$id_a .* a.exe\$" "$tmp/out"

# Another file's digest: refused, nothing written.
check_status 1 "--resume with the wrong file: exit 1" "$QWICK" sign --resume "$id_a" "$tmp/b.exe"
check_grep "--resume with the wrong file: says why" "not the file of request $id_a" "$tmp/err"
check "--resume with the wrong file: file untouched" sha256sum -c --quiet "$tmp/before.sha"

for n in a b c; do
    eval "id=\$id_$n"
    # (A queue that never signs fails here in 2 minutes, not the default 10.)
    check_status 0 "sign --resume $n.exe" "$QWICK" sign --wait-timeout 2m --resume "$id" "$tmp/$n.exe"
    check "resumed $n.exe: osslsigncode verify" ossl_verify "$root" "$tsaroot" "$tmp/$n.exe" 1 yes
done

check_status 0 "requests show --json" "$QWICK" requests show "$id_a" --json
cp "$tmp/out" "$tmp/show.json"
check_py "requests show --json: SIGNED, the file's digest" "$tmp/show.json" "
assert d['status'] == 'SIGNED', d['status']
assert d['requestId'] == '$id_a' and d['metadata']['filename'] == 'a.exe', d"
check_status 0 "requests show (key: value)" "$QWICK" requests show "$id_a"
check_grep "requests show: status line" "^status: *SIGNED\$" "$tmp/out"
dig_a=$(qdigest sha256 "$tmp/a.exe")
check_grep "requests show: the digest qwick digest prints" "^digest: *$dig_a\$" "$tmp/out"
check_status 0 "requests list --status SIGNED --json" "$QWICK" requests list --status signed --json
cp "$tmp/out" "$tmp/signed.json"
check_py "requests list --status: only SIGNED" "$tmp/signed.json" "
assert d['requests'] and all(r['status'] == 'SIGNED' for r in d['requests']), d"
check_status 0 "requests list --limit 2 --json" "$QWICK" requests list --limit 2 --json
cp "$tmp/out" "$tmp/two.json"
check_py "requests list --limit 2: two rows" "$tmp/two.json" "assert len(d['requests']) == 2, d"

check_status 1 "cancel a SIGNED request: exit 1" "$QWICK" requests cancel "$id_b"
check_grep "cancel a SIGNED request: not_cancellable" "not_cancellable" "$tmp/err"
check_status 1 "show an unknown request: exit 1" "$QWICK" requests show "$good_id"
check_grep "show an unknown request: not_found" "not_found" "$tmp/err"

# A detached signature through the queue: --resume follows the request's format.
printf 'release notes\n' >"$tmp/notes.txt"
check_status 0 "sign --async --detached" "$QWICK" sign --async --detached "$tmp/notes.txt"
id_n=$(cut -f 2 "$tmp/out")
[ ! -e "$tmp/notes.txt.p7s" ] && ok "--async --detached: no .p7s yet" || fail "--async --detached wrote a .p7s"
check_status 0 "sign --resume (a cms request)" "$QWICK" sign --wait-timeout 2m --resume "$id_n" "$tmp/notes.txt"
check "resumed notes.txt.p7s: openssl cms -verify" openssl cms -verify -binary -inform DER \
    -in "$tmp/notes.txt.p7s" -content "$tmp/notes.txt" -CAfile "$root" -purpose any -out /dev/null
check_status 2 "--resume --detached of a PE request: exit 2" "$QWICK" sign --resume "$id_c" --detached "$tmp/c.exe"

# A plain sign still works, whatever the server answers (200, or 202 and a wait).
cp "$tmp/pe64.exe" "$tmp/plain.exe"
check_status 0 "plain sign" "$QWICK" sign --json "$tmp/plain.exe"
check "plain sign: osslsigncode verify" ossl_verify "$root" "$tsaroot" "$tmp/plain.exe"
for n in 1 2 3; do
    cp "$tmp/pe64.exe" "$tmp/q$n.exe"
    printf 'queued %s\n' "$n" >>"$tmp/q$n.exe"
done
check_status 0 "asyncOnly profile: sign -j 2 waits for 3 queued requests" \
    "$QWICK" sign -j 2 --json --wait-timeout 2m --profile queued "$tmp/q1.exe" "$tmp/q2.exe" "$tmp/q3.exe"
cp "$tmp/out" "$tmp/queued.out"
check_py "asyncOnly profile: 3 signed, each with its request id" "$tmp/queued.out" "
assert d['signed'] == 3 and all(re.fullmatch('req_[0-9a-f]{32}', f['requestId']) for f in d['files']), d"
for n in 1 2 3; do
    check "asyncOnly profile: q$n.exe verifies" ossl_verify "$tmp/queued.pem" "$tsaroot" "$tmp/q$n.exe" 1 yes
done
check_grep "asyncOnly profile: the server answered 202" "path=/api/v1/sign/digest status=202" "$tmp/server.log"
stop_qwickd

# --- a scripted server: the waiting itself ---------------------------------------------
cat >"$tmp/mock.py" <<'PYEOF'
import http.server, json, sys, time, urllib.parse
log = open(sys.argv[2], "a", buffering=1)
RA = {"req_00000000000000000000000000000001": "2",   # QUEUED, Retry-After 2
      "req_00000000000000000000000000000002": "30"}  # QUEUED, Retry-After 30 (capped)
def row(i, name):
    return {"requestId": "req_%032x" % i, "status": "SIGNED", "createdAt": 1767225600 + i,
            "profile": "default", "metadata": {"filename": name}}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra: self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        name = req["metadata"]["filename"]
        log.write("%.3f POST %s async=%s\n" % (time.time(), name, req.get("async")))
        rid = "req_%032x" % (2 if name.startswith("cap") else 1)
        self.send(202, {"requestId": rid, "status": "QUEUED"},
                  [("Location", "/api/v1/sign/requests/" + rid), ("Retry-After", "1")])
    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        log.write("%.3f GET %s\n" % (time.time(), self.path))
        if u.path == "/api/v1/sign/requests":
            q = urllib.parse.parse_qs(u.query)
            if "cursor" not in q:
                return self.send(200, {"requests": [row(9, "evil\x1b]0;pwned\x07.exe"), row(8, "b.exe")],
                                       "nextCursor": "c/1+x"})
            return self.send(200, {"requests": [row(7, "a.exe"), row(6, "z.exe")], "nextCursor": None})
        rid = u.path.rsplit("/", 1)[1]
        self.send(200, {"requestId": rid, "status": "QUEUED", "algorithm": "sha256",
                        "format": "authenticode-pe", "digest": "A" * 43 + "="},
                  [("Retry-After", RA.get(rid, "1"))])
    def do_DELETE(self):
        rid = self.path.rsplit("/", 1)[1]
        log.write("%.3f DELETE %s\n" % (time.time(), rid))
        if rid.endswith("1"):
            return self.send(200, {"requestId": rid, "status": "CANCELLED"})
        self.send(409, {"error": {"code": "not_cancellable", "message": "request is SIGNED"}})
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
PYEOF
python3 "$tmp/mock.py" "$tmp/mock.port" "$tmp/mock.log" 2>"$tmp/mock.err" &
mpid=$!
track_pid "$mpid"
wait_port "$mpid" "$tmp/mock.port" "the scripted server" "$tmp/mock.err"
mock="--server http://127.0.0.1:$port --api-key qk_mock"

cp "$tmp/pe64.exe" "$tmp/slow.exe"
t0=$(date +%s)
# shellcheck disable=SC2086
check_status 1 "stays QUEUED: exit 1 at --wait-timeout" "$QWICK" sign $mock --wait-timeout 5s "$tmp/slow.exe"
t1=$(date +%s)
check_grep "stays QUEUED: status and time said" "still QUEUED after 5s" "$tmp/err"
check_grep "stays QUEUED: the --resume command printed" \
    "qwick sign --resume req_00000000000000000000000000000001 $tmp/slow.exe" "$tmp/err"
check "stays QUEUED: file untouched" cmp "$tmp/slow.exe" "$tmp/pe64.exe"
[ $((t1 - t0)) -ge 5 ] && [ $((t1 - t0)) -le 8 ] && ok "stays QUEUED: gave up after ~5 s" ||
    fail "stays QUEUED: gave up after $((t1 - t0)) s"
check_grep "sign without --async: no async field" "POST slow.exe async=None" "$tmp/mock.log"
# The gaps between looks: at least the Retry-After of 2 s (the first follows the 202's 1 s).
# check_gaps DESC ID MIN MAX: the gaps between the looks at request ID are at
# most MAX seconds, and at least MIN but for the last (cut short by the deadline).
check_gaps() {
    if python3 - "$tmp/mock.log" "$2" "$3" "$4" >"$tmp/gaps.out" 2>&1 <<'EOF'; then
import sys
t = [float(l.split()[0]) for l in open(sys.argv[1]) if sys.argv[2] in l and " GET " in l]
gaps = [b - a for a, b in zip(t, t[1:])]
print(gaps)
assert len(gaps) >= 1 and all(g <= float(sys.argv[4]) for g in gaps), gaps
assert all(g >= float(sys.argv[3]) for g in gaps[:-1]), gaps
EOF
        ok "$1"
    else
        fail "$1"
        _show "$tmp/gaps.out"
    fi
}
check_gaps "Retry-After 2 honoured between looks" req_00000000000000000000000000000001 1.9 4.5

cp "$tmp/pe64.exe" "$tmp/cap.exe"
# shellcheck disable=SC2086
check_status 1 "Retry-After 30: still gives up at --wait-timeout" "$QWICK" sign $mock --wait-timeout 12 "$tmp/cap.exe"
check_gaps "Retry-After 30: looks at most 10 s apart" req_00000000000000000000000000000002 0 10.8

: >"$tmp/mock.log"
# shellcheck disable=SC2086
check_status 0 "--async against the scripted server" "$QWICK" sign $mock --async "$tmp/slow.exe"
check_grep "--async sends \"async\": true" "POST slow.exe async=True" "$tmp/mock.log"
check_fails "--async does not wait" grep -q " GET " "$tmp/mock.log"
check_eq "--async: FILE<TAB>ID on stdout" "$(cat "$tmp/out")" \
    "$(printf '%s\treq_00000000000000000000000000000001' "$tmp/slow.exe")"
check "--async: file untouched" cmp "$tmp/slow.exe" "$tmp/pe64.exe"
# shellcheck disable=SC2086
check_status 0 "--async --json" "$QWICK" sign $mock --async --json "$tmp/slow.exe"
cp "$tmp/out" "$tmp/async.json"
check_py "--async --json: the request id in the report" "$tmp/async.json" "
f = d['files'][0]
assert f['ok'] and f['requestId'] == 'req_' + '0' * 31 + '1' and d['failed'] == 0, d"
# shellcheck disable=SC2086
check_status 1 "--resume: digest mismatch against the scripted request" \
    "$QWICK" sign $mock --resume req_00000000000000000000000000000001 "$tmp/slow.exe"
check_grep "--resume mismatch: both digests named" "the request's is 0000000000" "$tmp/err"

# shellcheck disable=SC2086
check_status 0 "list follows nextCursor" "$QWICK" requests list $mock --limit 3
check_grep "list: cursor percent-encoded" "limit=1&cursor=c%2F1%2Bx" "$tmp/mock.log"
check_eq "list: header and 3 rows" "$(wc -l <"$tmp/out" | tr -d ' ')" 4
check_grep "list: second page's row" "^req_0\{31\}7 .*a.exe\$" "$tmp/out"
check_fails "list: no escape character reaches the terminal" grep -q "$(printf '\033')" "$tmp/out"
check_grep "list: control characters shown as ?" "evil?\]0;pwned?.exe" "$tmp/out"
# shellcheck disable=SC2086
check_status 0 "cancel: 200" "$QWICK" requests cancel $mock req_00000000000000000000000000000001
check_grep "cancel: says CANCELLED" "req_0\{31\}1 CANCELLED" "$tmp/out"
# shellcheck disable=SC2086
check_status 1 "cancel: 409" "$QWICK" requests cancel $mock req_00000000000000000000000000000002
check_grep "cancel: 409 not_cancellable shown" "not_cancellable: request is SIGNED" "$tmp/err"
stop_pid "$mpid"

t_done
