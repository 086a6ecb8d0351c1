#!/usr/bin/env python3
"""A tiny RFC 3161 time-stamp server for tests (stdlib only).

Each POSTed TimeStampReq is answered by `openssl ts -reply` with the TSA key and
certificate made by mkpki.sh, so the tokens come from an implementation that
shares no code with Qwick. Binds 127.0.0.1 only.

  tsa_server.py --pki DIR --port-file FILE [--fail-first N] [--bad-content-type]

--fail-first N answers the first N requests with 503 (to exercise client
retries); --bad-content-type replies with text/plain (to exercise the client's
content-type check).
"""
import argparse
import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading

MAX_QUERY = 64 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "QwickTestTSA/1"

    def log_message(self, fmt, *args):  # keep test logs readable
        sys.stderr.write("tsa_server: " + (fmt % args) + "\n")

    def _send(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(405, "text/plain", b"POST a TimeStampReq\n")

    def do_POST(self):
        cfg = self.server.cfg
        try:
            n = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            n = -1
        if n < 0 or n > MAX_QUERY:
            self._send(413, "text/plain", b"bad length\n")
            return
        query = self.rfile.read(n)
        with cfg.lock:
            cfg.count += 1
            fail = cfg.count <= cfg.fail_first
        if fail:
            self._send(503, "text/plain", b"try again\n")
            return
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/timestamp-query":
            self._send(415, "text/plain", b"expected application/timestamp-query\n")
            return
        # `openssl ts` updates its serial file: one reply at a time.
        with cfg.lock, tempfile.TemporaryDirectory() as tmp:
            qpath = os.path.join(tmp, "q.tsq")
            rpath = os.path.join(tmp, "r.tsr")
            with open(qpath, "wb") as f:
                f.write(query)
            p = subprocess.run(
                [cfg.openssl, "ts", "-reply", "-config", cfg.conf, "-queryfile", qpath,
                 "-inkey", os.path.join(cfg.pki, "tsa.key"),
                 "-signer", os.path.join(cfg.pki, "tsa.pem"),
                 "-chain", os.path.join(cfg.pki, "tsa-root.pem"),
                 "-out", rpath],
                capture_output=True)
            if p.returncode != 0 or not os.path.exists(rpath):
                sys.stderr.write("tsa_server: openssl ts failed: %s\n"
                                 % p.stderr.decode(errors="replace"))
                self._send(500, "text/plain", b"openssl ts failed\n")
                return
            with open(rpath, "rb") as f:
                reply = f.read()
        self._send(200, "text/plain" if cfg.bad_ctype else "application/timestamp-reply",
                   reply)


class Config:
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pki", required=True, help="directory made by mkpki.sh")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--bad-content-type", action="store_true")
    ap.add_argument("--openssl", default=os.environ.get("OPENSSL", "openssl"))
    a = ap.parse_args()

    cfg = Config()
    cfg.pki = os.path.abspath(a.pki)
    cfg.conf = os.path.join(cfg.pki, "tsa.cnf")
    cfg.openssl = a.openssl
    cfg.fail_first = a.fail_first
    cfg.bad_ctype = a.bad_content_type
    cfg.count = 0
    cfg.lock = threading.Lock()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.cfg = cfg

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # Write the port atomically so a waiting test never reads a partial file.
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.replace(tmp, a.port_file)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


if __name__ == "__main__":
    main()
