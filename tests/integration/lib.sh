# tests/integration/lib.sh: what the shell tests, the benchmarks and the demo
# share. POSIX sh; source it after setting SRC_ROOT (and QWICK/QWICKD where a
# server or the CLI is used):
#
#     . "$SRC_ROOT/tests/integration/lib.sh"
#     t_init NAME              # $tmp, and a trap that stops every server
#
# Checks (each counted; a failure is reported and counted, the run goes on):
#   ok DESC / fail DESC        count a passed / failed check
#   check DESC CMD...          CMD must succeed (its output is shown on failure)
#   check_status WANT DESC CMD...  CMD must exit WANT; stdout in $tmp/out,
#                              stderr in $tmp/err
#   check_fails DESC CMD...    CMD must fail (any non-zero status)
#   check_eq DESC GOT WANT     the two strings must be equal
#   check_grep DESC PATTERN FILE   FILE must contain PATTERN (grep, BRE)
#   check_py DESC FILE CODE    python3 CODE, with `d` the JSON in FILE, raises nothing
#   t_done                     prints "NAME: N checks, N failures"; exits 1 on failure
#   die MSG [LOG]              a fatal setup error: shows LOG, exits 1 (scripts
#                              with their own way of failing redefine it)
#   need TOOL... / skip_unless TOOL...   a missing tool is fatal / skips (exit 77)
# Processes (every one of them stopped by the trap, also on failure):
#   track_pid PID / stop_pid PID   stop_pid sends SIGTERM, waits, sets $stopped
#   stop_all                   stops every tracked process
#   wait_port PID FILE WHAT [LOG]  waits (10 s at most) for PID to write its port
#                              into FILE; sets $port (dies when PID exits first)
#   make_pki DIR               the test PKI (tests/tools/mkpki.sh)
#   start_tsa PKI [NAME [ARGS...]]  tests/tools/tsa_server.py on 127.0.0.1;
#                              sets TSA_URL (no trailing slash) and TSA_PID
#   start_azure_emu DIR [ARGS...]  tests/emulators/azure_emu.py (Entra, Graph, Trusted
#                              Signing) on 127.0.0.1; sets AZ_URL, AZ_PID, AZ_DIR
#   emu_faults JSON / emu_state FILE   set the emulator's faults / save its state
#   azure_profile_json FILE [CREDENTIALS-JSON]  an Azure profile config for it
# PostgreSQL (the store under test is PostgreSQL when QWICK_TEST_STORE=pg):
#   pg_start                   a PostgreSQL server: the one run-tests.sh started
#                              (QWICK_TEST_PG_URL, a superuser URL), else a cluster
#                              of this script's own in $tmp/pg (stopped by the
#                              trap); sets PG_SUPER_URL, PG_PORT
#   pg_newdb NAME              a fresh database owned by the role qwick_owner
#                              (LOGIN CREATEROLE, made when missing); prints the
#                              owner's URL, the one `qwickd init --database` takes
#   pg_sql SQL...              psql as the superuser on PG_SUPER_URL (-At, stop on error)
#   pg_store_sql SQL...        the same on the store's database (QWICKD_DATABASE_URL's):
#                              the superuser bypasses row-level security, so it sees
#                              and can change every org's rows (tamper tests)
#   pg_store_db                the name of that database
#   store_is_pg                true when QWICK_TEST_STORE=pg
#   qwickd_init DATA           `qwickd init --json` into $tmp/init.json (with
#                              --database on a pg_newdb database under
#                              QWICK_TEST_STORE=pg; sets QWICKD_DATABASE_URL); sets
#                              QWICKD_API_KEY, QWICKD_OPERATOR_TOKEN (GET /metrics),
#                              QWICKD_ROOT_CA, QWICKD_TSA_ROOT_CA, QWICKD_TLS_CA
#   start_qwickd DATA [SERVE-ARGS...]  init (when not yet done), then `qwickd
#                              serve --listen 127.0.0.1:0`; sets QWICKD_PORT,
#                              QWICKD_URL, QWICKD_PID; log in $tmp/server.log
#   stop_qwickd                SIGTERM and wait; sets $stopped to its exit status
#   qwick_env                  exports QWICK_SERVER, QWICK_API_KEY, QWICK_CACERT
# Files:
#   json_get FILE PATH         a member of a JSON file: "api_key", "files.0.requestId"
#   build_pe OUT [x86|x64] [SRC [CFLAGS...]]  mingw-w64 build (default x64,
#                              demo/hello.c, -O2)
#   make_cert PREFIX CN        throwaway self-signed code-signing cert: PREFIX.key, .pem
#   ossl_verify CA TSA_CA FILE [NSIGS [yes]]  osslsigncode verify: NSIGS (1)
#                              signatures, timestamped with "yes"; output in
#                              $tmp/ossl.out, shown on failure
#   ossl_digest FILE [VERIFY-ARGS...]  osslsigncode's calculated digest (lowercase);
#                              the status is osslsigncode verify's
#   qdigest ALG FILE           qwick digest's hex digest
#   signing_leaf FILE OUT      the code-signing leaf of a signed PE as PEM

# shellcheck disable=SC2034 # the variables set here are read by the scripts
t_name=qwick-test
tmp=""
t_checks=0
t_fails=0
t_pids=""

t_init() { # NAME
    t_name=$1
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-$1.XXXXXX")
    trap t_cleanup EXIT
    trap 'exit 1' INT TERM HUP
}
t_pgdir=""
t_cleanup() {
    stop_all
    [ -z "$t_pgdir" ] || sh "$SRC_ROOT/tests/tools/pgcluster.sh" stop "$t_pgdir" >/dev/null 2>&1 || true
    [ -z "$tmp" ] || rm -rf "$tmp"
}

# --- checks --------------------------------------------------------------------
ok() {
    t_checks=$((t_checks + 1))
    echo "ok: $*"
}
fail() {
    t_checks=$((t_checks + 1))
    t_fails=$((t_fails + 1))
    echo "FAIL: $*"
}
# _show FILE...: the last lines of FILE, indented, after a failure.
_show() { tail -n 20 "$@" | sed 's/^/    /'; }

check() { # DESC CMD...
    _d=$1
    shift
    _rc=0
    "$@" >"$tmp/last.out" 2>&1 || _rc=$?
    if [ "$_rc" -eq 0 ]; then ok "$_d"; else
        fail "$_d (exit $_rc)"
        _show "$tmp/last.out"
    fi
}
check_status() { # WANT DESC CMD...
    _want=$1
    _d=$2
    shift 2
    _rc=0
    "$@" >"$tmp/out" 2>"$tmp/err" || _rc=$?
    if [ "$_rc" -eq "$_want" ]; then ok "$_d"; else
        fail "$_d (exit $_rc, want $_want)"
        _show "$tmp/out" "$tmp/err"
    fi
}
check_fails() { # DESC CMD...
    _d=$1
    shift
    if "$@" >"$tmp/last.out" 2>&1; then
        fail "$_d (succeeded)"
        _show "$tmp/last.out"
    else ok "$_d"; fi
}
check_eq() { # DESC GOT WANT
    if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: got '$2', want '$3'"; fi
}
check_grep() { # DESC PATTERN FILE
    if grep -q -- "$2" "$3"; then ok "$1"; else
        fail "$1 ('$2' not in $3)"
        _show "$3"
    fi
}
check_py() { # DESC FILE CODE
    if python3 -c "import json,re,sys
d = json.load(open(sys.argv[1]))
$3" "$2" >"$tmp/py.err" 2>&1; then ok "$1"; else
        fail "$1"
        _show "$tmp/py.err"
    fi
}
t_done() {
    # Servers stop first so a sanitizer build writes its leak report; such
    # reports go to the server's stderr without changing what clients see.
    stop_all
    _pat='runtime error\|ERROR: [A-Za-z]*Sanitizer\|WARNING: ThreadSanitizer'
    _san=$(find "$tmp" -name '*.log' -exec grep -l "$_pat" {} + 2>/dev/null || true)
    if [ -n "$_san" ]; then
        fail "sanitizer report in $(echo "$_san" | tr '\n' ' ')"
        grep -h -A 20 "$_pat" $_san | head -n 40
    fi
    echo "$t_name: $t_checks checks, $t_fails failures"
    [ "$t_fails" -eq 0 ] || exit 1
    exit 0
}
die() { # MSG [LOG]
    echo "FAIL: $t_name: $1" >&2
    [ -z "${2:-}" ] || [ ! -s "$2" ] || _show "$2" >&2
    exit 1
}
need() { # TOOL...
    for _t in "$@"; do
        command -v "$_t" >/dev/null 2>&1 || die "$_t is not installed (make setup installs it)"
    done
}
skip_unless() { # TOOL...
    for _t in "$@"; do
        if ! command -v "$_t" >/dev/null 2>&1; then
            echo "SKIP: $_t not installed"
            exit 77
        fi
    done
}

# --- processes ------------------------------------------------------------------
track_pid() { t_pids="$t_pids $1"; }
stop_pid() { # PID: SIGTERM, wait; $stopped is its exit status
    _rest=""
    for _p in $t_pids; do [ "$_p" = "$1" ] || _rest="$_rest $_p"; done
    t_pids=$_rest
    kill -TERM "$1" 2>/dev/null || true
    stopped=0
    wait "$1" 2>/dev/null || stopped=$?
}
stop_all() {
    for _p in $t_pids; do
        kill -TERM "$_p" 2>/dev/null || true
        wait "$_p" 2>/dev/null || true
    done
    t_pids=""
    QWICKD_PID=""
}
wait_port() { # PID FILE WHAT [LOG]
    _i=0
    while [ ! -s "$2" ]; do
        _i=$((_i + 1))
        if [ "$_i" -gt 100 ] || ! kill -0 "$1" 2>/dev/null; then
            die "$3 did not start" "${4:-}"
        fi
        sleep 0.1
    done
    port=$(tr -d ' \n' <"$2")
}

make_pki() { sh "$SRC_ROOT/tests/tools/mkpki.sh" "$1" || die "mkpki.sh $1"; }

start_tsa() { # PKI [NAME [tsa_server.py ARGS...]]
    _pki=$1
    _n=${2:-tsa}
    [ $# -lt 2 ] || shift
    shift
    rm -f "$tmp/$_n.port"
    python3 "$SRC_ROOT/tests/tools/tsa_server.py" --pki "$_pki" --port-file "$tmp/$_n.port" "$@" \
        2>>"$tmp/$_n.log" &
    TSA_PID=$!
    track_pid "$TSA_PID"
    wait_port "$TSA_PID" "$tmp/$_n.port" "tsa_server.py ($_n)" "$tmp/$_n.log"
    TSA_URL="http://127.0.0.1:$port"
}

start_azure_emu() { # DIR [azure_emu.py ARGS...]
    AZ_DIR=$1
    shift
    rm -f "$tmp/emu.port"
    /usr/bin/python3 "$SRC_ROOT/tests/emulators/azure_emu.py" --state-dir "$AZ_DIR" \
        --port-file "$tmp/emu.port" "$@" 2>>"$tmp/emu.log" &
    AZ_PID=$!
    track_pid "$AZ_PID"
    _i=0
    while [ ! -s "$tmp/emu.port" ]; do # RSA key generation takes a few seconds
        _i=$((_i + 1))
        if [ "$_i" -gt 300 ] || ! kill -0 "$AZ_PID" 2>/dev/null; then
            die "azure_emu.py did not start" "$tmp/emu.log"
        fi
        sleep 0.1
    done
    AZ_URL="https://127.0.0.1:$(tr -d ' \n' <"$tmp/emu.port")"
}
emu_faults() { # JSON
    curl -sS --fail --cacert "$AZ_DIR/tls-ca.pem" -H 'Content-Type: application/json' \
        -d "$1" "$AZ_URL/_emu/faults" >/dev/null || die "emulator faults $1" "$tmp/emu.log"
}
emu_state() { # FILE
    curl -sS --fail --cacert "$AZ_DIR/tls-ca.pem" "$AZ_URL/_emu/state" >"$1" ||
        die "emulator state" "$tmp/emu.log"
}
azure_profile_json() { # FILE [CREDENTIALS-JSON]
    _cred=${2:-'{"ttlSeconds": 300, "maxSecrets": 2}'}
    cat >"$1" <<EOF
{"backend": "azure", "azure": {
  "endpoint": "$AZ_URL", "account": "acct", "certificateProfile": "prof",
  "tenantId": "tenant-1", "clientId": "app-1", "applicationObjectId": "obj-1",
  "authorityUrl": "$AZ_URL", "graphUrl": "$AZ_URL", "caFile": "$AZ_DIR/tls-ca.pem",
  "graph": {"refreshToken": "rt-initial", "clientId": "graph-cli"},
  "credentials": $_cred}}
EOF
}

store_is_pg() { [ "${QWICK_TEST_STORE:-sqlite}" = pg ]; }
pg_start() {
    [ -z "${PG_SUPER_URL:-}" ] || return 0
    if [ -n "${QWICK_TEST_PG_URL:-}" ]; then
        PG_SUPER_URL=$QWICK_TEST_PG_URL
    else
        need psql
        # As root the server runs as `postgres`, which must reach $tmp/pg
        # through $tmp (mktemp makes it 0700): let it pass, not list.
        [ "$(id -u)" -ne 0 ] || chmod 711 "$tmp"
        # A free port: bind 0 and read it back (a race with others is unlikely
        # on loopback, and pgcluster.sh fails loudly if it is lost).
        _pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        sh "$SRC_ROOT/tests/tools/pgcluster.sh" start "$tmp/pg" "$_pgport" >"$tmp/pg.log" 2>&1 ||
            die "pgcluster.sh start" "$tmp/pg.log"
        t_pgdir="$tmp/pg"
        PG_SUPER_URL="postgresql://postgres@127.0.0.1:$_pgport/postgres"
    fi
    PG_PORT=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).port)' "$PG_SUPER_URL")
}
pg_sql() { # SQL...
    psql "$PG_SUPER_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"
}
pg_store_db() {
    _db=${QWICKD_DATABASE_URL##*/}
    echo "${_db%%\?*}"
}
pg_store_sql() { # SQL...
    pg_start
    psql "${PG_SUPER_URL%/*}/$(pg_store_db)" -X -q -At -v ON_ERROR_STOP=1 "$@"
}
pg_newdb() { # NAME
    pg_start
    _db="qt_$(echo "$1" | tr -c 'a-z0-9_\n' '_')_$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"
    pg_sql -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qwick_owner')
               THEN CREATE ROLE qwick_owner LOGIN CREATEROLE; END IF; END \$\$" \
        -c "CREATE DATABASE $_db OWNER qwick_owner" >"$tmp/pgnewdb.log" 2>&1 ||
        die "creating database $_db" "$tmp/pgnewdb.log"
    echo "postgresql://qwick_owner@127.0.0.1:$PG_PORT/$_db"
}

qwickd_init() { # DATA
    if store_is_pg; then
        pg_start
        QWICKD_DATABASE_URL=$(pg_newdb "$t_name") || exit 1
        export QWICKD_DATABASE_URL
    fi
    "$QWICKD" init --data "$1" --json >"$tmp/init.json" 2>"$tmp/init.log" ||
        die "qwickd init" "$tmp/init.log"
    QWICKD_DATA=$1
    QWICKD_API_KEY=$(json_get "$tmp/init.json" api_key)
    QWICKD_OPERATOR_TOKEN=$(json_get "$tmp/init.json" operator_token)
    QWICKD_ROOT_CA=$(json_get "$tmp/init.json" root_ca)
    QWICKD_TSA_ROOT_CA=$(json_get "$tmp/init.json" tsa_root_ca)
    QWICKD_TLS_CA=$(json_get "$tmp/init.json" tls_ca)
}
start_qwickd() { # DATA [serve ARGS...]
    [ "${QWICKD_DATA:-}" = "$1" ] || qwickd_init "$1"
    shift
    rm -f "$tmp/port"
    "$QWICKD" serve --data "$QWICKD_DATA" --listen 127.0.0.1:0 --port-file "$tmp/port" "$@" \
        2>>"$tmp/server.log" &
    QWICKD_PID=$!
    track_pid "$QWICKD_PID"
    wait_port "$QWICKD_PID" "$tmp/port" "qwickd serve" "$tmp/server.log"
    QWICKD_PORT=$port
    case " $* " in
    *" --plain-http "*) QWICKD_URL="http://127.0.0.1:$QWICKD_PORT" ;;
    *) QWICKD_URL="https://127.0.0.1:$QWICKD_PORT" ;;
    esac
}
stop_qwickd() {
    [ -n "${QWICKD_PID:-}" ] || return 0
    stop_pid "$QWICKD_PID"
    QWICKD_PID=""
}
qwick_env() {
    QWICK_SERVER=$QWICKD_URL
    QWICK_API_KEY=$QWICKD_API_KEY
    QWICK_CACERT=$QWICKD_TLS_CA
    export QWICK_SERVER QWICK_API_KEY QWICK_CACERT
}

# --- files -----------------------------------------------------------------------
# json_each KEY FILE...: the top-level KEY of each file, one per line (one
# python3 for all of them: a process per file cost a minute under load).
json_each() {
    python3 - "$@" <<'EOF'
import json, sys
for f in sys.argv[2:]:
    print(json.load(open(f))[sys.argv[1]])
EOF
}
json_get() { # FILE PATH
    python3 - "$1" "$2" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v if not isinstance(v, (dict, list)) else json.dumps(v))
EOF
}

build_pe() { # OUT [x86|x64] [SRC [CFLAGS...]]
    _out=$1
    _cc=x86_64-w64-mingw32-gcc
    [ "${2:-x64}" = x64 ] || _cc=i686-w64-mingw32-gcc
    _src=${3:-$SRC_ROOT/demo/hello.c}
    if [ $# -gt 3 ]; then shift 3; else set --; fi
    "$_cc" -O2 "$@" -o "$_out" "$_src" || die "$_cc: building $_out"
}

make_cert() { # PREFIX CN
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days 2 \
        -subj "/CN=$2" -addext extendedKeyUsage=codeSigning >/dev/null 2>&1 ||
        die "cannot create a test certificate"
}

ossl_verify() { # CA TSA_CA FILE [NSIGS [yes]]
    _n=${4:-1}
    if osslsigncode verify -CAfile "$1" -TSA-CAfile "$2" -in "$3" >"$tmp/ossl.out" 2>&1 &&
        grep -q "Number of verified signatures: $_n\$" "$tmp/ossl.out" &&
        [ "$(grep -c '^Signature verification: ok' "$tmp/ossl.out")" -eq "$_n" ] &&
        { [ "${5:-no}" != yes ] ||
            grep -q "Timestamp Server Signature verification: ok" "$tmp/ossl.out"; }; then
        return 0
    fi
    cat "$tmp/ossl.out"
    return 1
}
ossl_digest() { # FILE [osslsigncode verify ARGS...]
    _f=$1
    shift
    _rc=0
    osslsigncode verify "$@" -in "$_f" >"$tmp/ossl.out" 2>&1 || _rc=$?
    sed -n 's/^Calculated message digest *: *\([0-9A-Fa-f]*\).*/\1/p' "$tmp/ossl.out" |
        head -n 1 | tr 'A-F' 'a-f'
    return "$_rc"
}
qdigest() { "$QWICK" digest --alg "$1" "$2" | cut -d ' ' -f 1; }

signing_leaf() { # FILE OUT
    rm -rf "$tmp/leaf.d"
    mkdir "$tmp/leaf.d"
    osslsigncode extract-signature -in "$1" -out "$tmp/leaf.d/sig.der" >/dev/null 2>&1 || return 1
    openssl pkcs7 -inform DER -in "$tmp/leaf.d/sig.der" -print_certs -out "$tmp/leaf.d/certs.pem" ||
        return 1
    awk -v d="$tmp/leaf.d" '/BEGIN CERT/{n++} n{print > (d "/cert-" n ".pem")}' "$tmp/leaf.d/certs.pem"
    for _c in "$tmp"/leaf.d/cert-*.pem; do
        if openssl x509 -in "$_c" -noout -ext extendedKeyUsage 2>/dev/null | grep -q "Code Signing"; then
            cp "$_c" "$2"
            return 0
        fi
    done
    return 1
}
