#!/bin/sh
# qwickd when its store fails under it (issue 7, defects 3 and 9):
#  - with audit inserts failing (a trigger), creating, revoking, making and
#    disabling profiles fail with 503 and change nothing: every change
#    commits with its audit entry or not at all;
#  - the entries of key changes record what changed (id, role, expiry);
#  - a store that cannot be read answers 503 store_unavailable, never a
#    401/404, and no denial is recorded for it.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init store_faults
PY=/usr/bin/python3
start_qwickd "$tmp/data"
db=$tmp/data/qwick.db
# sql SQL [PG-SQL] / count SQL [PG-SQL]: a script, or the first column of a
# query's first row, on qwick.db or on PostgreSQL (PG-SQL where the dialects
# differ) as the superuser, whom row-level security does not bind.
if store_is_pg; then
    sql() { pg_store_sql -c "${2:-$1}"; }
    count() { pg_store_sql -c "${2:-$1}"; }
else
    sql() { $PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=10); c.executescript(sys.argv[2]); c.commit()" "$db" "$1"; }
    count() { $PY -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1], timeout=10).execute(sys.argv[2]).fetchone()[0])" "$db" "$1"; }
fi
api() { # METHOD PATH [BODY]: the status; the body in $tmp/resp
    curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" \
        -H 'Content-Type: application/json' -X "$1" ${3:+-d "$3"} -o "$tmp/resp" \
        -w '%{http_code}' "$QWICKD_URL$2"
}

check_eq "create a key" "$(api POST /api/v1/keys '{"name":"viewer-for-ci","role":"admin"}')" 201
kid=$(json_get "$tmp/resp" id)
check_eq "the entry records the key's id and real role" \
    "$(count "SELECT meta FROM audit WHERE action = 'apikey.create'")" \
    "{\"expiresAt\":0,\"keyId\":$kid,\"name\":\"viewer-for-ci\",\"role\":\"admin\",\"userId\":1}"

keys0=$(count "SELECT count(*) FROM api_keys")
sql "CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit down'); END;" \
    "CREATE FUNCTION audit_down() RETURNS trigger LANGUAGE plpgsql AS
         \$\$ BEGIN RAISE EXCEPTION 'audit down'; END \$\$;
     CREATE TRIGGER audit_down BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_down();"
check_eq "audit failing: key create is 503" "$(api POST /api/v1/keys '{"name":"ghost","role":"admin"}')" 503
check_eq "no key was made" "$(count "SELECT count(*) FROM api_keys")" "$keys0"
check_eq "audit failing: revoke is 503" "$(api DELETE "/api/v1/keys/$kid")" 503
check_eq "the key is still active" "$(count "SELECT revoked_at FROM api_keys WHERE id = $kid")" 0
check_eq "audit failing: profile disable is 503" "$(api POST /api/v1/profiles/default/disable)" 503
check_eq "the profile is still enabled" \
    "$(count "SELECT disabled_at FROM profiles WHERE name = 'default'")" 0
"$QWICKD" apikey create --data "$tmp/data" --name ghost2 --role admin >"$tmp/out" 2>"$tmp/err" &&
    fail "audit failing: qwickd apikey create succeeded" || ok "audit failing: qwickd apikey create fails"
check_eq "no key was made by the command" "$(count "SELECT count(*) FROM api_keys")" "$keys0"
sql "DROP TRIGGER audit_down" "DROP TRIGGER audit_down ON audit; DROP FUNCTION audit_down();"
check_eq "audit back: revoke works" "$(api DELETE "/api/v1/keys/$kid")" 200
check_py "the revocation's entry names key and role" "$tmp/resp" 'assert d["revoked"]'
check_eq "revoke entry meta" \
    "$(count "SELECT json_extract(meta, '$.keyId') || json_extract(meta, '$.role') FROM audit WHERE action = 'apikey.revoke'" \
        "SELECT (meta::jsonb ->> 'keyId') || (meta::jsonb ->> 'role') FROM audit WHERE action = 'apikey.revoke'")" \
    "${kid}admin"
check "audit verify after all that" "$QWICKD" audit verify --data "$tmp/data"

# A store that fails reads: 503, never 404/401, and no denial on record.
entries0=$(count "SELECT count(*) FROM audit")
sql "ALTER TABLE profiles RENAME TO profiles_away"
b64=$($PY -c "import base64; print(base64.b64encode(bytes(32)).decode())")
check_eq "profiles unreadable: signing is 503" \
    "$(api POST /api/v1/sign/digest "{\"digest\":\"$b64\",\"algorithm\":\"sha256\",\"format\":\"cms\",\"timestamp\":false}")" 503
check_py "store_unavailable" "$tmp/resp" 'assert d["error"]["code"] == "store_unavailable", d'
check_eq "no denial recorded" "$(count "SELECT count(*) FROM audit")" "$entries0"
sql "ALTER TABLE profiles_away RENAME TO profiles"
sql "ALTER TABLE api_keys RENAME TO api_keys_away"
check_eq "keys unreadable: authentication is 503, not 401" "$(api GET /api/v1/keys)" 503
check_py "store_unavailable" "$tmp/resp" 'assert d["error"]["code"] == "store_unavailable", d'
sql "ALTER TABLE api_keys_away RENAME TO api_keys"
check_eq "store back: 200" "$(api GET /api/v1/keys)" 200
stop_qwickd
t_done
