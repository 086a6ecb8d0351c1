#!/bin/sh
# Two qwickd nodes on one PostgreSQL database (docs/postgresql.md, "A second
# node"): node 2 serves from a copy of node 1's data directory.
#  - load: concurrent signing requests over both nodes and two orgs; every
#    one is a 200 with a signature, readable from both nodes with the same
#    signature, with its own request id and exactly one allowed `sign.digest`
#    entry in its org's log; each org's log stays one sequence (audit verify);
#  - a key revoked through one node (API or `qwickd apikey revoke`) is refused
#    by the other at once;
#  - the database restarts under load: every request is a 200 whose entry
#    committed, or a 503 (never a 500, a hang or a crash), and both nodes
#    serve again without being restarted;
#  - an unreachable database (closed port, a server that never answers, the
#    cluster stopped) makes serve and an admin command exit non-zero within
#    seconds, naming the database; running nodes answer 503 and stay up.
# Always on PostgreSQL, and always on a cluster of its own (it restarts it):
# QWICK_TEST_PG_URL, a server other tests share, is not used.
# Environment: PGMN_REQUESTS (requests of the load part, default 1000).
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init pg_multinode
need psql curl
QWICK_TEST_STORE=pg
export QWICK_TEST_STORE
unset QWICK_TEST_PG_URL
REQUESTS=${PGMN_REQUESTS:-1000}
PY=/usr/bin/python3
PGCLUSTER="$SRC_ROOT/tests/tools/pgcluster.sh"
t0=$(date +%s)

# --- the load client ------------------------------------------------------------
# load.py sign OUT [--count N | --until FILE]: signing requests from THREADS
#   threads (keep-alive HTTPS, one connection per node and thread), request i
#   to node i % 2 for org (i / 2) % 2; one JSON line per request in OUT (its
#   start `t` on CLOCK_MONOTONIC, its duration `ms`, status, request id,
#   signature, logIndex, error code; `err` when no answer came).
# load.py read IN OUT: GET /api/v1/sign/requests/{id} of every 200 in IN on
#   both nodes; one JSON line per read in OUT.
# Nodes, CA and keys come from PGMN_NODES, PGMN_CA, PGMN_KEYS (comma-separated).
cat >"$tmp/load.py" <<'PYEOF'
import base64, http.client, json, os, ssl, sys, threading, time
from urllib.parse import urlparse

NODES = os.environ["PGMN_NODES"].split(",")
KEYS = os.environ["PGMN_KEYS"].split(",")
CTX = ssl.create_default_context(cafile=os.environ["PGMN_CA"])
TIMEOUT = float(os.environ.get("PGMN_TIMEOUT", "20"))
THREADS = int(os.environ.get("PGMN_THREADS", "16"))

class Client:
    """One keep-alive connection per node; reconnects after any error."""
    def __init__(self):
        self.conns = {}
    def call(self, node, method, path, key, body=None):
        u = urlparse(NODES[node])
        t = time.monotonic()
        try:
            c = self.conns.get(node)
            if c is None:
                c = http.client.HTTPSConnection(u.hostname, u.port, timeout=TIMEOUT, context=CTX)
                self.conns[node] = c
            h = {"Authorization": "Bearer " + key}
            if body is not None:
                h["Content-Type"] = "application/json"
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            if r.getheader("Connection", "").lower() == "close":
                c.close()
                self.conns.pop(node, None)
            try:
                doc = json.loads(data)
            except ValueError:
                doc = {"_raw": data[:200].decode("latin-1")}
            return r.status, doc, r.getheader("X-Request-Id"), time.monotonic() - t, None
        except Exception as e:  # timeouts, resets: the connection goes
            c = self.conns.pop(node, None)
            if c is not None:
                c.close()
            return 0, {}, None, time.monotonic() - t, "%s: %s" % (type(e).__name__, e)

def sign(out, count, until):
    lock = threading.Lock()
    nxt = [0]
    rows = []
    start = time.monotonic()
    def take():
        with lock:
            i = nxt[0]
            if (count is not None and i >= count) or (until is not None and os.path.exists(until)):
                return None
            nxt[0] += 1
            return i
    def worker():
        cl = Client()
        while True:
            i = take()
            if i is None:
                return
            node, org = i % 2, (i // 2) % 2
            body = json.dumps({"digest": base64.b64encode(os.urandom(32)).decode(),
                               "algorithm": "sha256", "format": "authenticode-pe",
                               "metadata": {"filename": "load-%d.exe" % i}})
            t = time.monotonic()  # CLOCK_MONOTONIC: comparable with the script's
            st, doc, rid, dt, err = cl.call(node, "POST", "/api/v1/sign/digest", KEYS[org], body)
            row = {"i": i, "node": node, "org": org, "status": st, "t": round(t, 3),
                   "ms": round(dt * 1000, 1), "rid": rid, "requestId": doc.get("requestId"),
                   "signature": doc.get("signature"), "logIndex": doc.get("logIndex"),
                   "code": (doc.get("error") or {}).get("code"), "err": err}
            with lock:
                rows.append(row)
    ts = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.monotonic() - start
    with open(out, "w") as f:
        for r in sorted(rows, key=lambda r: r["i"]):
            f.write(json.dumps(r) + "\n")
    print("%d requests in %.1f s: %.0f/s" % (len(rows), el, len(rows) / el))

def read(inp, out):
    todo = [json.loads(l) for l in open(inp)]
    todo = [(r, n) for r in todo if r["status"] == 200 for n in (0, 1)]
    lock = threading.Lock()
    rows = []
    def worker(k):
        cl = Client()
        for r, n in todo[k::THREADS]:
            st, doc, _, _, err = cl.call(n, "GET", "/api/v1/sign/requests/" + r["requestId"],
                                         KEYS[r["org"]])
            with lock:
                rows.append({"requestId": r["requestId"], "node": n, "status": st,
                             "state": doc.get("status"), "signature": doc.get("signature"),
                             "logIndex": doc.get("logIndex"), "err": err})
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

if sys.argv[1] == "sign":
    a = sys.argv[3:]
    sign(sys.argv[2], int(a[1]) if a[0] == "--count" else None,
         a[1] if a[0] == "--until" else None)
else:
    read(sys.argv[2], sys.argv[3])
PYEOF
load() { $PY "$tmp/load.py" "$@"; }

# lines_py DESC FILE CODE: a check: python3 CODE, `rows` the JSON lines of FILE, raises nothing.
lines_py() { # DESC FILE CODE
    if $PY -c "import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
$3" "$2" >"$tmp/py.err" 2>&1; then ok "$1"; else
        fail "$1"
        _show "$tmp/py.err"
    fi
}

# --- two nodes, two orgs ------------------------------------------------------------
# As root, pgcluster.sh runs the server as `postgres`, which must be able to
# reach $tmp/pg: $tmp (mktemp, 0700) opens for traversal only.
[ "$(id -u)" -ne 0 ] || chmod 711 "$tmp"
pg_start
qwickd_init "$tmp/n1"
D=$tmp/n1
# The superuser (it bypasses row-level security) on qwickd's database.
db_url="postgresql://postgres@127.0.0.1:$PG_PORT/${QWICKD_DATABASE_URL##*/}"
db_sql() { psql "$db_url" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
orgA=$(db_sql -c "SELECT name FROM orgs ORDER BY id LIMIT 1")
"$QWICKD" org create --data "$D" orgb >"$tmp/org.log" 2>&1 || die "qwickd org create" "$tmp/org.log"
newkey() { # ORG ROLE NAME: prints the key
    "$QWICKD" apikey create --data "$D" --org "$1" --role "$2" --name "$3" --json \
        >"$tmp/key.json" 2>"$tmp/key.log" || die "qwickd apikey create $*" "$tmp/key.log"
    json_get "$tmp/key.json" api_key
}
keyA=$(newkey "$orgA" signer load-a)
keyB=$(newkey orgb signer load-b)
adminB=$(newkey orgb admin admin-b)
make_cert "$tmp/b" "Org B Signer"
printf '{"backend": "local", "key": "%s", "chain": "%s"}\n' "$tmp/b.key" "$tmp/b.pem" >"$tmp/b.json"
"$QWICKD" profile create --data "$D" --org orgb --name default --config "$tmp/b.json" \
    >"$tmp/prof.log" 2>&1 || die "profile create (orgb)" "$tmp/prof.log"
cp -a "$D" "$tmp/n2"

start_qwickd "$D"
N1=$QWICKD_URL
N1_PID=$QWICKD_PID
rm -f "$tmp/n2.port"
"$QWICKD" serve --data "$tmp/n2" --listen 127.0.0.1:0 --port-file "$tmp/n2.port" 2>>"$tmp/n2.log" &
N2_PID=$!
track_pid "$N2_PID"
wait_port "$N2_PID" "$tmp/n2.port" "qwickd serve (node 2)" "$tmp/n2.log"
N2="https://127.0.0.1:$port"
PGMN_NODES="$N1,$N2"
PGMN_CA=$QWICKD_TLS_CA
PGMN_KEYS="$keyA,$keyB"
export PGMN_NODES PGMN_CA PGMN_KEYS
orgA_id=$(db_sql -c "SELECT id FROM orgs WHERE name = '$orgA'")
orgB_id=$(db_sql -c "SELECT id FROM orgs WHERE name = 'orgb'")
echo "setup: $(($(date +%s) - t0)) s"

api() { # URL KEY METHOD PATH [BODY]: the status; the body in $tmp/resp
    curl -sS --max-time 20 --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $2" \
        -H 'Content-Type: application/json' -X "$3" ${5:+-d "$5"} -o "$tmp/resp" \
        -w '%{http_code}' "$1$4" || true
}
sign_body='{"digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","algorithm":"sha256"}'
# allowed ORG_ID: allowed sign.digest entries of the org
allowed() { db_sql -c "SELECT count(*) FROM audit WHERE org_id = $1 AND action = 'sign.digest' AND outcome = 0"; }

# --- load: both nodes, both orgs, concurrently ------------------------------------------
t1=$(date +%s)
load sign "$tmp/load.jsonl" --count "$REQUESTS" || die "load client"
load read "$tmp/load.jsonl" "$tmp/read.jsonl" || die "read client"
echo "load and reads: $(($(date +%s) - t1)) s"
lines_py "$REQUESTS requests made, every one a 200 with a signature" "$tmp/load.jsonl" "
assert len(rows) == $REQUESTS, len(rows)
bad = [r for r in rows if r['status'] != 200 or not r['signature'] or not r['requestId']]
assert not bad, (len(bad), bad[:3])
assert {(r['node'], r['org']) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}"
lines_py "no duplicate request ids; X-Request-Id is the body's" "$tmp/load.jsonl" "
ids = [r['requestId'] for r in rows]
assert len(set(ids)) == len(ids), [i for i, n in collections.Counter(ids).items() if n > 1][:5]
assert all(r['rid'] == r['requestId'] for r in rows)"
lines_py "log indexes: per org, each one once, 0 .. n-1 among the load's" "$tmp/load.jsonl" "
for org in (0, 1):
    ix = sorted(r['logIndex'] for r in rows if r['org'] == org)
    assert len(set(ix)) == len(ix), org
    assert ix[-1] - ix[0] == len(ix) - 1, (org, ix[0], ix[-1], len(ix))"
lines_py "every request readable from both nodes: SIGNED, the same signature" "$tmp/read.jsonl" "
sent = {}
for l in open('$tmp/load.jsonl'):
    r = json.loads(l)
    sent[r['requestId']] = r['signature']
assert len(rows) == 2 * len(sent), (len(rows), len(sent))
seen = collections.Counter((r['requestId'], r['node']) for r in rows)
assert set(seen) == {(i, n) for i in sent for n in (0, 1)}
bad = [r for r in rows if r['status'] != 200 or r['state'] != 'SIGNED' or r['signature'] != sent[r['requestId']]]
assert not bad, (len(bad), bad[:2])"
nA=$(grep -c '"org": 0' "$tmp/load.jsonl" || true)
nB=$(grep -c '"org": 1' "$tmp/load.jsonl" || true)
check_eq "org A: one allowed sign.digest entry per request" "$(allowed "$orgA_id")" "$nA"
check_eq "org B: one allowed sign.digest entry per request" "$(allowed "$orgB_id")" "$nB"
db_sql -c "SELECT request_id FROM audit WHERE action = 'sign.digest' AND outcome = 0" >"$tmp/audited"
lines_py "the entries name exactly the requests made" "$tmp/load.jsonl" "
audited = open('$tmp/audited').read().split()
assert sorted(audited) == sorted(r['requestId'] for r in rows)"
check_eq "each org's log: sequence 1..n without gaps or repeats" \
    "$(db_sql -c "SELECT count(*) FROM (SELECT org_id FROM audit GROUP BY org_id
                  HAVING count(*) <> max(seq) OR count(DISTINCT seq) <> count(*) OR min(seq) <> 1) x")" 0
api "$N2" "$keyB" GET "/api/v1/usage" >/dev/null
check_py "org B's usage (node 2) counts its signatures" "$tmp/resp" "assert d['signatures'] == $nB, d"
check "audit verify (every org)" "$QWICKD" audit verify --data "$D"

# --- revocation through one node, refused by the other at once ----------------------------
check_eq "admin B creates a signer key on node 1" \
    "$(api "$N1" "$adminB" POST /api/v1/keys '{"name":"short-lived","role":"signer"}')" 201
rkey=$(json_get "$tmp/resp" key)
rid=$(json_get "$tmp/resp" id)
check_eq "the new key signs on node 2" "$(api "$N2" "$rkey" POST /api/v1/sign/digest "$sign_body")" 200
check_eq "revoked on node 1 (DELETE)" "$(api "$N1" "$adminB" DELETE "/api/v1/keys/$rid")" 200
check_eq "node 2 refuses it at once: 401" "$(api "$N2" "$rkey" POST /api/v1/sign/digest "$sign_body")" 401
check_py "revoked_api_key" "$tmp/resp" 'assert d["error"]["code"] == "revoked_api_key", d'
ckey=$(newkey orgb signer cli-revoked)
check_eq "a second key signs on node 1" "$(api "$N1" "$ckey" POST /api/v1/sign/digest "$sign_body")" 200
cid=$(json_get "$tmp/key.json" id)
check "qwickd apikey revoke" "$QWICKD" apikey revoke --data "$D" --org orgb "$cid"
check_eq "node 1 refuses it: 401" "$(api "$N1" "$ckey" POST /api/v1/sign/digest "$sign_body")" 401
check_eq "node 2 refuses it: 401" "$(api "$N2" "$ckey" POST /api/v1/sign/digest "$sign_body")" 401

# --- the database restarts under load ------------------------------------------------------
t1=$(date +%s)
rm -f "$tmp/stop"
timeout 120 "$PY" "$tmp/load.py" sign "$tmp/restart.jsonl" --until "$tmp/stop" >"$tmp/restart.out" 2>&1 &
lpid=$!
track_pid "$lpid"
sleep 2
r0=$($PY -c 'import time; print(time.monotonic())')
sh "$PGCLUSTER" restart "$t_pgdir" >"$tmp/restart.log" 2>&1 || die "pgcluster.sh restart" "$tmp/restart.log"
r1=$($PY -c 'import time; print(time.monotonic())')
echo "the cluster restarted in $($PY -c "print(round($r1 - $r0, 1))") s"
# Both nodes serve again, without a restart of theirs: a signature from each (20 s at most).
for n in "$N1" "$N2"; do
    i=0
    until [ "$(api "$n" "$keyA" POST /api/v1/sign/digest "$sign_body")" = 200 ]; do
        i=$((i + 1))
        [ "$i" -lt 40 ] || break
        sleep 0.5
    done
    if [ "$i" -lt 40 ]; then ok "$n signs again after the restart"; else
        fail "$n does not sign 20 s after the restart (last: $(cat "$tmp/resp"))"
    fi
done
sleep 2 # the load goes on against the restarted database for a while
touch "$tmp/stop"
rc=0
wait "$lpid" || rc=$?
check_eq "the load client finished (no hang)" "$rc" 0
cat "$tmp/restart.out"
check "node 1 still runs (same process)" kill -0 "$N1_PID"
check "node 2 still runs (same process)" kill -0 "$N2_PID"
$PY -c 'import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
c = collections.Counter("%s %s" % (r["status"], r["code"] or r["err"] or "") for r in rows)
print("under restart:", ", ".join("%s: %d" % kv for kv in sorted(c.items())),
      "; slowest %.0f ms" % max(r["ms"] for r in rows))' "$tmp/restart.jsonl"
lines_py "requests were in flight across the restart, and made after it" "$tmp/restart.jsonl" "
across = [r for r in rows if r['t'] < $r1 and r['t'] + r['ms'] / 1000 > $r0]
after = [r for r in rows if r['t'] > $r1]
assert len(across) >= 16 and len(after) >= 16, (len(across), len(after))"
lines_py "under restart: every answer a 200 with a signature or an error without one, in time" \
    "$tmp/restart.jsonl" "
bad = [r for r in rows if not ((r['status'] == 200 and r['signature'] and r['requestId'])
                               or (r['status'] in (500, 503) and r['code'] and not r['signature']))]
assert not bad, (len(bad), bad[:3])
assert sum(r['status'] == 200 for r in rows) > 0
slow = [r for r in rows if r['ms'] > 15000]
assert not slow, slow[:3]"
# A COMMIT cut by the restart leaves its outcome unknown: that request must
# fail, with 503 (docs/postgresql.md, "Failures").
lines_py "under restart: the failures are 503, not 500" "$tmp/restart.jsonl" "
bad = [r for r in rows if r['status'] not in (200, 503)]
assert not bad, (len(bad), bad[:3])"
db_sql -c "SELECT request_id FROM audit WHERE action = 'sign.digest' AND outcome = 0" >"$tmp/audited"
lines_py "every 200 under restart has its committed entry, once" "$tmp/restart.jsonl" "
audited = collections.Counter(open('$tmp/audited').read().split())
ok = [r['requestId'] for r in rows if r['status'] == 200]
bad = [i for i in ok if audited[i] != 1]
assert not bad, (len(bad), bad[:5])"
load read "$tmp/restart.jsonl" "$tmp/read2.jsonl" || die "read client"
lines_py "every 200 under restart readable from both nodes, the same signature" "$tmp/read2.jsonl" "
sent = {}
for l in open('$tmp/restart.jsonl'):
    r = json.loads(l)
    if r['status'] == 200:
        sent[r['requestId']] = r['signature']
assert len(rows) == 2 * len(sent)
bad = [r for r in rows if r['status'] != 200 or r['state'] != 'SIGNED' or r['signature'] != sent[r['requestId']]]
assert not bad, (len(bad), bad[:2])"
check "audit verify after the restart" "$QWICKD" audit verify --data "$D"
check_eq "each org's log still one sequence" \
    "$(db_sql -c "SELECT count(*) FROM (SELECT org_id FROM audit GROUP BY org_id
                  HAVING count(*) <> max(seq) OR count(DISTINCT seq) <> count(*) OR min(seq) <> 1) x")" 0
echo "restart part: $(($(date +%s) - t1)) s"

# --- an unreachable database -------------------------------------------------------------
# elapsed_fails DESC SECONDS CMD...: CMD fails within SECONDS, naming the database.
elapsed_fails() {
    _d=$1
    _max=$2
    shift 2
    _s=$($PY -c 'import time; print(time.monotonic())')
    _rc=0
    timeout 30 "$@" >"$tmp/out" 2>"$tmp/err" || _rc=$?
    _e=$($PY -c "import time; print(round(time.monotonic() - $_s, 1))")
    if [ "$_rc" -ne 0 ] && [ "$_rc" -ne 124 ] && $PY -c "import sys; sys.exit(not $_e <= $_max)" &&
        grep -q 'PostgreSQL' "$tmp/err"; then
        ok "$_d (exit $_rc in $_e s)"
    else
        fail "$_d (exit $_rc in $_e s, want non-zero within $_max s naming PostgreSQL)"
        _show "$tmp/out" "$tmp/err"
    fi
}
closed=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dead_url="postgresql://qwick_owner@127.0.0.1:$closed/qwick"
elapsed_fails "serve, database port closed" 5 \
    env QWICKD_DATABASE_URL="$dead_url" "$QWICKD" serve --data "$tmp/n2" --listen 127.0.0.1:0
check_grep "the message names the address" "127.0.0.1:$closed" "$tmp/err"
elapsed_fails "apikey list, database port closed" 5 \
    env QWICKD_DATABASE_URL="$dead_url" "$QWICKD" apikey list --data "$D"
# A server that accepts and never answers: libpq's connect timeout (5 s) ends it.
$PY -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
held = []
while True:
    held.append(s.accept()[0])' "$tmp/mute.port" &
mpid=$!
track_pid "$mpid"
wait_port "$mpid" "$tmp/mute.port" "the mute server"
mute_url="postgresql://qwick_owner@127.0.0.1:$port/qwick"
elapsed_fails "serve, database never answers" 12 \
    env QWICKD_DATABASE_URL="$mute_url" "$QWICKD" serve --data "$tmp/n2" --listen 127.0.0.1:0
elapsed_fails "apikey list, database never answers" 12 \
    env QWICKD_DATABASE_URL="$mute_url" "$QWICKD" apikey list --data "$D"
stop_pid "$mpid"

# The cluster goes away under the running nodes: they answer 503 and stay up;
# a new serve and an admin command fail fast.
sh "$PGCLUSTER" stop "$t_pgdir" >"$tmp/stop.log" 2>&1 || die "pgcluster.sh stop" "$tmp/stop.log"
t_pgdir=""
s0=$(date +%s)
check_eq "cluster stopped: node 1 signs with 503" "$(api "$N1" "$keyA" POST /api/v1/sign/digest "$sign_body")" 503
check_py "store_unavailable" "$tmp/resp" 'assert d["error"]["code"] == "store_unavailable", d'
check_eq "cluster stopped: node 2 /healthz is 503" "$(api "$N2" "$keyA" GET /healthz)" 503
check "within 15 s" test $(($(date +%s) - s0)) -le 15
check "node 1 still runs" kill -0 "$N1_PID"
check "node 2 still runs" kill -0 "$N2_PID"
elapsed_fails "serve, cluster stopped" 5 "$QWICKD" serve --data "$tmp/n2" --listen 127.0.0.1:0
elapsed_fails "apikey list, cluster stopped" 5 "$QWICKD" apikey list --data "$D"
echo "total: $(($(date +%s) - t0)) s"
t_done
