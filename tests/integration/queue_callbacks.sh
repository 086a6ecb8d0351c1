#!/bin/sh
# Completion callbacks of queued requests (docs/api.md "Callbacks"): a
# receiver on loopback checks every POST's Qwick-Signature with the org's
# secret (from `qwickd queue callback-secret`, computed here in python, not
# by qwickd), answers 500 to the first deliveries of one request (retried
# with backoff), and records what it got. Callbacks go only to addresses in
# queue.callback_allow: a literal outside it is refused with 400, and a name
# is checked on the address it reaches.
set -u
. "$SRC_ROOT/tests/integration/lib.sh"
t_init queue_callbacks
need python3 curl

data="$tmp/data"
qwickd_init "$data"
python3 - "$data/qwickd.json" <<'EOF' || die "qwickd.json"
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["queue"]["callback_allow"] = ["127.0.0.1/32"]
json.dump(c, open(p, "w"), indent=2)
EOF
secret=$("$QWICKD" queue callback-secret --data "$data") || die "callback-secret"
check_eq "the secret is 64 hex digits" "$(printf '%s' "$secret" | tr -d '0-9a-f' | wc -c)$(printf '%s' "$secret" | wc -c)" "064"
check_eq "callback-secret is stable" "$("$QWICKD" queue callback-secret --data "$data")" "$secret"

# A profile whose config names the callback.
make_cert "$tmp/cbp" "Callback Profile"

# The receiver: verifies each POST, fails the first two deliveries of a
# request whose id is in FAIL_FIRST, logs one JSON line per delivery.
cat >"$tmp/recv.py" <<'EOF'
import hashlib, hmac, http.server, json, sys, threading, time
secret = bytes.fromhex(sys.argv[1])
log = open(sys.argv[3], "a")
fail = {}
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        sig = self.headers.get("Qwick-Signature", "")
        parts = dict(p.split("=", 1) for p in sig.split(",") if "=" in p)
        want = hmac.new(secret, parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(want, parts.get("v1", ""))
        fresh = abs(time.time() - int(parts.get("t", "0"))) < 300
        d = json.loads(body)
        with lock:
            n = fail.get(d["requestId"], 0)
            fail[d["requestId"]] = n + 1
            status = 500 if self.path == "/flaky" and n < 2 else 200
            log.write(json.dumps({"path": self.path, "mac_ok": ok, "fresh": fresh, "body": d,
                                  "answer": status, "at": time.time()}) + "\n")
            log.flush()
        self.send_response(status)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[2], "w").write(str(s.server_address[1]))
s.serve_forever()
EOF
python3 "$tmp/recv.py" "$secret" "$tmp/recv.port" "$tmp/recv.log" 2>"$tmp/recv.err" &
track_pid $!
wait_port $! "$tmp/recv.port" "receiver" "$tmp/recv.err"
rport=$port
printf '{"backend":"local","key":"%s","chain":"%s","callbackUrl":"http://127.0.0.1:%s/profile"}\n' \
    "$tmp/cbp.key" "$tmp/cbp.pem" "$rport" >"$tmp/cbp.json"
"$QWICKD" profile create --data "$data" --name cbp --config "$tmp/cbp.json" >/dev/null ||
    die "profile create cbp"

start_qwickd "$data"
digest=$(python3 -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())")
submit() { # BODY-JSON → $tmp/resp, prints the status
    curl -s -o "$tmp/resp" -w '%{http_code}' --cacert "$QWICKD_TLS_CA" \
        -H "Authorization: Bearer $QWICKD_API_KEY" -H 'Content-Type: application/json' \
        -d "$1" "$QWICKD_URL/api/v1/sign/digest"
}
body() { # EXTRA-JSON-MEMBERS
    printf '{"digest":"%s","algorithm":"sha256","format":"cms"%s}' "$digest" "$1"
}

check_eq "a callbackUrl queues the request (202)" \
    "$(submit "$(body ",\"callbackUrl\":\"http://127.0.0.1:$rport/hook\"")")" 202
id_hook=$(json_get "$tmp/resp" requestId)
check_eq "flaky receiver: 202" \
    "$(submit "$(body ",\"callbackUrl\":\"http://127.0.0.1:$rport/flaky\"")")" 202
id_flaky=$(json_get "$tmp/resp" requestId)
check_eq "the profile's callbackUrl: 202 without async" \
    "$(submit "$(body ",\"profile\":\"cbp\"")")" 202
id_prof=$(json_get "$tmp/resp" requestId)
check_eq "an address outside callback_allow: 400" \
    "$(submit "$(body ",\"callbackUrl\":\"http://127.0.0.2:$rport/no\"")")" 400
check_grep "... callback_not_allowed" callback_not_allowed "$tmp/resp"
check_eq "ftp: 400" "$(submit "$(body ",\"callbackUrl\":\"ftp://127.0.0.1/x\"")")" 400
check_eq "credentials in the URL: 400" \
    "$(submit "$(body ",\"callbackUrl\":\"http://u:p@127.0.0.1:$rport/\"")")" 400
check_eq "a relative URL: 400" "$(submit "$(body ",\"callbackUrl\":\"/hook\"")")" 400

# Wait for the three deliveries (the flaky one after two failures, ~1.5 s).
i=0
while [ $i -lt 100 ]; do
    n=$(python3 -c "
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
print(sum(1 for g in got if g['answer'] == 200))" "$tmp/recv.log" 2>/dev/null || echo 0)
    [ "$n" -ge 3 ] && break
    sleep 0.1
    i=$((i + 1))
done
python3 - "$tmp/recv.log" "$id_hook" "$id_flaky" "$id_prof" >"$tmp/cbcheck" 2>&1 <<'EOF'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
hook, flaky, prof = sys.argv[2:5]
assert all(g["mac_ok"] and g["fresh"] for g in got), got
ok = [g for g in got if g["answer"] == 200]
by = {g["body"]["requestId"]: g for g in ok}
assert sorted(by) == sorted([hook, flaky, prof]), by
assert len(ok) == 3, ok
for rid, path in ((hook, "/hook"), (flaky, "/flaky"), (prof, "/profile")):
    g = by[rid]
    assert g["path"] == path, g
    assert g["body"]["status"] == "SIGNED", g
    assert set(g["body"]) == {"requestId", "status", "profile", "completedAt"}, g
assert by[prof]["body"]["profile"] == "cbp", by[prof]
fl = [g for g in got if g["body"]["requestId"] == flaky]
assert [g["answer"] for g in fl] == [500, 500, 200], fl
assert fl[2]["at"] - fl[0]["at"] > 1.0, fl  # backoff: 1 s, then 2 s (half random)
print("ok")
EOF
check_eq "callbacks: signed, verified, retried after 500s" "$(cat "$tmp/cbcheck")" ok

# A tampered body or another secret does not verify: the receiver's check can fail.
python3 - "$secret" >"$tmp/neg" <<'EOF'
import hashlib, hmac, sys
s = bytes.fromhex(sys.argv[1])
good = hmac.new(s, b"1.{}", hashlib.sha256).hexdigest()
bad = hmac.new(s, b"1.{ }", hashlib.sha256).hexdigest()
print("differ" if good != bad else "same")
EOF
check_eq "the MAC covers the body" "$(cat "$tmp/neg")" differ

# A refused cancel (the request is SIGNED) changes nothing and calls nobody.
cp "$tmp/recv.log" "$tmp/recv.before"
curl -s -o "$tmp/resp" -w '%{http_code}' -X DELETE --cacert "$QWICKD_TLS_CA" \
    -H "Authorization: Bearer $QWICKD_API_KEY" "$QWICKD_URL/api/v1/sign/requests/$id_hook" >"$tmp/code"
check_eq "cancel of a SIGNED request: 409" "$(cat "$tmp/code")" 409
sleep 0.5
check_eq "... and no callback" "$(wc -l <"$tmp/recv.log")" "$(wc -l <"$tmp/recv.before")"

# A name is checked on the address it reaches: allow only 10.0.0.0/8, then
# "localhost" (a name, so accepted when submitted) reaches 127.0.0.1 and is refused.
stop_qwickd
python3 - "$data/qwickd.json" <<'EOF' || die "qwickd.json"
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["queue"]["callback_allow"] = ["10.0.0.0/8"]
json.dump(c, open(p, "w"), indent=2)
EOF
start_qwickd "$data"
cp "$tmp/recv.log" "$tmp/recv.before"
check_eq "a host name is accepted when submitted" \
    "$(submit "$(body ",\"callbackUrl\":\"http://localhost:$rport/name\"")")" 202
id_name=$(json_get "$tmp/resp" requestId)
i=0
while [ $i -lt 50 ] && ! grep -q "callback failed.*$id_name" "$tmp/server.log"; do
    sleep 0.1
    i=$((i + 1))
done
check_grep "... and refused where it resolves (127.0.0.1, not in 10.0.0.0/8)" \
    "callback failed.*$id_name" "$tmp/server.log"
check_eq "... the receiver got nothing" "$(wc -l <"$tmp/recv.log")" "$(wc -l <"$tmp/recv.before")"

# Metrics count the deliveries.
curl -s --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_OPERATOR_TOKEN" \
    "$QWICKD_URL/metrics" >"$tmp/metrics"
check_grep "metrics: failed callback attempts counted" \
    'qwickd_callbacks_total{outcome="failed_attempt"} [1-9]' "$tmp/metrics"
stop_qwickd
check "audit verify" "$QWICKD" audit verify --data "$data"
t_done
