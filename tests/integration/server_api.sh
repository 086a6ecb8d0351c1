#!/bin/sh
# qwickd's HTTP API driven with raw HTTP (curl) and checked with independent
# tools (openssl, sqlite3 or psql, osslsigncode):
#  - POST /api/v1/sign/digest for sha256/384/512 x authenticode-pe/cms/raw:
#    asn1parse, openssl cms -verify over the content whose digest was sent,
#    openssl pkeyutl -verify for raw; one signature embedded by qwick sign and
#    accepted by osslsigncode;
#  - GET /api/v1/sign/requests/{id} (same org only), keys API, auth failures
#    (missing/unknown/revoked/expired key, viewer role), revocation at once;
#  - every malformed-request class answers 4xx with {"error":{"code","message"}};
#  - /healthz, /metrics, /tsa (openssl ts -verify; garbage -> rejection);
#  - 200 concurrent signing requests, each with exactly one audit row;
#  - SIGTERM under load: exit 0 and every 200 has its rows;
#  - plain HTTP refused off loopback, allowed on it with --plain-http.
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init server_api
b64file() { base64 -w0 "$1"; }

# --- server ---------------------------------------------------------------
data="$tmp/data"
qwickd_init "$data"
admin_key=$QWICKD_API_KEY
root=$QWICKD_ROOT_CA
tsaroot=$QWICKD_TSA_ROOT_CA
tlsca=$QWICKD_TLS_CA
db="$data/qwick.db"
# One query on the store, rows as sqlite3 prints them: sqlite3 on qwick.db, or
# psql as PostgreSQL's superuser (which row-level security does not bind).
dbq() {
    if store_is_pg; then pg_store_sql -c "$1"; else sqlite3 "$db" "$1"; fi
}

# raw (a bare signature) only from a profile that lists it (issue 7, defect 7).
make_cert "$tmp/rawp" "Raw Test"
printf '{"backend":"local","key":"%s","chain":"%s","formats":["authenticode-pe","cms","raw"]}\n' \
    "$tmp/rawp.key" "$tmp/rawp.pem" >"$tmp/rawp.json"
"$QWICKD" profile create --data "$data" --name rawp --config "$tmp/rawp.json" >/dev/null ||
    die "profile create rawp"

start_qwickd "$data"
base=$QWICKD_URL
echo "qwickd on $base"

# call METHOD PATH KEY [curl args...]: body in $tmp/body, status in $tmp/status,
# Content-Type in $tmp/ctype. KEY "-" sends no Authorization header.
call() {
    m=$1
    p=$2
    k=$3
    shift 3
    set -- -sS --cacert "$tlsca" -X "$m" -o "$tmp/body" -D "$tmp/headers" \
        -w '%{http_code}' "$@"
    if [ "$k" != "-" ]; then set -- -H "Authorization: Bearer $k" "$@"; fi
    curl "$@" "$base$p" >"$tmp/status" 2>"$tmp/curl.err" || true
    tr -d '\r' <"$tmp/headers" | sed -n 's/^[Cc]ontent-[Tt]ype: *//p' | tail -n 1 >"$tmp/ctype"
}
sign_json() { # KEY JSON-BODY
    call POST /api/v1/sign/digest "$1" -H 'Content-Type: application/json' --data-binary "$2"
}
# expect_error STATUS CODE DESCRIPTION: last response is that JSON error.
expect_error() {
    st=$(cat "$tmp/status")
    code=$(json_get "$tmp/body" error.code 2>/dev/null || echo "?")
    msg=$(json_get "$tmp/body" error.message 2>/dev/null || echo "")
    ct=$(cat "$tmp/ctype")
    if [ "$st" = "$1" ] && [ "$code" = "$2" ] && [ -n "$msg" ] &&
        [ "$ct" = "application/json" ]; then
        ok "$3 -> $1 $2"
    else
        fail "$3: want $1 $2, got $st $code ($ct): $(head -c 300 "$tmp/body")"
    fi
}

# expect_status STATUS DESCRIPTION: the last response had that HTTP status.
expect_status() {
    if [ "$(cat "$tmp/status")" = "$1" ]; then ok "$2"; else
        fail "$2: want $1, got $(cat "$tmp/status"): $(head -c 300 "$tmp/body")"
    fi
}
# new_key JSON: POST /api/v1/keys as admin; sets $key and $key_id.
new_key() {
    call POST /api/v1/keys "$admin_key" -H 'Content-Type: application/json' --data-binary "$1"
    key=$(json_get "$tmp/body" key 2>/dev/null || true)
    key_id=$(json_get "$tmp/body" id 2>/dev/null || true)
}

# --- health and metrics ------------------------------------------------------
call GET /healthz -
if [ "$(cat "$tmp/status")" = 200 ] && [ "$(json_get "$tmp/body" status)" = ok ]; then
    ok "healthz"
else fail "healthz: $(cat "$tmp/status") $(cat "$tmp/body")"; fi
if grep -qi '^x-content-type-options: nosniff' "$tmp/headers" &&
    grep -qi '^strict-transport-security:' "$tmp/headers" &&
    grep -qi '^x-request-id: req_' "$tmp/headers"; then
    ok "security headers"
else fail "security headers missing"; fi

# --- happy path: every algorithm x every format ------------------------------
head -c 100000 /dev/urandom >"$tmp/content.bin"
for alg in sha256 sha384 sha512; do
    openssl dgst "-$alg" -binary "$tmp/content.bin" >"$tmp/digest.bin"
    d=$(b64file "$tmp/digest.bin")
    for fmt in authenticode-pe cms raw; do
        prof=default
        [ "$fmt" != raw ] || prof=rawp
        sign_json "$admin_key" "{\"digest\":\"$d\",\"algorithm\":\"$alg\",\"format\":\"$fmt\",\"profile\":\"$prof\",\"metadata\":{\"filename\":\"content.bin\",\"description\":\"Qwick test\",\"url\":\"https://example.com/\"}}"
        if [ "$(cat "$tmp/status")" != 200 ]; then
            fail "sign $alg $fmt: $(cat "$tmp/status") $(cat "$tmp/body")"
            continue
        fi
        cp "$tmp/body" "$tmp/signed-$alg-$fmt.json"
        json_get "$tmp/body" signature | base64 -d >"$tmp/sig.der"
        json_get "$tmp/body" certificateChain.0 | base64 -d >"$tmp/leaf.der"
        st=$(json_get "$tmp/body" status)
        tsurl=$(json_get "$tmp/body" timestampUrl)
        [ "$st" = SIGNED ] && [ "$tsurl" = "$base/tsa" ] || fail "sign $alg $fmt: status $st url $tsurl"
        case $fmt in
        authenticode-pe)
            if openssl asn1parse -inform DER -in "$tmp/sig.der" >"$tmp/asn1.txt" 2>&1 &&
                grep -q '1.3.6.1.4.1.311.2.1.4\|SPC_INDIRECT_DATA\|Microsoft Individual' "$tmp/asn1.txt" ||
                grep -q 'OBJECT.*1.3.6.1.4.1.311.2.1.4' "$tmp/asn1.txt"; then
                ok "sign $alg $fmt: DER ContentInfo with SpcIndirectDataContent"
            else
                fail "sign $alg $fmt: not an Authenticode ContentInfo"
                head -n 20 "$tmp/asn1.txt"
            fi
            ;;
        cms)
            check "sign $alg $fmt: openssl cms -verify over the content" \
                openssl cms -verify -binary -inform DER -in "$tmp/sig.der" \
                -content "$tmp/content.bin" -CAfile "$root" -purpose any -out /dev/null
            ;;
        raw)
            openssl x509 -inform DER -in "$tmp/leaf.der" -pubkey -noout >"$tmp/pub.pem"
            check "sign $alg $fmt: openssl pkeyutl -verify" \
                openssl pkeyutl -verify -pubin -inkey "$tmp/pub.pem" -in "$tmp/digest.bin" \
                -sigfile "$tmp/sig.der" -pkeyopt "digest:$alg"
            ;;
        esac
    done
done
# --- "timestamp": "server": the signature comes back with the server's token --
# Checked independently: the CMS verifies with openssl, and the token found in
# its unsigned attributes verifies with `openssl ts -verify` over the
# signature value, against the TSA root.
split_stamped() { # SIG.der TOKEN.der VALUE.bin: the first SignerInfo's token and value
    python3 - "$@" <<'PY'
import sys
def tlv(b, i):
    t = b[i]; n = b[i + 1]; j = i + 2
    if n & 0x80:
        k = n & 0x7f; n = int.from_bytes(b[j:j + k], "big"); j += k
    return t, j, j + n
def kids(b, i):
    t, s, e = tlv(b, i); out = []
    while s < e:
        out.append(s); s = tlv(b, s)[2]
    return out
b = open(sys.argv[1], "rb").read()
sd = kids(b, kids(b, 0)[1])[0]            # ContentInfo -> [0] -> SignedData
si = kids(b, kids(b, sd)[-1])[0]          # signerInfos -> first SignerInfo
parts = kids(b, si)
value = [p for p in parts if b[p] == 0x04][0]
unsigned = [p for p in parts if b[p] == 0xA1][0]
attr = kids(b, unsigned)[0]
oid, vals = kids(b, attr)
token = kids(b, vals)[0]
_, s, e = tlv(b, value)
open(sys.argv[3], "wb").write(b[s:e])
_, s, e = tlv(b, token)
open(sys.argv[2], "wb").write(b[token:e])
PY
}
openssl dgst -sha256 -binary "$tmp/content.bin" >"$tmp/digest256.bin"
d=$(b64file "$tmp/digest256.bin")
sign_json "$admin_key" "{\"digest\":\"$d\",\"algorithm\":\"sha256\",\"format\":\"cms\",\"timestamp\":\"server\"}"
if [ "$(cat "$tmp/status")" = 200 ] && [ "$(json_get "$tmp/body" timestamped)" = True ]; then
    json_get "$tmp/body" signature | base64 -d >"$tmp/stamped.der"
    check "timestamp server: openssl cms -verify" \
        openssl cms -verify -binary -inform DER -in "$tmp/stamped.der" \
        -content "$tmp/content.bin" -CAfile "$root" -purpose any -out /dev/null
    if split_stamped "$tmp/stamped.der" "$tmp/token.der" "$tmp/value.bin" 2>"$tmp/split.err"; then
        check "timestamp server: openssl ts -verify of the token over the signature value" \
            openssl ts -verify -token_in -in "$tmp/token.der" -data "$tmp/value.bin" \
            -CAfile "$tsaroot"
    else fail "timestamp server: no token in the unsigned attributes: $(cat "$tmp/split.err")"; fi
else fail "timestamp server: $(cat "$tmp/status") $(head -c 300 "$tmp/body")"; fi
sign_json "$admin_key" "{\"digest\":\"$d\",\"algorithm\":\"sha256\"}"
if [ "$(cat "$tmp/status")" = 200 ] && [ "$(json_get "$tmp/body" timestamped 2>/dev/null || echo absent)" = absent ]; then
    ok "no \"timestamp\": the client stamps (timestamped absent)"
else fail "no timestamp field: $(head -c 300 "$tmp/body")"; fi
sign_json "$admin_key" "{\"digest\":\"$d\",\"algorithm\":\"sha256\",\"timestamp\":\"tsa\"}"
expect_error 400 invalid_type "\"timestamp\": \"tsa\" refused"

# the default format is authenticode-pe and the default profile "default"
d=$(b64file "$tmp/digest.bin")
sign_json "$admin_key" "{\"digest\":\"$d\",\"algorithm\":\"sha512\"}"
expect_status 200 "defaults (format, profile, no metadata)"

# --- a request by id, and its audit row -------------------------------------------
rid=$(json_get "$tmp/signed-sha384-cms.json" requestId)
call GET "/api/v1/sign/requests/$rid" "$admin_key"
if [ "$(cat "$tmp/status")" = 200 ] && [ "$(json_get "$tmp/body" status)" = SIGNED ] &&
    [ "$(json_get "$tmp/body" signature)" = "$(json_get "$tmp/signed-sha384-cms.json" signature)" ] &&
    [ "$(json_get "$tmp/body" metadata.filename)" = content.bin ]; then
    ok "GET request by id"
else fail "GET request by id: $(cat "$tmp/status") $(head -c 300 "$tmp/body")"; fi
n=$(dbq "SELECT count(*) FROM audit WHERE request_id = '$rid' AND outcome = 0 AND action = 'sign.digest' AND algorithm = 'sha384' AND filename = 'content.bin' AND client_ip = '127.0.0.1'")
[ "$n" = 1 ] && ok "audit row of $rid" || fail "audit rows of $rid: $n"
call GET /api/v1/sign/requests/req_00000000000000000000000000000000 "$admin_key"
expect_error 404 not_found "unknown request id"
call GET /api/v1/sign/requests/nonsense "$admin_key"
expect_error 404 not_found "malformed request id"

# --- authentication and roles --------------------------------------------------
d=$(b64file "$tmp/digest.bin")
body="{\"digest\":\"$d\",\"algorithm\":\"sha512\"}"
call POST /api/v1/sign/digest - -H 'Content-Type: application/json' --data-binary "$body"
expect_error 401 missing_api_key "no Authorization header"
call POST /api/v1/sign/digest - -H 'Authorization: Basic Zm9vOmJhcg==' \
    -H 'Content-Type: application/json' --data-binary "$body"
expect_error 401 missing_api_key "Basic instead of Bearer"
sign_json qk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA "$body"
expect_error 401 unknown_api_key "unknown key"
sign_json "not-a-key" "$body"
expect_error 401 unknown_api_key "malformed key"

new_key '{"name":"viewer","role":"viewer"}'
expect_status 201 "create viewer key through the API"
viewer_key=$key
sign_json "$viewer_key" "$body"
expect_error 403 forbidden "viewer key signs"
n=$(dbq "SELECT count(*) FROM audit WHERE outcome = 1 AND detail LIKE '%role%'")
[ "$n" -ge 1 ] && ok "denied signing is audited" || fail "no audit row for the denial"
call GET /api/v1/keys "$viewer_key"
expect_error 403 forbidden "viewer lists keys"
call GET "/api/v1/sign/requests/$rid" "$viewer_key"
expect_status 200 "viewer reads a request"

new_key '{"name":"ci","role":"signer"}'
signer_key=$key
signer_id=$key_id
sign_json "$signer_key" "$body"
expect_status 200 "new signer key signs"
call GET /api/v1/keys "$admin_key"
if [ "$(cat "$tmp/status")" = 200 ] && grep -q '"name":"ci"' "$tmp/body" &&
    ! grep -q "$signer_key" "$tmp/body"; then
    ok "list keys (no key material)"
else fail "list keys: $(head -c 300 "$tmp/body")"; fi
call DELETE "/api/v1/keys/$signer_id" "$admin_key"
expect_status 200 "revoke through the API"
sign_json "$signer_key" "$body"
expect_error 401 revoked_api_key "revoked key (API), at once"
call DELETE /api/v1/keys/999999 "$admin_key"
expect_error 404 not_found "revoke unknown key"

# revocation by the CLI, in another process, is seen at once too
new_key '{"name":"ci2"}'
sign_json "$key" "$body"
expect_status 200 "second signer key signs"
"$QWICKD" apikey revoke --data "$data" "$key_id" >/dev/null
sign_json "$key" "$body"
expect_error 401 revoked_api_key "revoked key (CLI), at once"

# expired: a key that expires in 3 s
exp=$(($(date +%s) + 3))
new_key "{\"name\":\"short\",\"expiresAt\":$exp}"
while [ "$(date +%s)" -le "$exp" ]; do sleep 0.5; done
sign_json "$key" "$body"
expect_error 401 expired_api_key "expired key"

# --- malformed requests ---------------------------------------------------------
d32=$(head -c 32 /dev/urandom | base64 -w0)
d31=$(head -c 31 /dev/urandom | base64 -w0)
d48=$(head -c 48 /dev/urandom | base64 -w0)
bad() { # STATUS CODE DESCRIPTION BODY
    sign_json "$admin_key" "$4"
    expect_error "$1" "$2" "$3"
}
bad 400 invalid_json "truncated JSON" '{"digest":'
bad 400 invalid_json "not an object" '["digest"]'
bad 400 invalid_json "trailing garbage" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\"} x"
bad 400 invalid_json "duplicate key" "{\"digest\":\"$d32\",\"digest\":\"$d32\",\"algorithm\":\"sha256\"}"
bad 400 invalid_json "empty body" ''
bad 400 invalid_type "digest is a number" '{"digest":5,"algorithm":"sha256"}'
bad 400 invalid_type "algorithm is an array" "{\"digest\":\"$d32\",\"algorithm\":[\"sha256\"]}"
bad 400 invalid_type "metadata is a string" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"metadata\":\"x\"}"
bad 400 invalid_type "filename is a number" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"metadata\":{\"filename\":1}}"
bad 400 missing_field "no digest" '{"algorithm":"sha256"}'
bad 400 missing_field "no algorithm" "{\"digest\":\"$d32\"}"
bad 400 invalid_digest "digest not base64" '{"digest":"!!!!","algorithm":"sha256"}'
bad 400 invalid_digest "digest unpadded" "{\"digest\":\"$(printf %s "$d32" | tr -d =)\",\"algorithm\":\"sha256\"}"
bad 400 invalid_digest "digest url-safe alphabet" '{"digest":"____________________________________________","algorithm":"sha256"}'
bad 400 digest_length "31-byte sha256" "{\"digest\":\"$d31\",\"algorithm\":\"sha256\"}"
bad 400 digest_length "32-byte sha384" "{\"digest\":\"$d32\",\"algorithm\":\"sha384\"}"
bad 400 digest_length "48-byte sha512" "{\"digest\":\"$d48\",\"algorithm\":\"sha512\"}"
bad 400 unknown_algorithm "md5" "{\"digest\":\"$d32\",\"algorithm\":\"md5\"}"
bad 400 unknown_algorithm "sha1" "{\"digest\":\"$d32\",\"algorithm\":\"sha1\"}"
bad 400 unknown_format "format pkcs1" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"format\":\"pkcs1\"}"
bad 404 unknown_profile "unknown profile" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"profile\":\"nope\"}"
bad 400 unknown_field "unknown top-level field" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"extra\":1}"
bad 400 unknown_field "unknown metadata field" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"metadata\":{\"x\":\"y\"}}"
long=$(head -c 300 /dev/zero | tr '\0' a)
bad 400 field_too_long "filename over 260 bytes" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\",\"metadata\":{\"filename\":\"$long\"}}"
n=$(dbq "SELECT count(*) FROM audit WHERE outcome = 1 AND profile = 'nope'")
[ "$n" = 1 ] && ok "unknown profile is audited as denied" || fail "unknown profile audit rows: $n"

head -c 70000 /dev/zero | tr '\0' a >"$tmp/big.json"
call POST /api/v1/sign/digest "$admin_key" -H 'Content-Type: application/json' \
    --data-binary @"$tmp/big.json"
expect_error 413 body_too_large "body over 64 KiB"
call POST /api/v1/sign/digest "$admin_key" -H 'Content-Type: application/json' \
    -H 'Transfer-Encoding: chunked' --data-binary @"$tmp/big.json"
expect_error 413 body_too_large "chunked body over 64 KiB"
call POST /api/v1/sign/digest "$admin_key" -H 'Content-Type: text/plain' \
    --data-binary "{\"digest\":\"$d32\",\"algorithm\":\"sha256\"}"
expect_error 415 unsupported_media_type "text/plain"
call POST /api/v1/sign/digest "$admin_key" --data-binary "{\"digest\":\"$d32\",\"algorithm\":\"sha256\"}"
expect_error 415 unsupported_media_type "form content type"
call GET /api/v1/sign/digest "$admin_key"
expect_error 405 method_not_allowed "GET on the sign endpoint"
# TLS: 1.3, and 1.2 with ECDHE + AEAD only (no CBC-SHA1, no RSA key transport).
hostport=${base#https://}
tls_cipher() { # s_client ARGS...: the negotiated cipher, or (NONE)
    echo | timeout 10 openssl s_client -connect "$hostport" "$@" 2>/dev/null |
        sed -n 's/.*Cipher is \([^ ]*\).*/\1/p' | head -n 1
}
check_eq "TLS 1.2 CBC-SHA1 suite refused" "$(tls_cipher -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA)" "(NONE)"
check_eq "TLS 1.2 RSA key transport refused" "$(tls_cipher -tls1_2 -cipher AES128-GCM-SHA256)" "(NONE)"
check_eq "TLS 1.1 refused" "$(tls_cipher -tls1_1)" "(NONE)"
check_eq "TLS 1.2 ECDHE + AES-GCM accepted" \
    "$(tls_cipher -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256)" "ECDHE-ECDSA-AES128-GCM-SHA256"
check_eq "TLS 1.3 accepted" "$(tls_cipher -tls1_3)" "TLS_AES_256_GCM_SHA384"
call DELETE /api/v1/keys "$admin_key"
expect_error 405 method_not_allowed "DELETE on the keys collection"
check_eq "405 Allow lists every method of the path" \
    "$(tr -d '\r' <"$tmp/headers" | sed -n 's/^[Aa]llow: *//p')" "GET, POST"
call GET /nope -
expect_error 404 not_found "unknown path"
call POST /tsa - -H 'Content-Type: application/json' --data-binary '{}'
expect_error 415 unsupported_media_type "TSA with a JSON body"

# --- tenancy: another org's request ---------------------------------------------
dbq "INSERT INTO orgs(name, created_at) VALUES('other', 0)"
"$QWICKD" apikey create --data "$data" --org other --role admin --json >"$tmp/other.json"
other_key=$(json_get "$tmp/other.json" key 2>/dev/null || json_get "$tmp/other.json" api_key)
call GET "/api/v1/sign/requests/$rid" "$other_key"
expect_error 404 not_found "another org's request id"
sign_json "$other_key" "{\"digest\":\"$d32\",\"algorithm\":\"sha256\"}"
expect_error 404 unknown_profile "another org has no 'default' profile"
call GET /api/v1/keys "$other_key"
if [ "$(cat "$tmp/status")" = 200 ] && ! grep -q '"name":"ci"' "$tmp/body"; then
    ok "key list is per org"
else fail "key list of the other org: $(head -c 300 "$tmp/body")"; fi

# --- the TSA --------------------------------------------------------------------
for alg in sha256 sha384 sha512; do
    openssl ts -query -data "$tmp/content.bin" -cert "-$alg" -out "$tmp/q.tsq" 2>/dev/null
    call POST /tsa - -H 'Content-Type: application/timestamp-query' --data-binary @"$tmp/q.tsq"
    cp "$tmp/body" "$tmp/r.tsr"
    if [ "$(cat "$tmp/status")" = 200 ] && [ "$(cat "$tmp/ctype")" = application/timestamp-reply ]; then
        check "TSA $alg: openssl ts -verify" openssl ts -verify -in "$tmp/r.tsr" \
            -queryfile "$tmp/q.tsq" -CAfile "$tsaroot"
    else fail "TSA $alg: $(cat "$tmp/status") $(cat "$tmp/ctype")"; fi
done
openssl ts -reply -in "$tmp/r.tsr" -text 2>/dev/null | sed -n 's/^Serial number: //p' >"$tmp/s1"
openssl ts -query -data "$tmp/content.bin" -cert -sha256 -out "$tmp/q.tsq" 2>/dev/null
call POST /tsa - -H 'Content-Type: application/timestamp-query' --data-binary @"$tmp/q.tsq"
openssl ts -reply -in "$tmp/body" -text 2>/dev/null | sed -n 's/^Serial number: //p' >"$tmp/s2"
if [ -s "$tmp/s1" ] && ! cmp -s "$tmp/s1" "$tmp/s2"; then ok "TSA serials differ"; else
    fail "TSA serials: $(cat "$tmp/s1") $(cat "$tmp/s2")"; fi
for junk in garbage trailing sha1; do
    case $junk in
    garbage) printf 'not DER at all' >"$tmp/q.bad" ;;
    trailing) { cat "$tmp/q.tsq"; printf 'x'; } >"$tmp/q.bad" ;;
    sha1) openssl ts -query -data "$tmp/content.bin" -sha1 -out "$tmp/q.bad" 2>/dev/null ;;
    esac
    call POST /tsa - -H 'Content-Type: application/timestamp-query' --data-binary @"$tmp/q.bad"
    if [ "$(cat "$tmp/status")" = 200 ] &&
        openssl ts -reply -in "$tmp/body" -text 2>/dev/null | grep -q 'Status: Rejected'; then
        ok "TSA $junk request -> rejection TimeStampResp"
    else fail "TSA $junk: $(cat "$tmp/status")"; fi
done

# --- one signature embedded by the CLI, accepted by osslsigncode ---------------------
if command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
    build_pe "$tmp/hello.exe" x64 "$SRC_ROOT/tests/fixtures/src/hello.c"
    check "qwick sign through the API" "$QWICK" sign --server "$base" --api-key "$admin_key" \
        --cacert "$tlsca" --ca "$root" --tsa-ca "$tsaroot" "$tmp/hello.exe"
    check "osslsigncode accepts it" osslsigncode verify -CAfile "$root" \
        -TSA-CAfile "$tsaroot" -in "$tmp/hello.exe"
fi

# --- 200 concurrent signing requests ----------------------------------------------------
d=$(b64file "$tmp/digest.bin")
printf '{"digest":"%s","algorithm":"sha512","format":"cms","metadata":{"filename":"load.bin"}}' \
    "$d" >"$tmp/load.json"
mkdir "$tmp/load"
seq 1 200 | xargs -P 50 -I{} sh -c 'curl -s --cacert "$1" -o "$2/$3.json" -w "%{http_code}\n" \
    -H "Authorization: Bearer $4" -H "Content-Type: application/json" \
    --data-binary @"$5" "$6/api/v1/sign/digest" >"$2/$3.code"' _ "$tlsca" "$tmp/load" {} \
    "$admin_key" "$tmp/load.json" "$base" || true
n200=$(cat "$tmp/load"/*.code | grep -c '^200$' || true)
[ "$n200" = 200 ] && ok "200 concurrent requests all 200" || fail "concurrent: $n200 of 200 got 200"
json_each requestId "$tmp/load"/*.json 2>/dev/null | sort -u >"$tmp/load.ids"
[ "$(wc -l <"$tmp/load.ids")" = 200 ] && ok "200 distinct request ids" ||
    fail "distinct ids: $(wc -l <"$tmp/load.ids")"
dbq "SELECT request_id FROM audit WHERE action = 'sign.digest' AND filename = 'load.bin' GROUP BY request_id HAVING count(*) = 1" |
    sort >"$tmp/audit.ids"
if cmp -s "$tmp/load.ids" "$tmp/audit.ids"; then ok "each concurrent request has exactly one audit row"; else
    fail "audit rows: $(comm -3 "$tmp/load.ids" "$tmp/audit.ids" | head -n 5)"; fi
check "audit hash chain intact" "$QWICKD" audit verify --data "$data"

# --- metrics -------------------------------------------------------------------------
call GET /metrics -
expect_error 401 missing_operator_token "metrics without a token"
call GET /metrics qo_0000000000000000000000000000000000000000000
expect_error 401 unknown_operator_token "metrics with an unknown operator token"
call GET /metrics "$viewer_key"
expect_error 403 forbidden "metrics with an org's key (any role)"
call GET /metrics "$admin_key"
expect_error 403 forbidden "metrics with an org's admin key"
call GET /metrics "$QWICKD_OPERATOR_TOKEN"
m="$tmp/body"
expect_status 200 "metrics with the operator token"
grep -q '^qwickd_http_requests_total{route="sign_digest",method="POST",status="200"} [0-9]' "$m" &&
    grep -q '^qwickd_signatures_total{profile="default",algorithm="sha512",format="cms"} [0-9]' "$m" &&
    grep -q '^qwickd_errors_total{code="unknown_field"} 2' "$m" &&
    grep -q '^qwickd_http_request_duration_seconds_bucket{route="sign_digest",le="+Inf"} [0-9]' "$m" &&
    grep -q '^qwickd_tsa_responses_total{status="2"} [0-9]' "$m" &&
    grep -q '^# TYPE qwickd_http_request_duration_seconds histogram' "$m" &&
    ok "metrics" || { fail "metrics"; head -n 40 "$m"; }
# Group commit at work: every write so far (>= the 200 concurrent requests) was
# carried by fewer commits (SQLite's writer thread, or the PostgreSQL driver's
# batching writer).
awk '/^qwickd_store_commits_total / {c = $2} /^qwickd_store_writes_total / {w = $2}
     END {exit !(w >= 200 && c >= 1 && c < w)}' "$m" &&
    grep -q '^qwickd_store_delayed_commits_total [0-9]' "$m" &&
    ok "metrics: store group commits" || { fail "metrics: store group commits"; grep store "$m"; }

# --- SIGTERM under load: no acknowledged request lost ----------------------------------
mkdir "$tmp/term"
seq 1 400 | xargs -P 20 -I{} sh -c 'curl -s --cacert "$1" -o "$2/$3.json" -w "%{http_code}\n" \
    -H "Authorization: Bearer $4" -H "Content-Type: application/json" \
    --data-binary @"$5" "$6/api/v1/sign/digest" >"$2/$3.code"' _ "$tlsca" "$tmp/term" {} \
    "$admin_key" "$tmp/load.json" "$base" &
loadpid=$!
# SIGTERM once some requests have been answered and more are in flight
i=0
while [ "$(cat "$tmp/term"/*.code 2>/dev/null | grep -c '^200$' || true)" -lt 20 ] && [ "$i" -lt 150 ]; do
    sleep 0.1
    i=$((i + 1))
done
stop_qwickd
wait "$loadpid" || true
if [ "$stopped" = 0 ]; then
    ok "SIGTERM under load: exit 0"
else
    fail "SIGTERM: exit $stopped"
    _show "$tmp/server.log" # the panic or abort, if it said one
fi
acked=0
lost=0
: >"$tmp/term.acked"
for c in "$tmp/term"/*.code; do
    [ "$(cat "$c")" = 200 ] || continue
    acked=$((acked + 1))
    echo "${c%.code}.json" >>"$tmp/term.acked"
done
if [ "$acked" -gt 0 ]; then
    # One query for all: the acknowledged ids without their signed row and
    # its audit row (request ids are hex, safe to quote).
    # shellcheck disable=SC2046 # one file per line, no spaces in the names
    vals=$(json_each requestId $(cat "$tmp/term.acked") | sed "s/.*/('&')/" | paste -sd, -)
    lost=$(dbq "SELECT count(*) FROM (VALUES $vals) AS v WHERE
        (SELECT count(*) FROM sign_requests WHERE id = v.column1 AND status = 3) +
        (SELECT count(*) FROM audit WHERE request_id = v.column1) <> 2")
fi
if [ "$acked" -gt 0 ] && [ "$lost" = 0 ]; then
    ok "SIGTERM under load: all $acked acknowledged requests recorded"
else fail "SIGTERM under load: $acked acknowledged, $lost without rows"; fi
grep -q 'msg=stopped' "$tmp/server.log" && ok "graceful stop logged" || fail "no stop line"

# --- plain HTTP --------------------------------------------------------------------------
st=0
timeout 10 "$QWICKD" serve --data "$data" --listen 0.0.0.0:0 --plain-http --port-file "$tmp/p2" \
    2>"$tmp/plain.err" || st=$?
if [ "$st" != 0 ] && [ ! -e "$tmp/p2" ] && grep -q loopback "$tmp/plain.err"; then
    ok "plain HTTP refused on 0.0.0.0"
else fail "plain HTTP on 0.0.0.0: exit $st"; fi
start_qwickd "$data" --plain-http
if [ "$(curl -s "$QWICKD_URL/healthz")" = '{"status":"ok"}' ]; then
    ok "plain HTTP on loopback with --plain-http"
else fail "plain HTTP on loopback"; fi
stop_qwickd
[ "$stopped" = 0 ] && ok "plain server stops cleanly" || fail "plain server exit $stopped"

# every log line is logfmt with the request fields
if grep 'msg=request ' "$tmp/server.log" | head -n 50 |
    grep -v '^ts=[0-9T:.-]*Z level=[a-z]* msg=request method=[A-Z]* path=[^ ]* status=[0-9]* ms=[0-9.]* request_id=req_[0-9a-f]* ' |
    grep -q .; then
    fail "log lines not in the expected logfmt shape"
else ok "structured log lines"; fi

# sanitizer builds report to the server's stderr without changing its status
if grep -q 'runtime error\|Sanitizer' "$tmp/server.log"; then
    fail "sanitizer report in the server log"
    grep -A 20 'runtime error\|Sanitizer' "$tmp/server.log" | head -n 40
else ok "no sanitizer reports"; fi

t_done
