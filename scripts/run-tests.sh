#!/bin/sh
# Runs every registered test: all suites on the plain build, then all again
# under ASan+UBSan, and under TSan the unit tests and the integration scripts
# that run threads against each other (TSAN_SKIP: the CLI's file-format and
# file-system checks and the SQL-level isolation checks, which race nothing
# and cost minutes under TSan; ASan still runs them). The integration scripts
# drive the sanitizer builds of qwick and qwickd; a report in a server's log
# fails the script. The integration suite runs once more on the plain build with
# PostgreSQL as the store (QWICK_TEST_STORE=pg, "plain-pg"; the pg_* scripts,
# always on PostgreSQL, ran already), on one cluster started for the run
# (tests/tools/pgcluster.sh; each script makes its own databases in it, and
# the other runs' pg_* scripts use it too). The PostgreSQL run goes beside the
# ASan run: they share no ports (every server binds port 0) and no files (each
# script has its own temporary directory and databases). Ends with
# "N passed, N failed", every run counted.
set -u
BUILD=${1:-build}
ASAN=${2:-build-asan}
TSAN=${3:-}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# A race report makes a process exit 66 at its end; servers' reports are
# caught in their logs by the integration scripts.
export TSAN_OPTIONS=${TSAN_OPTIONS:-second_deadlock_stack=1}
unset QWICK_TEST_STORE # SQLite, but for the plain-pg run
here=$(cd "$(dirname "$0")/.." && pwd)
pass=0
fail=0
work=$(mktemp -d "${TMPDIR:-/tmp}/qwick-run-tests.XXXXXX")
pgdir=""
pgrun=""

# On exit, also on ^C: the background run stopped first (it ignores SIGINT,
# as every background job of a shell without job control does), then the
# cluster.
cleanup() {
    if [ -n "$pgrun" ] && kill -0 "$pgrun" 2>/dev/null; then
        kill -TERM "$pgrun" 2>/dev/null
        wait "$pgrun" 2>/dev/null
    fi
    [ -z "$pgdir" ] || sh "$here/tests/tools/pgcluster.sh" stop "$pgdir" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# run DIR LABEL ARGS...: meson test; its output and counts go to
# $work/LABEL.log and $work/LABEL.counts ("OK FAIL SECONDS"), so a run can go
# in the background and be collected later (collect LABEL). In the background
# (bg=1) meson is waited for, so that a SIGTERM stops it (meson stops its tests).
bg=0
run() {
    dir=$1
    label=$2
    shift 2
    log=$work/$label.log
    t0=$(date +%s)
    if [ "$bg" = 1 ]; then
        meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" >"$log" 2>&1 &
        mpid=$!
        trap 'kill -TERM "$mpid" 2>/dev/null; wait "$mpid"; exit 1' TERM
        wait "$mpid"
    else
        meson test -C "$dir" --print-errorlogs --num-processes 2 "$@" >"$log" 2>&1
    fi
    ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    ko=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    if [ -z "$ok" ]; then
        echo "$label: meson test produced no summary" >>"$log"
        ko=$((${ko:-0} + 1))
    fi
    echo "${ok:-0} $((${ko:-0} + ${to:-0})) $(($(date +%s) - t0))" >"$work/$label.counts"
}
collect() { # LABEL
    c_s=""
    if [ -s "$work/$1.counts" ]; then
        read -r c_ok c_ko c_s <"$work/$1.counts"
    else
        c_ok=0
        c_ko=1
    fi
    echo "=== $1${c_s:+ ($c_s s)}"
    cat "$work/$1.log"
    [ -s "$work/$1.counts" ] || echo "$1: no result"
    pass=$((pass + c_ok))
    fail=$((fail + c_ko))
}

# The PostgreSQL cluster (unless QWICK_TEST_PG_URL already names a server, a
# superuser URL): a free port (bind 0 and read it back; pgcluster.sh fails
# loudly if it is taken meanwhile). Its directory must be reachable by the
# `postgres` user when running as root. The role that owns the tests'
# databases is made here, once, so that scripts running side by side do not
# race to create it (tests/integration/lib.sh, pg_newdb).
pg_cluster() {
    [ -z "${QWICK_TEST_PG_URL:-}" ] || { pg_owner_role; return; }
    chmod 711 "$work"
    pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
        return 1
    pgdir=$work/pg
    sh "$here/tests/tools/pgcluster.sh" start "$pgdir" "$pgport" >"$work/pg.log" 2>&1 || return 1
    QWICK_TEST_PG_URL=postgresql://postgres@127.0.0.1:$pgport/postgres
    export QWICK_TEST_PG_URL
    pg_owner_role
}
pg_owner_role() {
    psql "$QWICK_TEST_PG_URL" -X -q -v ON_ERROR_STOP=1 -c "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'qwick_owner')
        THEN CREATE ROLE qwick_owner LOGIN CREATEROLE; END IF; END \$\$" >>"$work/pg.log" 2>&1
}
# The integration tests that take the store from QWICK_TEST_STORE (not pg_*);
# run with --suite integration, since a name alone also picks a unit test of
# that name.
store_tests() {
    meson test -C "$BUILD" --list --suite integration 2>/dev/null |
        sed -n 's|^.*:integration / ||p' | grep -v '^pg_'
}
# Integration scripts without threads racing each other (single-process CLI
# parsing and file handling, SQL checks); the rest runs under TSan.
TSAN_SKIP="pe_digest sign_interop verify_cli cli_symlink realworld server_init pg_isolation"
tsan_tests() {
    meson test -C "$TSAN" --list --suite integration 2>/dev/null |
        sed -n 's|^.*:integration / ||p' |
        while read -r t; do
            case " $TSAN_SKIP " in *" $t "*) ;; *) echo "$t" ;; esac
        done
}

pg_ok=1
if ! pg_cluster; then
    pg_ok=0
    unset QWICK_TEST_PG_URL
    { echo "plain-pg: no PostgreSQL server for the tests"; cat "$work/pg.log"; } >"$work/plain-pg.log" 2>&1
fi
run "$BUILD" plain
collect plain
if [ "$pg_ok" = 1 ]; then
    (
        trap - EXIT INT HUP
        bg=1
        QWICK_TEST_STORE=pg
        export QWICK_TEST_STORE
        tests=$(store_tests)
        if [ -n "$tests" ]; then
            # shellcheck disable=SC2086 # one argument per test name
            run "$BUILD" plain-pg --suite integration $tests
        else echo "plain-pg: no integration tests listed" >"$work/plain-pg.log"; fi
    ) &
    pgrun=$!
fi
run "$ASAN" asan --suite unit --suite fuzz-replay --suite integration
collect asan
[ -z "$pgrun" ] || wait "$pgrun"
collect plain-pg
if [ -n "$TSAN" ]; then
    run "$TSAN" tsan-unit --suite unit
    collect tsan-unit
    # shellcheck disable=SC2046 # one argument per test name
    run "$TSAN" tsan --suite integration $(tsan_tests)
    collect tsan
fi

echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
