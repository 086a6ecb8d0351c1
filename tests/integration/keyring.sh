#!/bin/sh
# Key hygiene and the master key's life cycle against the real binaries:
#  - a running serve is not dumpable (seen from outside through /proc), has no
#    core limit, and holds the TSA key in OpenSSL's secure heap;
#  - serve refuses a data directory, database, TLS key or master key that
#    group or others can reach, naming the file and its mode;
#  - qwickd keyring rotate re-seals every sealed secret (each org's signing
#    keys, the log key, tsa.key.sealed: kids read from the bytes), serve signs
#    before and after, retire honours the grace period and --force, a rotation
#    stopped half-way (test hook) leaves a working server and is finished by
#    running rotate again; rotate refuses to run beside a serve;
#  - the master key outside the data directory (--master-key,
#    $QWICKD_MASTER_KEY, $CREDENTIALS_DIRECTORY): serve works, a copy of the
#    directory alone does not open.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init keyring
need osslsigncode openssl x86_64-w64-mingw32-gcc
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME
D=$tmp/data

mode() { stat -c %a "$1"; }
# On PostgreSQL one more sealed blob: the server's login, database.sealed.
if store_is_pg; then pgblob=1; else pgblob=0; fi
# The store of DATA, as the superuser on PostgreSQL (the database qwickd.json
# names; row-level security does not bind the superuser).
dbq() { # DATA SQL
    if store_is_pg; then
        dbq_url=$(json_get "$1/qwickd.json" database) || return 1
        psql "${PG_SUPER_URL%/*}/${dbq_url##*/}" -X -q -At -v ON_ERROR_STOP=1 -c "$2"
    else sqlite3 "$1/qwick.db" "$2"; fi
}
# The kids of every sealed blob, from the bytes ("QKS1" | kid u32 BE | ...):
# "<sorted distinct kids>/<count>", e.g. "1 2/4".
blob_kids() { # DATA
    if store_is_pg; then
        dbq "$1" "SELECT encode(sealed, 'hex') FROM signing_keys
                  UNION ALL SELECT encode(sealed, 'hex') FROM instance_secrets" >"$tmp/blobs.hex" ||
            return 1
    fi
    python3 - "$1" "$pgblob" "$tmp/blobs.hex" <<'EOF'
import os, sqlite3, struct, sys
d = sys.argv[1]
if sys.argv[2] == "1":
    blobs = [bytes.fromhex(l) for l in open(sys.argv[3]).read().split()]
    blobs = [open(os.path.join(d, "database.sealed"), "rb").read()] + blobs
else:
    db = sqlite3.connect(os.path.join(d, "qwick.db"))
    blobs = [r[0] for r in db.execute("SELECT sealed FROM signing_keys")]
    blobs += [r[0] for r in db.execute("SELECT sealed FROM instance_secrets")]
    db.close()
blobs.append(open(os.path.join(d, "tsa.key.sealed"), "rb").read())
assert all(b[:4] == b"QKS1" for b in blobs)
kids = sorted({struct.unpack(">I", b[4:8])[0] for b in blobs})
print(" ".join(map(str, kids)) + "/" + str(len(blobs)))
EOF
}
# keyring status --json into $tmp/status.json.
status_json() { # DATA [ARGS...]
    st_dir=$1
    shift
    "$QWICKD" keyring status --data "$st_dir" --json "$@" >"$tmp/status.json" 2>"$tmp/status.err" ||
        { cat "$tmp/status.err"; return 1; }
}
# serve must refuse to start, with PATTERN in what it says.
serve_refuses() { # DESC PATTERN [serve ARGS...]
    sr_desc=$1
    sr_pat=$2
    shift 2
    if timeout 20 "$QWICKD" serve --listen 127.0.0.1:0 "$@" >"$tmp/refuse.out" 2>&1; then
        fail "$sr_desc (serve started)"
    elif grep -q -- "$sr_pat" "$tmp/refuse.out"; then
        ok "$sr_desc"
    else
        fail "$sr_desc ('$sr_pat' not said)"
        _show "$tmp/refuse.out"
    fi
}
n_signed=0
sign_ok() { # DESC [qwick sign ARGS...] (with the default profile unless --profile)
    so_desc=$1
    shift
    qwick_env # the server's port changes with every start
    n_signed=$((n_signed + 1))
    so_file=$tmp/s$n_signed.exe
    cp "$tmp/app.exe" "$so_file"
    check_status 0 "$so_desc: qwick sign" "$QWICK" sign "$@" "$so_file"
    so_ca=$QWICKD_ROOT_CA
    case " $* " in *" --profile p2 "*) so_ca=$tmp/p2.pem ;; esac
    if ossl_verify "$so_ca" "$QWICKD_TSA_ROOT_CA" "$so_file" 1 yes >/dev/null; then
        ok "$so_desc: osslsigncode verify (timestamped by qwickd's TSA)"
    else
        fail "$so_desc: osslsigncode verify"
        _show "$tmp/ossl.out"
    fi
}

build_pe "$tmp/app.exe" x64

# --- a data directory, signing, and what a running serve looks like -----------
start_qwickd "$D"
sign_ok "before any rotation"
check_grep "serve logs its key hygiene" 'msg="key hygiene" dumpable=0 core_limit=0' "$tmp/server.log"
used=$(sed -n 's/.*msg="key hygiene".*secure_heap_used=\([0-9]*\).*/\1/p' "$tmp/server.log" | tail -n 1)
[ "${used:-0}" -gt 1024 ] && ok "the TSA key's private values are in the secure heap ($used bytes)" ||
    fail "secure heap holds the TSA key (used: '$used')"
check_grep "no core files: RLIMIT_CORE is 0 (/proc/PID/limits)" \
    '^Max core file size *0 *0 ' "/proc/$QWICKD_PID/limits"
check_status 1 "keyring rotate refused while serve runs" "$QWICKD" keyring rotate --data "$D"
check_grep "... saying why" "in use by a running .qwickd serve." "$tmp/err"
check "keyring status works while serve runs" "$QWICKD" keyring status --data "$D"
stop_qwickd

# Not dumpable, observed from outside: the kernel gives /proc/PID of such a
# process to root and refuses its environ to other processes of its user. Root
# sees through that, so as root both sides run as nobody; a dumpable `sleep`
# of the same user is the control.
as_user=""
if [ "$(id -u)" -eq 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        as_user="setpriv --reuid=65534 --regid=65534 --clear-groups"
    fi
fi
if [ "$(id -u)" -eq 0 ] && [ -z "$as_user" ]; then
    echo "SKIP: non-dumpable check (root without setpriv)"
else
    ND=$tmp/nd
    cp -a "$D" "$ND"
    if [ -n "$as_user" ]; then
        chmod 711 "$tmp"
        chown -R 65534:65534 "$ND"
    fi
    uid=$($as_user id -u)
    $as_user "$QWICKD" serve --data "$ND" --listen 127.0.0.1:0 --port-file "$ND/port" \
        2>>"$tmp/nd.log" &
    nd_pid=$!
    track_pid "$nd_pid"
    wait_port "$nd_pid" "$ND/port" "qwickd serve (as uid $uid)" "$tmp/nd.log"
    $as_user sleep 60 &
    ctl_pid=$!
    track_pid "$ctl_pid"
    i=0 # until setpriv has exec'd sleep as that user
    while [ "$(cat "/proc/$ctl_pid/comm" 2>/dev/null)" != sleep ] && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    check_eq "control: a dumpable process's /proc/PID/environ is its user's" \
        "$(stat -c %u "/proc/$ctl_pid/environ")" "$uid"
    check "control: its user reads its environ" $as_user cat "/proc/$ctl_pid/environ"
    check_eq "serve's /proc/PID/environ belongs to root (not dumpable)" \
        "$(stat -c %u "/proc/$nd_pid/environ")" 0
    check_fails "serve's environ is refused to its own user (not dumpable)" \
        $as_user cat "/proc/$nd_pid/environ"
    stop_pid "$ctl_pid"
    stop_pid "$nd_pid"
    [ -z "$as_user" ] || chmod 700 "$tmp"
fi

# A second org-owned secret: a profile with an imported key.
make_cert "$tmp/p2" "Keyring Test Signer"
printf '{"backend": "local", "key": "p2.key", "chain": "p2.pem"}\n' >"$tmp/p2.json"
check "profile create p2 (a second sealed signing key)" \
    "$QWICKD" profile create --data "$D" --name p2 --config "$tmp/p2.json"
nb=$((4 + pgblob)) # blobs: log key, TSA key, two signing keys (+ database.sealed)
check_eq "every blob under key 1 ($nb blobs)" "$(blob_kids "$D")" "1/$nb"

# --- rotate ------------------------------------------------------------------
check_status 0 "keyring rotate" "$QWICKD" keyring rotate --data "$D"
check_grep "rotate says it added key 2" "Added master key 2" "$tmp/out"
check_eq "every blob re-sealed under key 2 (read from the bytes)" "$(blob_kids "$D")" "2/$nb"
check_eq "master.key still 0600" "$(mode "$D/master.key")" 600
check "keyring status --json" status_json "$D"
check_py "status: key 1 seals nothing, key 2 seals all $nb, superseded recorded" \
    "$tmp/status.json" '
k = {x["kid"]: x for x in d["keys"]}
assert d["current"] == 2 and sorted(k) == [1, 2], d
assert k[1]["blobs"] == 0 and k[2]["blobs"] == '$nb' and k[2]["current"], d
assert k[1]["superseded"] == k[2]["created"] > 0 and k[2]["superseded"] == 0, d
whats = " ".join(b["what"] for b in d["blobs"])
for w in ("tsa.key.sealed", "log-ed25519", "signing key"): assert w in whats, whats
assert ("database.sealed" in whats) == ('$pgblob' == 1), whats
assert all(b["kid"] == 2 and b["in_keyring"] for b in d["blobs"]), d'
dbq "$D" "SELECT action || ': ' || detail FROM audit WHERE action LIKE 'keyring.%' ORDER BY seq" \
    >"$tmp/audit.txt"
check_grep "audited: keyring.rotate with the kids" "keyring.rotate: added master key 2.*key 1 kept" "$tmp/audit.txt"
check_eq "audited: one keyring.reseal per blob" "$(grep -c '^keyring.reseal: .*master key 1 -> 2$' "$tmp/audit.txt")" "$nb"
check "audit log intact after rotation" "$QWICKD" audit verify --data "$D"

start_qwickd "$D"
sign_ok "after rotate (default profile)"
sign_ok "after rotate (imported key)" --profile p2
stop_qwickd

# --- retire ----------------------------------------------------------------------
check_status 1 "retire refused inside the grace period" "$QWICKD" keyring retire --data "$D"
check_grep "... naming the grace period" "key 1 is in its grace period until" "$tmp/err"
check_status 1 "--grace-days 1 is still too soon" "$QWICKD" keyring retire --data "$D" --grace-days 1
check_status 0 "retire --grace-days 0 (the period is over)" \
    "$QWICKD" keyring retire --data "$D" --grace-days 0 --force
check_grep "retire names the key" "Retired master key 1" "$tmp/out"
check_fails "key 1 is gone from master.key" grep -q '^1 ' "$D/master.key"
check_eq "master.key 0600 after retire" "$(mode "$D/master.key")" 600
check_status 0 "retire with nothing left to retire" "$QWICKD" keyring retire --data "$D" --force
check_grep "... says so" "Nothing to retire" "$tmp/out"
dbq "$D" "SELECT action || ': ' || detail FROM audit WHERE action = 'keyring.retire'" \
    >"$tmp/audit.txt"
check_grep "audited: keyring.retire with the kid" "retired master key 1 (--force); key 2" "$tmp/audit.txt"
start_qwickd "$D"
sign_ok "after retire"
stop_qwickd

# --- an interrupted rotation, finished by running rotate again ---------------------
left=$((nb - 2))
check_status 3 "rotate stopped after 2 of $nb re-seals (test hook)" \
    env QWICKD_TEST_RESEAL_STOP_AFTER=2 "$QWICKD" keyring rotate --data "$D"
check_eq "2 blobs under key 3, $left still under key 2" "$(blob_kids "$D")" "2 3/$nb"
check "status after the interruption" status_json "$D"
check_py "status counts $left and 2" "$tmp/status.json" '
k = {x["kid"]: x["blobs"] for x in d["keys"]}
assert d["current"] == 3 and k == {2: '$left', 3: 2}, d'
check_status 1 "retire --force refuses a key that still seals blobs" \
    "$QWICKD" keyring retire --data "$D" --force
check_grep "... and says to resume" "key 2 still seals $left secrets" "$tmp/err"
start_qwickd "$D"
sign_ok "mid-rotation (both keys in the keyring)"
sign_ok "mid-rotation, imported key" --profile p2
stop_qwickd
check_status 0 "rotate again finishes the rotation" "$QWICKD" keyring rotate --data "$D"
check_grep "... instead of adding a key" "Finishing an earlier rotation: $left secrets" "$tmp/out"
check_fails "no key 4 was added" grep -q '^4 ' "$D/master.key"
check_eq "every blob under key 3" "$(blob_kids "$D")" "3/$nb"
check_status 0 "rotate --resume with nothing to do" "$QWICKD" keyring rotate --data "$D" --resume
check_grep "... says so" "Nothing to resume" "$tmp/out"
check_eq "still key 3 only sealing" "$(blob_kids "$D")" "3/$nb"
start_qwickd "$D"
sign_ok "after the finished rotation"
sign_ok "after the finished rotation, imported key" --profile p2
stop_qwickd

# --- file modes: serve refuses what others can reach ---------------------------------
if store_is_pg; then
    echo "skip (sqlite only): qwick.db's mode"
    chmod 644 "$D/database.sealed"
    serve_refuses "database credentials 0644 refused, naming them and their mode" \
        "database.sealed has mode 0644" --data "$D"
    chmod 600 "$D/database.sealed"
else
    chmod 644 "$D/qwick.db"
    serve_refuses "database 0644 refused, naming it and its mode" "qwick.db has mode 0644" --data "$D"
    chmod 600 "$D/qwick.db"
fi
chmod 640 "$D/tls.key"
serve_refuses "TLS key 0640 refused, naming it and its mode" "tls.key has mode 0640" --data "$D"
chmod 600 "$D/tls.key"
chmod 644 "$D/master.key"
serve_refuses "master key 0644 refused, naming it and its mode" "master.key has mode 0644" \
    --data "$D"
chmod 600 "$D/master.key"
chmod 750 "$D"
serve_refuses "data directory 0750 refused, naming it and its mode" "$D has mode 0750" --data "$D"
chmod 701 "$D"
serve_refuses "data directory 0701 refused" "has mode 0701" --data "$D"
chmod 700 "$D"
start_qwickd "$D"
ok "modes restored: serve starts"
stop_qwickd

# --- the master key outside the data directory ------------------------------------------
D2=$tmp/ext
K=$tmp/keys/qwickd.key
mkdir -m 700 "$tmp/keys"
# A store of its own: on PostgreSQL a new database, which every command from
# here on uses (QWICKD_DATABASE_URL overrides qwickd.json).
if store_is_pg; then
    QWICKD_DATABASE_URL=$(pg_newdb keyring2) || exit 1
    export QWICKD_DATABASE_URL
fi
"$QWICKD" init --data "$D2" --master-key "$K" --json >"$tmp/init2.json" 2>"$tmp/init2.log" ||
    die "qwickd init --master-key" "$tmp/init2.log"
[ ! -e "$D2/master.key" ] && ok "init --master-key: no master.key in DIR" || fail "master.key in DIR"
check_eq "init --master-key: the key file is 0600" "$(mode "$K")" 600
check_eq "init --json names the key file" "$(json_get "$tmp/init2.json" master_key)" "$K"
check_fails "nothing in DIR records where the key is" grep -rqF "$tmp/keys" "$D2"
serve_refuses "serve without the key refuses, saying where it looked" "no master key: $D2/master.key" \
    --data "$D2"
cp -a "$D2" "$tmp/copy"
serve_refuses "a copy of the data directory alone does not open" "no master key" --data "$tmp/copy"
check_status 1 "admin commands need the key too (keyring status)" \
    "$QWICKD" keyring status --data "$D2"
QWICKD_DATA=$D2
QWICKD_API_KEY=$(json_get "$tmp/init2.json" api_key)
QWICKD_ROOT_CA=$(json_get "$tmp/init2.json" root_ca)
QWICKD_TSA_ROOT_CA=$(json_get "$tmp/init2.json" tsa_root_ca)
QWICKD_TLS_CA=$(json_get "$tmp/init2.json" tls_ca)
start_qwickd "$D2" --master-key "$K"
sign_ok "serve --master-key FILE"
stop_qwickd
QWICKD_MASTER_KEY=$K
export QWICKD_MASTER_KEY
start_qwickd "$D2"
sign_ok "serve with \$QWICKD_MASTER_KEY"
stop_qwickd
check_status 0 "keyring rotate with \$QWICKD_MASTER_KEY" "$QWICKD" keyring rotate --data "$D2"
check_eq "the outside key file got key 2" "$(grep -c '^[12] ' "$K")" 2
check_eq "blobs re-sealed under the outside key 2" "$(blob_kids "$D2")" "2/$((3 + pgblob))"
unset QWICKD_MASTER_KEY
mkdir -m 700 "$tmp/creds"
cp "$K" "$tmp/creds/qwickd-master-key"
chmod 400 "$tmp/creds/qwickd-master-key"
CREDENTIALS_DIRECTORY=$tmp/creds
export CREDENTIALS_DIRECTORY
start_qwickd "$D2"
sign_ok "serve with systemd's \$CREDENTIALS_DIRECTORY/qwickd-master-key"
stop_qwickd
check "keyring status --master-key FILE overrides the credential" \
    status_json "$D2" --master-key "$K"
check_py "... and names it" "$tmp/status.json" "assert d['master_key'] == '$K', d"
unset CREDENTIALS_DIRECTORY

t_done
