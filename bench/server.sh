#!/bin/sh
# bench/server.sh [BUILD_DIR] [--database URL|auto]: sustained
# POST /api/v1/sign/digest throughput.
#   server:    qwickd on loopback (HTTPS, RSA-3072 dev key, every request
#              audited in a durable group commit) driven by wrk with CONNS
#              keep-alive connections for DURATION seconds (default 20).
#   baseline:  `openssl speed -multi $(nproc) rsa3072` on the same cores: the
#              RSA signing limit (each request costs one RSA-3072 signature).
# Prints requests/s, p50/p99 latency, sign/s and the ratio server/openssl;
# the target is >= 0.8 (>= 0.7 with PostgreSQL, which runs on the same cores).
# The load generator shares the cores with the server.
#
# Server load and baseline alternate in ROUNDS slices (DURATION/ROUNDS seconds
# of load, then BASELINE/ROUNDS seconds of openssl speed), so a change in
# background load (shared or virtual machines) hits both sides alike. The ratio
# is total requests/s over the mean sign/s; each round's ratio is shown too.
#
# --database URL: the same measurement three ways, each DURATION seconds,
# their slices interleaved in every round: SQLite (as without the flag),
# PostgreSQL, and two qwickd nodes on one PostgreSQL database (the second
# from a copy of the first's data directory, CONNS split between them). URL
# is a PostgreSQL URL (postgresql://USER[:PASSWORD]@HOST:PORT/DB) of a role
# that can create databases (superuser or CREATEDB): each PostgreSQL setup
# gets a fresh database, dropped afterwards with the server role qwickd init
# made for it. `--database auto` starts a private cluster for the run
# (tests/tools/pgcluster.sh) and removes it afterwards. PostgreSQL runs on
# the same cores, as SQLite does.
# Environment: DURATION (20), BASELINE (10), ROUNDS (4), CONNS, THREADS (wrk
# threads), FORMAT (authenticode-pe).
set -eu
usage() {
    echo "usage: bench/server.sh [BUILD_DIR] [--database URL|auto]" >&2
    exit 2
}
BUILD_ARG=build
DATABASE=""
while [ $# -gt 0 ]; do
    case "$1" in
    --database)
        [ $# -ge 2 ] || usage
        DATABASE=$2
        shift 2
        ;;
    --database=*)
        DATABASE=${1#--database=}
        shift
        ;;
    -*) usage ;;
    *)
        BUILD_ARG=$1
        shift
        ;;
    esac
done
BUILD=$(cd "$BUILD_ARG" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
QWICKD=$BUILD/qwickd
DURATION=${DURATION:-20}
BASELINE=${BASELINE:-10}
ROUNDS=${ROUNDS:-4}
NCPU=$(nproc)
CONNS=${CONNS:-$((NCPU * 8))}
THREADS=${THREADS:-1}
FORMAT=${FORMAT:-authenticode-pe}

tools="wrk openssl python3"
[ -z "$DATABASE" ] || tools="$tools psql"
for tool in $tools; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench/server.sh: $tool is missing (make setup installs it)" >&2
        exit 1
    }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-bench-server.XXXXXX")
pids=""
pg_super=""   # a URL of a role that creates databases, without its password
pg_cluster="" # the cluster of --database auto
pg_dbs=""     # databases made for this run
cleanup() {
    for p in $pids; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    for db in $pg_dbs; do
        [ -n "$pg_cluster" ] || pg_drop "$db" || true
    done
    [ -z "$pg_cluster" ] || sh "$SRC/tests/tools/pgcluster.sh" stop "$pg_cluster" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
die() {
    echo "bench/server.sh: $1" >&2
    [ -z "${2:-}" ] || [ ! -s "$2" ] || tail -n 20 "$2" >&2
    exit 1
}
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# --- PostgreSQL ----------------------------------------------------------------
# url_db URL DB: URL naming database DB instead (no password: PGPASSWORD has it).
url_db() {
    python3 - "$1" "$2" <<'PYEOF'
import sys, urllib.parse as up
u = up.urlsplit(sys.argv[1])
host = u.hostname or ""
if ":" in host:
    host = "[" + host + "]"
net = (up.quote(up.unquote(u.username), safe="") + "@" if u.username else "") + host
if u.port:
    net += ":%d" % u.port
print(up.urlunsplit((u.scheme, net, "/" + sys.argv[2], u.query, "")))
PYEOF
}
psql_at() { # URL SQL...
    _u=$1
    shift
    psql "$_u" -X -q -At -v ON_ERROR_STOP=1 "$@"
}
pg_prepare() {
    if [ "$DATABASE" = auto ]; then
        _port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        # As root pgcluster.sh runs the server as `postgres`: $tmp opens for traversal.
        [ "$(id -u)" -ne 0 ] || chmod 711 "$tmp"
        pg_cluster=$tmp/pgcluster
        sh "$SRC/tests/tools/pgcluster.sh" start "$pg_cluster" "$_port" >"$tmp/pgcluster.log" 2>&1 ||
            die "pgcluster.sh start" "$tmp/pgcluster.log"
        pg_super="postgresql://postgres@127.0.0.1:$_port/postgres"
        return
    fi
    case "$DATABASE" in
    postgresql://* | postgres://*) ;;
    *) die "--database takes a postgresql:// URL or auto" ;;
    esac
    # qwickd init refuses a URL with a password: it goes to PGPASSWORD.
    _pw=$(python3 -c 'import sys, urllib.parse as up; p = up.urlsplit(sys.argv[1]).password; print(up.unquote(p) if p else "")' "$DATABASE")
    if [ -n "$_pw" ]; then
        PGPASSWORD=$_pw
        export PGPASSWORD
    fi
    _db=$(python3 -c 'import sys, urllib.parse as up; print(up.urlsplit(sys.argv[1]).path.lstrip("/") or "postgres")' "$DATABASE")
    pg_super=$(url_db "$DATABASE" "$_db")
    _can=$(psql_at "$pg_super" -c "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>"$tmp/pg.err") ||
        die "cannot connect to $pg_super" "$tmp/pg.err"
    [ "$_can" = t ] || die "--database: the URL's role cannot create databases (it needs superuser or CREATEDB: every run uses fresh ones)"
}
# pg_newdb NAME: a fresh database; prints its URL.
pg_newdb() {
    _db="qwick_bench_$1_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    psql_at "$pg_super" -c "CREATE DATABASE $_db" >"$tmp/pg.err" 2>&1 || die "CREATE DATABASE $_db" "$tmp/pg.err"
    url_db "$pg_super" "$_db"
}
# pg_drop DB: the database and the server roles qwickd init made for it.
pg_drop() {
    _roles=$(psql_at "$(url_db "$pg_super" "$1")" -c "SELECT DISTINCT grantee FROM information_schema.role_table_grants
             WHERE table_name = 'audit' AND grantee LIKE 'qwickd\_%'" 2>/dev/null || true)
    psql_at "$pg_super" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || return 1
    for _r in $_roles; do
        psql_at "$pg_super" -c "DROP ROLE IF EXISTS $_r" >/dev/null 2>&1 || true
    done
}

# --- servers -------------------------------------------------------------------
# init_node CFG DIR [URL]: qwickd init (on PostgreSQL with URL), with room for
# CONNS connections from one address (all the load comes from 127.0.0.1).
init_node() {
    "$QWICKD" init --data "$2" ${3:+--database "$3"} --json >"$tmp/$1.init.json" 2>"$tmp/$1.init.log" ||
        die "qwickd init ($1)" "$tmp/$1.init.log"
    python3 - "$2/qwickd.json" "$CONNS" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
need = int(sys.argv[2]) + 16
c["limits"]["max_connections"] = max(c["limits"]["max_connections"], need + 1)
c["limits"]["max_connections_per_ip"] = max(c["limits"].get("max_connections_per_ip", 0), need)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF
}
# start_node CFG DIR NAME: qwickd serve; its port is added to $tmp/CFG.ports.
start_node() {
    rm -f "$tmp/$3.port"
    "$QWICKD" serve --data "$2" --listen 127.0.0.1:0 --port-file "$tmp/$3.port" 2>"$tmp/$3.log" &
    _pid=$!
    pids="$pids $_pid"
    _i=0
    while [ ! -s "$tmp/$3.port" ]; do
        _i=$((_i + 1))
        if [ "$_i" -gt 100 ] || ! kill -0 "$_pid" 2>/dev/null; then
            echo "bench/server.sh: qwickd serve did not start" >&2
            cat "$tmp/$3.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    printf '%s\n' "$(tr -d ' \n' <"$tmp/$3.port")" >>"$tmp/$1.ports"
}
# The request wrk sends, with the key of CFG's setup.
digest=$(head -c 32 /dev/urandom | base64 -w0)
write_lua() { # CFG
    cat >"$tmp/$1.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"digest":"$digest","algorithm":"sha256","format":"$FORMAT","profile":"default","metadata":{"filename":"bench.exe"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $(jget "$tmp/$1.init.json" api_key)"

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d non2xx=%d\n",
        summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, latency.max / 1000,
        e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
}
# The setups: sqlite (what runs without --database), pg, pg2 (two nodes).
CONFIGS=sqlite
init_node sqlite "$tmp/data"
start_node sqlite "$tmp/data" sqlite
write_lua sqlite
if [ -n "$DATABASE" ]; then
    CONFIGS="sqlite pg pg2"
    pg_prepare
    url=$(pg_newdb pg)
    pg_dbs="$pg_dbs ${url##*/}"
    init_node pg "$tmp/pg" "$url"
    echo "$url" >"$tmp/pg.url"
    start_node pg "$tmp/pg" pg
    write_lua pg
    url=$(pg_newdb pg2)
    pg_dbs="$pg_dbs ${url##*/}"
    init_node pg2 "$tmp/pg2a" "$url"
    echo "$url" >"$tmp/pg2.url"
    cp -a "$tmp/pg2a" "$tmp/pg2b"
    start_node pg2 "$tmp/pg2a" pg2a
    start_node pg2 "$tmp/pg2b" pg2b
    write_lua pg2
fi

# --- load ----------------------------------------------------------------------
# load CFG SECONDS: wrk against every node of CFG at once (CONNS split between
# them); one WRK line in $tmp/load.line: requests summed, the longest duration,
# p50 the mean of the nodes', p99 and max the worst. $load_cpu: the CPU seconds
# of the wrk processes (the client shares the cores: its share of the machine,
# taken from the server's, is reported).
cpu_children() { cut -d' ' -f16,17 /proc/$$/stat | awk '{print $1 + $2}'; }
load() {
    _ports=$(cat "$tmp/$1.ports")
    _n=$(echo "$_ports" | wc -w)
    _c=$((CONNS / _n))
    [ "$_c" -ge 1 ] || _c=1
    _w=""
    _k=0
    _t0=$(cpu_children)
    for _p in $_ports; do
        wrk -t "$THREADS" -c "$_c" -d "$2" --latency -s "$tmp/$1.lua" \
            "https://127.0.0.1:$_p/api/v1/sign/digest" >"$tmp/wrk.$_k.out" 2>&1 &
        _w="$_w $!"
        _k=$((_k + 1))
    done
    _rc=0
    for _p in $_w; do wait "$_p" || _rc=1; done
    _t1=$(cpu_children)
    load_cpu=$(awk -v a="$_t0" -v b="$_t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) / hz}')
    _k=0
    for _p in $_ports; do
        grep '^WRK ' "$tmp/wrk.$_k.out" || {
            cat "$tmp/wrk.$_k.out" >&2
            return 1
        }
        _k=$((_k + 1))
    done >"$tmp/wrk.lines"
    [ "$_rc" -eq 0 ] || return 1
    awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1], NR] = kv[2] } }
        END {
            for (r = 1; r <= NR; r++) {
                req += v["requests", r]; p50 += v["p50_ms", r]
                err += v["errors", r]; non += v["non2xx", r]
                if (v["seconds", r] > sec) sec = v["seconds", r]
                if (v["p99_ms", r] > p99) p99 = v["p99_ms", r]
                if (v["max_ms", r] > mx) mx = v["max_ms", r]
            }
            printf "WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f errors=%d non2xx=%d\n",
                req, sec, p50 / NR, p99, mx, err, non
        }' "$tmp/wrk.lines" >"$tmp/load.line"
}

echo "server: ${DURATION}s of POST /api/v1/sign/digest ($FORMAT, sha256), $CONNS connections, $NCPU CPUs"
if [ -n "$DATABASE" ]; then
    echo "stores: SQLite, PostgreSQL, two nodes on one PostgreSQL database (${DURATION}s each, interleaved;" \
        "PostgreSQL $(psql_at "$pg_super" -c 'SHOW server_version' | cut -d' ' -f1)" \
        "$([ -n "$pg_cluster" ] && echo "private cluster, same cores" || echo "at ${pg_super%/*}"))"
fi
echo "baseline: openssl speed -seconds $((BASELINE / ROUNDS)) -multi $NCPU rsa3072; $ROUNDS interleaved rounds"
# A short warm-up so TLS handshakes and the signer cache are not measured.
for cfg in $CONFIGS; do
    load "$cfg" 2s 2>/dev/null || true
done
slice=$((DURATION / ROUNDS))
bslice=$((BASELINE / ROUNDS))
if [ "$slice" -lt 1 ] || [ "$bslice" -lt 1 ]; then
    echo "bench/server.sh: DURATION and BASELINE must be >= ROUNDS" >&2
    exit 1
fi
for cfg in $CONFIGS; do : >"$tmp/rounds.$cfg"; done
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for cfg in $CONFIGS; do
        load "$cfg" "${slice}s" || exit 1
        echo "$(cat "$tmp/load.line") client_cpu_s=$load_cpu" >"$tmp/round.$cfg"
    done
    openssl speed -seconds "$bslice" -multi "$NCPU" rsa3072 >"$tmp/speed.out" 2>/dev/null
    sign_s=$(awk '/^rsa 3072 bits/ {print $(NF-1)}' "$tmp/speed.out" | tail -n 1)
    if [ -z "$sign_s" ]; then
        cat "$tmp/speed.out" >&2
        exit 1
    fi
    for cfg in $CONFIGS; do
        echo "$(cat "$tmp/round.$cfg") sign_s=$sign_s" >>"$tmp/rounds.$cfg"
    done
    r=$((r + 1))
done

cat >"$tmp/summary.py" <<'PYEOF'
import sys
rows = []
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    rows.append({k: float(v) for k, v in kv.items()})
req = sum(r["requests"] for r in rows)
sec = sum(r["seconds"] for r in rows)
rps = req / sec
sign = sum(r["sign_s"] for r in rows) / len(rows)
errors = int(sum(r["errors"] for r in rows))
non2xx = int(sum(r["non2xx"] for r in rows))
for i, r in enumerate(rows, 1):
    print(f"  round {i}      {r['requests'] / r['seconds']:.1f} req/s, p99 {r['p99_ms']:.2f} ms, "
          f"{r['sign_s']:.1f} sign/s, ratio {r['requests'] / r['seconds'] / r['sign_s']:.2f}")
p50 = sorted(r["p50_ms"] for r in rows)[len(rows) // 2]
p99 = max(r["p99_ms"] for r in rows)
ncpu = int(sys.argv[2])
client = sum(r["client_cpu_s"] for r in rows) / (sec * ncpu)
print(f"  requests/s   {rps:.1f}  ({int(req)} in {sec:.1f}s, errors {errors}, non-2xx {non2xx})")
print(f"  latency      p50 {p50:.2f} ms (median round), p99 {p99:.2f} ms (worst round)")
print(f"  sign/s       {sign:.1f} (openssl speed, mean of rounds)")
print(f"  client CPU   {100 * client:.1f}% of {ncpu} CPUs (wrk, during the load slices)")
target = sys.argv[3]
print(f"ratio server_rps / openssl_sign_per_s = {rps / sign:.2f} (target >= {target})")
print(f"ERRORS {errors} {non2xx}")
print(f"TABLE {rps:.1f} {p50:.2f} {p99:.2f} {rps / sign:.2f}")
PYEOF

# Every acknowledged request has its audit row (warm-up included).
audited() { # CFG
    if [ "$1" = sqlite ]; then
        python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM audit WHERE action = '"'"'sign.digest'"'"' AND outcome = 0").fetchone()[0])' \
            "$tmp/data/qwick.db"
    else
        # As the database's owner or a superuser; the org set as qwickd sets it.
        psql_at "$(cat "$tmp/$1.url")" \
            -c "SELECT set_config('qwick.org', (SELECT min(id) FROM orgs)::text, false)" \
            -c "SELECT count(*) FROM audit WHERE action = 'sign.digest' AND outcome = 0" | tail -n 1
    fi
}
# Group commit as the server saw it (warm-up included): SQLite's writer, or
# the PostgreSQL driver's batching writer (no delay, no checkpoints of its own).
commits() { # PORT DATA CFG
    python3 - "$1" "$2/tls-ca.pem" "$(jget "$tmp/$3.init.json" operator_token)" <<'PYEOF' || true
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(f"https://127.0.0.1:{sys.argv[1]}/metrics",
                             headers={"Authorization": f"Bearer {sys.argv[3]}"})
text = urllib.request.urlopen(req, context=ctx).read().decode()
v = {l.split()[0]: float(l.split()[1]) for l in text.splitlines()
     if l.startswith("qwickd_store_") and not l.startswith("#")}
c, w, d, k = (v.get(f"qwickd_store_{n}_total", 0)
              for n in ("commits", "writes", "delayed_commits", "checkpoints"))
if c:
    print(f"  commits      {int(c)} for {int(w)} writes ({w / c:.1f} per fsync, {int(d)} delayed), "
          f"{int(k)} checkpoints")
PYEOF
}

errs=0
for cfg in $CONFIGS; do
    case "$cfg" in
    sqlite) title="SQLite" ;;
    pg) title="PostgreSQL" ;;
    pg2) title="PostgreSQL, two nodes on one database ($((CONNS / 2)) connections each)" ;;
    esac
    [ "$CONFIGS" = sqlite ] || echo "--- $title"
    # SQLite: >= 0.8; PostgreSQL shares the cores with the server: >= 0.7.
    _target=0.8
    [ "$cfg" = sqlite ] || _target=0.7
    python3 "$tmp/summary.py" "$tmp/rounds.$cfg" "$NCPU" "$_target" >"$tmp/summary.$cfg"
    grep -v '^ERRORS\|^TABLE' "$tmp/summary.$cfg"
    echo "  audit rows   $(audited "$cfg") (warm-up included)"
    case "$cfg" in
    sqlite) commits "$(cat "$tmp/sqlite.ports")" "$tmp/data" sqlite ;;
    pg) commits "$(cat "$tmp/pg.ports")" "$tmp/pg" pg ;;
    pg2) for _p in $(cat "$tmp/pg2.ports"); do commits "$_p" "$tmp/pg2a" pg2; done ;;
    esac
    # shellcheck disable=SC2046
    set -- $(sed -n 's/^ERRORS //p' "$tmp/summary.$cfg")
    if [ "$1" != 0 ] || [ "$2" != 0 ]; then
        echo "bench/server.sh: $title: $1 errors, $2 non-2xx responses" >&2
        errs=1
    fi
done
if [ "$CONFIGS" != sqlite ]; then
    python3 - "$tmp/summary.sqlite" "$tmp/summary.pg" "$tmp/summary.pg2" <<'PYEOF'
import sys
cols = []
for f in sys.argv[1:]:
    t = [l.split()[1:] for l in open(f) if l.startswith("TABLE ")][0]
    cols.append(t)
print("--- side by side             SQLite  PostgreSQL  PG, 2 nodes")
for i, name in enumerate(("requests/s", "p50 ms", "p99 ms", "ratio to openssl")):
    print(f"  {name:<24}" + "".join(f"{c[i]:>12}" for c in cols))
PYEOF
fi

for p in $pids; do
    kill -TERM "$p"
    wait "$p" || true
done
pids=""
[ "$errs" -eq 0 ] || exit 1
