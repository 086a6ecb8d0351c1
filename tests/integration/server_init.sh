#!/bin/sh
# qwickd init / apikey / audit against the real binary and openssl:
# data directory layout and permissions, the dev PKI (EKUs, critical
# timeStamping, SAN, chains), no plaintext code-signing key anywhere, API key
# administration, refusal to re-initialise, audit chain tamper detection.
set -eu
: "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init server_init
D="$tmp/data"

mode() { stat -c %a "$1"; }

# --- init --json -----------------------------------------------------------
qwickd_init "$D"
check "init --json prints valid JSON" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$tmp/init.json"
KEY=$QWICKD_API_KEY
ROOT=$QWICKD_ROOT_CA
TSAROOT=$QWICKD_TSA_ROOT_CA
TLSCA=$QWICKD_TLS_CA
SERVER=$(json_get "$tmp/init.json" server)
case "$KEY" in qk_*) ok "api key has the qk_ prefix" ;; *) fail "api key has the qk_ prefix" ;; esac
[ ${#KEY} -ge 25 ] && ok "api key is long (>=128 bits)" || fail "api key is long"
check_eq "server URL" "$SERVER" "https://127.0.0.1:8443"
for f in "$ROOT" "$TSAROOT" "$TLSCA"; do
    case "$f" in /*) [ -f "$f" ] && ok "path $f exists" || fail "path $f exists" ;;
    *) fail "path $f is absolute" ;; esac
done

# --- migrate: a fresh directory is at this version; no directory, no database --
if store_is_pg; then kind=postgresql; else kind=sqlite; fi
"$QWICKD" migrate --data "$D" --json >"$tmp/migrate.json" 2>"$tmp/migrate.err"
check_eq "migrate on a fresh directory: nothing to do" "$(cat "$tmp/migrate.json")" \
    "{\"store\": \"$kind\", \"from\": 7, \"to\": 7}"
mkdir "$tmp/not-init"
check_status 1 "migrate refuses a directory init never made" "$QWICKD" migrate --data "$tmp/not-init"
check_grep "and says so" "not an initialised qwickd data directory" "$tmp/err"
[ ! -e "$tmp/not-init/qwick.db" ] && ok "no database created there" || fail "migrate created a database"

# --- permissions -------------------------------------------------------------
check_eq "data dir is 0700" "$(mode "$D")" 700
# On PostgreSQL the server's role password, sealed, takes the database file's place.
if store_is_pg; then secrets="database.sealed"; else secrets="qwick.db"; fi
for f in master.key $secrets tls.key tsa.key.sealed qwickd.json; do
    check_eq "$f is 0600" "$(mode "$D/$f")" 600
done
if store_is_pg; then
    [ ! -e "$D/qwick.db" ] && ok "no SQLite file beside PostgreSQL" || fail "qwick.db created on PostgreSQL"
    check_grep "qwickd.json records the database" "\"database\": *\"$QWICKD_DATABASE_URL\"" "$D/qwickd.json"
    check_eq "the server's database login is sealed" "$(head -c 4 "$D/database.sealed")" QKS1
fi

# --- certificates ------------------------------------------------------------
x509() { openssl x509 -in "$1" -noout -text 2>/dev/null; }
x509 "$D/codesign.pem" >"$tmp/codesign.txt"
x509 "$D/tsa.pem" >"$tmp/tsa.txt"
x509 "$D/tls.pem" >"$tmp/tls.txt"
x509 "$ROOT" >"$tmp/root.txt"
check_grep "leaf EKU codeSigning" "Code Signing" "$tmp/codesign.txt"
check_grep "leaf KU digitalSignature" "Digital Signature" "$tmp/codesign.txt"
grep -A1 "Extended Key Usage: critical" "$tmp/tsa.txt" | grep -q "Time Stamping" &&
    ok "TSA EKU timeStamping is critical" || fail "TSA EKU timeStamping is critical"
check_grep "TLS SAN IP:127.0.0.1" "IP Address:127.0.0.1" "$tmp/tls.txt"
check_grep "TLS SAN DNS:localhost" "DNS:localhost" "$tmp/tls.txt"
check_grep "TLS EKU serverAuth" "TLS Web Server Authentication" "$tmp/tls.txt"
check_grep "root is a CA" "CA:TRUE" "$tmp/root.txt"
check_grep "root KU keyCertSign" "Certificate Sign" "$tmp/root.txt"
serial=$(openssl x509 -in "$D/codesign.pem" -noout -serial | cut -d= -f2)
[ ${#serial} -ge 16 ] && ok "random serial >= 64 bits" || fail "serial $serial"
check "openssl verify code-signing chain" openssl verify -CAfile "$ROOT" "$D/codesign.pem"
check "openssl verify TSA chain" openssl verify -CAfile "$TSAROOT" -purpose timestampsign "$D/tsa.pem"
check "openssl verify TLS chain" openssl verify -CAfile "$TLSCA" -purpose sslserver "$D/tls.pem"
check_fails "hierarchies are separate (TLS cert must not chain to the code-signing root)" \
    openssl verify -CAfile "$ROOT" "$D/tls.pem"
check_eq "TLS key matches TLS cert" "$(openssl x509 -in "$D/tls.pem" -noout -pubkey)" \
    "$(openssl pkey -in "$D/tls.key" -pubout)"

# --- no plaintext private key but the TLS one ----------------------------------
leaks=$(grep -rla "PRIVATE KEY" "$D" | grep -v "/tls.key$" || true)
check_eq "no plaintext private key in DIR except tls.key" "$leaks" ""
check_fails "TSA key is sealed" grep -qa "BEGIN" "$D/tsa.key.sealed"
if store_is_pg; then
    check_eq "code-signing key sealed in signing_keys" "$(pg_store_sql -c "
        SELECT (SELECT string_agg(kind || ' ' || encode(substr(sealed, 1, 4), 'escape') || ' '
                                  || position('PRIVATE'::bytea IN sealed), ',') FROM signing_keys)
               || ' ' || (SELECT count(*) FROM profiles WHERE name = 'default')")" "local-pem QKS1 0 1"
else
    python3 - "$D/qwick.db" <<'PY' && ok "code-signing key sealed in signing_keys" || fail "code-signing key sealed in signing_keys"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT kind, sealed FROM signing_keys").fetchall()
assert len(rows) == 1 and rows[0][0] == "local-pem"
assert rows[0][1][:4] == b"QKS1" and b"PRIVATE" not in rows[0][1]
(n,) = db.execute("SELECT count(*) FROM profiles WHERE name = 'default'").fetchone()
assert n == 1
PY
fi

# --- re-init refuses, touching nothing ---------------------------------------------
# The store's contents: the SQLite file, or on PostgreSQL a dump of the database
# (which the superuser reads whole, row-level security or not).
store_dump() {
    if store_is_pg; then
        # (less pg_dump's \restrict lines, which carry a random key)
        pg_dump -d "${PG_SUPER_URL%/*}/$(pg_store_db)" --no-owner >"$tmp/dump.sql" || die "pg_dump"
        grep -v '^\\\(un\)\{0,1\}restrict ' "$tmp/dump.sql" | sha256sum
    else sha256sum qwick.db; fi
}
before=$(cd "$D" && ls -lA --time-style=+%s . && sha256sum master.key && store_dump)
check_fails "init refuses an existing DIR" "$QWICKD" init --data "$D"
after=$(cd "$D" && ls -lA --time-style=+%s . && sha256sum master.key && store_dump)
[ "$before" = "$after" ] && ok "refused init left DIR untouched" || fail "refused init left DIR untouched"
# On PostgreSQL each new DIR gets a fresh database: a refusal must come from
# the directory, not from a database that already has a schema.
fresh_db() {
    if store_is_pg; then pg_newdb "$1"; else echo "${QWICKD_DATABASE_URL:-}"; fi
}
url=$(fresh_db nonempty) || exit 1
mkdir "$tmp/nonempty" && echo keep >"$tmp/nonempty/file"
check_fails "init refuses a non-empty DIR" env ${url:+QWICKD_DATABASE_URL="$url"} \
    "$QWICKD" init --data "$tmp/nonempty"
check_eq "non-empty DIR untouched" "$(ls -A "$tmp/nonempty")" file
if store_is_pg; then
    check_eq "non-empty DIR: its database untouched" \
        "$(psql "${PG_SUPER_URL%/*}/${url##*/}" -X -At -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'" 2>&1)" 0
fi
url=$(fresh_db empty) || exit 1
mkdir "$tmp/empty"
check "init accepts an existing empty DIR" env ${url:+QWICKD_DATABASE_URL="$url"} \
    "$QWICKD" init --data "$tmp/empty"
check_eq "empty DIR tightened to 0700" "$(mode "$tmp/empty")" 700
check_fails "init without --data is a usage error" "$QWICKD" init

# --- apikey create / list / revoke ----------------------------------------------------
"$QWICKD" apikey create --data "$D" --name ci --role signer --expires-in 3600 --json >"$tmp/k.json"
KID=$(json_get "$tmp/k.json" id)
K2=$(json_get "$tmp/k.json" api_key)
check_eq "apikey create --role signer" "$(json_get "$tmp/k.json" role)" signer
[ "$K2" != "$KEY" ] && ok "new key differs" || fail "new key differs"
"$QWICKD" apikey list --data "$D" --json >"$tmp/list.json"
check_py "apikey list --json shows the key, never the secret" "$tmp/list.json" "
k = [k for k in d if k['id'] == $KID][0]
assert k['name'] == 'ci' and k['revoked_at'] == 0 and k['expires_at'] > 0
assert k['prefix'] == '$K2'[:10]
assert '$K2' not in open(sys.argv[1]).read()
"
"$QWICKD" apikey list --data "$D" | grep -q "qk_" && ok "apikey list (table)" || fail "apikey list (table)"
if store_is_pg; then
    pg_dump -d "${PG_SUPER_URL%/*}/$(pg_store_db)" >"$tmp/dump.sql" || die "pg_dump"
    check_fails "key stored only as a hash" grep -qa "$K2" "$tmp/dump.sql"
else
    check_fails "key stored only as a hash" grep -qa "$K2" "$D/qwick.db"
fi
check "apikey revoke" "$QWICKD" apikey revoke --data "$D" "$KID"
"$QWICKD" apikey list --data "$D" --json >"$tmp/list.json"
check_py "revoked key shows revoked_at" "$tmp/list.json" "
k = [k for k in d if k['id'] == $KID][0]
assert k['revoked_at'] > 0"
check_fails "revoke unknown id fails" "$QWICKD" apikey revoke --data "$D" 9999
check_fails "unknown role refused" "$QWICKD" apikey create --data "$D" --role root
check_fails "past expiry refused" "$QWICKD" apikey create --data "$D" --expires 2001-01-01
check "apikey create --expires DATE" "$QWICKD" apikey create --data "$D" --expires 2099-12-31
check_fails "apikey on a non-data dir fails" "$QWICKD" apikey list --data "$tmp/nonempty"
[ ! -e "$tmp/nonempty/qwick.db" ] && ok "no database created in a non-data dir" ||
    fail "database created in a non-data dir"

# --- audit chain ----------------------------------------------------------------------
check "audit verify (intact)" "$QWICKD" audit verify --data "$D"
if store_is_pg; then
    pg_store_sql -c "UPDATE audit SET detail = 'edited' WHERE seq = 2"
else
    python3 -c 'import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); db.execute("UPDATE audit SET detail = ? WHERE seq = 2", ("edited",)); db.commit()' "$D/qwick.db"
fi
check_fails "audit verify detects an edited row" "$QWICKD" audit verify --data "$D"


# --- qwickd.json is checked before anything starts -----------------------------------
cp "$D/qwickd.json" "$tmp/qwickd.json.bak"
bad_config() { # DESC PYTHON-EDIT-OF-c EXPECTED-MESSAGE
    python3 -c 'import json,sys; c = json.load(open(sys.argv[1])); exec(sys.argv[2]); json.dump(c, open(sys.argv[1], "w"))' \
        "$D/qwickd.json" "$2"
    if timeout 20 "$QWICKD" serve --data "$D" --listen 127.0.0.1:0 >"$tmp/serve.out" 2>&1; then
        fail "$1 (serve started)"
    elif grep -q -- "$3" "$tmp/serve.out"; then
        ok "$1"
    else
        fail "$1"
        cat "$tmp/serve.out" >&2
    fi
    cp "$tmp/qwickd.json.bak" "$D/qwickd.json"
}
bad_config "public_url with a quote refused" 'c["public_url"] = "https://a\"b"' 'public_url'
bad_config "public_url not http(s) refused" 'c["public_url"] = "ftp://example.com"' 'public_url'
bad_config "public_url with a trailing slash refused" 'c["public_url"] = "https://example.com/"' 'public_url'
bad_config "commit delay over 100 ms refused" 'c["limits"]["commit_delay_us"] = 100001' 'commit_delay_us'
bad_config "unknown limits key refused" 'c["limits"]["commit_delay"] = 5' 'commit_delay'
# Values libmicrohttpd would take to mean something else, or that were clamped.
bad_config "connection timeout 0 (no timeout at all) refused" \
    'c["limits"]["connection_timeout_seconds"] = 0' 'limits.connection_timeout_seconds'
bad_config "max_body_bytes over what the HTTP layer honours refused" \
    'c["limits"]["max_body_bytes"] = 64 * 1024 * 1024' 'limits.max_body_bytes'
bad_config "bad tls.priorities refused at start" 'c["tls"]["priorities"] = "BOGUS:STRING"' 'tls.priorities'
bad_config "unknown azure key refused" 'c["azure"]["reaper"] = 5' 'azure.reaper'
bad_config "azure reaper interval 0 refused" 'c["azure"]["reaper_interval_seconds"] = 0' 'reaper_interval_seconds'
check_grep "init writes the commit delay default" '"commit_delay_us": 4000' "$D/qwickd.json"
check_grep "init keeps /metrics behind a key" '"anonymous": false' "$D/qwickd.json"
bad_config "metrics.anonymous must be a boolean" 'c["metrics"]["anonymous"] = "yes"' 'true or false'

# --- metrics.anonymous opens /metrics to scrapers without a key ----------------------
python3 -c 'import json,sys; c = json.load(open(sys.argv[1])); c["metrics"]["anonymous"] = True; json.dump(c, open(sys.argv[1], "w"))' \
    "$D/qwickd.json"
start_qwickd "$D"
code=$(curl -s -o "$tmp/metrics.txt" -w '%{http_code}' --cacert "$TLSCA" "$QWICKD_URL/metrics" || true)
check_eq "metrics.anonymous: /metrics answers without a key" "$code" 200
check_grep "metrics.anonymous: Prometheus text" '^# TYPE qwickd_store_commits_total counter' "$tmp/metrics.txt"
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TLSCA" "$QWICKD_URL/api/v1/keys" || true)
check_eq "metrics.anonymous: the API still needs a key" "$code" 401
stop_qwickd
cp "$tmp/qwickd.json.bak" "$D/qwickd.json"

t_done
