#!/usr/bin/env python3
"""Load client of bench/azure.sh: N signing requests through qwickd, C at once.

  azure_load.py --url https://127.0.0.1:PORT --ca TLS-CA --key API-KEY --pid QWICKD-PID
                [--profile az] [--format raw] [--requests 1000] [--concurrency 500]
                [--warmup 5] [--emu-url URL --emu-ca PEM] [--emu-pid PID]
                [--json OUT] [--timeline]

Phases:
  warm-up  WARMUP requests one after the other; the first one creates the
           Azure client secret and token (addPassword + token round trip), so
           its latency is reported on its own.
  connect  CONCURRENCY keep-alive HTTPS connections are opened (TLS handshakes
           done) before the clock starts, as long-lived clients would have them.
  run      exactly REQUESTS POST /api/v1/sign/digest with random SHA-256
           digests, spread over the connections; the clock runs from the
           release of all workers until the last response. A failed request is
           counted (by status, or by exception) and not retried; a connection
           that broke is reopened for the next request.

While it runs, a sampler reads /proc/PID/status ("Threads:") and counts
/proc/PID/task every 50 ms, and the CPU time of qwickd (per thread), the
emulator, this client and the whole machine is taken before and after the
run. With --emu-url the emulator's counters are reset after the warm-up and
read after the run; qwickd's /metrics (Azure engine latency, errors) likewise.
--timeline adds, every 0.5 s of the run: requests done, CPU use of qwickd's
busiest threads, the emulator and the machine, the emulator's sign counters.

Prints a report; --json writes every figure as JSON. Exits 1 if a request of
the run failed (the target itself is judged by the caller). Stdlib only.
"""
import argparse
import base64
import http.client
import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc

def proc_threads(pid):
    """("Threads:" of /proc/PID/status, entries of /proc/PID/task), or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
        return status, len(os.listdir("/proc/%d/task" % pid))
    except (OSError, StopIteration, ValueError):
        return None


def _stat_cpu(path):
    with open(path) as f:
        s = f.read()
    comm = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    return comm, (int(fields[11]) + int(fields[12])) / CLK_TCK   # utime + stime


def proc_cpu(pid):
    """CPU seconds of the whole process, or None."""
    try:
        return _stat_cpu("/proc/%d/stat" % pid)[1]
    except (OSError, ValueError):
        return None


def machine_cpu():
    """CPU seconds the whole machine spent busy (all CPUs, /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK     # all but idle and iowait


def thread_cpu(pid):
    """{tid: (name, CPU seconds)} of every thread of pid."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            out[int(tid)] = _stat_cpu("/proc/%d/task/%s/stat" % (pid, tid))
        except (OSError, ValueError):
            pass
    return out


def thread_names(pid):
    names = {}
    for name, _ in thread_cpu(pid).values():
        names[name] = names.get(name, 0) + 1
    return names


class Sampler(threading.Thread):
    """Max thread count of pid, sampled every interval seconds, per phase."""

    def __init__(self, pid, interval=0.05, emu_pid=None, emu_state=None):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.emu_pid, self.emu_state = emu_pid, emu_state
        self.progress = None   # set for the timeline: () -> requests done
        self.t0 = None
        self.timeline = []     # (t, done, {tid: cpu}, emulator cpu, emulator counters)
        self.ticks = 0
        self.lock = threading.Lock()
        self.phase = "idle"
        self.max = {}          # phase -> [max status, max task, samples]
        self.peak, self.peak_names = 0, {}
        self.stopping = threading.Event()

    def set_phase(self, phase):
        with self.lock:
            self.phase = phase
        self.sample()

    def sample(self):
        t = proc_threads(self.pid)
        if t is None:
            return
        with self.lock:
            m = self.max.setdefault(self.phase, [0, 0, 0])
            m[0], m[1], m[2] = max(m[0], t[0]), max(m[1], t[1]), m[2] + 1
            if max(t) > self.peak:
                self.peak = max(t)
                self.peak_names = thread_names(self.pid)

    def overall(self):
        return (max([m[0] for m in self.max.values()] + [0]),
                max([m[1] for m in self.max.values()] + [0]))

    def run(self):
        while not self.stopping.wait(self.interval):
            self.sample()
            self.ticks += 1
            if self.progress is not None and self.ticks % 2 == 0:
                self.timeline_sample()

    def timeline_sample(self):
        k = None
        if self.emu_state is not None and self.ticks % 10 == 0:
            try:
                k = self.emu_state()["counters"]
            except (OSError, ValueError, KeyError):
                pass
        self.timeline.append((time.perf_counter() - self.t0, self.progress(),
                              {tid: c for tid, (_, c) in thread_cpu(self.pid).items()},
                              proc_cpu(self.emu_pid) if self.emu_pid else None, k,
                              machine_cpu()))

    def stop(self):
        self.stopping.set()
        self.join()
        self.sample()


# ------------------------------------------------------------------ HTTP

class Client:
    def __init__(self, args):
        u = urllib.parse.urlsplit(args.url)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=args.ca)
        self.headers = {"Authorization": "Bearer " + args.key,
                        "Content-Type": "application/json", "Connection": "keep-alive"}
        self.profile, self.format = args.profile, args.format

    def connect(self):
        c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=120)
        c.connect()
        return c

    def body(self):
        return json.dumps({"digest": base64.b64encode(os.urandom(32)).decode(),
                           "algorithm": "sha256", "format": self.format,
                           "profile": self.profile}).encode()

    def sign(self, conn):
        """(status, parsed body or text, seconds); raises on a broken connection."""
        body = self.body()
        t0 = time.perf_counter()
        conn.request("POST", "/api/v1/sign/digest", body, self.headers)
        r = conn.getresponse()
        data = r.read()
        dt = time.perf_counter() - t0
        if r.status == 200:
            d = json.loads(data)
            if d.get("status") != "SIGNED" or not d.get("signature"):
                return -1, data[:200], dt     # a 200 without a signature is an error
            return 200, d, dt
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
        return r.status, data[:300].decode("utf-8", "replace"), dt


def metrics(args):
    """qwickd's /metrics as {name{labels}: value}; {} if unavailable."""
    ctx = ssl.create_default_context(cafile=args.ca)
    req = urllib.request.Request(args.url + "/metrics",
                                 headers={"Authorization": "Bearer " + (args.operator_token or args.key)})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def metrics_delta(m0, m1):
    """Mean seconds of Azure's signatures (engine: submission to result) and of
    the sign requests (HTTP: qwickd's whole handling) between two scrapes."""
    def mean(prefix, match=""):
        s = [k for k in m1 if k.startswith(prefix + "_sum") and match in k]
        c = [k for k in m1 if k.startswith(prefix + "_count") and match in k]
        if not s or not c:
            return None, 0
        n = sum(m1[k] - m0.get(k, 0) for k in c)
        t = sum(m1[k] - m0.get(k, 0) for k in s)
        return (t / n if n else None), int(n)
    az, azn = mean("qwickd_azure_sign_duration_seconds")
    http, httpn = mean("qwickd_http_request_duration_seconds", "\"sign_digest\"")
    errs = {k.split('"')[1]: int(v - m0.get(k, 0)) for k, v in m1.items()
            if k.startswith("qwickd_azure_errors_total{") and v - m0.get(k, 0)}
    return {"azure_mean_s": az, "azure_n": azn, "http_mean_s": http, "http_n": httpn,
            "azure_errors": errs,
            "azure_buckets": {k.split('"')[1]: int(v - m0.get(k, 0)) for k, v in m1.items()
                              if k.startswith("qwickd_azure_sign_duration_seconds_bucket")}}


class EmuState:
    """GET /_emu/state over one kept-alive connection (for the timeline)."""

    def __init__(self, args):
        u = urllib.parse.urlsplit(args.emu_url)
        self.conn = http.client.HTTPSConnection(
            u.hostname, u.port, context=ssl.create_default_context(cafile=args.emu_ca),
            timeout=10)

    def __call__(self):
        try:
            self.conn.request("GET", "/_emu/state")
            return json.loads(self.conn.getresponse().read())
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise OSError("emulator state")


def emu_call(args, method, path):
    if not args.emu_url:
        return None
    ctx = ssl.create_default_context(cafile=args.emu_ca)
    req = urllib.request.Request(args.emu_url + path, method=method,
                                 data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.load(r)


# ------------------------------------------------------------------ phases

def warmup(args, client):
    conn = client.connect()
    lat, first = [], None
    try:
        for i in range(args.warmup):
            status, d, dt = client.sign(conn)
            if status != 200:
                sys.exit("azure_load.py: warm-up request %d: HTTP %s: %s" % (i + 1, status, d))
            if i == 0:
                first = dt
            else:
                lat.append(dt)
    finally:
        conn.close()
    return first, lat


def cpu_snapshot(args):
    return (proc_cpu(args.pid), proc_cpu(args.emu_pid) if args.emu_pid else None,
            time.process_time(), thread_cpu(args.pid), machine_cpu())


def run(args, client, on_start):
    """Starts the workers; returns once all are connected and released, with
    the start time (taken as the barrier releases them)."""
    n, c = args.requests, min(args.concurrency, args.requests)
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    results = []                   # (status or exception name, seconds, end time)
    connect_times = []
    errors_detail = {}
    start = {}

    def release():                 # runs once, as the last party arrives
        start["cpu"] = on_start()
        start["t"] = time.perf_counter()

    ready = threading.Barrier(c + 1, action=release)
    conns = [None] * c

    def take():
        with lock:
            if state["next"] >= n:
                return False
            state["next"] += 1
            return True

    def worker(i):
        t0 = time.perf_counter()
        try:
            conns[i] = client.connect()
        except OSError as e:
            conns[i] = None
            with lock:
                errors_detail.setdefault("connect " + type(e).__name__, str(e))
        with lock:
            connect_times.append(time.perf_counter() - t0)
        ready.wait()
        local = []
        while take():
            t1 = time.perf_counter()
            try:
                if conns[i] is None:
                    conns[i] = client.connect()
                status, d, dt = client.sign(conns[i])
                if status != 200:
                    with lock:
                        errors_detail.setdefault(str(status), d)
            except (OSError, http.client.HTTPException, ValueError) as e:
                status, dt = type(e).__name__, time.perf_counter() - t1
                with lock:
                    errors_detail.setdefault(status, str(e))
                try:
                    conns[i].close()
                except Exception:
                    pass
                conns[i] = None
            local.append((status, dt, time.perf_counter()))
            with lock:
                state["done"] += 1
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(c)]
    tc = time.perf_counter()
    for t in threads:
        t.start()
    ready.wait()
    t_connect = start["t"] - tc
    return (threads, results, connect_times, t_connect, errors_detail, conns, state,
            start["t"], start["cpu"])


def pct(sorted_vals, p):
    """Nearest-rank percentile."""
    if not sorted_vals:
        return float("nan")
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pid", type=int, required=True, help="qwickd's pid")
    ap.add_argument("--emu-pid", type=int)
    ap.add_argument("--emu-url")
    ap.add_argument("--emu-ca")
    ap.add_argument("--profile", default="az")
    ap.add_argument("--operator-token", default=None, help="for GET /metrics")
    ap.add_argument("--format", default="raw")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--timeline", action="store_true",
                    help="print CPU use and progress every 0.5 s of the run")
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 1:
        ap.error("--requests, --concurrency and --warmup must be >= 1")
    threading.stack_size(256 * 1024)

    client = Client(args)
    sampler = Sampler(args.pid, emu_pid=args.emu_pid,
                      emu_state=EmuState(args) if args.emu_url and args.timeline else None)
    sampler.set_phase("idle")
    idle_threads = proc_threads(args.pid)
    sampler.start()

    sampler.set_phase("warmup")
    first, warm = warmup(args, client)
    emu_call(args, "POST", "/_emu/reset-stats")
    m0 = metrics(args)

    sampler.set_phase("connect")
    threads, results, connect_times, t_connect, errors_detail, conns, st, t0, cpu0 = run(
        args, client, lambda: cpu_snapshot(args))

    sampler.set_phase("run")
    if args.timeline:
        sampler.t0, sampler.progress = t0, lambda: st["done"]
        sampler.timeline_sample()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_snapshot(args)
    sampler.set_phase("after")
    sampler.stop()
    for cn in conns:
        if cn is not None:
            cn.close()
    emu = emu_call(args, "GET", "/_emu/state")
    mdelta = metrics_delta(m0, metrics(args))

    ok = sorted(dt for s, dt, _ in results if s == 200)
    all_lat = sorted(dt for _, dt, _ in results)
    by_status = {}
    for s, _, _ in results:
        by_status[str(s)] = by_status.get(str(s), 0) + 1
    ends = sorted(e - t0 for _, _, e in results)
    per_thread = []
    for tid, (name, cpu) in cpu1[3].items():
        before = cpu0[3].get(tid, (name, 0.0))[1]
        per_thread.append((cpu - before, tid, name))
    per_thread.sort(reverse=True)
    smax = sampler.overall()

    out = {
        "requests": args.requests, "concurrency": min(args.concurrency, args.requests),
        "format": args.format, "sent": len(results), "ok": len(ok),
        "errors": len(results) - len(ok), "by_status": by_status, "error_detail": errors_detail,
        "first_request_s": first, "warmup_s": warm,
        "connect_s": t_connect, "connect_max_s": max(connect_times) if connect_times else None,
        "wall_s": wall, "throughput_rps": len(ok) / wall if wall > 0 else 0.0,
        "p50_s": pct(ok, 50), "p90_s": pct(ok, 90), "p99_s": pct(ok, 99),
        "min_s": ok[0] if ok else None, "max_s": ok[-1] if ok else None,
        "all_p99_s": pct(all_lat, 99),
        "done_at_s": {"25%": pct(ends, 25), "50%": pct(ends, 50), "75%": pct(ends, 75),
                      "100%": pct(ends, 100)},
        "threads_idle": idle_threads,
        "threads_max_status": smax[0], "threads_max_task": smax[1],
        "threads_max": max(smax),
        "threads_by_phase": {k: {"status": v[0], "task": v[1], "samples": v[2]}
                             for k, v in sampler.max.items()},
        "threads_at_peak": sampler.peak_names,
        "cpu_s": {"qwickd": None if cpu0[0] is None or cpu1[0] is None else cpu1[0] - cpu0[0],
                  "emulator": None if cpu0[1] is None or cpu1[1] is None else cpu1[1] - cpu0[1],
                  "client": cpu1[2] - cpu0[2],
                  "machine": None if cpu0[4] is None or cpu1[4] is None else cpu1[4] - cpu0[4]},
        "qwickd_thread_cpu_s": [{"tid": tid, "name": name, "cpu_s": round(c, 3)}
                                for c, tid, name in per_thread],
        "emulator": emu,
        "metrics": mdelta,
        "timeline": timeline_rows(sampler.timeline, per_thread[:3]),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    report(out)
    sys.exit(0 if out["errors"] == 0 and out["sent"] == args.requests else 1)


def timeline_rows(tl, top):
    """Every 0.5 s of the run: requests done, CPU % of the busiest qwickd
    threads (top: [(cpu, tid, name)]), of the emulator, its sign counters."""
    rows, last = [], None
    for t, done, tcpu, ecpu, k, mcpu in tl:
        if last is not None and t - last[0] < 0.45 and k is None:
            continue
        if last is not None:
            dt = t - last[0]
            row = {"t": round(t, 2), "done": done,
                   "threads": {"%s[%d]" % (name, tid):
                               round(100 * (tcpu.get(tid, 0) - last[2].get(tid, 0)) / dt)
                               for _, tid, name in top},
                   "emulator": None if ecpu is None or last[3] is None
                   else round(100 * (ecpu - last[3]) / dt),
                   "machine": None if mcpu is None or last[4] is None
                   else round(100 * (mcpu - last[4]) / dt)}
            if k is not None:
                row["emu_submitted"], row["emu_polls"] = k["sign_submitted"], k["sign_polls"]
            rows.append(row)
        last = (t, done, tcpu, ecpu, mcpu)
    return rows


def report(o):
    ms = lambda s: "%.0f ms" % (s * 1000) if s is not None and s == s else "-"
    p = print
    extra = ""
    if o["warmup_s"]:
        extra = " (+%s over the next ones)" % ms(o["first_request_s"] - min(o["warmup_s"]))
    p("  warm-up      first request %s%s: it creates the Azure secret and token; next %d: %s"
      % (ms(o["first_request_s"]), extra, len(o["warmup_s"]),
         ", ".join(ms(x) for x in o["warmup_s"])))
    p("  connect      %d TLS connections opened in %s, before the clock"
      % (o["concurrency"], ms(o["connect_s"])))
    p("  requests     %d sent, %d signed (200), %d errors%s"
      % (o["sent"], o["ok"], o["errors"],
         "" if not o["errors"] else "  by status: " + json.dumps(o["by_status"])))
    for k, v in sorted(o["error_detail"].items()):
        p("    error %s: %s" % (k, str(v)[:200]))
    p("  wall time    %.2f s  (25%% done at %.2f s, 50%% at %.2f s, 75%% at %.2f s)"
      % (o["wall_s"], o["done_at_s"]["25%"], o["done_at_s"]["50%"], o["done_at_s"]["75%"]))
    p("  throughput   %.1f signatures/s" % o["throughput_rps"])
    p("  latency      p50 %s, p90 %s, p99 %s, min %s, max %s"
      % (ms(o["p50_s"]), ms(o["p90_s"]), ms(o["p99_s"]), ms(o["min_s"]), ms(o["max_s"])))
    ph = o["threads_by_phase"]
    p("  threads      max %d from warm-up to the end (Threads: %d, /proc/PID/task: %d; "
      "idle %s, warm-up %s, run %s)"
      % (o["threads_max"], o["threads_max_status"], o["threads_max_task"],
         o["threads_idle"][0] if o["threads_idle"] else "-",
         ph.get("warmup", {}).get("status", "-"), ph.get("run", {}).get("status", "-")))
    p("  thread names %s" % ", ".join("%s x%d" % (k, v) if v > 1 else k
                                      for k, v in sorted(o["threads_at_peak"].items())))
    c = o["cpu_s"]
    fmt = lambda v: "-" if v is None else "%.2f s" % v
    other = None
    if c["machine"] is not None and None not in (c["qwickd"], c["emulator"]):
        other = max(0.0, c["machine"] - c["qwickd"] - c["emulator"] - c["client"])
    p("  CPU in run   qwickd %s, emulator %s, client %s, other processes %s; machine busy "
      "%s of %.2f s x %d CPUs"
      % (fmt(c["qwickd"]), fmt(c["emulator"]), fmt(c["client"]), fmt(other),
         "-" if c["machine"] is None else "%.0f%%" % (100 * c["machine"]
                                                       / (o["wall_s"] * os.cpu_count())),
         o["wall_s"], os.cpu_count()))
    top = [t for t in o["qwickd_thread_cpu_s"] if t["cpu_s"] >= 0.01][:6]
    if top:
        p("  qwickd CPU   " + ", ".join("%s[%d] %.2f s" % (t["name"], t["tid"], t["cpu_s"])
                                        for t in top))
    m = o["metrics"]
    if m.get("azure_n"):
        p("  qwickd       /metrics over the run: Azure engine (submission to result) mean %s "
          "over %d; sign requests (whole handling) mean %s over %d; Azure errors %s"
          % (ms(m["azure_mean_s"]), m["azure_n"], ms(m["http_mean_s"]), m["http_n"],
             json.dumps(m["azure_errors"]) if m["azure_errors"] else "none"))
    if o["timeline"]:
        p("  timeline     t(s) done | CPU %% of %s, emulator, whole machine (%d CPUs) "
          "| emulator submitted/polled"
          % (", ".join(o["timeline"][0]["threads"]), os.cpu_count()))
        for r in o["timeline"]:
            p("    %5.1f %5d | %s | %s" % (
                r["t"], r["done"],
                " ".join("%4d" % v for v in r["threads"].values())
                + " %4s" % ("-" if r["emulator"] is None else r["emulator"])
                + " %4s" % ("-" if r["machine"] is None else r["machine"]),
                "%d/%d" % (r["emu_submitted"], r["emu_polls"]) if "emu_submitted" in r else ""))
    e = o["emulator"]
    if e:
        k = e["counters"]
        p("  emulator     %d sign POSTs, %d submitted, %d polls (%.2f per signature), "
          "%d succeeded, max %d ops in flight, %d token requests, %d addPassword, "
          "%d 429, %d 5xx"
          % (k["sign_posts"], k["sign_submitted"], k["sign_polls"],
             k["sign_polls"] / max(1, k["sign_submitted"]), k["sign_succeeded"],
             k["max_ops_in_flight"], k["token_requests"], k["add_password"],
             k["throttled_429"], k["server_errors"]))


if __name__ == "__main__":
    main()
