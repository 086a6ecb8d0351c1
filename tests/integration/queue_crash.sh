#!/bin/sh
# The queue survives `kill -9` (docs/api.md, "Asynchronous signing: the
# queue"): QC_REQUESTS (default 2000) async signing requests are submitted as
# fast as the client can while qwickd is killed with SIGKILL at random
# moments (0.1 to 1.5 s apart) and restarted on the same port, during the
# submission and again while the queue drains. After the last restart the
# queue must drain (nothing QUEUED or PROCESSING within QC_DRAIN_TIMEOUT
# seconds); then, read from the database itself:
#  - every request answered 202 is there, with the digest it was sent with
#    (the row and its sign.submit entry commit before the 202);
#  - every request ended SIGNED with a signature, or FAILED with a reason;
#  - every request has exactly one sign.submit entry and exactly one
#    sign.digest entry: allowed (outcome 0) when SIGNED, not allowed when
#    FAILED, so no lease reclaimed from a dead worker signs anything twice;
#  - no request was signed on a claim past queue.max_attempts;
#  - `qwickd audit verify` passes.
# Kills: up to QC_MAX_SUBMIT_KILLS (10) while submitting, then 2 or more
# while draining, QC_KILLS (4) in all at least. queue.lease_seconds is 2 so
# dead workers' requests come back quickly, and queue.max_attempts
# (QC_MAX_ATTEMPTS, default 3) low enough that requests whose workers die
# again and again end FAILED (dead letters): most runs see both outcomes.
# The seed (QC_SEED) replays the kill delays and the digests.
set -eu
: "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init queue_crash
PY=/usr/bin/python3
REQUESTS=${QC_REQUESTS:-2000}
MIN_KILLS=${QC_KILLS:-4}
MAX_SUBMIT_KILLS=${QC_MAX_SUBMIT_KILLS:-10}
DRAIN_TIMEOUT=${QC_DRAIN_TIMEOUT:-60}
MAX_ATTEMPTS=${QC_MAX_ATTEMPTS:-3}
SEED=${QC_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' \n')}
echo "seed $SEED (QC_SEED=$SEED replays the kill delays and the digests)"
t0=$(date +%s)
if store_is_pg; then need psql; fi

qwickd_init "$tmp/data"
# Short leases; retries after a transient failure capped at 2 s so a drain
# never waits on a long backoff.
$PY - "$tmp/data/qwickd.json" "$MAX_ATTEMPTS" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["queue"].update({"lease_seconds": 2, "max_attempts": int(sys.argv[2]), "backoff_ms": 200,
                   "backoff_max_ms": 2000})
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
start_qwickd "$tmp/data"
PORT=$QWICKD_PORT

# --- the submitter ---------------------------------------------------------------
# submit.py OUT: REQUESTS async requests from 16 threads over keep-alive HTTPS;
# request i is retried (a fresh digest each try) until it gets a 202, through
# connection errors and 503s while qwickd is down or starting, until
# QC_SUBMIT_DEADLINE seconds have passed. One JSON line per 202 in OUT
# (i, try, digest hex, requestId). Exit 1 on any other answer.
cat >"$tmp/submit.py" <<'PYEOF'
import base64, hashlib, http.client, json, os, ssl, sys, threading, time

PORT = int(os.environ["QC_PORT"])
KEY = os.environ["QC_KEY"]
N = int(os.environ["QC_REQUESTS"])
SEED = os.environ["QC_SEED"]
CTX = ssl.create_default_context(cafile=os.environ["QC_CA"])
DEADLINE = time.monotonic() + float(os.environ.get("QC_SUBMIT_DEADLINE", "120"))
THREADS = 16

lock = threading.Lock()
out = open(sys.argv[1], "w")
nxt = [0]
stats = {"accepted": 0, "tries": 0, "conn_errors": 0, "status_503": 0, "gave_up": 0,
         "unexpected": 0}

def count(k):
    with lock:
        stats[k] += 1

def take():
    with lock:
        i = nxt[0]
        nxt[0] += 1
        return i if i < N else None

def one(conn, i, t):
    digest = hashlib.sha256(("queue_crash %s %d %d" % (SEED, i, t)).encode()).digest()
    body = json.dumps({"digest": base64.b64encode(digest).decode(), "algorithm": "sha256",
                       "format": "cms" if i % 2 else "authenticode-pe", "async": True,
                       "metadata": {"filename": "qc-%d.exe" % i}})
    conn.request("POST", "/api/v1/sign/digest", body=body,
                 headers={"Authorization": "Bearer " + KEY,
                          "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data, digest.hex(), r.getheader("Connection", "").lower() == "close"

def worker():
    conn = None
    while True:
        i = take()
        if i is None:
            break
        t = 0
        while True:
            if time.monotonic() > DEADLINE:
                count("gave_up")
                break
            t += 1
            count("tries")
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", PORT, timeout=15, context=CTX)
                st, data, dhex, close = one(conn, i, t)
            except Exception:  # down, restarting, killed mid-request
                if conn is not None:
                    conn.close()
                conn = None
                count("conn_errors")
                time.sleep(0.05)
                continue
            if close:
                conn.close()
                conn = None
            if st == 202:
                rid = json.loads(data)["requestId"]
                with lock:
                    stats["accepted"] += 1
                    out.write(json.dumps({"i": i, "try": t, "digest": dhex, "id": rid}) + "\n")
                    out.flush()
                break
            if st == 503:  # starting, or the store was busy: try again
                count("status_503")
                time.sleep(0.05)
                continue
            count("unexpected")
            print("request %d: unexpected %d %s" % (i, st, data[:200]), file=sys.stderr)
            break
    if conn is not None:
        conn.close()

start = time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(THREADS)]
for th in ts:
    th.start()
for th in ts:
    th.join()
out.close()
print("submitter: %(accepted)d accepted in %(tries)d tries (%(conn_errors)d connection errors, "
      "%(status_503)d 503s, %(gave_up)d given up, %(unexpected)d unexpected answers)" % stats,
      "in %.1f s" % (time.monotonic() - start))
sys.exit(1 if stats["unexpected"] or stats["gave_up"] else 0)
PYEOF

# --- crashes -----------------------------------------------------------------------
# The kill delays, from the seed.
delays=$($PY -c 'import random, sys
r = random.Random(int(sys.argv[1]))
print(" ".join("%.2f" % r.uniform(0.1, 1.5) for _ in range(200)))' "$SEED")
next_delay() { # sets $delay, the next one of $delays
    delay=${delays%% *}
    delays=${delays#* }
}

# serve_again: qwickd on PORT again (the old one's port may take a moment to be
# free: a few tries); sets QWICKD_PID.
serve_again() {
    _try=0
    while :; do
        _try=$((_try + 1))
        rm -f "$tmp/port"
        "$QWICKD" serve --data "$QWICKD_DATA" --listen "127.0.0.1:$PORT" --port-file "$tmp/port" \
            2>>"$tmp/server.log" &
        QWICKD_PID=$!
        track_pid "$QWICKD_PID"
        _i=0
        while [ ! -s "$tmp/port" ] && kill -0 "$QWICKD_PID" 2>/dev/null && [ "$_i" -lt 600 ]; do
            _i=$((_i + 1))
            sleep 0.05
        done
        [ -s "$tmp/port" ] && return 0
        stop_pid "$QWICKD_PID"
        [ "$_try" -lt 20 ] || die "qwickd did not start again on port $PORT" "$tmp/server.log"
        sleep 0.2
    done
}

# open_rows: "QUEUED n PROCESSING n FAILED n" from `qwickd queue status`.
open_rows() {
    "$QWICKD" queue status --data "$QWICKD_DATA" --json 2>"$tmp/qs.err" |
        $PY -c 'import json, sys
d = json.load(sys.stdin)
print("QUEUED %d PROCESSING %d FAILED %d" % (d["QUEUED"], d["PROCESSING"], d["FAILED"]))' ||
        echo "(queue status failed: $(head -c 200 "$tmp/qs.err"))"
}

kills=0
crash() { # PHASE: SIGKILL, a look at the queue, a restart
    _rest=""
    for _p in $t_pids; do [ "$_p" = "$QWICKD_PID" ] || _rest="$_rest $_p"; done
    t_pids=$_rest
    kills=$((kills + 1))
    kill -0 "$QWICKD_PID" 2>/dev/null || fail "qwickd exited on its own before kill $kills"
    kill -KILL "$QWICKD_PID" 2>/dev/null || true
    wait "$QWICKD_PID" 2>/dev/null || true
    echo "kill $kills ($1, ${delay}s after the last start, +$(($(date +%s) - t0))s): $(open_rows)"
    echo "=== queue_crash: killed (kill $kills), restarting" >>"$tmp/server.log"
    serve_again
}

QC_PORT=$PORT QC_KEY=$QWICKD_API_KEY QC_CA=$QWICKD_TLS_CA QC_REQUESTS=$REQUESTS QC_SEED=$SEED \
    $PY "$tmp/submit.py" "$tmp/accepted.jsonl" >"$tmp/submit.log" 2>&1 &
sub=$!
track_pid "$sub"
while kill -0 "$sub" 2>/dev/null && [ "$kills" -lt "$MAX_SUBMIT_KILLS" ]; do
    next_delay
    sleep "$delay"
    kill -0 "$sub" 2>/dev/null || break
    crash submitting
done
sub_rc=0
wait "$sub" || sub_rc=$?
cat "$tmp/submit.log"
check_eq "the submitter ends without unexpected answers" "$sub_rc" 0
submit_kills=$kills
drain_kills=0
while [ "$drain_kills" -lt 2 ] || [ "$kills" -lt "$MIN_KILLS" ]; do
    next_delay
    sleep "$delay"
    crash draining
    drain_kills=$((drain_kills + 1))
done
echo "kills: $kills ($submit_kills while submitting, $drain_kills while draining)"

# --- the queue drains ----------------------------------------------------------------
drain_end=$(($(date +%s) + DRAIN_TIMEOUT))
while :; do
    state=$(open_rows)
    case $state in "QUEUED 0 PROCESSING 0 "*) break ;; esac
    if [ "$(date +%s)" -ge "$drain_end" ]; then
        fail "the queue did not drain within $DRAIN_TIMEOUT s after the last restart: $state"
        break
    fi
    sleep 0.5
done
echo "the queue at +$(($(date +%s) - t0))s: $state"
stop_qwickd
check_eq "qwickd stops cleanly after the drain" "$stopped" 0

# --- what the database says -----------------------------------------------------------
# requests.csv: id, status, attempts, error, digest (hex), has a signature;
# audit.csv: action, request_id, outcome of the queue's entries.
if store_is_pg; then
    pg_store_sql --csv -c "SELECT id, status, attempts, coalesce(error, ''), encode(digest, 'hex'),
        (signature IS NOT NULL)::int FROM sign_requests" >"$tmp/requests.csv" ||
        die "reading sign_requests"
    pg_store_sql --csv -c "SELECT action, coalesce(request_id, ''), outcome FROM audit
        WHERE action IN ('sign.submit', 'sign.digest')" >"$tmp/audit.csv" || die "reading audit"
else
    $PY - "$tmp/data/qwick.db" "$tmp" <<'EOF' || die "reading qwick.db"
import csv, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
for name, q in (("requests", "SELECT id, status, attempts, coalesce(error, ''), lower(hex(digest)), "
                             "signature IS NOT NULL FROM sign_requests"),
                ("audit", "SELECT action, coalesce(request_id, ''), outcome FROM audit "
                          "WHERE action IN ('sign.submit', 'sign.digest')")):
    with open("%s/%s.csv" % (sys.argv[2], name), "w", newline="") as f:
        csv.writer(f).writerows(db.execute(q))
EOF
fi

# check.py: one line per check, "ok<TAB>DESC" or "fail<TAB>DESC"; details and
# counts on stderr.
$PY - "$tmp" "$REQUESTS" "$MAX_ATTEMPTS" >"$tmp/checks.tsv" 2>"$tmp/checks.log" <<'EOF' || die "check.py" "$tmp/checks.log"
import collections, csv, json, sys
d, want, max_attempts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acc = [json.loads(l) for l in open(d + "/accepted.jsonl")]
rows = {r[0]: {"status": int(r[1]), "attempts": int(r[2]), "error": r[3], "digest": r[4],
               "sig": r[5] in ("1", "t", "true")}
        for r in csv.reader(open(d + "/requests.csv"))}
audit = collections.defaultdict(list)
for action, rid, outcome in csv.reader(open(d + "/audit.csv")):
    audit[rid].append((action, int(outcome)))
STATUS = {0: "QUEUED", 1: "PENDING_APPROVAL", 2: "PROCESSING", 3: "SIGNED", 4: "FAILED"}

def check(desc, bad):
    """bad: the offending ids (or descriptions); none means ok."""
    bad = list(bad)
    print("%s\t%s%s" % ("fail" if bad else "ok", desc, " (%d)" % len(bad) if bad else ""))
    for b in bad[:10]:
        print("  %s: %s" % (desc, b), file=sys.stderr)

def show(i):
    r = rows.get(i)
    return "%s row=%s audit=%s" % (i, r, audit.get(i))

ids = [a["id"] for a in acc]
check("every request got a 202 (%d of %d)" % (len(acc), want), [] if len(acc) == want else
      ["%d accepted" % len(acc)])
check("each 202 names a request of its own", [i for i, n in collections.Counter(ids).items()
                                            if n > 1])
check("every accepted request is in sign_requests (durable from the 202)",
      [i for i in ids if i not in rows])
check("with the digest it was sent with",
      [show(a["id"]) for a in acc if a["id"] in rows and rows[a["id"]]["digest"] != a["digest"]])
check("every request ended SIGNED or FAILED (none QUEUED or PROCESSING)",
      [show(i) for i, r in rows.items() if r["status"] not in (3, 4)])
check("every SIGNED request has its signature",
      [show(i) for i, r in rows.items() if r["status"] == 3 and not r["sig"]])
check("every FAILED request says why",
      [show(i) for i, r in rows.items() if r["status"] == 4 and not r["error"].strip()])

def n(i, action, allowed=None):
    return sum(1 for a, o in audit.get(i, ()) if a == action and
               (allowed is None or (o == 0) == allowed))

check("every SIGNED request has exactly one allowed sign.digest entry (signed once)",
      [show(i) for i, r in rows.items() if r["status"] == 3 and n(i, "sign.digest", True) != 1])
check("no SIGNED request has a sign.digest entry besides it",
      [show(i) for i, r in rows.items() if r["status"] == 3 and n(i, "sign.digest") != 1])
check("no FAILED request has an allowed sign.digest entry",
      [show(i) for i, r in rows.items() if r["status"] == 4 and n(i, "sign.digest", True) != 0])
check("every FAILED request has exactly one sign.digest entry (its failure)",
      [show(i) for i, r in rows.items() if r["status"] == 4 and n(i, "sign.digest") != 1])
check("every request has exactly one sign.submit entry",
      [show(i) for i in rows if n(i, "sign.submit") != 1])
check("no entry names a request that is not there", [i for i in audit if i not in rows])
# A claim past max_attempts ends the request FAILED without signing (a worker
# killed before recording that makes one more claim: attempts may go higher).
check("no request was signed on a claim past max_attempts",
      [show(i) for i, r in rows.items() if r["status"] == 3 and r["attempts"] > max_attempts])

st = collections.Counter(STATUS.get(r["status"], str(r["status"])) for r in rows.values())
att = collections.Counter(r["attempts"] for r in rows.values())
print("accepted %d; rows %d (%d committed without a 202 reaching the client); %s; "
      "attempts: %s (max %d); failures: %s" % (
          len(acc), len(rows), len(set(rows) - set(ids)),
          ", ".join("%s %d" % kv for kv in sorted(st.items())),
          ", ".join("%d x%d" % kv for kv in sorted(att.items())), max(att) if att else 0,
          dict(collections.Counter(r["error"] for r in rows.values() if r["status"] == 4))),
      file=sys.stderr)
EOF
cat "$tmp/checks.log"
tab=$(printf '\t')
while IFS=$tab read -r res desc; do
    if [ "$res" = ok ]; then ok "$desc"; else fail "$desc"; fi
done <"$tmp/checks.tsv"
check "qwickd audit verify passes" "$QWICKD" audit verify --data "$QWICKD_DATA"
if [ "$t_fails" -gt 0 ]; then
    echo "server log (last lines):"
    _show "$tmp/server.log"
fi
echo "took $(($(date +%s) - t0)) s"
t_done
