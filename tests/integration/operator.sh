#!/bin/sh
# The instance operator and the orgs (issue 7, defect 6, and defect 7):
#  - GET /metrics takes an operator token (init prints one; qwickd operator
#    token create|list|revoke), refuses any org's API key (403) and no
#    credential (401); revoked tokens stop working at once;
#  - GET /api/v1/usage is the org's own usage (any role), counted from its log;
#  - formats are a profile setting: raw is refused (403 format_not_allowed,
#    on record as a denial) unless the profile lists it;
#  - failed authentications are on record, aggregated per source and reason:
#    a flood of unknown keys is a few rows of the instance log, revoked keys
#    count in their org's log.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init operator
PY=/usr/bin/python3
QWICKD_AUTH_FAILURE_INTERVAL_MS=1500
export QWICKD_AUTH_FAILURE_INTERVAL_MS
start_qwickd "$tmp/data"
# q SQL [PG-SQL]: the first column of the first row, from qwick.db, or on
# PostgreSQL (PG-SQL where the dialects differ) as the superuser, whom
# row-level security does not bind.
q() {
    if store_is_pg; then pg_store_sql -c "${2:-$1}"; else
        $PY -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])" "$tmp/data/qwick.db" "$1"
    fi
}
get() { # CREDENTIAL PATH: the status; the body in $tmp/resp
    curl -sS --cacert "$QWICKD_TLS_CA" ${1:+-H "Authorization: Bearer $1"} -o "$tmp/resp" \
        -w '%{http_code}' "$QWICKD_URL$2"
}
sign() { # FORMAT [PROFILE]: the status
    b64=$($PY -c "import base64,os; print(base64.b64encode(os.urandom(32)).decode())")
    curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" \
        -H 'Content-Type: application/json' -o "$tmp/resp" -w '%{http_code}' \
        -d "{\"digest\":\"$b64\",\"algorithm\":\"sha256\",\"format\":\"$1\",\"profile\":\"${2:-default}\",\"timestamp\":false}" \
        "$QWICKD_URL/api/v1/sign/digest"
}

case $QWICKD_OPERATOR_TOKEN in qo_*) ok "init --json prints an operator token" ;; *) fail "operator_token: '$QWICKD_OPERATOR_TOKEN'" ;; esac
check_eq "metrics with the operator token" "$(get "$QWICKD_OPERATOR_TOKEN" /metrics)" 200
check_grep "Prometheus text" '^# TYPE qwickd_store_commits_total counter' "$tmp/resp"
check_eq "metrics with the org's admin key: 403" "$(get "$QWICKD_API_KEY" /metrics)" 403
check_eq "metrics without a credential: 401" "$(get "" /metrics)" 401
check_eq "metrics with a made-up token: 401" "$(get qo_0000000000000000000000000000000000000000000 /metrics)" 401

check "operator token create" sh -c "'$QWICKD' operator token create --data '$tmp/data' --name scraper --json >'$tmp/tok.json'"
tok=$(json_get "$tmp/tok.json" operator_token)
tid=$(json_get "$tmp/tok.json" id)
check_eq "the new token works" "$(get "$tok" /metrics)" 200
check_status 0 "operator token list" "$QWICKD" operator token list --data "$tmp/data"
check_grep "lists it active" "scraper.*active" "$tmp/out"
check "operator token revoke" "$QWICKD" operator token revoke --data "$tmp/data" "$tid"
check_eq "revoked: 401 at once" "$(get "$tok" /metrics)" 401
check_status 1 "revoking again fails" "$QWICKD" operator token revoke --data "$tmp/data" "$tid"
check_eq "the instance log records both" "$(q "SELECT group_concat(action, ' ') FROM audit WHERE org_id = 0" \
    "SELECT string_agg(action, ' ' ORDER BY seq) FROM audit WHERE org_id = 0")" \
    "operator.token.create operator.token.revoke"

# --- formats per profile, usage ------------------------------------------------
check_eq "authenticode-pe on default" "$(sign authenticode-pe)" 200
check_eq "cms on default" "$(sign cms)" 200
check_eq "raw on default: 403" "$(sign raw)" 403
check_py "format_not_allowed" "$tmp/resp" 'assert d["error"]["code"] == "format_not_allowed", d'
make_cert "$tmp/rawp" "Raw Profile"
cat >"$tmp/rawp.json" <<EOF
{"backend": "local", "key": "$tmp/rawp.key", "chain": "$tmp/rawp.pem", "formats": ["raw", "cms"]}
EOF
check "profile with formats raw+cms" "$QWICKD" profile create --data "$tmp/data" --name rawp --config "$tmp/rawp.json"
check_status 0 "profile show lists its formats" "$QWICKD" profile show --data "$tmp/data" --json rawp
check_py "formats in the public config" "$tmp/out" 'assert d["config"]["formats"] == ["cms", "raw"], d'
check_eq "raw on rawp" "$(sign raw rawp)" 200
check_eq "authenticode-pe on rawp: 403" "$(sign authenticode-pe rawp)" 403
echo '{"backend": "local", "key": "x", "chain": "y", "formats": ["raw", "pdf"]}' >"$tmp/bad.json"
check_status 1 "unknown format refused" "$QWICKD" profile create --data "$tmp/data" --name bad --config "$tmp/bad.json"
check_grep "named" "unknown format 'pdf'" "$tmp/err"
echo '{"backend": "local", "key": "x", "chain": "y", "formats": []}' >"$tmp/bad.json"
check_status 1 "empty formats refused" "$QWICKD" profile create --data "$tmp/data" --name bad --config "$tmp/bad.json"

check_eq "usage (any role)" "$(get "$QWICKD_API_KEY" /api/v1/usage)" 200
check_py "3 signatures, 2 denials, by profile" "$tmp/resp" \
    'assert d["signatures"] == 3 and d["denied"] == 2 and d["failed"] == 0 and d["byProfile"] == {"default": 2, "rawp": 1}, d'
check_eq "usage: bad since is 400" "$(get "$QWICKD_API_KEY" '/api/v1/usage?since=x')" 400
check_eq "usage with the operator token: 401 (org-scoped)" "$(get "$QWICKD_OPERATOR_TOKEN" /api/v1/usage)" 401
check_eq "the raw denial is on record" "$(q "SELECT count(*) FROM audit WHERE detail = 'format not allowed' AND format = 'raw'")" 1
# --- failed authentications ----------------------------------------------------
curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" \
    -H 'Content-Type: application/json' -d '{"name":"soon-revoked","role":"viewer"}' \
    -o "$tmp/k.json" "$QWICKD_URL/api/v1/keys"
rk=$(json_get "$tmp/k.json" key)
rid=$(json_get "$tmp/k.json" id)
check_eq "revoke it" "$(curl -sS --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_API_KEY" -X DELETE -o /dev/null -w '%{http_code}' "$QWICKD_URL/api/v1/keys/$rid")" 200
i=0
while [ $i -lt 40 ]; do
    get qk_0000000000000000000000000000000000000000000 /api/v1/keys >/dev/null
    i=$((i + 1))
done
check_eq "revoked key: 401" "$(get "$rk" /api/v1/keys)" 401
check_eq "revoked key again: 401" "$(get "$rk" /api/v1/keys)" 401
stop_qwickd
n=$(q "SELECT count(*) FROM audit WHERE org_id = 0 AND action = 'auth.failure' AND detail = 'unknown_api_key'")
total=$(q "SELECT sum(json_extract(meta, '\$.count')) FROM audit WHERE org_id = 0 AND action = 'auth.failure' AND detail = 'unknown_api_key'" \
    "SELECT sum((meta::jsonb ->> 'count')::bigint) FROM audit WHERE org_id = 0 AND action = 'auth.failure' AND detail = 'unknown_api_key'")
[ "$n" -ge 1 ] && [ "$n" -le 4 ] && ok "unknown keys: $n aggregated rows" || fail "unknown keys: $n rows"
[ "$total" -ge 40 ] && ok "unknown keys: $total failures counted" || fail "unknown keys: $total counted"
check_eq "revoked key: counted in its org's log" \
    "$(q "SELECT sum(json_extract(meta, '\$.count')) || ' ' || client_ip FROM audit WHERE org_id = 1 AND action = 'auth.failure' AND detail = 'revoked_api_key'" \
        "SELECT sum((meta::jsonb ->> 'count')::bigint) || ' ' || string_agg(DISTINCT client_ip, ',') FROM audit WHERE org_id = 1 AND action = 'auth.failure' AND detail = 'revoked_api_key'")" "2 127.0.0.1"
check "audit verify: every log intact" "$QWICKD" audit verify --data "$tmp/data"
t_done
