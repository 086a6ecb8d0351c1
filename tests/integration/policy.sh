#!/bin/sh
# Signing policies against a real qwickd (on SQLite, and on PostgreSQL in the
# plain-pg run):
#  - `qwickd policy set|show|clear` and GET|PUT|DELETE /api/v1/profiles/{name}/policy,
#    bad documents refused with the key named, changes audited;
#  - each denial class through POST /api/v1/sign/digest (address, signing
#    hours in another time zone, format, algorithm, file name, justification),
#    each audited with the rule that made it; a request the policy allows signs,
#    through the CLI too (the result accepted by osslsigncode);
#  - POST /api/v1/policy/evaluate on a stored policy and on a draft.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init policy

data="$tmp/data"
qwickd_init "$data"
admin_key=$QWICKD_API_KEY
tlsca=$QWICKD_TLS_CA
db="$data/qwick.db"
dbq() {
    if store_is_pg; then pg_store_sql -c "$1"; else sqlite3 "$db" "$1"; fi
}
start_qwickd "$data"
qwick_env
base=$QWICKD_URL

call() { # METHOD PATH KEY [curl args...]: $tmp/body, $tmp/status
    m=$1
    p=$2
    k=$3
    shift 3
    curl -sS --cacert "$tlsca" -X "$m" -o "$tmp/body" -w '%{http_code}' \
        -H "Authorization: Bearer $k" "$@" "$base$p" >"$tmp/status" 2>"$tmp/curl.err" || true
}
expect() { # STATUS CODE DESC: the last answer
    st=$(cat "$tmp/status")
    code=$(json_get "$tmp/body" error.code 2>/dev/null || echo "-")
    if [ "$st" = "$1" ] && [ "$code" = "$2" ]; then ok "$3"; else
        fail "$3: got $st $code, want $1 $2: $(head -c 300 "$tmp/body")"
    fi
}
sign() { # JSON-BODY
    call POST /api/v1/sign/digest "$admin_key" -H 'Content-Type: application/json' \
        --data-binary "$1"
}
d256=$(head -c 32 /dev/urandom | base64 -w0)
d512=$(head -c 64 /dev/urandom | base64 -w0)
body() { # [ALG [FORMAT [FILENAME [JUSTIFICATION]]]]
    a=${1:-sha256}
    d=$d256
    [ "$a" != sha512 ] || d=$d512
    printf '{"digest":"%s","algorithm":"%s","format":"%s","metadata":{"filename":"%s"%s}}' \
        "$d" "$a" "${2:-authenticode-pe}" "${3:-app.exe}" \
        "${4:+,\"justification\":\"$4\"}"
}
# Audit rows of denials with the rule that decided them.
denials() { dbq "SELECT count(*) FROM audit WHERE action = 'sign.digest' AND outcome = 1 AND detail = 'policy: $1'"; }

# --- no policy: everything allowed ------------------------------------------
"$QWICKD" policy show --data "$data" --profile default >"$tmp/show.txt"
check_grep "show: no policy" "has no policy" "$tmp/show.txt"
sign "$(body sha512 cms x.msi)"
check_eq "no policy: anything signs" "$(cat "$tmp/status")" 200

# --- refusals name the key ----------------------------------------------------
printf '{"signing_hours": {"from": "08:00", "to": "18:00", "timezone": "Mars/Base"}}' >"$tmp/bad.json"
check_status 1 "policy set: unknown time zone refused" \
    "$QWICKD" policy set --data "$data" --profile default "$tmp/bad.json"
check_grep "and the key is named" "signing_hours.timezone" "$tmp/err"
printf '{"ip_allowlist": ["10.0.0.1/8"]}' >"$tmp/bad.json"
check_status 1 "policy set: host bits refused" \
    "$QWICKD" policy set --data "$data" --profile default "$tmp/bad.json"
check_grep "and the entry is named" "ip_allowlist\[0\]" "$tmp/err"
call PUT /api/v1/profiles/default/policy "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"filenames": ["*.exe"], "colour": "blue"}'
expect 400 invalid_policy "PUT: unknown key refused"
check_grep "naming it" "colour" "$tmp/body"
call PUT /api/v1/profiles/nope/policy "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{}'
expect 404 not_found "PUT: unknown profile"
"$QWICKD" apikey create --data "$data" --role signer --json >"$tmp/signer.json"
signer_key=$(json_get "$tmp/signer.json" key 2>/dev/null || json_get "$tmp/signer.json" api_key)
call GET /api/v1/profiles/default/policy "$signer_key"
expect 403 forbidden "GET policy: admins only"

# --- the address: loopback is not in 10/8 -----------------------------------------
printf '{"ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]}' >"$tmp/p.json"
check "policy set (file)" "$QWICKD" policy set --data "$data" --profile default "$tmp/p.json"
sign "$(body)"
expect 403 ip_not_allowed "127.0.0.1 outside the allowlist"
check_eq "audited with its rule" "$(denials ip_allowlist)" 1
printf '{"ip_allowlist": ["10.0.0.0/8", "127.0.0.1/32"]}' |
    "$QWICKD" policy set --data "$data" --profile default - >/dev/null
sign "$(body)"
check_eq "127.0.0.1/32 listed: signs (policy set from standard input)" "$(cat "$tmp/status")" 200
"$QWICKD" policy show --data "$data" --profile default --json >"$tmp/show.json"
check_eq "show --json: the canonical document" "$(cat "$tmp/show.json")" \
    '{"ip_allowlist":["10.0.0.0/8","127.0.0.1/32"]}'

# --- signing hours in another time zone ----------------------------------------
# A window that excludes now in Asia/Kolkata (UTC+5:30): it starts two hours
# from now there and lasts one hour (every day). Then one that includes now.
window() { # HOURS_FROM_NOW LENGTH_HOURS
    python3 - "$1" "$2" <<'EOF'
import datetime, sys
now = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
start = now + datetime.timedelta(hours=float(sys.argv[1]))
end = start + datetime.timedelta(hours=float(sys.argv[2]))
print(f'{{"signing_hours": {{"from": "{start:%H:%M}", "to": "{end:%H:%M}", "timezone": "Asia/Kolkata"}}}}')
EOF
}
call PUT /api/v1/profiles/default/policy "$admin_key" -H 'Content-Type: application/json' \
    --data-binary "$(window 2 1)"
check_eq "PUT policy" "$(cat "$tmp/status")" 200
sign "$(body)"
expect 403 outside_signing_hours "outside the hours in Asia/Kolkata"
check_eq "audited with its rule" "$(denials signing_hours)" 1
call PUT /api/v1/profiles/default/policy "$admin_key" -H 'Content-Type: application/json' \
    --data-binary "$(window -1 3)"
sign "$(body)"
check_eq "inside the hours: signs" "$(cat "$tmp/status")" 200

# --- format, algorithm, file name, justification --------------------------------
call PUT /api/v1/profiles/default/policy "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"formats": ["authenticode-pe"], "algorithms": ["sha256", "sha384"],
                    "filenames": ["*.exe", "*.dll"], "require_justification": true}'
check_eq "PUT a four-rule policy" "$(cat "$tmp/status")" 200
sign "$(body sha256 cms app.exe why)"
expect 403 format_not_allowed "cms refused"
sign "$(body sha512 authenticode-pe app.exe why)"
expect 403 algorithm_not_allowed "sha512 refused"
sign "$(body sha256 authenticode-pe setup.msi why)"
expect 403 filename_not_allowed "setup.msi refused"
sign "$(body sha256 authenticode-pe APP.EXE)"
expect 400 justification_required "no justification refused"
check_eq "each audited with its rule" \
    "$(denials formats) $(denials algorithms) $(denials filenames) $(denials require_justification)" \
    "1 1 1 1"
sign "$(body sha256 authenticode-pe 'APP.EXE' 'release 1.2')"
check_eq "everything satisfied (names ignore case): signs" "$(cat "$tmp/status")" 200

# Through the CLI: the result is a valid signature.
build_pe "$tmp/app.exe" x64
check_status 1 "qwick sign without a justification: refused" "$QWICK" sign "$tmp/app.exe"
check_grep "with the policy's reason" "justification_required" "$tmp/err"
check "qwick sign --justification: signs" "$QWICK" sign --justification "release 1.2" "$tmp/app.exe"
check "and osslsigncode accepts the result" \
    ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/app.exe" 1 yes
check_eq "the justification is in the audit entry" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.digest' AND outcome = 0 AND meta LIKE '%release 1.2%'")" 2

# --- evaluate ---------------------------------------------------------------------
call POST /api/v1/policy/evaluate "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"profile": "default", "filename": "x.msi", "justification": "j"}'
check_py "evaluate (stored): denied by filenames" "$tmp/body" '
assert d["decision"] == "deny" and d["rule"] == "filenames" and d["code"] == "filename_not_allowed", d'
call POST /api/v1/policy/evaluate "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"policy": {"ip_allowlist": ["192.0.2.0/24"]}, "address": "192.0.2.9"}'
check_py "evaluate (draft): an allowed address" "$tmp/body" '
assert d["decision"] == "allow" and d["rule"] == "none", d'
call POST /api/v1/policy/evaluate "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"policy": {"signing_hours": {"days": "mon-fri", "from": "08:00", "to": "18:00", "timezone": "Europe/Berlin"}}, "time": 1768032000}'
check_py "evaluate (draft): Saturday 08:00 UTC is outside" "$tmp/body" '
assert d["decision"] == "deny" and d["code"] == "outside_signing_hours", d'
call POST /api/v1/policy/evaluate "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"policy": {"signing_hours": {"days": "mon-fri", "from": "08:00", "to": "18:00", "timezone": "Europe/Berlin"}}, "time": 1767600000}'
check_py "evaluate (draft): Monday 09:00 Berlin is inside" "$tmp/body" '
assert d["decision"] == "allow", d'
n0=$(dbq "SELECT count(*) FROM audit")
call POST /api/v1/policy/evaluate "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"profile": "default", "filename": "a.exe"}'
check_eq "evaluate records nothing" "$(dbq "SELECT count(*) FROM audit")" "$n0"

# --- keys limited to profiles --------------------------------------------------------
make_cert "$tmp/rel" "Release Test"
printf '{"backend":"local","key":"%s","chain":"%s"}\n' "$tmp/rel.key" "$tmp/rel.pem" >"$tmp/rel.json"
check "a second profile" "$QWICKD" profile create --data "$data" --name rel --config "$tmp/rel.json"
check_status 2 "apikey create --profiles with an empty name: usage error" \
    "$QWICKD" apikey create --data "$data" --profiles "rel,,default"
"$QWICKD" apikey create --data "$data" --role signer --profiles rel --json >"$tmp/relkey.json"
rel_key=$(json_get "$tmp/relkey.json" api_key)
check_eq "apikey create --profiles: shown" "$(json_get "$tmp/relkey.json" profiles)" '["rel"]'
scoped() { # KEY PROFILE
    call POST /api/v1/sign/digest "$1" -H 'Content-Type: application/json' \
        --data-binary "{\"digest\":\"$d256\",\"algorithm\":\"sha256\",\"profile\":\"$2\",\"metadata\":{\"filename\":\"a.exe\",\"justification\":\"j\"}}"
}
scoped "$rel_key" default
expect 403 profile_not_allowed "a key limited to rel signs with default: refused"
check_eq "and audited" \
    "$(dbq "SELECT count(*) FROM audit WHERE outcome = 1 AND detail = 'profile not allowed for the key'")" 1
scoped "$rel_key" rel
check_eq "the same key with rel: signs" "$(cat "$tmp/status")" 200
call POST /api/v1/keys "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"name": "ci-rel", "role": "signer", "profiles": ["rel"]}'
check_eq "POST /api/v1/keys with profiles: 201" "$(cat "$tmp/status")" 201
check_eq "answered with its profiles" "$(json_get "$tmp/body" profiles)" '["rel"]'
api_rel=$(json_get "$tmp/body" key)
scoped "$api_rel" default
expect 403 profile_not_allowed "the API-made key is limited too"
call POST /api/v1/keys "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"name": "bad", "profiles": []}'
expect 400 invalid_value "profiles: [] refused"
call POST /api/v1/keys "$admin_key" -H 'Content-Type: application/json' \
    --data-binary '{"name": "bad", "profiles": ["a,b"]}'
expect 400 invalid_value "a profile name with a comma refused"
call GET /api/v1/keys "$admin_key"
check_py "GET /api/v1/keys shows each key's profiles" "$tmp/body" '
ks = {k["name"]: k["profiles"] for k in d["keys"]}
assert ks["ci-rel"] == ["rel"] and ks["initial admin key"] is None, ks'

# --- clear ------------------------------------------------------------------------
check "policy clear" "$QWICKD" policy clear --data "$data" --profile default
check "qwick sign with no policy: signs" "$QWICK" sign "$tmp/app.exe"
check "and osslsigncode accepts it" ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/app.exe" 1 yes
check_eq "policy changes audited (set, clear)" \
    "$(dbq "SELECT count(*) FROM audit WHERE action IN ('policy.set', 'policy.clear')")" 6

t_done
