#!/bin/sh
# Tenant isolation on PostgreSQL, from both sides of the server (always on
# PostgreSQL: a cluster of its own unless QWICK_TEST_PG_URL names one):
#  - HTTP: org B's admin and signer keys against org A's objects. Every
#    endpoint that takes an id or a name answers 404, the same body as for an
#    id that does not exist (never 403, which would tell that it exists);
#    every list (keys, profiles, log entries, usage) holds B's rows only; B's
#    log, checkpoint and proofs are B's tree; a profile name taken in A is
#    free in B; nothing B does changes A's keys, profiles or log;
#  - SQL, connected as the server's own role (trust auth on the test
#    cluster): with no org set every tenant table reads empty (not an error);
#    with org A set it reads exactly A's rows; UPDATEs of B's rows touch 0
#    rows, moving a row to B and INSERTing a B row are refused by the policy
#    (WITH CHECK), DELETE and TRUNCATE are not granted, nor UPDATE on the
#    log's tables (as schema_pg.c's GRANTs say); the org dies with its
#    transaction (a pooled connection carries none into the next); the role
#    is no superuser, has no BYPASSRLS, owns nothing, is no member of the
#    owner; the SECURITY DEFINER lookups answer only what they are asked;
#  - injection through every string the API and the admin commands take
#    (profile names, request ids, key names and ids, metadata, org names,
#    query values, the Authorization header): a clean 4xx, or stored and
#    read back verbatim; never a 5xx; afterwards every table is there and
#    `qwickd audit verify` passes.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init pg_isolation
need psql curl openssl
PY=/usr/bin/python3
# lib.sh's json_get and check_py run `python3`: the system's (a pyenv shim
# costs a second per call, and this suite makes hundreds).
if [ -x "$PY" ]; then
    mkdir "$tmp/bin"
    ln -s "$PY" "$tmp/bin/python3"
    PATH=$tmp/bin:$PATH
fi
QWICK_TEST_STORE=pg
export QWICK_TEST_STORE

# As root, pgcluster.sh runs the server as `postgres`, which must reach $tmp/pg.
[ "$(id -u)" -ne 0 ] || chmod 711 "$tmp"

# --- setup: orgs A (init's "default"), B and C, keys, profiles, requests --------
data=$tmp/data
qwickd_init "$data"
a_admin=$QWICKD_API_KEY
"$QWICKD" org create --data "$data" --json beta >"$tmp/orgb.json" 2>"$tmp/err" || die "org create beta" "$tmp/err"
"$QWICKD" org create --data "$data" --json gamma >"$tmp/orgc.json" 2>"$tmp/err" || die "org create gamma" "$tmp/err"
"$QWICKD" org list --data "$data" --json >"$tmp/orgs.json" || die "org list"
A=$($PY -c "import json,sys; print([o['id'] for o in json.load(open(sys.argv[1])) if o['name'] == 'default'][0])" "$tmp/orgs.json")
B=$(json_get "$tmp/orgb.json" id)
C=$(json_get "$tmp/orgc.json" id)
mkkey() { # ORG ROLE NAME: the key's JSON in $tmp/NAME.json
    "$QWICKD" apikey create --data "$data" --org "$1" --role "$2" --name "$3" --json \
        >"$tmp/$3.json" 2>"$tmp/err" || die "apikey create $3" "$tmp/err"
}
mkkey default signer a-signer
mkkey beta admin b-admin
mkkey beta signer b-signer
a_signer=$(json_get "$tmp/a-signer.json" api_key)
b_admin=$(json_get "$tmp/b-admin.json" api_key)
b_signer=$(json_get "$tmp/b-signer.json" api_key)
a_signer_id=$(json_get "$tmp/a-signer.json" id)
b_admin_id=$(json_get "$tmp/b-admin.json" id)
b_signer_id=$(json_get "$tmp/b-signer.json" id)

# Connections: the superuser and the server's role, both on the test database.
db=${QWICKD_DATABASE_URL##*/}
su_url=$($PY -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(u.urlunparse(p._replace(path='/'+sys.argv[2])))" "$PG_SUPER_URL" "$db")
su() { psql "$su_url" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
role=$(su -c "SELECT DISTINCT grantee FROM information_schema.role_table_grants WHERE table_name = 'audit' AND grantee LIKE 'qwickd\_%'")
owner=$(su -c "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = 'audit'")
tables0=$(su -c "SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
case $role in qwickd_*) ;; *) die "the server's role not found ('$role')" ;; esac
srv_url=$(echo "$QWICKD_DATABASE_URL" | sed "s|//[^@]*@|//$role@|")
start_qwickd "$data"
echo "qwickd on $QWICKD_URL; orgs A=$A B=$B C=$C; server role $role"

# api KEY METHOD PATH [BODY-FILE]: the status in $tmp/status, the body in $tmp/resp.
api() {
    _k=$1 _m=$2 _p=$3
    shift 3
    _f=${1:-}
    set -- -sS --cacert "$QWICKD_TLS_CA" -X "$_m" -o "$tmp/resp" -w '%{http_code}' \
        -H "Authorization: Bearer $_k"
    [ -z "$_f" ] || set -- "$@" -H 'Content-Type: application/json' --data-binary "@$_f"
    curl "$@" "$QWICKD_URL$_p" >"$tmp/status" 2>"$tmp/curl.err" || echo 000 >"$tmp/status"
}
# want STATUS CODE DESC: the last answer was STATUS with error CODE ("-": any body).
want() {
    _st=$(cat "$tmp/status")
    _code=-
    [ "$2" = - ] || _code=$(json_get "$tmp/resp" error.code 2>/dev/null || echo '?')
    if [ "$_st" = "$1" ] && [ "$_code" = "$2" ]; then ok "$3 -> $1 ${2#-}"; else
        fail "$3: want $1 $2, got $_st $_code: $(head -c 300 "$tmp/resp")"
    fi
}
# want_4xx DESC: the last answer was a 4xx (a clean refusal, never a 5xx).
want_4xx() {
    case $(cat "$tmp/status") in
    4??) ok "$1 -> $(cat "$tmp/status")" ;;
    *) fail "$1: got $(cat "$tmp/status"): $(head -c 300 "$tmp/resp")" ;;
    esac
}
# body FILE PYTHON-EXPR [PAYLOAD-FILE]: writes json.dumps(EXPR) to FILE; in EXPR
# `p` is PAYLOAD-FILE's text, `d32` a random SHA-256 digest in base64.
body() {
    $PY -c "import base64,json,os,sys
p = open(sys.argv[3], encoding='utf-8', errors='surrogateescape').read() if sys.argv[3] else ''
d32 = base64.b64encode(os.urandom(32)).decode()
open(sys.argv[1], 'w', encoding='utf-8', errors='surrogateescape').write(json.dumps($2, ensure_ascii=False))" \
        "$1" "$2" "${3:-}"
}
quote() { $PY -c "import sys,urllib.parse as u; print(u.quote(open(sys.argv[1], encoding='utf-8').read(), safe=''))" "$1"; }
sign() { # KEY PROFILE [FILENAME]: POST /sign/digest, format cms
    body "$tmp/sign.json" "{'digest': d32, 'algorithm': 'sha256', 'format': 'cms', 'timestamp': False, 'profile': '$2', 'metadata': {'filename': '${3:-x.bin}'}}"
    api "$1" POST /api/v1/sign/digest "$tmp/sign.json"
}
profile_body() { # FILE NAME CERT-PREFIX: a POST /api/v1/profiles body
    $PY -c "import json,sys
json.dump({'name': sys.argv[2], 'config': {'backend': 'local', 'keyPem': open(sys.argv[3] + '.key').read(),
           'chainPem': open(sys.argv[3] + '.pem').read()}}, open(sys.argv[1], 'w'))" "$1" "$2" "$3"
}
cert_sha() { openssl x509 -in "$1.pem" -outform DER | sha256sum | cut -c1-64; }

for c in a-release a-team b-team b-release; do make_cert "$tmp/$c" "Isolation $c"; done
profile_body "$tmp/pa1.json" release "$tmp/a-release"
api "$a_admin" POST /api/v1/profiles "$tmp/pa1.json"
want 201 - "A's admin creates profile 'release' through the API"
profile_body "$tmp/pa2.json" team "$tmp/a-team"
api "$a_admin" POST /api/v1/profiles "$tmp/pa2.json"
want 201 - "A's admin creates profile 'team'"
profile_body "$tmp/pb1.json" team "$tmp/b-team"
api "$b_admin" POST /api/v1/profiles "$tmp/pb1.json"
want 201 - "B's admin creates its own profile 'team' (the name A uses too)"
body "$tmp/k.json" "{'name': 'a-ci', 'role': 'viewer'}"
api "$a_admin" POST /api/v1/keys "$tmp/k.json"
want 201 - "A's admin creates a viewer key through the API"
a_viewer=$(json_get "$tmp/resp" key)
a_viewer_id=$(json_get "$tmp/resp" id)
a_admin_id=$(su -c "SELECT id FROM api_keys WHERE org_id = $A AND name = 'initial admin key'")

a_rids=""
for p in default release team; do
    sign "$a_signer" "$p" "a-$p.bin"
    want 200 - "A's signer signs with A's profile '$p'"
    cp "$tmp/resp" "$tmp/a-sign-$p.json"
    a_rids="$a_rids $(json_get "$tmp/resp" requestId)"
done
# A's log longer than B's, so that B can ask for indexes that only A has.
i=0
while [ $i -lt 12 ]; do
    sign "$a_admin" default "a-extra-$i.bin"
    [ "$(cat "$tmp/status")" = 200 ] || die "A's extra signature $i: $(cat "$tmp/resp")"
    i=$((i + 1))
done
sign "$b_signer" team b-team.bin
want 200 - "B's signer signs with B's profile 'team'"
b_rid=$(json_get "$tmp/resp" requestId)
# What a missing object looks like, to compare the answers about A's with.
api "$b_admin" GET /api/v1/sign/requests/req_0123456789ab0123456789abcdef01234567
cp "$tmp/resp" "$tmp/none-request"
api "$b_admin" DELETE /api/v1/keys/999999
cp "$tmp/resp" "$tmp/none-key"
api "$b_admin" GET /api/v1/profiles/no-such-profile
cp "$tmp/resp" "$tmp/none-profile"

logsize() { # KEY: the size of that key's org log (its checkpoint's second line)
    api "$1" GET /api/v1/log/checkpoint
    sed -n 2p "$tmp/resp"
}
a_size0=$(logsize "$a_admin")

# --- HTTP: B's credentials against A's objects -----------------------------------
for who in b_admin b_signer; do
    eval "k=\$$who"
    for rid in $a_rids; do
        api "$k" GET "/api/v1/sign/requests/$rid"
        if [ "$(cat "$tmp/status")" = 404 ] && cmp -s "$tmp/resp" "$tmp/none-request"; then
            ok "$who: GET A's request $rid -> 404, as for a missing id"
        else fail "$who: GET A's request $rid: $(cat "$tmp/status") $(head -c 200 "$tmp/resp")"; fi
    done
done
a_rid1=${a_rids# }
a_rid1=${a_rid1%% *}
api "$a_signer" GET "/api/v1/sign/requests/$a_rid1"
want 200 - "control: A's own signer reads that request"
api "$a_admin" GET "/api/v1/sign/requests/$b_rid"
want 404 not_found "A's admin: GET B's request"
api "$b_signer" GET "/api/v1/sign/requests/$b_rid"
want 200 - "control: B's signer reads B's request"

# Keys: the list, revocation by id.
api "$a_admin" GET /api/v1/keys
cp "$tmp/resp" "$tmp/a-keys.json"
api "$b_admin" GET /api/v1/keys
want 200 - "B's admin lists keys"
check_py "B's key list is exactly B's keys ($b_admin_id, $b_signer_id)" "$tmp/resp" \
    "assert sorted(k['id'] for k in d['keys']) == sorted([$b_admin_id, $b_signer_id]), d"
check_py "no id or name of A's keys in B's list" "$tmp/resp" \
    "a = json.load(open('$tmp/a-keys.json'))['keys']
assert not {k['id'] for k in a} & {k['id'] for k in d['keys']}
assert not {k['name'] for k in a} & {k['name'] for k in d['keys']}, d"
check_py "A's key list holds none of B's keys" "$tmp/a-keys.json" \
    "assert not {k['id'] for k in d['keys']} & {$b_admin_id, $b_signer_id}, d"
api "$b_signer" GET /api/v1/keys
want 403 forbidden "B's signer lists keys (role too low)"
for id in "$a_admin_id" "$a_signer_id" "$a_viewer_id"; do
    api "$b_admin" DELETE "/api/v1/keys/$id"
    if [ "$(cat "$tmp/status")" = 404 ] && cmp -s "$tmp/resp" "$tmp/none-key"; then
        ok "B's admin: revoke A's key $id -> 404, as for a missing id"
    else fail "B's admin: revoke A's key $id: $(cat "$tmp/status") $(head -c 200 "$tmp/resp")"; fi
done
api "$b_signer" DELETE "/api/v1/keys/$a_signer_id"
want 403 forbidden "B's signer: revoke A's key (role too low)"
api "$b_signer" DELETE /api/v1/keys/999999
want 403 forbidden "B's signer: revoke a missing key, the same answer"
check_eq "A's keys are all still active in the database" \
    "$(su -c "SELECT count(*) FROM api_keys WHERE org_id = $A AND revoked_at <> 0")" 0
api "$a_viewer" GET /api/v1/usage
want 200 - "A's viewer key still works"
api "$a_signer" GET "/api/v1/sign/requests/$a_rid1"
want 200 - "A's signer key still works"
api "$b_admin" GET "/api/v1/keys/$a_signer_id"
cp "$tmp/resp" "$tmp/get-a-key"
st1=$(cat "$tmp/status")
api "$b_admin" GET /api/v1/keys/999999
if [ "$st1" = "$(cat "$tmp/status")" ] && cmp -s "$tmp/resp" "$tmp/get-a-key"; then
    ok "GET /keys/{A's id} answers as for a missing id ($st1)"
else fail "GET /keys/{id}: A's $st1, missing $(cat "$tmp/status")"; fi

# Profiles: list, show, disable, create a name A uses, sign with A's names.
api "$b_admin" GET /api/v1/profiles
want 200 - "B's admin lists profiles"
check_py "B's profile list is B's 'team' only" "$tmp/resp" \
    "assert [p['name'] for p in d['profiles']] == ['team'], d"
check_py "B's 'team' has B's certificate, not A's" "$tmp/resp" \
    "assert d['profiles'][0]['certificate']['sha256'].lower().replace(':', '') == '$(cert_sha "$tmp/b-team")', d"
api "$b_admin" GET /api/v1/profiles/team
check_py "B's GET /profiles/team is B's" "$tmp/resp" \
    "assert d['certificate']['sha256'].lower().replace(':', '') == '$(cert_sha "$tmp/b-team")', d"
api "$a_admin" GET /api/v1/profiles/team
check_py "A's GET /profiles/team is A's" "$tmp/resp" \
    "assert d['certificate']['sha256'].lower().replace(':', '') == '$(cert_sha "$tmp/a-team")', d"
for p in default release; do
    api "$b_admin" GET "/api/v1/profiles/$p"
    if [ "$(cat "$tmp/status")" = 404 ] && cmp -s "$tmp/resp" "$tmp/none-profile"; then
        ok "B's admin: GET A's profile '$p' -> 404, as for a missing one"
    else fail "B's admin: GET A's profile $p: $(cat "$tmp/status") $(head -c 200 "$tmp/resp")"; fi
    api "$b_admin" POST "/api/v1/profiles/$p/disable"
    if [ "$(cat "$tmp/status")" = 404 ] && cmp -s "$tmp/resp" "$tmp/none-profile"; then
        ok "B's admin: disable A's profile '$p' -> 404, as for a missing one"
    else fail "B's admin: disable A's profile $p: $(cat "$tmp/status") $(head -c 200 "$tmp/resp")"; fi
    api "$a_admin" GET "/api/v1/profiles/$p"
    check_py "A's '$p' is still active" "$tmp/resp" "assert d['status'] == 'active', d"
    for who in b_admin b_signer; do
        eval "k=\$$who"
        sign "$k" "$p"
        want 404 unknown_profile "$who: sign with A's profile '$p'"
    done
done
for p in release no-such-profile; do
    api "$b_signer" GET "/api/v1/profiles/$p"
    want 403 forbidden "B's signer: GET profile '$p' (role too low, same for both)"
done
api "$b_signer" GET /api/v1/profiles
want 403 forbidden "B's signer: list profiles (role too low)"
profile_body "$tmp/pb2.json" release "$tmp/b-release"
api "$b_admin" POST /api/v1/profiles "$tmp/pb2.json"
want 201 - "B's admin creates 'release', a name A uses (no 409 to tell)"
api "$a_admin" GET /api/v1/profiles/release
check_py "A's 'release' keeps A's certificate" "$tmp/resp" \
    "assert d['certificate']['sha256'].lower().replace(':', '') == '$(cert_sha "$tmp/a-release")', d"
sign "$b_signer" release
want 200 - "B's signer signs with B's new 'release'"
check_py "with B's certificate" "$tmp/resp" \
    "import base64, hashlib; assert hashlib.sha256(base64.b64decode(d['certificateChain'][0])).hexdigest() == '$(cert_sha "$tmp/b-release")'"
api "$b_admin" POST /api/v1/profiles/team/disable
check_py "B disables its own 'team'" "$tmp/resp" "assert d['status'] == 'disabled', d"
api "$a_admin" GET /api/v1/profiles/team
check_py "A's 'team' stays active" "$tmp/resp" "assert d['status'] == 'active', d"
sign "$a_signer" team
want 200 - "A still signs with its 'team'"
team_rid=$(json_get "$tmp/resp" requestId)
sign "$b_signer" team
want 409 profile_disabled "B's 'team' is disabled for B"
a_rids="$a_rids $team_rid"

# Logs: B's checkpoint, entries and proofs are B's tree; A's entries stay A's.
a_size=$(logsize "$a_admin")
check_eq "A's log grew by exactly A's own entry (profile check and sign)" "$a_size" "$((a_size0 + 1))"
b_size=$(logsize "$b_admin")
check_grep "B's checkpoint names B's log" "/org/$B\$" "$tmp/resp"
cp "$tmp/resp" "$tmp/b-cp"
check_eq "B's signer reads the same checkpoint" "$(logsize "$b_signer")" "$b_size"
[ "$a_size" -gt "$b_size" ] || die "A's log ($a_size) should be longer than B's ($b_size)"
for who in b_admin b_signer; do
    eval "k=\$$who"
    api "$k" GET "/api/v1/log/entries?start=0&end=$a_size"
    cp "$tmp/resp" "$tmp/b-entries.json"
    check_py "$who: entries 0..$a_size are B's $b_size entries, each naming org B" "$tmp/resp" \
        "assert len(d['entries']) <= $b_size and all(e['entry']['orgId'] == $B for e in d['entries']), d"
    check_py "$who: no entry names one of A's requests" "$tmp/resp" \
        "assert not {e['entry'].get('requestId') for e in d['entries']} & set('$a_rids'.split()), d"
done
check_py "B's log has B's signed requests" "$tmp/b-entries.json" \
    "assert '$b_rid' in {e['entry'].get('requestId') for e in d['entries']}, d"
api "$a_admin" GET "/api/v1/log/entries?start=0&end=$a_size"
check_py "A's entries all name org A" "$tmp/resp" \
    "assert len(d['entries']) == $a_size and all(e['entry']['orgId'] == $A for e in d['entries']), d"
sv=$($PY -c "import json,sys; print([e['entry']['signatureValueSha256'] for e in json.load(open(sys.argv[1]))['entries'] if e['entry'].get('requestId') == '$team_rid'][0])" "$tmp/resp")
api "$a_admin" GET "/api/v1/log/entries?signature=$sv"
check_py "A finds its entry by signature value" "$tmp/resp" "assert len(d['entries']) == 1, d"
for who in b_admin b_signer; do
    eval "k=\$$who"
    api "$k" GET "/api/v1/log/entries?signature=$sv"
    check_py "$who: A's signature value finds nothing" "$tmp/resp" "assert d['entries'] == [], d"
    api "$k" GET "/api/v1/log/proof/inclusion?index=$((a_size - 1))&size=$a_size"
    want 400 invalid_value "$who: inclusion proof at A's size"
    api "$k" GET "/api/v1/log/proof/consistency?from=1&to=$a_size"
    want 400 invalid_value "$who: consistency proof to A's size"
done
api "$b_signer" GET "/api/v1/log/proof/inclusion?index=0"
check_py "B's inclusion proof is against B's root" "$tmp/resp" \
    "assert d['size'] == $b_size and d['rootHash'] == open('$tmp/b-cp').read().split('\n')[2], d"
api "$b_admin" GET /api/v1/usage
check_py "B's usage: B's 2 signatures, no A profile" "$tmp/resp" \
    "assert d['signatures'] == 2 and set(d['byProfile']) == {'team', 'release'}, d"
api "$a_signer" GET /api/v1/usage
check_py "A's usage: A's 16 signatures" "$tmp/resp" \
    "assert d['signatures'] == 16 and d['byProfile'] == {'default': 13, 'release': 1, 'team': 2}, d"
check_eq "the log key is the instance's, the same for B" \
    "$(api "$b_signer" GET /api/v1/log/public-key; cat "$tmp/resp")" \
    "$(api "$a_signer" GET /api/v1/log/public-key; cat "$tmp/resp")"

# --- SQL, as the server's role ---------------------------------------------------
tenant="users api_keys signing_keys profiles sign_requests azure_leases audit log_heads log_nodes log_checkpoints idempotency_keys"
updatable="users api_keys signing_keys profiles sign_requests azure_leases log_heads idempotency_keys"
# Fixtures no HTTP call makes: a user of B, leases of A and B (superuser, no RLS).
su -c "INSERT INTO users(org_id, email, role, created_at) VALUES ($B, 'b@example.com', 2, 0)" \
    -c "INSERT INTO azure_leases(org_id, app, node, created_at, lease_until) VALUES ($A, 'app', 'n1', 0, 0), ($B, 'app', 'n1', 0, 0)" \
    -c "INSERT INTO idempotency_keys(org_id, credential, key, body_hash, request_id, sync, created_at) VALUES ($A, 'apikey:0', 'k', sha256('x'::bytea), 'req_x', 0, 0), ($B, 'apikey:0', 'k', sha256('x'::bytea), 'req_x', 0, 0)"
for t in $tenant; do
    n=$(su -c "SELECT count(*) FILTER (WHERE org_id = $A) || ' ' || count(*) FILTER (WHERE org_id = $B) FROM $t")
    eval "n_$t=\${n%% *}"
    case $n in 0\ * | *\ 0) fail "superuser: $t should hold rows of A and B: $n" ;; *) ok "superuser: $t holds rows of A and B ($n)" ;; esac
done
# B's rows as the superuser sees them, to compare after the attempts on them.
b_rows() {
    for _t in $tenant; do su -c "SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM $_t t WHERE org_id = $B"; done
}
b_rows0=$(b_rows)

# The cases run in batches: one psql session as the server's role, one
# transaction (the org set as qwickd sets it, set_config(..., true)), each
# case in a savepoint rolled back. A case prints one line: its value (a
# query of one column `r`), "UPDATE n" / "INSERT n" (the command tag's row
# count), or "ERROR: message".
# sql_case DESC WANT KIND SQL (KIND: value, UPDATE, INSERT, DELETE)
sql_case() {
    printf '%s\n' "$1" >>"$tmp/batch.desc"
    printf '%s\n' "$2" >>"$tmp/batch.want"
    case $3 in
    value) printf 'SAVEPOINT c;\n\\unset r\n%s \\gset\n' "$4" ;;
    *) printf 'SAVEPOINT c;\n%s;\n' "$4" ;;
    esac >>"$tmp/batch.sql"
    case $3 in value) _echo='\echo :r' ;; *) _echo="\\echo $3 :ROW_COUNT" ;; esac
    printf '\\if :ERROR\n\\echo ERROR: :LAST_ERROR_MESSAGE\n\\else\n%s\n\\endif\nROLLBACK TO SAVEPOINT c;\n' \
        "$_echo" >>"$tmp/batch.sql"
}
# sql_batch PRELUDE: runs the queued cases after PRELUDE (SQL, in the transaction).
sql_batch() {
    { printf '%s\n' "$1"; cat "$tmp/batch.sql"; echo 'ROLLBACK;'; } >"$tmp/batch.full"
    psql "$srv_url" -X -q -At -f "$tmp/batch.full" >"$tmp/batch.out" 2>"$tmp/batch.err" || true
    _i=0
    while IFS= read -r _d; do
        _i=$((_i + 1))
        check_eq "$_d" "$(sed -n "${_i}p" "$tmp/batch.out")" "$(sed -n "${_i}p" "$tmp/batch.want")"
    done <"$tmp/batch.desc"
    rm -f "$tmp/batch.sql" "$tmp/batch.desc" "$tmp/batch.want"
}
with_org() { printf '%s\n' "BEGIN; SELECT set_config('qwick.org', '$1', true) \\g /dev/null"; }
denied() { echo "ERROR: permission denied for table $1"; }
policy() { echo "ERROR: new row violates row-level security policy for table \"$1\""; }

# No org: every tenant table is empty, not an error; orgs too; apikey_orgs is not granted.
for prelude in "BEGIN;" "SET qwick.org = ''; BEGIN;"; do
    case $prelude in SET*) how="qwick.org = ''" ;; *) how="no org" ;; esac
    for t in $tenant orgs; do
        sql_case "$how: $t reads empty" 0 value "SELECT count(*) AS r FROM $t"
    done
    sql_case "$how: apikey_orgs is not granted" "$(denied apikey_orgs)" value "SELECT count(*) AS r FROM apikey_orgs"
    sql_case "$how: qwick_current_org() is NULL" t value "SELECT qwick_current_org() IS NULL AS r"
    sql_batch "$prelude"
done

# Org A: exactly A's rows; B's rows neither updated, moved to, inserted nor deleted.
for t in $tenant; do
    eval "n=\$n_$t"
    sql_case "org A set: $t reads A's $n rows, none other" "$n $n" value \
        "SELECT count(*) || ' ' || count(*) FILTER (WHERE org_id = $A) AS r FROM $t"
done
sql_case "org A set: orgs shows A's row only" "$A default" value "SELECT string_agg(id || ' ' || name, ',') AS r FROM orgs"
sql_case "org A set: apikey_orgs is not granted" "$(denied apikey_orgs)" value "SELECT count(*) AS r FROM apikey_orgs"
sql_case "org A set: INSERT into orgs is not granted" "$(denied orgs)" INSERT "INSERT INTO orgs(name, created_at) VALUES ('evil', 0)"
sql_case "org A set: UPDATE of orgs is not granted" "$(denied orgs)" UPDATE "UPDATE orgs SET name = 'evil' WHERE id = $B"
# A well-formed row of ORG for each tenant table.
row() { # TABLE ORG
    case $1 in
    users) printf '%s\n' "INSERT INTO users(org_id, email, role, created_at) VALUES ($2, 'iso@example.com', 0, 0)" ;;
    api_keys) printf '%s\n' "INSERT INTO api_keys(org_id, name, prefix, hash, role, created_at) VALUES ($2, 'iso', 'qk_iso', sha256('iso-$2'::bytea), 0, 0)" ;;
    signing_keys) printf '%s\n' "INSERT INTO signing_keys(org_id, kind, sealed, created_at) VALUES ($2, 'local', '\\x00', 0)" ;;
    profiles) printf '%s\n' "INSERT INTO profiles(org_id, name, backend, key_id, chain_der, created_at) VALUES ($2, 'iso', 'local', $(su -c "SELECT min(id) FROM signing_keys WHERE org_id = $2"), '\\x00', 0)" ;;
    sign_requests) printf '%s\n' "INSERT INTO sign_requests(id, org_id, status, algorithm, format, profile, digest, created_at) VALUES ('req_iso_$2', $2, 1, 'sha256', 'cms', 'default', '\\x00', 0)" ;;
    azure_leases) printf '%s\n' "INSERT INTO azure_leases(org_id, app, node, created_at, lease_until) VALUES ($2, 'iso', 'iso', 0, 0)" ;;
    audit) printf '%s\n' "INSERT INTO audit(org_id, seq, version, ts, outcome) VALUES ($2, 999999, 2, 0, 0)" ;;
    log_heads) printf '%s\n' "INSERT INTO log_heads(org_id, size) VALUES ($2, 0)" ;;
    log_nodes) printf '%s\n' "INSERT INTO log_nodes(org_id, pos, hash) VALUES ($2, 999999, sha256('x'::bytea))" ;;
    log_checkpoints) printf '%s\n' "INSERT INTO log_checkpoints(org_id, size, root, note, created_at) VALUES ($2, 999999, sha256('x'::bytea), 'n', 0)" ;;
    idempotency_keys) printf '%s\n' "INSERT INTO idempotency_keys(org_id, credential, key, body_hash, request_id, sync, created_at) VALUES ($2, 'apikey:iso', 'iso', sha256('x'::bytea), 'req_iso', 0, 0)" ;;
    esac
}
for t in $tenant; do
    sql_case "org A set: INSERT of a B row into $t is refused by the policy" "$(policy "$t")" INSERT "$(row "$t" "$B")"
    sql_case "org A set: DELETE on $t is not granted" "$(denied "$t")" DELETE "DELETE FROM $t WHERE org_id = $B"
    case " $updatable " in
    *" $t "*)
        eval "n=\$n_$t"
        sql_case "org A set: UPDATE of B's $t rows touches none" "UPDATE 0" UPDATE \
            "UPDATE $t SET org_id = org_id WHERE org_id = $B"
        sql_case "org A set: UPDATE of every $t row touches A's $n only" "UPDATE $n" UPDATE \
            "UPDATE $t SET org_id = org_id"
        sql_case "org A set: moving A's $t rows to B is refused by the policy" "$(policy "$t")" UPDATE \
            "UPDATE $t SET org_id = $B WHERE org_id = $A"
        ;;
    *)
        sql_case "org A set: UPDATE on $t is not granted (append-only)" "$(denied "$t")" UPDATE \
            "UPDATE $t SET org_id = org_id WHERE org_id = $B"
        ;;
    esac
done
sql_case "org A set: TRUNCATE audit is not granted" "$(denied audit)" DELETE "TRUNCATE audit"
sql_batch "$(with_org "$A")"

# The refused rows are well-formed: in their own org they go in (rolled
# back), so the policy refused them, not a constraint. (log_heads: org C,
# which has no head yet.)
for t in $tenant; do
    [ "$t" != log_heads ] || continue
    sql_case "control: that $t row in A, with A set, is accepted" "INSERT 1" INSERT "$(row "$t" "$A")"
done
sql_batch "$(with_org "$A")"
sql_case "control: that log_heads row in C, with C set, is accepted" "INSERT 1" INSERT "$(row log_heads "$C")"
sql_case "org C set: orgs shows C's row only" "$C gamma" value "SELECT string_agg(id || ' ' || name, ',') AS r FROM orgs"
sql_batch "$(with_org "$C")"
# With no org, no row of any org goes in.
for t in $tenant; do
    sql_case "no org: INSERT of an A row into $t is refused by the policy" "$(policy "$t")" INSERT "$(row "$t" "$A")"
done
sql_batch "BEGIN;"
check_eq "superuser: B's rows are all as they were" "$(b_rows)" "$b_rows0"

# The pooled-connection property: the org dies with its transaction.
n=$n_api_keys
out=$(psql "$srv_url" -X -q -At -v ON_ERROR_STOP=1 \
    -c "BEGIN" -c "SELECT set_config('qwick.org', '$A', true)" -c "SELECT count(*) FROM api_keys" -c "COMMIT" \
    -c "SELECT coalesce(current_setting('qwick.org', true), '<null>') IN ('', '<null>')" \
    -c "SELECT count(*) FROM api_keys" -c "SELECT count(*) FROM orgs" 2>&1 | tr '\n' ' ')
check_eq "after COMMIT, the next transaction on the session has no org and sees nothing" "$out" "$A $n t 0 0 "
out=$(psql "$srv_url" -X -q -At \
    -c "BEGIN" -c "SELECT set_config('qwick.org', '$A', true)" -c "SELECT count(*) FROM audit" -c "ROLLBACK" \
    -c "SELECT count(*) FROM audit" 2>&1 | tr '\n' ' ')
check_eq "after ROLLBACK too" "$out" "$A $n_audit 0 "
out=$(psql "$srv_url" -X -q -At \
    -c "BEGIN" -c "SELECT set_config('qwick.org', '$A', true)" -c "SELECT 1/0" -c "ROLLBACK" \
    -c "SELECT count(*) FROM profiles" 2>/dev/null | tr '\n' ' ')
check_eq "after a failed transaction too" "$out" "$A 0 "

# The role: no superuser, no BYPASSRLS, owns nothing, no member of the owner.
check_eq "role attributes: not superuser, no BYPASSRLS/CREATEROLE/CREATEDB, NOINHERIT" \
    "$(su -c "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit FROM pg_roles WHERE rolname = '$role'")" "f|f|f|f|f"
check_eq "the role owns no table" "$(su -c "SELECT count(*) FROM pg_tables WHERE tableowner = '$role'")" 0
check_eq "the role owns no relation, sequence or function" \
    "$(su -c "SELECT (SELECT count(*) FROM pg_class WHERE relowner = '$role'::regrole) + (SELECT count(*) FROM pg_proc WHERE proowner = '$role'::regrole)")" 0
check_eq "the role is a member of no role (pg_auth_members)" \
    "$(su -c "SELECT count(*) FROM pg_auth_members WHERE member = '$role'::regrole")" 0
check_eq "the role is no member of the owner $owner" "$(su -c "SELECT pg_has_role('$role', '$owner', 'MEMBER')")" f
check_eq "no DELETE or TRUNCATE anywhere" \
    "$(su -c "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = '$role' AND privilege_type IN ('DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER')")" 0
check_eq "log tables: SELECT and INSERT only" \
    "$(su -c "SELECT string_agg(DISTINCT privilege_type, ',') FROM information_schema.role_table_grants WHERE grantee = '$role' AND table_name IN ('audit', 'log_nodes', 'log_checkpoints')")" "INSERT,SELECT"
check_eq "every tenant table has ENABLE and FORCE RLS" \
    "$(su -c "SELECT count(*) FROM pg_class WHERE relname IN ('$(echo "$tenant" | sed "s/ /','/g")') AND relrowsecurity AND relforcerowsecurity")" 11
sql_case "the role cannot turn RLS off" "ERROR: must be owner of table audit" ALTER \
    "ALTER TABLE audit DISABLE ROW LEVEL SECURITY"
sql_case "the role cannot lift FORCE" "ERROR: must be owner of table api_keys" ALTER \
    "ALTER TABLE api_keys NO FORCE ROW LEVEL SECURITY"
sql_case "the role cannot drop a policy" "ERROR: must be owner of relation profiles" DROP \
    "DROP POLICY org_isolation ON profiles"
sql_case "the role cannot become the owner" "ERROR: permission denied to set role \"$owner\"" SET "SET ROLE $owner"
if [ "$(su -c "SHOW server_version_num")" -ge 150000 ]; then
    sql_case "the role cannot create objects in public (PostgreSQL 15+)" \
        "ERROR: permission denied for schema public" CREATE "CREATE TABLE public.evil (x int)"
fi

# The SECURITY DEFINER lookups answer only what they are asked.
a_hash=$(su -c "SELECT encode(hash, 'hex') FROM api_keys WHERE id = $a_signer_id")
sql_case "qwick_apikey_lookup(a random hash) returns no row" 0 value \
    "SELECT count(*) AS r FROM qwick_apikey_lookup(decode('$(openssl rand -hex 32)', 'hex'))"
sql_case "control: qwick_apikey_lookup(A's key hash) is A's key" "$a_signer_id $A" value \
    "SELECT id || ' ' || org_id AS r FROM qwick_apikey_lookup(decode('$a_hash', 'hex'))"
sql_case "qwick_key_profile(a random hash, 'default') returns no row" 0 value \
    "SELECT count(*) AS r FROM qwick_key_profile(decode('$(openssl rand -hex 32)', 'hex'), 'default')"
sql_case "control: qwick_key_profile(A's key hash, 'default') is A's profile" "$A" value \
    "SELECT org_id AS r FROM qwick_key_profile(decode('$a_hash', 'hex'), 'default')"
sql_case "qwick_key_profile(A's key hash, \"' OR '1'='1\") returns no row" 0 value \
    "SELECT count(*) AS r FROM qwick_key_profile(decode('$a_hash', 'hex'), \$\$' OR '1'='1\$\$)"
sql_case "qwick_apikey_lookup(a prefix of A's hash) returns no row" 0 value \
    "SELECT count(*) AS r FROM qwick_apikey_lookup(decode('$(printf %.32s "$a_hash")', 'hex'))"
sql_case "qwick_org_find('nonexistent') is NULL" t value "SELECT qwick_org_find('nonexistent') IS NULL AS r"
sql_case "qwick_org_find(\"' OR '1'='1\") is NULL" t value "SELECT qwick_org_find(\$\$' OR '1'='1\$\$) IS NULL AS r"
sql_case "qwick_org_find(\"default' --\") is NULL" t value "SELECT qwick_org_find(\$\$default' --\$\$) IS NULL AS r"
sql_case "control: qwick_org_find('beta') is B" "$B" value "SELECT qwick_org_find('beta') AS r"
sql_case "qwick_org_list() lists the 3 orgs (for background jobs, by design)" 3 value \
    "SELECT count(*) AS r FROM qwick_org_list()"
sql_batch "BEGIN;"
check_eq "qwick_org_list() returns (id, name) only" \
    "$(su -c "SELECT array_to_string(proargnames, ',') FROM pg_proc WHERE proname = 'qwick_org_list'")" "id,name"
check_eq "the trigger function is not the role's to run" \
    "$(su -c "SELECT has_function_privilege('$role', 'qwick_apikey_index()', 'EXECUTE')")" f
check_eq "every SECURITY DEFINER function pins search_path" \
    "$(su -c "SELECT count(*) || ' ' || count(*) FILTER (WHERE array_to_string(proconfig, ',') = 'search_path=public, pg_temp') FROM pg_proc WHERE prosecdef AND pronamespace = 'public'::regnamespace")" "7 7"

# --- injection through every string the API and the commands take ----------------
mkdir "$tmp/p"
$PY - "$tmp/p" <<'EOF'
import sys
payloads = [
    "' OR '1'='1",
    "'; DROP TABLE audit; --",
    "default' --",
    "été 😀 名前 \u202eevil",
    "$$; DROP TABLE api_keys; $$",
    "\\x00\\'\"; SELECT pg_sleep(10); --",
    "%' OR name LIKE '%",
    "A" * 64,
]
for i, p in enumerate(payloads):
    open(f"{sys.argv[1]}/{i}", "w", encoding="utf-8").write(p)
open(f"{sys.argv[1]}/long", "w").write("B" * 5000)
EOF
np=8
i=0
while [ $i -lt $np ]; do
    pf=$tmp/p/$i
    # key names: stored and read back verbatim
    body "$tmp/k.json" "{'name': p, 'role': 'viewer'}" "$pf"
    api "$a_admin" POST /api/v1/keys "$tmp/k.json"
    kid=$(json_get "$tmp/resp" id 2>/dev/null || echo none)
    api "$a_admin" GET /api/v1/keys
    check_py "key name #$i stored and listed verbatim (key $kid)" "$tmp/resp" \
        "p = open('$pf', encoding='utf-8').read()
assert [k['name'] for k in d['keys'] if k['id'] == int('$kid')] == [p], d"
    # metadata: stored and read back verbatim
    body "$tmp/s.json" "{'digest': d32, 'algorithm': 'sha256', 'format': 'cms', 'timestamp': False, 'metadata': {'filename': p, 'description': p[::-1], 'url': 'https://x.test/?q=' + p}}" "$pf"
    api "$a_signer" POST /api/v1/sign/digest "$tmp/s.json"
    rid=$(json_get "$tmp/resp" requestId 2>/dev/null || echo none)
    api "$a_signer" GET "/api/v1/sign/requests/$rid"
    check_py "metadata #$i (filename, description, url) read back verbatim" "$tmp/resp" \
        "p = open('$pf', encoding='utf-8').read()
assert d['metadata'] == {'filename': p, 'description': p[::-1], 'url': 'https://x.test/?q=' + p}, d"
    q=$(quote "$pf")
    # names and ids in paths and bodies: not found, or refused
    body "$tmp/s.json" "{'digest': d32, 'algorithm': 'sha256', 'format': 'cms', 'timestamp': False, 'profile': p}" "$pf"
    api "$a_signer" POST /api/v1/sign/digest "$tmp/s.json"
    want 404 unknown_profile "sign with profile #$i"
    api "$a_signer" GET "/api/v1/sign/requests/$q"
    want 404 not_found "GET request id #$i"
    api "$a_admin" GET "/api/v1/profiles/$q"
    want 404 not_found "GET profile #$i"
    api "$a_admin" POST "/api/v1/profiles/$q/disable"
    want 404 not_found "disable profile #$i"
    api "$a_admin" DELETE "/api/v1/keys/$q"
    want 404 not_found "revoke key id #$i"
    body "$tmp/pr.json" "{'name': p, 'config': {'backend': 'local', 'keyPem': 'x', 'chainPem': 'y'}}" "$pf"
    api "$a_admin" POST /api/v1/profiles "$tmp/pr.json"
    case $i in
    7) want 400 invalid_config "create profile named #$i (a valid name, a bad config)" ;;
    *) want 400 invalid_value "create profile named #$i" ;;
    esac
    api "$a_signer" GET "/api/v1/log/entries?start=$q"
    want 400 invalid_value "log entries start=#$i"
    api "$a_signer" GET "/api/v1/usage?since=$q"
    want 400 invalid_value "usage since=#$i"
    i=$((i + 1))
done
# Payloads in the Authorization header.
for h in "' OR '1'='1" "qk_'; DROP TABLE audit; --" "qk_$(head -c 43 /dev/zero | tr '\0' "'")" \
    "$(printf 'qk_\303\251t\303\251\360\237\230\200')" "qk_$(cat "$tmp/p/long")"; do
    api "$h" GET /api/v1/keys
    want 401 unknown_api_key "Authorization: Bearer $(printf %s "$h" | cut -c1-30)"
done
curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: ' OR '1'='1" -o "$tmp/resp" -w '%{http_code}' \
    "$QWICKD_URL/api/v1/keys" >"$tmp/status" 2>/dev/null || true
want 401 missing_api_key "Authorization: a payload as the scheme"
curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer qk_$(head -c 20000 /dev/zero | tr '\0' A)" \
    -o "$tmp/resp" -w '%{http_code}' "$QWICKD_URL/api/v1/keys" >"$tmp/status" 2>/dev/null || true
want_4xx "Authorization: a 20 KB key"
# What JSON cannot carry, and what is too long.
printf '{"name":"a\\u0000b","role":"viewer"}' >"$tmp/k.json"
api "$a_admin" POST /api/v1/keys "$tmp/k.json"
want 400 invalid_json "key name with \\u0000"
printf '{"name":"a\377b","role":"viewer"}' >"$tmp/k.json"
api "$a_admin" POST /api/v1/keys "$tmp/k.json"
want 400 invalid_json "key name with a byte that is not UTF-8"
body "$tmp/k.json" "{'name': p, 'role': 'viewer'}" "$tmp/p/long"
api "$a_admin" POST /api/v1/keys "$tmp/k.json"
want 400 field_too_long "key name of 5000 characters"
body "$tmp/k.json" "{'name': 'x', 'role': p}" "$tmp/p/0"
api "$a_admin" POST /api/v1/keys "$tmp/k.json"
want 400 invalid_value "key role \"' OR '1'='1\""
printf '{"digest":"%s","algorithm":"sha256","metadata":{"filename":"a\\u0000.exe"}}' "$(openssl rand -base64 32)" >"$tmp/s.json"
api "$a_signer" POST /api/v1/sign/digest "$tmp/s.json"
want 400 invalid_json "filename with \\u0000"
for f in filename description url; do
    body "$tmp/s.json" "{'digest': d32, 'algorithm': 'sha256', 'metadata': {'$f': p}}" "$tmp/p/long"
    api "$a_signer" POST /api/v1/sign/digest "$tmp/s.json"
    want 400 field_too_long "$f of 5000 characters"
done
body "$tmp/s.json" "{'digest': d32, 'algorithm': 'sha256', 'profile': p}" "$tmp/p/long"
api "$a_signer" POST /api/v1/sign/digest "$tmp/s.json"
want 400 field_too_long "profile of 5000 characters"
api "$a_signer" GET "/api/v1/sign/requests/req_$(cat "$tmp/p/long")"
want_4xx "request id of 5000 characters"
api "$a_admin" GET "/api/v1/profiles/$(cat "$tmp/p/long")"
want_4xx "profile name of 5000 characters in the path"
# %00 stays undecoded (http_unescape): a decoded NUL would cut the path the
# router matches, so /keys/5%00x would act on key 5. It is a name like any
# other, matching nothing, in one's own org as across orgs.
api "$a_signer" GET /api/v1/sign/requests/x%00y
want 404 not_found "request id with %00"
api "$a_admin" DELETE "/api/v1/keys/$a_viewer_id%00x"
want 404 not_found "A's admin: revoke its own key id + %00x"
check_eq "the key named before %00 is still active" \
    "$(su -c "SELECT revoked_at FROM api_keys WHERE id = $a_viewer_id")" 0
api "$a_admin" GET /api/v1/profiles/default%00x
want 404 not_found "A's admin: GET its own profile 'default' + %00x"
api "$b_admin" DELETE "/api/v1/keys/$a_signer_id%00"
want 404 not_found "B's admin: revoke A's key id + %00"
api "$b_admin" GET /api/v1/profiles/default%00
want 404 not_found "B's admin: GET A's profile 'default' + %00"
api "$b_signer" GET "/api/v1/sign/requests/$a_rid1%00"
want 404 not_found "B's signer: GET A's request id + %00"
api "$a_signer" GET "/api/v1/log/entries?signature=$(quote "$tmp/p/0")"
want 400 invalid_value "log entries signature=' OR '1'='1"
api "$a_signer" GET "/api/v1/log/proof/inclusion?index=0&size=1%20OR%201=1"
want 400 invalid_value "inclusion proof size=1 OR 1=1"
# Org names and ids in the admin commands.
for i in 0 1 2 3 4 5; do
    check_status 2 "org create with payload #$i is refused" "$QWICKD" org create --data "$data" "$(cat "$tmp/p/$i")"
    check_status 1 "apikey create --org payload #$i: no such org" \
        "$QWICKD" apikey create --data "$data" --org "$(cat "$tmp/p/$i")" --role admin --name x
done
check_status 1 "profile list --org \"beta' OR '1'='1\": no such org" \
    "$QWICKD" profile list --data "$data" --org "beta' OR '1'='1"
check_status 1 "profile show \"default' --\": no such profile" "$QWICKD" profile show --data "$data" "default' --"
check_status 2 "apikey revoke '1 OR 1=1' is refused" "$QWICKD" apikey revoke --data "$data" "1 OR 1=1"
check_status 1 "apikey revoke of B's key from org A: no such key" \
    "$QWICKD" apikey revoke --data "$data" --org default "$b_signer_id"
check_status 0 "org list" "$QWICKD" org list --data "$data" --json
check_py "still exactly default, beta, gamma" "$tmp/out" \
    "assert [o['name'] for o in d] == ['default', 'beta', 'gamma'], d"

# --- afterwards: every table there, no 5xx, every log intact ---------------------
check_eq "every table is still there ($tables0)" "$(su -c "SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")" "$tables0"
check_eq "and every row of audit: none was removed" "$(su -c "SELECT bool_and(n = top AND low = 1) FROM (SELECT count(*) n, min(seq) low, max(seq) top FROM audit GROUP BY org_id) s")" t
api "$b_signer" GET "/api/v1/sign/requests/$b_rid"
want 200 - "B still reads its request"
stop_qwickd
check_eq "qwickd stops cleanly" "$stopped" 0
if grep -q 'status=5[0-9][0-9]' "$tmp/server.log"; then
    fail "a 5xx was answered: $(grep 'status=5[0-9][0-9]' "$tmp/server.log" | head -n 3)"
else ok "no request was answered with a 5xx"; fi
check "qwickd audit verify: every log intact" "$QWICKD" audit verify --data "$data"
t_done
