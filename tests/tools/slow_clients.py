#!/usr/bin/env python3
"""Slow and abusive HTTP(S) clients for qwickd's connection guard (stdlib only).

Every connection is a raw non-blocking socket bound to a chosen source address
(all of 127.0.0.0/8 is loopback, so 127.0.0.2 is "another client"); TLS runs
through ssl.SSLObject over memory BIOs, so the tool decides exactly which
bytes reach the wire and when. Kinds of connection:

  tcp-idle           connects and sends nothing
  hello-trickle      sends a real TLS ClientHello one byte per --interval
  tls-idle           completes the TLS handshake, then sends nothing
  head-trickle       handshake, then a request head one byte per --interval
  body-trickle       handshake, a whole POST head, then the body one byte
                     per --interval
  keepalive-trickle  handshake, one whole GET /healthz, reads the answer,
                     then the next request head one byte per --interval

With --plain (a plain-HTTP server) there is no TLS: the tls-* kinds are then
head-trickle and friends without a handshake.

  slow_clients.py flood  --port P --src 127.0.0.2 --count 320 --duration 20
      keeps up to COUNT connections of all kinds open, topping up once a
      second; prints JSON: attempts, refused (closed by the server within
      --refused-within s of connecting, before any answer), the most held at
      once, and how long each accepted connection lived.
  slow_clients.py probe  --port P --src 127.0.0.3 [--kinds a,b]
      one connection of each kind; waits until the server has closed them
      all; prints JSON with, per connection, the seconds from the start of
      the phase it was stuck in (connect, handshake done, head sent, answer
      read) to the server's close.
  slow_clients.py healthz --port P --cafile CA --duration 20
      GET /healthz every --interval s on a new connection from 127.0.0.1,
      each with a --timeout; prints JSON: polls, failures, latencies.
  slow_clients.py tsa-flood --port P --cafile CA --query Q --src A,B,.. --duration 5
      keep-alive POST /tsa from --conns connections per source address as
      fast as answers come; prints JSON: requests, statuses.
"""
import argparse
import errno
import http.client
import json
import selectors
import socket
import ssl
import sys
import threading
import time

KINDS = ["tcp-idle", "hello-trickle", "tls-idle", "head-trickle", "body-trickle",
         "keepalive-trickle"]
HEAD = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"
        b"X-Pad: " + b"a" * 400 + b"\r\n\r\n")
POST_HEAD = (b"POST /tsa HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/timestamp-query\r\nContent-Length: 4000\r\n\r\n")


def now():
    return time.monotonic()


class Conn:
    """One client connection and its plan."""

    def __init__(self, kind, args, ctx):
        self.kind = kind
        self.t_open = now()
        self.t_phase = self.t_open  # start of what the server waits for
        self.t_closed = None
        self.how = None
        self.answered = False  # the server sent application bytes
        self.handshaken = False
        self.out = b""  # raw bytes to put on the wire as fast as it takes them
        self.trickle = b""  # bytes (plaintext under TLS) to send one at a time
        self.next_drip = 0.0
        self.reply = b""
        self.interval = args.interval
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((args.src, 0))
        self.sock.setblocking(False)
        self.sock.connect_ex((args.host, args.port))
        self.tls = None
        use_tls = not args.plain and kind != "tcp-idle"
        if use_tls:
            self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.inc, self.outg, server_side=False,
                                    server_hostname=None)
            self._handshake()
            if kind == "hello-trickle":
                self.trickle, self.out = self.out, b""
        elif kind in ("tls-idle", "head-trickle", "body-trickle", "keepalive-trickle"):
            self._ready()

    def _handshake(self):
        try:
            self.tls.do_handshake()
            self.handshaken = True
        except ssl.SSLWantReadError:
            pass
        self.out += self.outg.read()
        if self.handshaken:
            self._ready()

    def _ready(self):
        """The handshake is done (or there is none): start the plan."""
        self.t_phase = now()
        if self.kind == "head-trickle":
            self.trickle = HEAD
        elif self.kind == "body-trickle":
            self._send(POST_HEAD)
            self.trickle = b"0" * 4000
        elif self.kind == "keepalive-trickle":
            self._send(HEAD)

    def _send(self, data):
        if self.tls is None:
            self.out += data
        else:
            self.tls.write(data)
            self.out += self.outg.read()

    def on_readable(self):
        try:
            raw = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.close("reset" if isinstance(e, ConnectionResetError) else "error")
            return
        if not raw:
            self.close("eof")
            return
        if self.tls is None:
            self._app(raw)
            return
        self.inc.write(raw)
        try:
            if not self.handshaken:
                self._handshake()
            while self.handshaken:
                self._app(self.tls.read(65536))
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, ssl.SSLEOFError):
            self.close("tls-error")
            return
        self.out += self.outg.read()

    def _app(self, data):
        if not data:
            return
        self.answered = True
        self.reply += data
        if self.kind == "keepalive-trickle" and not self.trickle and b"\r\n\r\n" in self.reply:
            head, _, body = self.reply.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(body) >= length:
                self.t_phase = now()  # the next request's head is due from here
                self.trickle = HEAD

    def pump(self, t):
        """Sends what is due."""
        if self.t_closed is not None:
            return
        if self.trickle and t >= self.next_drip:
            b, self.trickle = self.trickle[:1], self.trickle[1:]
            if self.tls is not None and self.handshaken:
                self._send(b)
            else:
                self.out += b
            self.next_drip = t + self.interval
        if self.out:
            try:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno != errno.ENOTCONN:  # still connecting: later
                    self.close("reset" if isinstance(e, ConnectionResetError) else "send-error")

    def close(self, how):
        """Notes the server's close; the loop closes the socket."""
        if self.t_closed is None:
            self.t_closed = now()
            self.how = how

    def report(self):
        return {"kind": self.kind, "how": self.how, "answered": self.answered,
                "handshaken": self.handshaken,
                "lived": None if self.t_closed is None else round(self.t_closed - self.t_open, 3),
                "stuck": None if self.t_closed is None else round(self.t_closed - self.t_phase, 3)}


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run(conns_factory, deadline, top_up=None):
    """The event loop: reads and drips until `deadline` (or all are closed)."""
    sel = selectors.DefaultSelector()
    live = {}

    def add(c):
        sel.register(c.sock, selectors.EVENT_READ, c)
        live[c.sock.fileno()] = c

    for c in conns_factory():
        add(c)
    next_top = now() + 1.0
    while now() < deadline:
        if top_up is None and not live:
            break
        for key, _ in sel.select(timeout=0.05):
            key.data.on_readable()
        t = now()
        for fd, c in list(live.items()):
            if c.t_closed is None:
                c.pump(t)
            if c.t_closed is not None:
                sel.unregister(c.sock)
                c.sock.close()
                del live[fd]
        if top_up is not None and t >= next_top:
            next_top = t + 1.0
            for c in top_up(len(live)):
                add(c)
    for c in live.values():
        sel.unregister(c.sock)
        c.sock.close()
        c.how = "still-open"


def cmd_flood(args):
    ctx = client_ctx()
    kinds = args.kinds.split(",")
    all_conns = []
    held = {"max": 0}
    serial = [0]

    def make(n):
        out = []
        for _ in range(n):
            c = Conn(kinds[serial[0] % len(kinds)], args, ctx)
            serial[0] += 1
            out.append(c)
            all_conns.append(c)
        return out

    def accepted(c):
        # Refused: the server closed it before answering, within a moment.
        return not (c.t_closed is not None and not c.answered and not c.handshaken and
                    c.t_closed - c.t_open < args.refused_within)

    def top_up(nlive):
        alive = sum(1 for c in all_conns
                    if c.t_closed is None and now() - c.t_open >= args.refused_within)
        held["max"] = max(held["max"], alive)
        return make(max(0, args.count - nlive))

    run(lambda: make(args.count), now() + args.duration, top_up)
    acc = [c for c in all_conns if accepted(c)]
    lived = {}
    for c in acc:
        if c.t_closed is not None:
            lived.setdefault(c.kind, []).append(c.t_closed - c.t_open)
    json.dump({"attempts": len(all_conns),
               "refused": len(all_conns) - len(acc),
               "accepted": len(acc),
               "max_held": held["max"],
               "still_open": sum(1 for c in acc if c.how == "still-open"),
               "max_lived": {k: round(max(v), 3) for k, v in lived.items()},
               "closed_by": sorted({c.how for c in acc if c.how})}, sys.stdout)
    print()


def cmd_probe(args):
    ctx = client_ctx()
    kinds = args.kinds.split(",")
    conns = []

    def make():
        for k in kinds:
            conns.append(Conn(k, args, ctx))
        return conns

    run(make, now() + args.timeout)
    json.dump({c.kind: c.report() for c in conns}, sys.stdout)
    print()


def cmd_healthz(args):
    ctx = ssl.create_default_context(cafile=args.cafile) if not args.plain else None
    lat, fails, errors, polls = [], 0, [], 0
    end = now() + args.duration
    while now() < end:
        polls += 1
        t0 = now()
        try:
            if ctx is None:
                h = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout,
                                               source_address=(args.src, 0))
            else:
                h = http.client.HTTPSConnection(args.host, args.port, timeout=args.timeout,
                                                context=ctx, source_address=(args.src, 0))
            h.request("GET", "/healthz")
            r = h.getresponse()
            body = r.read()
            h.close()
            dt = now() - t0
            if r.status != 200 or b'"ok"' not in body or dt > args.timeout:
                fails += 1
                errors.append("%d after %.3f s" % (r.status, dt))
            lat.append(dt)
        except (OSError, http.client.HTTPException) as e:
            fails += 1
            errors.append("%s after %.3f s" % (type(e).__name__, now() - t0))
        time.sleep(max(0.0, args.interval - (now() - t0)))
    lat.sort()
    json.dump({"polls": polls,
               "failures": fails, "errors": errors[:10],
               "max": round(lat[-1], 3) if lat else None,
               "p50": round(lat[len(lat) // 2], 3) if lat else None,
               "p90": round(lat[int(len(lat) * 0.9)], 3) if lat else None}, sys.stdout)
    print()


def cmd_tsa_flood(args):
    query = open(args.query, "rb").read()
    ctx = ssl.create_default_context(cafile=args.cafile)
    statuses = {}
    lock = threading.Lock()
    end = now() + args.duration

    def worker(src):
        h = None
        while now() < end:
            try:
                if h is None:
                    h = http.client.HTTPSConnection(args.host, args.port, timeout=10,
                                                    context=ctx, source_address=(src, 0))
                h.request("POST", "/tsa", body=query,
                          headers={"Content-Type": "application/timestamp-query"})
                r = h.getresponse()
                r.read()
                st = r.status
            except (OSError, http.client.HTTPException):
                st, h = "error", None
            with lock:
                statuses[st] = statuses.get(st, 0) + 1

    threads = [threading.Thread(target=worker, args=(s,))
               for s in args.src.split(",") for _ in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"requests": sum(statuses.values()),
               "statuses": {str(k): v for k, v in statuses.items()}}, sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["flood", "probe", "healthz", "tsa-flood"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--src", default="127.0.0.1")
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--count", type=int, default=320)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--refused-within", type=float, default=0.5)
    ap.add_argument("--cafile")
    ap.add_argument("--query")
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()
    {"flood": cmd_flood, "probe": cmd_probe, "healthz": cmd_healthz,
     "tsa-flood": cmd_tsa_flood}[args.mode](args)


if __name__ == "__main__":
    main()
