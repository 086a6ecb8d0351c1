#!/bin/sh
# The transparency log against a real qwickd, checked by qwick and by an
# independent implementation (tests/tools/tlog_check.py: RFC 6962 trees and
# C2SP notes from the specifications, Ed25519 from python3-cryptography):
#  - init prints the log key, the API serves it; signing answers carry
#    logIndex, request reads an inclusion proof; checkpoints, entries and
#    proofs recomputed and verified independently;
#  - qwick log verify (first use, consistent growth) and qwick log inclusion
#    (a signed file is in the log; a file signed elsewhere is not);
#  - the tamper suite: each attack on the database and which check sees it
#    (qwickd audit verify, qwick log verify, or both; docs/transparency.md).
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init tlog
PY=/usr/bin/python3
CHECK="$SRC_ROOT/tests/tools/tlog_check.py"
XDG_CONFIG_HOME=$tmp/xdg
XDG_STATE_HOME=$tmp/state
export XDG_CONFIG_HOME XDG_STATE_HOME

start_qwickd "$tmp/data"
qwick_env
data=$tmp/data
vkey=$(json_get "$tmp/init.json" log_public_key)
case $vkey in
qwickd-log+????????+*) ok "init --json prints log_public_key" ;;
*) fail "init --json log_public_key: '$vkey'" ;;
esac
api() { # PATH OUT
    curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" \
        -o "$2" -w '%{http_code}' "$QWICKD_URL$1"
}
check_eq "GET /api/v1/log/public-key" "$(api /api/v1/log/public-key "$tmp/pk"; cat "$tmp/pk")" \
    "200$vkey"

build_pe "$tmp/app.exe" x64
for i in 1 2 3; do
    cp "$tmp/app.exe" "$tmp/a$i.exe"
    check "sign a$i.exe" "$QWICK" sign --no-timestamp "$tmp/a$i.exe"
done

# --- the signing answer and the request -----------------------------------
digest=$(printf 'x%.0s' 1 2 3 | sha256sum | cut -c1-64)
b64=$($PY -c "import base64,sys; print(base64.b64encode(bytes.fromhex('$digest')).decode())")
code=$(curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" \
    -H 'Content-Type: application/json' -o "$tmp/sign.json" -w '%{http_code}' \
    -d "{\"digest\":\"$b64\",\"algorithm\":\"sha256\",\"format\":\"cms\",\"timestamp\":false}" \
    "$QWICKD_URL/api/v1/sign/digest")
check_eq "sign/digest 200" "$code" 200
check_py "sign answer has logIndex 4 (init, 3 signatures, this one)" "$tmp/sign.json" \
    'assert d["logIndex"] == 4, d.get("logIndex")'
req=$(json_get "$tmp/sign.json" requestId)
check_eq "GET request 200" "$(api "/api/v1/sign/requests/$req" "$tmp/req.json")" 200
check_py "request has logIndex and an inclusion proof" "$tmp/req.json" \
    'assert d["logIndex"] == 4 and d["inclusionProof"]["treeSize"] == 5 and d["inclusionProof"]["checkpoint"].startswith("qwickd-")'

# --- independent check: checkpoint, tree, proofs ---------------------------
check_eq "GET checkpoint 200" "$(api /api/v1/log/checkpoint "$tmp/cp1")" 200
check "checkpoint signature (independent Ed25519)" sh -c \
    "$PY '$CHECK' checkpoint '$vkey' '$tmp/cp1' >'$tmp/cp1.txt'"
set -- $(cat "$tmp/cp1.txt")
origin=$1 size=$2 root=$3
check_eq "checkpoint size" "$size" 5
check_eq "GET entries 200" "$(api "/api/v1/log/entries?start=0&end=5" "$tmp/entries.json")" 200
check_eq "root recomputed from the entries (RFC 6962)" \
    "$($PY "$CHECK" tree "$tmp/entries.json" 5 2>&1)" "$root"
check_py "entry 4 is the cms signature, with its hashes" "$tmp/entries.json" \
    'e = d["entries"][4]["entry"]; assert e["format"] == "cms" and e["action"] == "sign.digest" and len(e["signatureValueSha256"]) == 64 and len(e["signerSha256"]) == 64 and e["digest"] == "'"$digest"'", e'
for i in 0 2 4; do
    api "/api/v1/log/proof/inclusion?index=$i&size=5" "$tmp/incl.json" >/dev/null
    leaf=$($PY -c "import json; print(json.load(open('$tmp/entries.json'))['entries'][$i]['leaf'])")
    check "inclusion proof of $i (independent)" $PY "$CHECK" inclusion "$tmp/incl.json" "$leaf" "$root"
done
check_eq "inclusion: index beyond size is 400" \
    "$(api "/api/v1/log/proof/inclusion?index=5&size=5" "$tmp/x")" 400
check_eq "inclusion: junk index is 400" "$(api "/api/v1/log/proof/inclusion?index=1x" "$tmp/x")" 400
check_eq "entries: oversize page is 400" "$(api "/api/v1/log/entries?start=0&end=5000" "$tmp/x")" 400
check_eq "log without a key is 401" \
    "$(curl -sS --cacert "$QWICKD_TLS_CA" -o /dev/null -w '%{http_code}' "$QWICKD_URL/api/v1/log/checkpoint")" 401

# --- qwick log verify / inclusion ------------------------------------------
check_status 0 "log verify, first use (pins the server's key)" "$QWICK" log verify
check_grep "first use said so" "trusting the server's key on first use" "$tmp/err"
check_status 0 "log verify, second run (the pinned key)" "$QWICK" log verify
check_eq "second run: no first-use note" "$(cat "$tmp/err")" ""
check_status 0 "log verify with --log-key" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
check_grep "prints size and root" "log $origin: size 5, root " "$tmp/out"
check_status 0 "log inclusion of a signed file" "$QWICK" log inclusion "$tmp/a2.exe"
check_grep "names its index" "a2.exe: in log $origin at index 2 " "$tmp/out"
make_cert "$tmp/other" "Not Qwick"
osslsigncode sign -certs "$tmp/other.pem" -key "$tmp/other.key" -in "$tmp/app.exe" \
    -out "$tmp/other.exe" >/dev/null 2>&1 || die "osslsigncode sign"
check_status 1 "log inclusion of a file signed elsewhere fails" "$QWICK" log inclusion "$tmp/other.exe"
check_grep "says so" "NOT IN THE LOG" "$tmp/err"
check_status 1 "log verify under another key fails" "$QWICK" log verify \
    --log-key "qwickd-log+00000000+AQ$(printf 'A%.0s' $(seq 1 42))=" --state "$tmp/st-other"

# Growth: consistent, proven by qwick and independently.
cp "$tmp/app.exe" "$tmp/a4.exe"
check "sign a4.exe" "$QWICK" sign --no-timestamp "$tmp/a4.exe"
check_status 0 "log verify after growth" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
check_grep "consistent with the saved checkpoint" "consistent with the saved checkpoint of size 5" "$tmp/out"
api /api/v1/log/checkpoint "$tmp/cp2" >/dev/null
set -- $($PY "$CHECK" checkpoint "$vkey" "$tmp/cp2")
root2=$3
api "/api/v1/log/proof/consistency?from=5&to=$2" "$tmp/cons.json" >/dev/null
check "consistency proof 5 -> $2 (independent)" $PY "$CHECK" consistency "$tmp/cons.json" "$root" "$root2"

# --- the tamper suite --------------------------------------------------------
# The attacks are SQL on the store: on SQLite on the file, on PostgreSQL as
# the superuser (row-level security does not bind it; one transaction per
# call, as executescript's). Copies of the whole store: the file, or a
# database made from the store's as its template (nothing may be connected).
if store_is_pg; then
    sql() { pg_store_sql -c "${2:-$1}"; }
    store=$(pg_store_db)
    save_copy() { # NAME
        pg_sql -c "CREATE DATABASE ${store}_$1 TEMPLATE $store OWNER qwick_owner"
    }
    put_back() { # NAME
        pg_sql -c "DROP DATABASE $store WITH (FORCE)" \
            -c "CREATE DATABASE $store TEMPLATE ${store}_$1 OWNER qwick_owner"
    }
    copy_saved() { # FROM TO
        pg_sql -c "CREATE DATABASE ${store}_$2 TEMPLATE ${store}_$1 OWNER qwick_owner"
    }
else
    sql() { $PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()" "$data/qwick.db" "$1"; }
    save_copy() { cp "$data/qwick.db" "$tmp/$1.db"; }
    put_back() { cp "$tmp/$1.db" "$data/qwick.db"; rm -f "$data/qwick.db-wal" "$data/qwick.db-shm"; }
    copy_saved() { cp "$tmp/$1.db" "$tmp/$2.db"; }
fi
audit_verify() { "$QWICKD" audit verify --data "$data"; }
stop_qwickd
check_status 0 "audit verify on the untouched data" audit_verify
save_copy pristine || die "saving a copy of the store"
restore() { put_back pristine || die "restoring the store"; }

# 1. An edited entry.
sql "UPDATE audit SET filename = 'innocent.exe' WHERE seq = 3"
check_status 1 "edited entry: audit verify fails" audit_verify
check_grep "names the entry" "BROKEN at entry 3" "$tmp/out"
restore
# 2. Tail deleted, head reset (its edge cleared: an edge from before the cut
# would give it away), but the checkpoint left behind.
orphans="DELETE FROM sign_requests WHERE id NOT IN (SELECT request_id FROM audit WHERE request_id IS NOT NULL)"
sql "DELETE FROM audit WHERE seq > 4; DELETE FROM log_nodes WHERE pos >= 7; UPDATE log_heads SET size = 4, frontier = NULL; $orphans"
check_status 1 "tail cut, checkpoint kept: audit verify fails" audit_verify
check_grep "says the log was cut" "cut back" "$tmp/out"
# ... and with the checkpoints and requests gone too: only the outside sees it.
sql "DELETE FROM log_checkpoints WHERE size > 4"
check_status 0 "a thorough tail cut passes audit verify" audit_verify
start_qwickd "$data"
qwick_env
check_status 1 "a thorough tail cut: qwick log verify fails" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
check_grep "LOG SHRANK" "LOG SHRANK" "$tmp/err"
stop_qwickd
restore
# 3. All of an org's entries and its head deleted.
sql "DELETE FROM audit; DELETE FROM log_nodes; DELETE FROM log_heads; DELETE FROM log_checkpoints"
check_status 1 "org's log deleted: audit verify fails (signed requests without entries)" audit_verify
start_qwickd "$data"
qwick_env
check_status 1 "org's log deleted: qwick log verify fails" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
stop_qwickd
restore
# 4. A text in an integer column: refused by STRICT (by the column's type on
# PostgreSQL); a rebuilt table is seen (on PostgreSQL: the column retyped).
if store_is_pg; then
    check_fails "outcome text refused by the bigint column" sql "UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2"
    sql "ALTER TABLE audit ALTER COLUMN outcome TYPE text; UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2"
    check_status 1 "outcome retyped to text: audit verify fails" audit_verify
    check_grep "names the entry" "BROKEN at entry 2" "$tmp/out"
else
    check_fails "outcome text refused by the STRICT table" sql "UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2"
    sql "CREATE TABLE a2 AS SELECT * FROM audit; DROP TABLE audit; ALTER TABLE a2 RENAME TO audit; UPDATE audit SET outcome = '1 allowed-by-override' WHERE seq = 2"
    check_status 1 "non-STRICT rebuild: audit verify fails" audit_verify
    check_grep "names STRICT" "STRICT" "$tmp/out"
fi
restore
# 5. A signed request's row deleted, or its signature swapped.
sql "DELETE FROM sign_requests WHERE id = '$req'"
check_status 1 "request row deleted: audit verify fails" audit_verify
check_grep "names the request" "$req" "$tmp/out"
restore
sql "UPDATE sign_requests SET signature = X'3003020100' WHERE id = '$req'" \
    "UPDATE sign_requests SET signature = '\\x3003020100'::bytea WHERE id = '$req'"
check_status 1 "signature swapped: audit verify fails" audit_verify
restore
# 6. Rollback: an older copy of the database put back.
copy_saved pristine older || die "saving an older copy of the store"
start_qwickd "$data"
qwick_env
for i in 5 6; do
    cp "$tmp/app.exe" "$tmp/a$i.exe"
    check "sign a$i.exe" "$QWICK" sign --no-timestamp "$tmp/a$i.exe"
done
check_status 0 "log verify before the rollback" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
stop_qwickd
put_back older || die "putting the older copy back"
check_status 0 "rolled-back database passes audit verify (it is self-consistent)" audit_verify
start_qwickd "$data"
qwick_env
check_status 1 "rollback: qwick log verify fails" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
check_grep "LOG SHRANK" "LOG SHRANK" "$tmp/err"
# 7. Fork: the older copy then signs other files, past the saved size.
for i in 7 8 9; do
    cp "$tmp/app.exe" "$tmp/a$i.exe"
    check "sign a$i.exe on the restored copy" "$QWICK" sign --no-timestamp --description "fork $i" "$tmp/a$i.exe"
done
check_status 1 "fork: qwick log verify fails" "$QWICK" log verify --log-key "$vkey" --state "$tmp/st1"
check_grep "LOG FORKED" "LOG FORKED" "$tmp/err"
check_status 1 "fork: a file signed before the rollback is no longer in the log" \
    "$QWICK" log inclusion --log-key "$vkey" "$tmp/a5.exe"
stop_qwickd
check_status 0 "forked database passes audit verify (only the outside sees forks)" audit_verify

t_done
