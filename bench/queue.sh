#!/bin/sh
# bench/queue.sh [BUILD_DIR]: the asynchronous signing queue (docs/api.md
# "Asynchronous signing: the queue"), three measurements from one run.
#   (a) accept:  qwickd (SQLite, the dev profile of `qwickd init`) with
#                queue.concurrency 0, so nothing drains and only the 202 path
#                is measured: wrk with CONNS keep-alive connections for
#                DURATION seconds of POST /api/v1/sign/digest {"async": true}
#                (one fixed digest: every request is still a new row and a new
#                sign.submit audit entry, committed before the 202). Target
#                >= A_TARGET (5000) accepted/s. Sanity: the QUEUED rows added
#                equal the 202s counted (plus at most CONNS requests in flight
#                when wrk stopped), and every row has its audit entry.
#   (b) drain:   a copy of the same fresh data directory gets a backlog of
#                DRAIN_N queued requests (default: DRAIN_SECONDS (10) of
#                openssl's rate) submitted through the API with concurrency 0
#                (wrk's Lua counts them, then sends cheap GETs), then restarts
#                with queue.concurrency QUEUE_CONCURRENCY (256). /metrics is
#                polled every POLL_MS (100) until nothing is QUEUED or
#                PROCESSING; the clock runs from the exec of `qwickd serve` to
#                the last signature's audit entry (its ms timestamp is taken
#                as the outcome goes to the store's writer; a poll's answer
#                comes late on a busy machine). Baseline: `openssl speed
#                -multi $(nproc) rsa3072` for BASELINE/2 seconds right before
#                and right after the drain (a drain cannot be sliced as
#                bench/server.sh slices its load). Target: drained
#                signatures/s >= B_TARGET (0.8) x openssl's sign/s. Also shown:
#                qwickd's CPU per signature against openssl's (one process,
#                CPU time), the ratio on cores of its own.
#   (c) azure:   the same data directory with an Azure profile on
#                tests/emulators/azure_emu.py answering each signature after
#                OP_DELAY_MS (1000; submit -> 202 + Retry-After 1) and
#                limits.threads C_THREADS (1). After WARMUP async requests (the
#                first creates the client secret and token), C_REQUESTS (500)
#                async submissions go out as fast as C_CONNS (50) pre-opened
#                keep-alive connections allow; /metrics is polled every 50 ms
#                until all are finished; the clock runs from the first
#                submission to the last signature's audit entry. Target: under
#                C_TARGET_S (5) s with at most MAX_THREADS (8) threads doing
#                the work: qwickd's threads are counted from /proc every 20 ms,
#                named by their entry function (one gdb backtrace before the
#                clock starts, when gdb is there) and a thread works when its
#                CPU time grew during the run. With limits.threads 1 qwickd
#                has 11: main (waits for signals), libmicrohttpd's loop, one
#                signing worker, the store's writer and checkpointer, the log
#                flusher, the connection guard's sweeper, the queue's
#                dispatcher, the callback sender, the Azure engine and the
#                Azure credential thread.
# Load (uptime) is printed before and after: the machine may be shared, and
# every figure shares its cores with the load generator and other work, so
# (a) also shows qwickd's CPU per accepted request and its busiest thread's
# (the store's writer: its CPU per request bounds the rate on any machine).
# Prints PASS/MISS per target; exits 1 only when something failed (a non-2xx
# answer, a lost or unaudited row, a request not signed, a process that died).
# Environment: DURATION (10), CONNS (8 x CPUs), THREADS (1, wrk threads),
# FORMAT (authenticode-pe), A_TARGET (5000), BASELINE (6), DRAIN_N (auto),
# DRAIN_SECONDS (10), QUEUE_CONCURRENCY (256), POLL_MS (100), B_TARGET (0.8),
# C_REQUESTS (500), C_CONNS (50), C_THREADS (1), C_CONCURRENCY (QUEUE_CONCURRENCY:
# with 256, 500 requests go in two waves), OP_DELAY_MS (1000), WARMUP
# (2), C_TARGET_S (5), MAX_THREADS (8), PERF (seconds: a perf profile of the
# 202 path in an extra pass after (a), not counted in it; needs perf),
# ROLES (1; 0: no gdb backtrace, threads are named by /proc comm only).
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
QWICKD=$BUILD/qwickd
NCPU=$(nproc)
DURATION=${DURATION:-10}
CONNS=${CONNS:-$((NCPU * 8))}
THREADS=${THREADS:-1}
FORMAT=${FORMAT:-authenticode-pe}
A_TARGET=${A_TARGET:-5000}
BASELINE=${BASELINE:-6}
DRAIN_N=${DRAIN_N:-auto}
DRAIN_SECONDS=${DRAIN_SECONDS:-10}
QUEUE_CONCURRENCY=${QUEUE_CONCURRENCY:-256}
POLL_MS=${POLL_MS:-100}
B_TARGET=${B_TARGET:-0.8}
C_REQUESTS=${C_REQUESTS:-500}
C_CONNS=${C_CONNS:-50}
C_THREADS=${C_THREADS:-1}
C_CONCURRENCY=${C_CONCURRENCY:-$QUEUE_CONCURRENCY}
OP_DELAY_MS=${OP_DELAY_MS:-1000}
WARMUP=${WARMUP:-2}
C_TARGET_S=${C_TARGET_S:-5}
MAX_THREADS=${MAX_THREADS:-8}
PERF=${PERF:-}
ROLES=${ROLES:-1}
export ROLES # read by the helper
# shellcheck source=tests/integration/lib.sh disable=SC2154 # tmp, port, stopped: set by lib.sh
. "$SRC_ROOT/tests/integration/lib.sh"
t_init bench-queue

need wrk openssl python3
[ -x "$QWICKD" ] || die "$QWICKD is missing (ninja -C $BUILD qwickd)"
/usr/bin/python3 -c 'import cryptography' 2>/dev/null ||
    die "the Azure emulator needs /usr/bin/python3 with cryptography (python3-cryptography)"
half=$((BASELINE / 2))
[ "$half" -ge 1 ] || die "BASELINE must be >= 2"
errs=0
problem() { # MSG: a failure that does not stop the run
    echo "bench/queue.sh: $1" >&2
    errs=1
}

# --- helper: /proc, /metrics, the Azure client, the audit rows ------------------
cat >"$tmp/qb.py" <<'PYEOF'
"""bench/queue.sh's helper. Subcommands: snap PID OUT [SHELL_PID], roles PID OUT,
threads SNAP0 SNAP1 ROLES N, metrics URL CA TOKEN OUT, drain URL CA TOKEN T0_NS
POLL_MS TIMEOUT OUT, azure (options), audit DB WHAT, jget FILE KEY."""
import base64, http.client, json, math, os, re, sqlite3, ssl, subprocess, sys
import threading, time, urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat(path):
    """(comm, own CPU s, waited-for children's CPU s) of /proc/.../stat."""
    with open(path) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (s[s.index("(") + 1:s.rindex(")")], (int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK)


def machine_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK     # all but idle and iowait


def snapshot(pid, shell=None):
    tids = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            comm, cpu, _ = stat("/proc/%d/task/%s/stat" % (pid, tid))
            tids[tid] = [comm, cpu]
        except (OSError, ValueError):
            pass
    snap = {"t": time.time(), "cpu": stat("/proc/%d/stat" % pid)[1], "tids": tids,
            "machine": machine_busy()}
    if shell:
        snap["children"] = stat("/proc/%d/stat" % shell)[2]
    return snap


# Thread entry functions (the frame under start_thread) and what they do.
ENTRIES = {"main": "main: waits for SIGTERM", "writer_main": "store writer (group commit)",
           "ckpt_main": "store checkpointer", "flusher_main": "log flusher",
           "guard_sweeper": "connection guard sweeper", "dispatcher": "queue dispatcher",
           "sender": "callback sender", "worker": "signing worker (workq)",
           "engine_main": "Azure sign engine", "creds_main": "Azure credentials"}


def roles(pid):
    """{tid: role}: from one gdb backtrace of every thread, else /proc comm."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            comm = stat("/proc/%d/task/%s/stat" % (pid, tid))[0]
        except (OSError, ValueError):
            continue
        out[tid] = "HTTP loop (libmicrohttpd)" if comm.startswith("MHD") else comm
    if os.environ.get("ROLES", "1") == "0":
        return out
    try:
        text = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt"],
                              capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return out
    tid, prev = None, None
    for line in text.splitlines():
        m = re.match(r"Thread \d+ \(Thread 0x[0-9a-f]+ \(LWP (\d+)\)", line)
        if m:
            tid, prev = m.group(1), None
            continue
        f = re.match(r"#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w.]*) \(", line)
        if tid is None or f is None:
            continue
        fn = f.group(1)
        if fn == "start_thread" and prev is not None and tid in out:
            if not out[tid].startswith("HTTP"):
                out[tid] = ENTRIES.get(prev, prev)
        elif fn == "main" and tid in out:
            out[tid] = ENTRIES["main"]
        prev = fn
    return out


def thread_rows(s0, s1, names):
    rows = []
    for tid, (comm, cpu) in s1["tids"].items():
        before = s0["tids"].get(tid, [comm, 0.0])[1]
        rows.append((cpu - before, tid, names.get(tid, comm)))
    rows.sort(key=lambda r: (-r[0], int(r[1])))
    return rows


def pct(v, p):
    """Nearest rank."""
    return v[max(1, math.ceil(p / 100.0 * len(v))) - 1] if v else float("nan")


class Api:
    """One keep-alive HTTPS connection to qwickd; reconnects once on error."""

    def __init__(self, url, ca, token):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.token = u.hostname, u.port, token
        self.ctx = ssl.create_default_context(cafile=ca)
        self.conn = None

    def connect(self):
        c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
        c.connect()
        return c

    def call(self, method, path, body=None):
        hdr = {"Authorization": "Bearer " + self.token}
        if body is not None:
            hdr["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = self.connect()
                self.conn.request(method, path, body, hdr)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def metrics(self):
        st, text = self.call("GET", "/metrics")
        if st != 200:
            raise OSError("GET /metrics: HTTP %d" % st)
        out = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out


def depth(m, status):
    return int(m.get('qwickd_queue_depth{status="%s"}' % status, 0))


def completed(m, status):
    return int(m.get('qwickd_queue_completed_total{status="%s"}' % status, 0))


def cmd_drain(url, ca, token, t0_ns, poll_ms, timeout, out):
    """Polls /metrics until nothing is QUEUED or PROCESSING."""
    api, t0, polls, first = Api(url, ca, token), int(t0_ns) / 1e9, 0, None
    machine0, tm0 = machine_busy(), time.time()
    deadline, tick = time.time() + float(timeout), int(poll_ms) / 1000.0
    while True:
        m = api.metrics()
        now, polls = time.time(), polls + 1
        if first is None and completed(m, "SIGNED") + completed(m, "FAILED") > 0:
            first = now - t0
        if depth(m, "QUEUED") + depth(m, "PROCESSING") == 0:
            break
        if now > deadline:
            sys.exit("drain: still %d queued, %d processing after %s s"
                     % (depth(m, "QUEUED"), depth(m, "PROCESSING"), timeout))
        time.sleep(max(0.0, tick - (time.time() - now)))
    json.dump({"wall_s": now - t0, "first_done_s": first, "polls": polls, "metrics": m,
               "machine0": machine0, "tm0": tm0},
              open(out, "w"))


class Sampler(threading.Thread):
    """Max of /proc/PID/status "Threads:" and of /proc/PID/task entries."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval, self.max, self.samples = pid, interval, 0, 0
        self.stopping = threading.Event()

    def sample(self):
        try:
            with open("/proc/%d/status" % self.pid) as f:
                n = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
            n = max(n, len(os.listdir("/proc/%d/task" % self.pid)))
        except (OSError, StopIteration, ValueError):
            return
        self.max, self.samples = max(self.max, n), self.samples + 1

    def run(self):
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self):
        self.stopping.set()
        self.join()
        self.sample()


def sign_body(profile, fmt):
    return json.dumps({"digest": base64.b64encode(os.urandom(32)).decode(), "algorithm": "sha256",
                       "format": fmt, "profile": profile, "async": True}).encode()


def wait_signed(api, rid, timeout=60):
    t_end = time.time() + timeout
    while time.time() < t_end:
        st, body = api.call("GET", "/api/v1/sign/requests/" + rid)
        d = json.loads(body) if st == 200 else {}
        if d.get("status") == "SIGNED":
            return
        if d.get("status") in ("FAILED", "CANCELLED") or st != 200:
            sys.exit("azure warm-up: request %s: HTTP %d %s" % (rid, st, body[:300]))
        time.sleep(0.05)
    sys.exit("azure warm-up: request %s not signed after %d s" % (rid, timeout))


def cmd_azure(a):
    """(c): warm-up, then N async submissions over C connections; the clock
    runs from the first submission until /metrics counts all N finished."""
    sampler = Sampler(a["pid"])
    sampler.start()
    api = Api(a["url"], a["ca"], a["key"])
    mon = Api(a["url"], a["ca"], a["token"])
    warm = []
    for _ in range(a["warmup"]):
        t = time.time()
        st, body = api.call("POST", "/api/v1/sign/digest", sign_body(a["profile"], a["format"]))
        if st != 202:
            sys.exit("azure warm-up: HTTP %d %s" % (st, body[:300]))
        wait_signed(api, json.loads(body)["requestId"])
        warm.append(time.time() - t)
    n, c = a["requests"], min(a["conns"], a["requests"])
    lock, nxt, results, errors = threading.Lock(), [0], [], {}
    ready = threading.Barrier(c + 1)

    def worker():
        w = Api(a["url"], a["ca"], a["key"])
        try:
            w.conn = w.connect()
        finally:
            ready.wait()
        while True:
            with lock:
                if nxt[0] >= n:
                    break
                nxt[0] += 1
            body, t = sign_body(a["profile"], a["format"]), time.time()
            try:
                st, resp = w.call("POST", "/api/v1/sign/digest", body)
                rid = json.loads(resp).get("requestId") if st == 202 else None
            except (OSError, http.client.HTTPException, ValueError) as e:
                st, rid, resp = type(e).__name__, None, str(e).encode()
            with lock:
                results.append((t, time.time(), st, rid))
                if st != 202:
                    errors.setdefault(str(st), resp[:200].decode("utf-8", "replace"))

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(c)]
    for w in workers:
        w.start()
    m0 = mon.metrics()
    base = completed(m0, "SIGNED") + completed(m0, "FAILED")
    s0 = snapshot(a["pid"])
    e0 = stat("/proc/%d/stat" % a["emu_pid"])[1]
    ready.wait()                                  # every connection is open
    t0 = time.time()
    polls, done_at, m1 = 0, None, m0
    while done_at is None:
        time.sleep(0.05)
        m1, polls = mon.metrics(), polls + 1
        with lock:
            sent = len(results)
            ok = sum(1 for r in results if r[2] == 202)
        if sent == n and completed(m1, "SIGNED") + completed(m1, "FAILED") - base >= ok:
            done_at = time.time()
        elif time.time() - t0 > a["timeout"]:
            sys.exit("azure: not finished after %d s (%d sent)" % (a["timeout"], sent))
    s1 = snapshot(a["pid"])
    e1 = stat("/proc/%d/stat" % a["emu_pid"])[1]
    sampler.stop()
    for w in workers:
        w.join()
    first = min(r[0] for r in results)
    ids = {r[3]: r[0] for r in results if r[3]}
    db = sqlite3.connect("file:%s?mode=ro" % a["db"], uri=True, timeout=30)
    done = {}
    for rid, ts, outcome in db.execute(
            "SELECT request_id, ts, outcome FROM audit WHERE action = 'sign.digest'"):
        if rid in ids:
            done[rid] = (ts / 1000.0, outcome)
    status = dict(db.execute("SELECT id, status FROM sign_requests").fetchall())
    signed = sum(1 for rid in ids if status.get(rid) == 3)
    sub = sorted(r[1] - r[0] for r in results if r[2] == 202)
    fin = sorted(done[rid][0] - t for rid, t in ids.items() if rid in done)
    bins = {}                                     # signatures per half second
    for ts, _ in done.values():
        k = int(2 * (ts - first))
        bins[k] = bins.get(k, 0) + 1
    names = roles(a["pid"]) if a["roles_file"] is None else json.load(open(a["roles_file"]))
    rows = thread_rows(s0, s1, names)
    json.dump({"requests": n, "conns": c, "accepted": len(ids), "errors": errors,
               "signed": signed, "audited": len(done), "warmup_s": warm,
               "submit_s": max(r[1] for r in results) - first,
               "submit_p50_s": pct(sub, 50), "submit_p99_s": pct(sub, 99),
               "seen_s": done_at - first, "polls": polls,
               "wall_s": max(v[0] for v in done.values()) - first if done else float("inf"),
               "timeline": [bins.get(k, 0) for k in range(max(bins) + 1)] if bins else [],
               "emu_cpu_s": e1 - e0,
               "done_p50_s": pct(fin, 50), "done_p99_s": pct(fin, 99),
               "threads_max": sampler.max, "samples": sampler.samples,
               "threads": [[cpu, tid, role] for cpu, tid, role in rows],
               "cpu_s": s1["cpu"] - s0["cpu"], "machine_s": s1["machine"] - s0["machine"],
               "run_s": s1["t"] - s0["t"],
               "queue_sign_mean_s": ((m1.get("qwickd_queue_sign_seconds_sum", 0) -
                                      m0.get("qwickd_queue_sign_seconds_sum", 0)) /
                                     max(1, m1.get("qwickd_queue_sign_seconds_count", 0) -
                                         m0.get("qwickd_queue_sign_seconds_count", 0)))},
              open(a["out"], "w"))


def cmd_audit(db_path, what):
    db = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=30)
    if what == "submits":
        print(db.execute("SELECT count(*) FROM audit WHERE action = 'sign.submit'").fetchone()[0])
    elif what == "signed":   # count, first and last ts (ms) of the queue's signatures
        n, lo, hi = db.execute("SELECT count(*), min(ts), max(ts) FROM audit WHERE "
                               "action = 'sign.digest' AND outcome = 0").fetchone()
        print(json.dumps({"n": n, "first_ms": lo, "last_ms": hi}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "snap":
        json.dump(snapshot(int(args[0]), int(args[2]) if len(args) > 2 else None),
                  open(args[1], "w"))
    elif cmd == "roles":
        json.dump(roles(int(args[0])), open(args[1], "w"))
    elif cmd == "threads":          # SNAP0 SNAP1 ROLES N: per-thread CPU of a run
        s0, s1, names = (json.load(open(p)) for p in args[:3])
        n, secs = int(args[3]), s1["t"] - s0["t"]
        for cpu, tid, role in thread_rows(s0, s1, names):
            if cpu > 0:
                print("    %-7s %-30s %6.2f CPU-s (%3.0f%% of a core) %7.1f us/request"
                      % (tid, role, cpu, 100 * cpu / secs, 1e6 * cpu / max(n, 1)))
        idle = [r for c, _, r in thread_rows(s0, s1, names) if c <= 0]
        if idle:
            print("    idle:   " + ", ".join(idle))
    elif cmd == "metrics":
        json.dump(Api(args[0], args[1], args[2]).metrics(), open(args[3], "w"))
    elif cmd == "drain":
        cmd_drain(*args)
    elif cmd == "azure":
        a = json.loads(args[0])
        cmd_azure(a)
    elif cmd == "audit":
        cmd_audit(args[0], args[1])
    elif cmd == "jget":
        v = json.load(open(args[0]))
        for k in args[1].split("."):
            v = v[k]
        print(v)
    else:
        sys.exit("qb.py: unknown subcommand " + cmd)


main()
PYEOF
qb() { python3 "$tmp/qb.py" "$@"; }

# --- setup: one init; the Azure emulator makes its PKI meanwhile -----------------
load_before=$(uptime)
rm -f "$tmp/emu.port"
/usr/bin/python3 "$SRC_ROOT/tests/emulators/azure_emu.py" --state-dir "$tmp/emu" \
    --port-file "$tmp/emu.port" --op-delay-ms "$OP_DELAY_MS" --retry-after 1 2>>"$tmp/emu.log" &
AZ_PID=$!
AZ_DIR=$tmp/emu # read by lib.sh's azure_profile_json, with AZ_URL
track_pid "$AZ_PID"
qwickd_init "$tmp/a"
# (b) and (c) run on a copy of the fresh directory: (a)'s backlog stays behind.
cp -a "$tmp/a" "$tmp/b"
# conf DIR KEY=VALUE...: sets limits.* and queue.* in DIR/qwickd.json.
conf() {
    _dir=$1
    shift
    python3 - "$_dir/qwickd.json" "$@" <<'PYEOF' || die "editing $_dir/qwickd.json"
import json, sys
c = json.load(open(sys.argv[1]))
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    sec, key = k.split(".")
    c[sec][key] = int(v)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF
}
conns=$((CONNS + 16))
[ "$C_CONNS" -lt "$CONNS" ] || conns=$((C_CONNS + 16))
for d in a b; do
    conf "$tmp/$d" limits.max_connections=$((conns + 64)) limits.max_connections_per_ip=$conns \
        queue.concurrency=0
done
status_queued() { # DIR: QUEUED rows (qwickd queue status, beside the running server)
    "$QWICKD" queue status --data "$1" --json >"$tmp/qs.json" 2>"$tmp/qs.err" ||
        die "qwickd queue status" "$tmp/qs.err"
    qb jget "$tmp/qs.json" QUEUED
}
metrics() { qb metrics "$QWICKD_URL" "$QWICKD_TLS_CA" "$QWICKD_OPERATOR_TOKEN" "$1"; }
sign_cpu_ms() { # openssl's CPU time of one RSA-3072 signature (one process, user CPU time)
    openssl speed -seconds 1 rsa3072 >"$tmp/speed1.out" 2>&1 || true
    awk '/private rsa.s for/ { for (i = 1; i <= NF; i++) if ($i == "in") { t = $(i + 1); sub("s", "", t); print 1000 * t / $(i - 5) } }' "$tmp/speed1.out" | tail -n 1
}
speed() { # SECONDS: openssl's RSA-3072 sign/s on every CPU
    openssl speed -seconds "$1" -multi "$NCPU" rsa3072 >"$tmp/speed.out" 2>/dev/null || true
    _s=$(awk '/^rsa 3072 bits/ {print $(NF-1)}' "$tmp/speed.out" | tail -n 1)
    [ -n "$_s" ] || die "openssl speed gave no rsa3072 figure" "$tmp/speed.out"
    echo "$_s"
}
cat >"$tmp/async.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"digest":"$(head -c 32 /dev/urandom | base64 -w0)","algorithm":"sha256","format":"$FORMAT","profile":"default","async":true,"metadata":{"filename":"bench.exe"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $QWICKD_API_KEY"
-- FILL (set for one wrk thread): that many submissions, then cheap GETs. wrk
-- calls request() once before the run to check what it returns: not sent.
local fill, made = tonumber(os.getenv("FILL") or "0"), -1
if fill > 0 then
    request = function()
        made = made + 1
        if made <= fill then return wrk.format() end
        return wrk.format("GET", "/api/v1/log/public-key")
    end
end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d non2xx=%d\n",
        summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000,
        e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
wrk_async() { # SECONDS OUT: the async load on QWICKD_URL
    wrk -t "$THREADS" -c "$CONNS" -d "$1" --latency -s "$tmp/async.lua" \
        "$QWICKD_URL/api/v1/sign/digest" >"$2" 2>&1 || die "wrk failed" "$2"
    grep -q '^WRK ' "$2" || die "wrk printed no summary" "$2"
}
wv() { # FILE KEY: a field of the WRK line
    awk -v k="$2" '$1 == "WRK" { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$1"
}

echo "bench/queue.sh: $NCPU CPUs; load before: ${load_before#*load average: }"

# --- (a) the 202 path --------------------------------------------------------------
start_qwickd "$tmp/a"
echo "(a) ${DURATION}s of POST /api/v1/sign/digest {\"async\": true} ($FORMAT), $CONNS connections," \
    "queue.concurrency 0 (nothing drains)"
wrk_async 2s "$tmp/warm.out" # handshakes, caches
sleep 0.5                    # what was in flight lands
q0=$(status_queued "$tmp/a")
qb roles "$QWICKD_PID" "$tmp/roles.a.json"
metrics "$tmp/m0.json"
qb snap "$QWICKD_PID" "$tmp/s0.json" $$
wrk_async "${DURATION}s" "$tmp/wrk.out"
qb snap "$QWICKD_PID" "$tmp/s1.json" $$
sleep 0.5
metrics "$tmp/m1.json"
q1=$(status_queued "$tmp/a")
submits=$(qb audit "$tmp/a/qwick.db" submits)
a_req=$(wv "$tmp/wrk.out" requests)
a_non=$(wv "$tmp/wrk.out" non2xx)
a_err=$(wv "$tmp/wrk.out" errors)
a_acc=$((a_req - a_non))
a_rows=$((q1 - q0))
python3 - "$tmp" "$a_acc" "$a_rows" "$CONNS" "$NCPU" "$A_TARGET" >"$tmp/a.txt" <<'PYEOF'
import json, sys
tmp, acc, rows, conns, ncpu, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
w = dict(f.split("=") for f in open(tmp + "/wrk.out").read().split("WRK ", 1)[1].split())
s0, s1 = json.load(open(tmp + "/s0.json")), json.load(open(tmp + "/s1.json"))
m0, m1 = json.load(open(tmp + "/m0.json")), json.load(open(tmp + "/m1.json"))
sec = float(w["seconds"])
rate = acc / sec
wall = s1["t"] - s0["t"]
q = s1["cpu"] - s0["cpu"]
client = s1["children"] - s0["children"]
other = max(0.0, (s1["machine"] - s0["machine"]) - q - client)
roles = json.load(open(tmp + "/roles.a.json"))
busiest = max((c1[1] - s0["tids"].get(t, [0, 0])[1], t) for t, c1 in s1["tids"].items())
commits = m1.get("qwickd_store_commits_total", 0) - m0.get("qwickd_store_commits_total", 0)
writes = m1.get("qwickd_store_writes_total", 0) - m0.get("qwickd_store_writes_total", 0)
print("  accepted     %.1f/s  (%d x 202 in %.1f s; errors %s, non-2xx %s)" % (rate, acc, sec, w["errors"], w["non2xx"]))
print("  latency      p50 %s ms, p99 %s ms, max %s ms" % (w["p50_ms"], w["p99_ms"], w["max_ms"]))
print("  rows         %d QUEUED rows added for %d x 202 (%+d: requests in flight when wrk stopped, at most %d)"
      % (rows, acc, rows - acc, conns))
print("  CPU          qwickd %.0f%%, wrk %.0f%%, other processes %.0f%% of %d CPUs; qwickd %.0f us per accepted request"
      % (100 * q / wall / ncpu, 100 * client / wall / ncpu, 100 * other / wall / ncpu, ncpu, 1e6 * q / max(acc, 1)))
print("  busiest      %s (thread %s): %.0f us per request, a ceiling of %.0f/s for the 202 path on these cores"
      % (roles.get(busiest[1], "?"), busiest[1], 1e6 * busiest[0] / max(acc, 1), acc / busiest[0] if busiest[0] > 0 else float("inf")))
if commits:
    print("  commits      %d for %d writes (%.1f per fsync)" % (commits, writes, writes / commits))
print("RESULT %.1f %s %s %s" % (rate, w["p50_ms"], w["p99_ms"], "PASS" if rate >= target else "MISS"))
PYEOF
grep -v '^RESULT' "$tmp/a.txt"
echo "  threads      (CPU in the run, by entry function):"
qb threads "$tmp/s0.json" "$tmp/s1.json" "$tmp/roles.a.json" "$a_acc"
echo "  audit        $submits sign.submit entries for $q1 QUEUED rows"
[ "$a_non" -eq 0 ] || problem "(a): $a_non non-2xx answers"
[ "$a_err" -eq 0 ] || problem "(a): $a_err connection errors or timeouts"
[ "$a_rows" -ge "$a_acc" ] || problem "(a): $a_acc requests answered 202 but only $a_rows rows queued"
[ "$a_rows" -le $((a_acc + CONNS)) ] || problem "(a): $a_rows rows queued for $a_acc x 202"
[ "$submits" -eq "$q1" ] || problem "(a): $q1 QUEUED rows but $submits sign.submit audit entries"
# shellcheck disable=SC2046 # the RESULT line's fields
set -- $(sed -n 's/^RESULT //p' "$tmp/a.txt")
a_rate=$1 a_p50=$2 a_p99=$3 a_verdict=$4

if [ -n "$PERF" ]; then
    if command -v perf >/dev/null 2>&1; then
        echo "  perf         ${PERF}s profile of qwickd on the same load (an extra pass, not counted above):"
        wrk -t "$THREADS" -c "$CONNS" -d "$((PERF + 2))s" -s "$tmp/async.lua" \
            "$QWICKD_URL/api/v1/sign/digest" >"$tmp/wrk.perf.out" 2>&1 &
        _w=$!
        sleep 1
        perf record -F 499 -g -p "$QWICKD_PID" -o "$tmp/perf.data" -- sleep "$PERF" >"$tmp/perf.log" 2>&1 || true
        wait "$_w" || true
        echo "    by library (self):"
        perf report -i "$tmp/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            grep '%' | head -n 6 | sed 's/^ */      /'
        echo "    hottest symbols (self):"
        perf report -i "$tmp/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
            grep '%' | head -n 8 | sed 's/^ */      /'
        echo "    selected calls (with callees; glibc's heap trim is __madvise + the TLB shootdown IPIs):"
        perf report -i "$tmp/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
            grep -E '\] (__madvise|smp_call_function_many_cond|__libc_pwrite|fdatasync|sysmalloc|__GI___setsockopt|epoll_ctl)$' |
            sed 's/^ */      /'
    else
        echo "  perf         not installed: no profile"
    fi
fi
stop_qwickd
[ "$stopped" -eq 0 ] || problem "qwickd exited with status $stopped after (a)"

# --- (b) the drain --------------------------------------------------------------------
sb0=$(speed "$half")
if [ "$DRAIN_N" = auto ]; then
    DRAIN_N=$(awk -v s="$sb0" -v d="$DRAIN_SECONDS" 'BEGIN { n = int(s * d / 100 + 0.5) * 100; print (n < 500 ? 500 : n) }')
fi
QWICKD_DATA=$tmp/b # a copy of $tmp/a: the same keys
start_qwickd "$tmp/b"
# Exactly DRAIN_N submissions (wrk's Lua counts them); wrk runs whole
# seconds, so for about (a)'s time for them plus one, and again if short.
bn=0
for _try in 1 2 3 4 5; do
    [ "$bn" -lt "$DRAIN_N" ] || break
    fill_s=$(awk -v n="$((DRAIN_N - bn))" -v r="$a_rate" 'BEGIN { print int(n / r) + 2 }')
    FILL=$((DRAIN_N - bn)) wrk -t 1 -c "$CONNS" -d "${fill_s}s" -s "$tmp/async.lua" \
        "$QWICKD_URL/api/v1/sign/digest" >"$tmp/fill.out" 2>&1 || die "wrk failed" "$tmp/fill.out"
    sleep 0.5
    bn=$(status_queued "$tmp/b")
done
[ "$bn" -ge "$DRAIN_N" ] || problem "(b): $bn requests queued, $DRAIN_N asked for"
stop_qwickd
[ "$stopped" -eq 0 ] || problem "qwickd exited with status $stopped after filling (b)'s backlog"
conf "$tmp/b" queue.concurrency="$QUEUE_CONCURRENCY"
echo "(b) a backlog of $bn queued requests ($FORMAT, local RSA-3072 key) drained by one node," \
    "queue.concurrency $QUEUE_CONCURRENCY; /metrics polled every $POLL_MS ms"
t0=$(date +%s%N)
start_qwickd "$tmp/b"
t_up=$(($(date +%s%N) - t0))
qb drain "$QWICKD_URL" "$QWICKD_TLS_CA" "$QWICKD_OPERATOR_TOKEN" "$t0" "$POLL_MS" 600 "$tmp/drain.json" ||
    die "(b): the drain did not finish" "$tmp/server.log"
qb snap "$QWICKD_PID" "$tmp/sb.json"
stop_qwickd
[ "$stopped" -eq 0 ] || problem "qwickd exited with status $stopped after (b)"
sb1=$(speed "$half")
sign_ms=$(sign_cpu_ms)
[ -n "$sign_ms" ] || sign_ms=0
qb audit "$tmp/b/qwick.db" signed >"$tmp/signed.json"
python3 - "$tmp" "$bn" "$sb0" "$sb1" "$t_up" "$B_TARGET" "$NCPU" "$t0" "$sign_ms" >"$tmp/b.txt" <<'PYEOF'
import json, sys
tmp, n, sb0, sb1, up, target, ncpu = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]) / 1e9, float(sys.argv[6]), int(sys.argv[7])
d, s = json.load(open(tmp + "/drain.json")), json.load(open(tmp + "/signed.json"))
sb = json.load(open(tmp + "/sb.json"))
m, sign = d["metrics"], (sb0 + sb1) / 2
# The clock stops at the last signature's audit entry (its ts is taken as the
# outcome goes to the writer): a /metrics poll answers late on a busy machine.
t0 = int(sys.argv[8]) / 1e9
wall = s["last_ms"] / 1000.0 - t0
rate = n / wall
span = (s["last_ms"] - s["first_ms"]) / 1000.0 if s["n"] > 1 else float("nan")
qs = m.get("qwickd_queue_sign_seconds_sum", 0) / max(1, m.get("qwickd_queue_sign_seconds_count", 0))
qw = m.get("qwickd_queue_wait_seconds_sum", 0) / max(1, m.get("qwickd_queue_wait_seconds_count", 0))
print("  drained      %d in %.2f s = %.1f signatures/s (from the exec of qwickd serve to the last signature's"
      " audit entry; qwickd listened after %.2f s)" % (n, wall, rate, up))
print("  first->last  %d sign.digest audit entries in %.2f s = %.1f/s (the node's steady rate)"
      % (s["n"], span, (s["n"] - 1) / span if span > 0 else 0))
print("  /metrics     %d polls; the first completion seen at %.2f s, none left seen at %.2f s"
      % (d["polls"], d["first_done_s"] or 0, d["wall_s"]))
print("  per request  claimed -> recorded %.0f ms mean (qwickd_queue_sign_seconds)" % (1000 * qs))
w, k = m.get("qwickd_store_writes_total", 0), m.get("qwickd_store_commits_total", 0)
if k:
    print("  store        %d commits for %d writes: %d outcomes, the rest the dispatcher's claims (up to 32 each)"
          % (k, w, n))
print("  CPU          qwickd %.1f CPU-s from its start (%.0f%% of %d CPUs), %.0f us per signature"
      % (sb["cpu"], 100 * sb["cpu"] / d["wall_s"] / ncpu, ncpu, 1e6 * sb["cpu"] / max(n, 1)))
print("  machine      %.0f%% busy during the polls" % (100 * (sb["machine"] - d["machine0"]) / (sb["t"] - d["tm0"]) / ncpu))
print("  sign/s       %.1f before, %.1f after (openssl speed -multi %d rsa3072), mean %.1f" % (sb0, sb1, ncpu, sign))
sign_ms = float(sys.argv[9])
if sign_ms > 0:
    per = 1000 * sb["cpu"] / max(n, 1)
    print("  CPU ratio    one RSA-3072 signature costs openssl %.2f ms of CPU, a drained one qwickd %.2f ms"
          " (all its threads, startup included): %.2f, the ratio on cores of its own" % (sign_ms, per, sign_ms / per))
failed = int(m.get('qwickd_queue_completed_total{status="FAILED"}', 0)) + int(m.get("qwickd_queue_unrecorded_total", 0))
print("RESULT %.1f %.1f %.2f %s %d %d" % (rate, sign, rate / sign, "PASS" if rate / sign >= target else "MISS", s["n"], failed))
PYEOF
grep -v '^RESULT' "$tmp/b.txt"
# shellcheck disable=SC2046 # the RESULT line's fields
set -- $(sed -n 's/^RESULT //p' "$tmp/b.txt")
b_rate=$1 b_sign=$2 b_ratio=$3 b_verdict=$4
[ "$5" -eq "$bn" ] || problem "(b): $bn requests queued but $5 signed (sign.digest audit entries)"
[ "$6" -eq 0 ] || problem "(b): $6 requests failed or not recorded"

# --- (c) Azure, 1 s per signature --------------------------------------------------------
wait_port "$AZ_PID" "$tmp/emu.port" "azure_emu.py" "$tmp/emu.log"
AZ_URL="https://127.0.0.1:$port"
azure_profile_json "$tmp/az.json" '{"ttlSeconds": 300, "maxSecrets": 2, "maxConcurrent": 2000}'
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['formats']=['authenticode-pe','cms','raw']; json.dump(d, open(sys.argv[1],'w'))" "$tmp/az.json"
"$QWICKD" profile create --data "$tmp/b" --name az --config "$tmp/az.json" >"$tmp/profile.out" 2>&1 ||
    die "qwickd profile create" "$tmp/profile.out"
conf "$tmp/b" limits.threads="$C_THREADS" queue.concurrency="$C_CONCURRENCY"
start_qwickd "$tmp/b"
qb roles "$QWICKD_PID" "$tmp/roles.c.json"
echo "(c) $C_REQUESTS async submissions (raw, profile az) over $C_CONNS connections; emulator answering" \
    "after $OP_DELAY_MS ms (Retry-After 1 s); limits.threads $C_THREADS, queue.concurrency $C_CONCURRENCY"
python3 -c 'import json, sys; print(json.dumps(dict(zip(["url", "ca", "key", "token", "pid", "db", "requests", "conns", "warmup", "profile", "format", "timeout", "roles_file", "out", "emu_pid"], [sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6], int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9]), "az", "raw", 120, sys.argv[10], sys.argv[11], int(sys.argv[12])]))))' \
    "$QWICKD_URL" "$QWICKD_TLS_CA" "$QWICKD_API_KEY" "$QWICKD_OPERATOR_TOKEN" "$QWICKD_PID" \
    "$tmp/b/qwick.db" "$C_REQUESTS" "$C_CONNS" "$WARMUP" "$tmp/roles.c.json" "$tmp/c.json" "$AZ_PID" >"$tmp/c.args"
qb azure "$(cat "$tmp/c.args")" || die "(c): the Azure run failed" "$tmp/server.log"
stop_qwickd
[ "$stopped" -eq 0 ] || problem "qwickd exited with status $stopped after (c)"
python3 - "$tmp/c.json" "$C_TARGET_S" "$MAX_THREADS" "$NCPU" "$C_CONCURRENCY" "$OP_DELAY_MS" >"$tmp/c.txt" <<'PYEOF'
import json, math, sys
c, target, maxthr, ncpu = json.load(open(sys.argv[1])), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conc, delay = int(sys.argv[5]), max(1.0, int(sys.argv[6]) / 1000.0)
w = c["warmup_s"]
print("  warm-up      %s s (the first creates the client secret and token)" % ", ".join("%.2f" % x for x in w))
print("  submitted    %d x 202 of %d in %.2f s, p50 %.0f ms, p99 %.0f ms%s"
      % (c["accepted"], c["requests"], c["submit_s"], 1000 * c["submit_p50_s"], 1000 * c["submit_p99_s"],
         "; errors %s" % c["errors"] if c["errors"] else ""))
print("  signed       %d/%d in %.2f s from the first submission to the last signature's audit entry"
      " (all seen by /metrics at %.2f s); per request submit -> signed p50 %.2f s, p99 %.2f s"
      % (c["signed"], c["requests"], c["wall_s"], c["seen_s"], c["done_p50_s"], c["done_p99_s"]))
print("  timeline     signatures per 0.5 s from the first submission: %s" % " ".join(str(x) for x in c["timeline"]))
waves = math.ceil(c["requests"] / conc) if conc > 0 else 0
print("  ideal        %d wave(s) of at most %d (queue.concurrency) x %.1f s = %.1f s + overhead; measured %.1fx that"
      % (waves, conc, delay, waves * delay, c["wall_s"] / (waves * delay) if waves else 0))
print("  per request  claimed -> recorded %.2f s mean (qwickd_queue_sign_seconds)" % c["queue_sign_mean_s"])
work = [t for t in c["threads"] if t[0] > 0]
print("  threads      %d in all (max of %d samples every 20 ms); %d ran during the run:"
      % (c["threads_max"], c["samples"], len(work)))
for cpu, tid, role in c["threads"]:
    if cpu > 0:
        print("    %-7s %-30s %5.2f CPU-s" % (tid, role, cpu))
idle = [role for cpu, _, role in c["threads"] if cpu <= 0]
if idle:
    print("    idle:   " + ", ".join(idle))
print("  CPU          qwickd %.2f CPU-s, the emulator %.2f CPU-s (it signs with RSA-3072 in Python) in %.2f s;"
      " the machine %.0f%% busy" % (c["cpu_s"], c["emu_cpu_s"], c["run_s"], 100 * c["machine_s"] / c["run_s"] / ncpu))
ok = c["wall_s"] < target and len(work) <= maxthr
print("RESULT %.2f %d %d %s %d %d" % (c["wall_s"], len(work), c["threads_max"], "PASS" if ok else "MISS",
                                     c["signed"], c["accepted"]))
PYEOF
grep -v '^RESULT' "$tmp/c.txt"
# shellcheck disable=SC2046 # the RESULT line's fields
set -- $(sed -n 's/^RESULT //p' "$tmp/c.txt")
c_wall=$1 c_work=$2 c_total=$3 c_verdict=$4
[ "$6" -eq "$C_REQUESTS" ] || problem "(c): $6 of $C_REQUESTS submissions accepted"
[ "$5" -eq "$C_REQUESTS" ] || problem "(c): $5 of $C_REQUESTS requests signed"

load_after=$(uptime)
echo "=== summary ($NCPU CPUs; load before: ${load_before#*load average: }; after: ${load_after#*load average: })"
echo "(a) accepted async submissions  $a_rate/s, p50 $a_p50 ms, p99 $a_p99 ms    target >= $A_TARGET/s: $a_verdict"
echo "(b) queue drain                 $b_rate signatures/s, openssl $b_sign sign/s, ratio $b_ratio    target >= $B_TARGET: $b_verdict"
echo "(c) Azure, $C_REQUESTS x ${OP_DELAY_MS} ms       all signed in $c_wall s, $c_work threads worked ($c_total in all)    target < ${C_TARGET_S} s, <= $MAX_THREADS threads: $c_verdict"
[ "$errs" -eq 0 ] || exit 1
