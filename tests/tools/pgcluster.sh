#!/bin/sh
# Throwaway PostgreSQL clusters for the tests (store/pg's driver test, later
# the PostgreSQL integration tests).
#
#   pgcluster.sh start DIR PORT   new cluster in DIR: 127.0.0.1:PORT and a Unix
#                                 socket in DIR, superuser `postgres`, trust
#                                 auth (local and 127.0.0.1 only), fsync=on;
#                                 returns once it accepts connections
#   pgcluster.sh restart DIR      stop (fast) and start again, data kept
#   pgcluster.sh stop DIR         stop (fast) and remove DIR
#
# Debian's server binaries (/usr/lib/postgresql/VERSION/bin; the newest
# version installed). initdb refuses to run as root, so as root every server
# command runs as the `postgres` system user (Debian's package creates it) and
# DIR belongs to it; as anyone else the commands run directly. DIR holds
# data/ (the cluster), log (the server's), port and a marker file: `stop` and a
# stale `start` only ever remove a directory that has the marker.
#
# Idempotent: `start` on a DIR whose cluster a killed run left behind stops it
# and starts over; `stop` on a missing DIR does nothing. Prints nothing on
# success; on failure the reason and the server's log on stderr, exit 1.
set -eu

MARKER=.qwick-pgcluster

die() {
    echo "pgcluster: $*" >&2
    exit 1
}

usage() {
    echo "usage: pgcluster.sh start DIR PORT | restart DIR | stop DIR" >&2
    exit 2
}

# BIN: the newest installed server's bin directory.
find_bin() {
    BIN=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && BIN=$d
    done
    [ -n "$BIN" ] || die "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): run scripts/setup.sh"
}

# Runs a server command as the cluster's owner, from / (the postgres user
# may not be allowed into the caller's working directory).
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# DIR as an absolute path without a trailing slash; quotes and backslashes
# are refused since it goes into postgresql.conf.
set_dir() {
    case "$1" in
    "" | *\'* | *\\* | *\"*) die "unusable directory name: '$1'" ;;
    /*) DIR=$1 ;;
    *) DIR=$(pwd)/$1 ;;
    esac
    DIR=${DIR%/}
    [ -n "$DIR" ] || die "refusing to use / as a cluster directory"
    DATA=$DIR/data
}

is_ours() {
    [ -f "$DIR/$MARKER" ]
}

running() {
    [ -f "$DATA/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

show_log() {
    if [ -f "$DIR/log" ]; then
        echo "pgcluster: --- $DIR/log ---" >&2
        tail -n 30 "$DIR/log" >&2 || true
    fi
}

# Stops the server of DIR if one runs: fast (rolls back open transactions,
# disconnects clients), and if that hangs, kills the postmaster.
stop_server() {
    running || return 0
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" stop -m fast -w -t 30 >/dev/null 2>&1; then
        pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
        case "$pid" in
        "" | *[!0-9]*) ;;
        *) kill -9 "$pid" 2>/dev/null || true ;;
        esac
        sleep 1
    fi
    ! running || die "cannot stop the cluster in $DIR"
}

start_server() {
    port=$(cat "$DIR/port")
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/log" -w -t 60 start >/dev/null 2>&1; then
        show_log
        die "the cluster in $DIR did not start (port $port)"
    fi
    # pg_ctl -w already waited for it; this proves TCP works too.
    i=0
    until "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5; do
        i=$((i + 1))
        if [ "$i" -ge 30 ]; then
            show_log
            die "the cluster in $DIR does not accept connections on 127.0.0.1:$port"
        fi
        sleep 0.2
    done
}

# Removes DIR, which must be ours (or empty).
remove_dir() {
    [ -d "$DIR" ] || return 0
    if is_ours || [ -z "$(ls -A "$DIR")" ]; then
        rm -rf "$DIR"
    else
        die "$DIR is not a pgcluster.sh directory, not removing it"
    fi
}

cmd_start() {
    port=$1
    case "$port" in
    "" | *[!0-9]*) die "bad port: '$port'" ;;
    esac
    [ "$port" -ge 1024 ] && [ "$port" -le 65535 ] || die "port out of range: $port"
    if [ -d "$DIR" ]; then
        stop_server # a stale cluster of a killed run
        remove_dir
    fi
    mkdir -p "$DIR"
    touch "$DIR/$MARKER"
    echo "$port" >"$DIR/port"
    if [ "$(id -u)" -eq 0 ]; then
        getent passwd postgres >/dev/null || die "no 'postgres' system user: run scripts/setup.sh"
        chown postgres: "$DIR"
        as_owner test -w "$DIR" || die "the postgres user cannot write to $DIR (a parent directory is closed to it)"
    fi
    chmod 700 "$DIR"
    # -N: initdb's own files need no fsync (a throwaway cluster); the server
    # runs with fsync=on.
    if ! as_owner "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C -N \
        >"$DIR/initdb.log" 2>&1; then
        cat "$DIR/initdb.log" >&2
        die "initdb failed in $DIR"
    fi
    cat >"$DATA/pg_hba.conf" <<EOF
# pgcluster.sh: a test cluster, trust for local and 127.0.0.1 only
local all all trust
host all all 127.0.0.1/32 trust
EOF
    cat >>"$DATA/postgresql.conf" <<EOF

# pgcluster.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR'
fsync = on
max_connections = 64
shared_buffers = 32MB
EOF
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$DATA/pg_hba.conf" "$DATA/postgresql.conf" "$DIR/port" "$DIR/$MARKER"
    fi
    start_server
}

cmd_restart() {
    is_ours || die "$DIR is not a pgcluster.sh directory"
    [ -f "$DATA/PG_VERSION" ] || die "no cluster in $DIR"
    stop_server
    start_server
}

cmd_stop() {
    [ -d "$DIR" ] || return 0
    is_ours || [ -z "$(ls -A "$DIR")" ] || die "$DIR is not a pgcluster.sh directory"
    [ -d "$DATA" ] && stop_server
    remove_dir
}

[ $# -ge 2 ] || usage
cmd=$1
set_dir "$2"
find_bin
case "$cmd" in
start)
    [ $# -eq 3 ] || usage
    cmd_start "$3"
    ;;
restart)
    [ $# -eq 2 ] || usage
    cmd_restart
    ;;
stop)
    [ $# -eq 2 ] || usage
    cmd_stop
    ;;
*) usage ;;
esac
