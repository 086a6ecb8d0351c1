#!/bin/sh
# qwickd init / apikey / audit against the real binary and openssl:
# data directory layout and permissions, the dev PKI (EKUs, critical
# timeStamping, SAN, chains), no plaintext code-signing key anywhere, API key
# administration, refusal to re-initialise, audit chain tamper detection.
set -eu

: "${QWICKD:?}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT INT TERM
D="$WORK/data"
fails=0

ok() { printf 'ok   %s\n' "$1"; }
fail() { printf 'FAIL %s\n' "$1"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    desc=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$desc"; else fail "$desc"; fi
}
json_get() { # json_get FILE KEY  (top-level string/number)
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}
mode() { stat -c %a "$1"; }

# --- init --json -----------------------------------------------------------
"$QWICKD" init --data "$D" --json >"$WORK/init.json"
check "init --json prints valid JSON" python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/init.json"
KEY=$(json_get "$WORK/init.json" api_key)
ROOT=$(json_get "$WORK/init.json" root_ca)
TSAROOT=$(json_get "$WORK/init.json" tsa_root_ca)
TLSCA=$(json_get "$WORK/init.json" tls_ca)
SERVER=$(json_get "$WORK/init.json" server)
case "$KEY" in qk_*) ok "api key has the qk_ prefix" ;; *) fail "api key has the qk_ prefix" ;; esac
[ ${#KEY} -ge 25 ] && ok "api key is long (>=128 bits)" || fail "api key is long"
[ "$SERVER" = "https://127.0.0.1:8443" ] && ok "server URL" || fail "server URL ($SERVER)"
for f in "$ROOT" "$TSAROOT" "$TLSCA"; do
    case "$f" in /*) [ -f "$f" ] && ok "path $f exists" || fail "path $f exists" ;;
    *) fail "path $f is absolute" ;; esac
done

# --- permissions -------------------------------------------------------------
[ "$(mode "$D")" = 700 ] && ok "data dir is 0700" || fail "data dir is 0700 ($(mode "$D"))"
for f in master.key qwick.db tls.key tsa.key.sealed qwickd.json; do
    [ "$(mode "$D/$f")" = 600 ] && ok "$f is 0600" || fail "$f is 0600 ($(mode "$D/$f"))"
done

# --- certificates ------------------------------------------------------------
x509() { openssl x509 -in "$1" -noout -text 2>/dev/null; }
x509 "$D/codesign.pem" | grep -q "Code Signing" && ok "leaf EKU codeSigning" || fail "leaf EKU codeSigning"
x509 "$D/codesign.pem" | grep -q "Digital Signature" && ok "leaf KU digitalSignature" || fail "leaf KU"
x509 "$D/tsa.pem" | grep -A1 "Extended Key Usage: critical" | grep -q "Time Stamping" &&
    ok "TSA EKU timeStamping is critical" || fail "TSA EKU timeStamping is critical"
x509 "$D/tls.pem" | grep -q "IP Address:127.0.0.1" && ok "TLS SAN IP:127.0.0.1" || fail "TLS SAN IP"
x509 "$D/tls.pem" | grep -q "DNS:localhost" && ok "TLS SAN DNS:localhost" || fail "TLS SAN DNS"
x509 "$D/tls.pem" | grep -q "TLS Web Server Authentication" && ok "TLS EKU serverAuth" || fail "TLS EKU"
x509 "$ROOT" | grep -q "CA:TRUE" && ok "root is a CA" || fail "root is a CA"
x509 "$ROOT" | grep -q "Certificate Sign" && ok "root KU keyCertSign" || fail "root KU keyCertSign"
serial=$(openssl x509 -in "$D/codesign.pem" -noout -serial | cut -d= -f2)
[ ${#serial} -ge 16 ] && ok "random serial >= 64 bits" || fail "serial $serial"
check "openssl verify code-signing chain" openssl verify -CAfile "$ROOT" "$D/codesign.pem"
check "openssl verify TSA chain" openssl verify -CAfile "$TSAROOT" -purpose timestampsign "$D/tsa.pem"
check "openssl verify TLS chain" openssl verify -CAfile "$TLSCA" -purpose sslserver "$D/tls.pem"
if openssl verify -CAfile "$ROOT" "$D/tls.pem" >/dev/null 2>&1; then
    fail "hierarchies are separate (TLS cert must not chain to the code-signing root)"
else
    ok "hierarchies are separate"
fi
check "TLS key matches TLS cert" sh -c "[ \"\$(openssl x509 -in '$D/tls.pem' -noout -pubkey)\" = \"\$(openssl pkey -in '$D/tls.key' -pubout)\" ]"

# --- no plaintext private key but the TLS one ----------------------------------
leaks=$(grep -rla "PRIVATE KEY" "$D" | grep -v "/tls.key$" || true)
[ -z "$leaks" ] && ok "no plaintext private key in DIR except tls.key" || fail "plaintext key in: $leaks"
grep -qa "BEGIN" "$D/tsa.key.sealed" && fail "TSA key is sealed" || ok "TSA key is sealed"
python3 - "$D/qwick.db" <<'PY' && ok "code-signing key sealed in signing_keys" || fail "code-signing key sealed in signing_keys"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT kind, sealed FROM signing_keys").fetchall()
assert len(rows) == 1 and rows[0][0] == "local-pem"
assert rows[0][1][:4] == b"QKS1" and b"PRIVATE" not in rows[0][1]
(n,) = db.execute("SELECT count(*) FROM profiles WHERE name = 'default'").fetchone()
assert n == 1
PY

# --- re-init refuses, touching nothing ---------------------------------------------
before=$(cd "$D" && ls -lA --time-style=+%s . && sha256sum master.key qwick.db)
if "$QWICKD" init --data "$D" >/dev/null 2>"$WORK/err"; then fail "init refuses an existing DIR"; else ok "init refuses an existing DIR"; fi
after=$(cd "$D" && ls -lA --time-style=+%s . && sha256sum master.key qwick.db)
[ "$before" = "$after" ] && ok "refused init left DIR untouched" || fail "refused init left DIR untouched"
mkdir "$WORK/nonempty" && echo keep >"$WORK/nonempty/file"
if "$QWICKD" init --data "$WORK/nonempty" >/dev/null 2>&1; then fail "init refuses a non-empty DIR"; else ok "init refuses a non-empty DIR"; fi
[ "$(ls -A "$WORK/nonempty")" = file ] && ok "non-empty DIR untouched" || fail "non-empty DIR untouched"
mkdir "$WORK/empty"
check "init accepts an existing empty DIR" "$QWICKD" init --data "$WORK/empty"
[ "$(mode "$WORK/empty")" = 700 ] && ok "empty DIR tightened to 0700" || fail "empty DIR mode"
if "$QWICKD" init >/dev/null 2>&1; then fail "init without --data is a usage error"; else ok "init without --data is a usage error"; fi

# --- apikey create / list / revoke ----------------------------------------------------
"$QWICKD" apikey create --data "$D" --name ci --role signer --expires-in 3600 --json >"$WORK/k.json"
KID=$(json_get "$WORK/k.json" id)
K2=$(json_get "$WORK/k.json" api_key)
[ "$(json_get "$WORK/k.json" role)" = signer ] && ok "apikey create --role signer" || fail "apikey create role"
[ "$K2" != "$KEY" ] && ok "new key differs" || fail "new key differs"
"$QWICKD" apikey list --data "$D" --json >"$WORK/list.json"
python3 - "$WORK/list.json" "$KID" "$K2" <<'PY' && ok "apikey list --json shows the key, never the secret" || fail "apikey list --json"
import json, sys
keys = json.load(open(sys.argv[1]))
k = [k for k in keys if k["id"] == int(sys.argv[2])][0]
assert k["name"] == "ci" and k["revoked_at"] == 0 and k["expires_at"] > 0
assert k["prefix"] == sys.argv[3][:10]
assert sys.argv[3] not in open(sys.argv[1]).read()
PY
"$QWICKD" apikey list --data "$D" | grep -q "qk_" && ok "apikey list (table)" || fail "apikey list (table)"
grep -qa "$K2" "$D/qwick.db" && fail "key stored only as a hash" || ok "key stored only as a hash"
check "apikey revoke" "$QWICKD" apikey revoke --data "$D" "$KID"
"$QWICKD" apikey list --data "$D" --json | python3 -c '
import json, sys
k = [k for k in json.load(sys.stdin) if k["id"] == int(sys.argv[1])][0]
assert k["revoked_at"] > 0' "$KID" && ok "revoked key shows revoked_at" || fail "revoked_at"
if "$QWICKD" apikey revoke --data "$D" 9999 >/dev/null 2>&1; then fail "revoke unknown id fails"; else ok "revoke unknown id fails"; fi
if "$QWICKD" apikey create --data "$D" --role root >/dev/null 2>&1; then fail "unknown role refused"; else ok "unknown role refused"; fi
if "$QWICKD" apikey create --data "$D" --expires 2001-01-01 >/dev/null 2>&1; then fail "past expiry refused"; else ok "past expiry refused"; fi
check "apikey create --expires DATE" "$QWICKD" apikey create --data "$D" --expires 2099-12-31
if "$QWICKD" apikey list --data "$WORK/nonempty" >/dev/null 2>&1; then fail "apikey on a non-data dir fails"; else ok "apikey on a non-data dir fails"; fi
[ ! -e "$WORK/nonempty/qwick.db" ] && ok "no database created in a non-data dir" || fail "database created in a non-data dir"

# --- audit chain ----------------------------------------------------------------------
check "audit verify (intact)" "$QWICKD" audit verify --data "$D"
python3 -c 'import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); db.execute("UPDATE audit SET detail = ? WHERE seq = 2", ("edited",)); db.commit()' "$D/qwick.db"
if "$QWICKD" audit verify --data "$D" >/dev/null 2>&1; then fail "audit verify detects an edited row"; else ok "audit verify detects an edited row"; fi

echo "server_init: $fails failed"
[ "$fails" -eq 0 ]
