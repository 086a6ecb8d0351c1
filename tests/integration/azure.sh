#!/bin/sh
# The Azure Trusted Signing backend end to end, against tests/emulators/azure_emu.py
# (Entra ID, Microsoft Graph, Trusted Signing over HTTPS on 127.0.0.1):
#  - PE (sha256, sha384) and detached CMS signed through an Azure profile by the
#    CLI, accepted by osslsigncode / openssl cms with the emulator's root and the
#    TSA root; --no-timestamp refused before anything is signed;
#  - every fault class: 429, 500/503, a bare 403, Failed operations, slow
#    operations, results nested under "result", shuffled chains, odd status
#    case, tokens expiring early, Graph and token-endpoint 429s, a new secret
#    refused (AADSTS7000215) for seconds: survived, or reported clearly;
#  - the secret lifecycle: never more than maxSecrets alive (the emulator
#    records the maximum), none alive after a clean shutdown, orphans of a
#    `kill -9` reaped by the restarted server, a non-qwick credential never
#    touched, the rotated Graph refresh token persisted across restarts, two
#    nodes on one store sharing maxSecrets 1, every create/use/revoke audited;
#  - profile administration: create/list/show/disable, secrets never shown.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init azure
need osslsigncode openssl curl x86_64-w64-mingw32-gcc
if store_is_pg; then need psql pg_dump; else need sqlite3; fi
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import cryptography' 2>/dev/null ||
    die "Debian's python3-cryptography is missing (make setup installs it)"

start_azure_emu "$tmp/emu" --existing-credential ci-pipeline --op-delay-ms 200 --retry-after 0
emu_root="$tmp/emu/codesign-root.pem"
state="$tmp/emu-state.json"

data="$tmp/data"
qwickd_init "$data"
tsaroot=$QWICKD_TSA_ROOT_CA
# A short reaper interval, so a crash is cleaned up within seconds here.
python3 - "$data/qwickd.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["azure"] = {"reaper_interval_seconds": 2, "op_timeout_seconds": 60}
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY

# --- profiles -------------------------------------------------------------
azure_profile_json "$tmp/az.json"
check "profile create (azure)" "$QWICKD" profile create --data "$data" --name az --config "$tmp/az.json"
check_status 0 "profile show --json" "$QWICKD" profile show --data "$data" --json az
check_py "show: backend, timestampRequired, no secret" "$tmp/out" '
assert d["backend"] == "azure" and d["status"] == "active" and d["timestampRequired"] is True
a = d["config"]["azure"]
assert a["graph"] == {"clientId": "graph-cli", "grant": "refresh_token"}, a["graph"]
assert "caPem" in a and "caFile" not in a
assert "rt-initial" not in json.dumps(d)'
if store_is_pg; then
    pg_dump -d "${PG_SUPER_URL%/*}/$(pg_store_db)" >"$tmp/dump.sql" || die "pg_dump"
    check_fails "refresh token not stored in clear" grep -q rt-initial "$tmp/dump.sql"
else
    check_fails "refresh token not stored in clear" grep -q rt-initial "$data/qwick.db"
fi
sed 's/"https:\/\/127/"http:\/\/127/' "$tmp/az.json" >"$tmp/bad.json"
check_status 1 "http endpoint refused" "$QWICKD" profile create --data "$data" --name bad --config "$tmp/bad.json"
check_grep "error names the key" 'azure.endpoint must be an https' "$tmp/err"
sed 's/"account"/"acount"/' "$tmp/az.json" >"$tmp/bad.json"
check_status 1 "unknown key refused" "$QWICKD" profile create --data "$data" --name bad --config "$tmp/bad.json"
check_grep "error names the unknown key" "unknown key 'acount'" "$tmp/err"
check_status 0 "profile list" "$QWICKD" profile list --data "$data"
check_grep "list shows az" '^az  *azure  *active' "$tmp/out"

start_qwickd "$data"
qwick_env
emu_faults '{"reset": true}'
curl -sS --fail --cacert "$AZ_DIR/tls-ca.pem" -X POST "$AZ_URL/_emu/reset-stats" >/dev/null

# --- signing ---------------------------------------------------------------
build_pe "$tmp/app.exe"
sign_ok() { # DESC FILE [qwick sign ARGS...]
    _d=$1
    _f=$2
    shift 2
    check_status 0 "$_d: qwick sign" "$QWICK" sign --profile az "$@" "$_f"
    if ossl_verify "$emu_root" "$tsaroot" "$_f" 1 yes >/dev/null; then ok "$_d: osslsigncode verify"; else
        fail "$_d: osslsigncode verify"
        _show "$tmp/ossl.out"
    fi
}
cp "$tmp/app.exe" "$tmp/a.exe"
sign_ok "sha256 PE" "$tmp/a.exe"
check "leaf is the emulator's 72-hour certificate" signing_leaf "$tmp/a.exe" "$tmp/leaf.pem"
check_grep "leaf subject" "Qwick Emulator Signing" "$tmp/leaf.d/certs.pem"
cp "$tmp/app.exe" "$tmp/b.exe"
sign_ok "sha384 PE" "$tmp/b.exe" --alg sha384
cp "$tmp/app.exe" "$tmp/c.bin"
check_status 0 "detached CMS" "$QWICK" sign --profile az --detached "$tmp/c.bin"
check "openssl cms -verify (emulator root)" openssl cms -verify -binary -inform DER \
    -in "$tmp/c.bin.p7s" -content "$tmp/c.bin" -CAfile "$emu_root" -purpose any -out /dev/null
cp "$tmp/app.exe" "$tmp/n.exe"
check_status 1 "--no-timestamp refused for an Azure profile" "$QWICK" sign --profile az --no-timestamp "$tmp/n.exe"
check_grep "says why" "must be timestamped" "$tmp/err"
check "file untouched" cmp "$tmp/app.exe" "$tmp/n.exe"

# --- faults the signer survives ---------------------------------------------
n=0
survive() { # DESC FAULTS-JSON [qwick sign ARGS...]
    _d=$1
    emu_faults "$2"
    shift 2
    n=$((n + 1))
    cp "$tmp/app.exe" "$tmp/f$n.exe"
    sign_ok "$_d" "$tmp/f$n.exe" "$@"
    emu_faults '{"reset": true}'
}
survive "429 with Retry-After" '{"sign_429": 2, "retry_after": 0}'
survive "503 then 500" '{"sign_503": 1, "sign_500": 1, "retry_after": 0}'
survive "nested result, shuffled chain, lower-case status" \
    '{"nested_result": true, "shuffle_chain": true, "status_case": "lower"}'
survive "spaced status" '{"status_case": "spaced"}'
survive "upper-case status" '{"status_case": "upper"}'
survive "slow operation (2.5 s)" '{"op_delay_ms": 2500}'
emu_faults '{"token_lifetime_seconds": 1}'
sleep 2
survive "token expired early: renewed once" '{"token_lifetime_seconds": 1}'
emu_state "$state"
check_py "the expired token was refused, then renewed" "$state" 'assert d["counters"]["rejected_401"] >= 1'

# --- faults reported clearly -------------------------------------------------
refused() { # DESC FAULTS-JSON PATTERN
    emu_faults "$2"
    n=$((n + 1))
    cp "$tmp/app.exe" "$tmp/f$n.exe"
    check_status 1 "$1: qwick sign fails" "$QWICK" sign --profile az "$tmp/f$n.exe"
    check_grep "$1: clear message" "$3" "$tmp/err"
    check "$1: file untouched" cmp "$tmp/app.exe" "$tmp/f$n.exe"
    emu_faults '{"reset": true}'
}
refused "Failed operation" '{"op_fail": 1}' "SigningFailed"
refused "bare 403" '{"bare_403": 1}' "HTTP 403"
refused "429 beyond the retry budget" '{"sign_429": 1000, "retry_after": 0}' "429"
# Azure's {"errorDetail":{…}} shape: an account the emulator does not know.
sed 's/"account": "acct"/"account": "nope"/' "$tmp/az.json" >"$tmp/nope.json"
check "profile for an unknown account" "$QWICKD" profile create --data "$data" --name nope --config "$tmp/nope.json"
cp "$tmp/app.exe" "$tmp/nope.exe"
check_status 1 "unknown account: qwick sign fails" "$QWICK" sign --profile nope "$tmp/nope.exe"
check_grep "unknown account: Azure's code and message" "HTTP 404 NotFound" "$tmp/err"

# --- /api/v1/profiles -------------------------------------------------------------
api() { # METHOD PATH [BODY-FILE] [KEY]: body in $tmp/api.json, status printed
    curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer ${4:-$QWICKD_API_KEY}" \
        -H 'Content-Type: application/json' -X "$1" ${3:+--data-binary "@$3"} \
        -o "$tmp/api.json" -w '%{http_code}' "$QWICKD_URL$2"
}
make_cert "$tmp/rel" "Release Signing"
python3 - "$tmp" "$tmp/az.json" <<'PY'
import json, sys
t = sys.argv[1]
local = {"backend": "local", "keyPem": open(t + "/rel.key").read(), "chainPem": open(t + "/rel.pem").read()}
json.dump({"name": "rel", "config": local}, open(t + "/p-local.json", "w"))
az = json.load(open(sys.argv[2]))
az["azure"]["caPem"] = open(az["azure"].pop("caFile")).read()
json.dump({"name": "az2", "config": az}, open(t + "/p-az.json", "w"))
az["azure"]["caFile"] = "/etc/passwd"
json.dump({"name": "az3", "config": az}, open(t + "/p-file.json", "w"))
PY
check_eq "API: create a local profile from PEM contents" "$(api POST /api/v1/profiles "$tmp/p-local.json")" 201
check_py "API: the reply has the certificate, not the key" "$tmp/api.json" '
assert d["name"] == "rel" and d["backend"] == "local" and d["timestampRequired"] is False
assert "Release Signing" in d["certificate"]["subject"]
assert "PRIVATE" not in json.dumps(d)'
check_eq "API: duplicate name" "$(api POST /api/v1/profiles "$tmp/p-local.json")" 409
check_eq "API: create an Azure profile (inline caPem)" "$(api POST /api/v1/profiles "$tmp/p-az.json")" 201
check_py "API: refresh token never returned" "$tmp/api.json" '
assert "rt-initial" not in json.dumps(d) and d["config"]["azure"]["graph"]["grant"] == "refresh_token"'
check_eq "API: file names refused over the API" "$(api POST /api/v1/profiles "$tmp/p-file.json")" 400
check_grep "API: says which key" "caFile" "$tmp/api.json"
check_eq "API: list" "$(api GET /api/v1/profiles)" 200
check_py "API: list has default, az, nope, rel, az2" "$tmp/api.json" '
assert sorted(p["name"] for p in d["profiles"]) == ["az", "az2", "default", "nope", "rel"], d'
"$QWICKD" apikey create --data "$data" --role signer --json >"$tmp/signer.json" 2>/dev/null
signer_key=$(json_get "$tmp/signer.json" api_key)
check_eq "API: a signer may not list profiles" "$(api GET /api/v1/profiles "" "$signer_key")" 403
check_eq "API: disable" "$(api POST /api/v1/profiles/rel/disable)" 200
check_py "API: disabled" "$tmp/api.json" 'assert d["status"] == "disabled" and d["disabledAt"]'
check_eq "API: unknown profile" "$(api GET /api/v1/profiles/none-such)" 404
cp "$tmp/app.exe" "$tmp/rel.exe"
check_status 1 "signing with the disabled profile refused" "$QWICK" sign --profile rel "$tmp/rel.exe"
check_grep "disabled: clear message" "profile_disabled" "$tmp/err"

# --- metrics and audit --------------------------------------------------------
check "metrics" curl -sS --fail --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_OPERATOR_TOKEN" \
    -o "$tmp/metrics.txt" "$QWICKD_URL/metrics"
check_grep "metrics: one secret alive" '^qwickd_azure_secrets_alive 1$' "$tmp/metrics.txt"
check_grep "metrics: latency histogram" '^qwickd_azure_sign_duration_seconds_count [1-9]' "$tmp/metrics.txt"
check_grep "metrics: errors by class" '^qwickd_azure_errors_total{class="throttled"} [1-9]' "$tmp/metrics.txt"

# --- lifecycle: clean shutdown, rotation, crash, reaper -------------------------
stop_qwickd
check_eq "clean shutdown: exit 0" "$stopped" 0
emu_state "$state"
check_py "clean shutdown: no qwick secret alive, ci-pipeline kept" "$state" '
alive = [c for c in d["credentials"] if c["alive"]]
assert d["alive_qwick"] == 0, alive
assert [c["displayName"] for c in alive] == ["ci-pipeline"], alive
assert d["max_alive_qwick"] <= 2, d["max_alive_qwick"]
assert d["refresh_token_valid"] != "rt-initial"'
db="$data/qwick.db"
# One query on the store, rows as sqlite3 prints them: sqlite3 on qwick.db, or
# psql as PostgreSQL's superuser (which row-level security does not bind).
dbq() {
    if store_is_pg; then pg_store_sql -c "$1"; else sqlite3 "$db" "$1"; fi
}
check_eq "audit: secret created" "$(dbq "SELECT CASE WHEN count(*) > 0 THEN 1 ELSE 0 END FROM audit WHERE action = 'azure.credential.create'")" 1
check_eq "audit: secret used" "$(dbq "SELECT CASE WHEN count(*) > 0 THEN 1 ELSE 0 END FROM audit WHERE action = 'azure.credential.use'")" 1
check_eq "audit: secret revoked at shutdown" "$(dbq "SELECT count(*) FROM audit WHERE action = 'azure.credential.revoke' AND detail LIKE '%shutdown%'")" 1
check_eq "audit: signatures name the credential" "$(dbq "SELECT CASE WHEN count(*) > 0 THEN 1 ELSE 0 END FROM audit WHERE action = 'sign.digest' AND outcome = 0 AND detail LIKE 'azure keyId %'")" 1
check "audit chain verifies" "$QWICKD" audit verify --data "$data"

# Restart: the Graph token must come from the rotated refresh token in the
# store (the emulator has invalidated the first one); startup also needs
# Graph for AADSTS7000215, 429s on Graph and on the token endpoint.
emu_faults '{"graph_429": 1, "token_429": 1, "aadsts7000215_seconds": 3}'
start_qwickd "$data"
qwick_env
cp "$tmp/app.exe" "$tmp/r.exe"
sign_ok "after restart (rotated refresh token, new secret not yet valid, 429s)" "$tmp/r.exe"
check_grep "AADSTS7000215 retried" "AADSTS7000215" "$tmp/server.log"
emu_faults '{"reset": true}'

kill -KILL "$QWICKD_PID"
wait "$QWICKD_PID" 2>/dev/null || true
QWICKD_PID=""
emu_state "$state"
check_py "after kill -9 the secret is orphaned" "$state" 'assert d["alive_qwick"] == 1, d["alive_qwick"]'
start_qwickd "$data"
qwick_env
i=0
while :; do
    emu_state "$state"
    python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["alive_qwick"] != 0)' "$state" && break
    i=$((i + 1))
    [ "$i" -lt 40 ] || break
    sleep 0.1
done
check_py "restart reaped the orphan within one interval; ci-pipeline survives" "$state" '
assert d["alive_qwick"] == 0, d["credentials"]
assert any(c["displayName"] == "ci-pipeline" and c["alive"] for c in d["credentials"])'
check_eq "audit: reap recorded" "$(dbq "SELECT count(*) FROM audit WHERE action = 'azure.credential.reap'")" 1
cp "$tmp/app.exe" "$tmp/k.exe"
sign_ok "signing after the crash" "$tmp/k.exe"

# A disabled profile is refused.
check "profile disable" "$QWICKD" profile disable --data "$data" az
cp "$tmp/app.exe" "$tmp/d.exe"
check_status 1 "disabled profile refused" "$QWICK" sign --profile az "$tmp/d.exe"
check_grep "disabled: clear message" "profile_disabled" "$tmp/err"
stop_qwickd

# --- two nodes on one store sharing maxSecrets 1 --------------------------------
data2="$tmp/data2"
# A store of its own: on PostgreSQL a new database, which every command from
# here on uses (QWICKD_DATABASE_URL overrides qwickd.json).
if store_is_pg; then
    QWICKD_DATABASE_URL=$(pg_newdb azure2) || exit 1
    export QWICKD_DATABASE_URL
fi
"$QWICKD" init --data "$data2" --json >"$tmp/init2.json" 2>/dev/null || die "init data2"
key2=$(json_get "$tmp/init2.json" api_key)
optok2=$(json_get "$tmp/init2.json" operator_token)
azure_profile_json "$tmp/az1.json" '{"ttlSeconds": 5, "maxSecrets": 1, "lockTimeoutSeconds": 30}'
# The emulator rotated the refresh token; this store starts from the current one.
emu_state "$state"
rt=$(json_get "$state" refresh_token_valid)
sed "s/rt-initial/$rt/" "$tmp/az1.json" >"$tmp/az1b.json" && mv "$tmp/az1b.json" "$tmp/az1.json"
check "profile create (maxSecrets 1)" "$QWICKD" profile create --data "$data2" --name az --config "$tmp/az1.json"
curl -sS --fail --cacert "$AZ_DIR/tls-ca.pem" -X POST "$AZ_URL/_emu/reset-stats" >/dev/null
node() { # N: starts node N on data2; sets nodeN_url
    "$QWICKD" serve --data "$data2" --listen 127.0.0.1:0 --port-file "$tmp/node$1.port" \
        2>>"$tmp/node$1.log" &
    track_pid $!
    eval "node$1_pid=$!"
    wait_port $! "$tmp/node$1.port" "node $1" "$tmp/node$1.log"
    eval "node$1_url=https://127.0.0.1:$port"
}
node 1
node 2
tlsca2="$data2/tls-ca.pem"
for i in 1 2 3 4; do cp "$tmp/app.exe" "$tmp/m$i.exe"; done
# Both nodes at once, twice each: one must wait for the other's secret.
QWICK_API_KEY=$key2 QWICK_CACERT=$tlsca2 "$QWICK" sign --server "$node1_url" --profile az \
    "$tmp/m1.exe" "$tmp/m3.exe" >"$tmp/m1.out" 2>&1 &
p1=$!
QWICK_API_KEY=$key2 QWICK_CACERT=$tlsca2 "$QWICK" sign --server "$node2_url" --profile az \
    "$tmp/m2.exe" "$tmp/m4.exe" >"$tmp/m2.out" 2>&1 &
p2=$!
r1=0
r2=0
wait "$p1" || r1=$?
wait "$p2" || r2=$?
check_eq "node 1 signed" "$r1" 0
check_eq "node 2 signed" "$r2" 0
[ "$r1$r2" = 00 ] || _show "$tmp/m1.out" "$tmp/m2.out"
for i in 1 2 3 4; do
    if ossl_verify "$emu_root" "$data2/tsa-root-ca.pem" "$tmp/m$i.exe" 1 yes >/dev/null; then ok "two nodes: m$i verifies"; else fail "two nodes: m$i verifies"; fi
done
emu_state "$state"
check_py "two nodes never had more than one secret alive" "$state" '
assert d["max_alive_qwick"] == 1, d["max_alive_qwick"]'
waits=0
for i in 1 2; do
    eval "u=\$node${i}_url"
    curl -sS --fail --cacert "$tlsca2" -H "Authorization: Bearer $optok2" "$u/metrics" >"$tmp/metrics$i.txt"
    w=$(sed -n 's/^qwickd_azure_lock_waits_total //p' "$tmp/metrics$i.txt")
    waits=$((waits + ${w:-0}))
done
check "a node waited for the secret slot (lock queue)" test "$waits" -ge 1
stop_pid "$node1_pid"
stop_pid "$node2_pid"
emu_state "$state"
check_py "both nodes stopped: no qwick secret alive" "$state" 'assert d["alive_qwick"] == 0, d["credentials"]'

t_done
