#!/bin/sh
# sign_interop.sh: signatures made by libqwick (through tests/tools/qk-testsign)
# checked by independent verifiers.
#
#   - PE32 and PE32+ built by mingw-w64, signed with RSA-3072 and ECDSA P-256
#     leaves under sha256/sha384/sha512, with and without an RFC 3161 timestamp
#     from tests/tools/tsa_server.py (answers made by `openssl ts -reply`):
#     osslsigncode verify (chain + timestamp), sbverify on PE32+ (sha256 only:
#     sbverify supports no other image digest);
#   - nested signatures appended to signed files: osslsigncode counts them all;
#   - detached CMS: openssl cms -verify;
#   - negative: a tampered byte, an untrusted root, TSA failures.
#
# Environment (from meson): BUILD_ROOT, SRC_ROOT. Only 127.0.0.1 is used.
# Exits non-zero on the first failed check.
set -eu

: "${BUILD_ROOT:?BUILD_ROOT not set}"
: "${SRC_ROOT:?SRC_ROOT not set}"
SIGN=$BUILD_ROOT/tests/tools/qk-testsign
TOOLS=$SRC_ROOT/tests/tools

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qk-sign-interop.XXXXXX")
pids=""
cleanup() {
    for p in $pids; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

checks=0
ok() {
    checks=$((checks + 1))
    echo "ok    $*"
}
fail() {
    echo "FAIL  $*" >&2
    exit 1
}
# run LOG CMD...: runs CMD with its output in LOG; shows LOG when it fails.
run() {
    log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        return 1
    fi
}

for t in osslsigncode sbverify openssl python3 x86_64-w64-mingw32-gcc i686-w64-mingw32-gcc; do
    command -v "$t" >/dev/null 2>&1 || fail "required tool '$t' is not installed"
done
[ -x "$SIGN" ] || fail "$SIGN not built"

# --- PKI, sample PEs, TSA ------------------------------------------------------
sh "$TOOLS/mkpki.sh" "$tmp/pki" || fail "mkpki.sh"
P=$tmp/pki
echo "info  test PKI in $P"

cat >"$tmp/app.c" <<'EOF'
#include <stdio.h>
static const char banner[] = "qwick sign interop sample";
int main(int argc, char **argv)
{
    (void)argv;
    printf("%s %d\n", banner, argc);
    return 0;
}
EOF
x86_64-w64-mingw32-gcc -O2 -o "$tmp/app64.exe" "$tmp/app.c" || fail "mingw x86_64 build"
i686-w64-mingw32-gcc -O2 -o "$tmp/app32.exe" "$tmp/app.c" || fail "mingw i686 build"
echo "info  built PE32+ app64.exe and PE32 app32.exe"

# start_tsa NAME [ARGS...]: starts tsa_server.py and sets $tsa_url.
start_tsa() {
    name=$1
    shift
    python3 "$TOOLS/tsa_server.py" --pki "$P" --port-file "$tmp/$name.port" "$@" \
        2>>"$tmp/$name.log" &
    pids="$pids $!"
    i=0
    while [ ! -s "$tmp/$name.port" ]; do
        i=$((i + 1))
        [ "$i" -le 100 ] || { cat "$tmp/$name.log" >&2; fail "TSA $name did not start"; }
        sleep 0.1
    done
    tsa_url="http://127.0.0.1:$(tr -d ' \n' <"$tmp/$name.port")/"
}
start_tsa tsa
TSA=$tsa_url
echo "info  TSA at $TSA"

key_of() { if [ "$1" = rsa ]; then echo "$P/leaf"; else echo "$P/ec-leaf"; fi; }

# verify_ossl FILE [WANT_TS] [NSIGS]
verify_ossl() {
    f=$1
    want_ts=${2:-no}
    nsigs=${3:-1}
    run "$f.ossl" osslsigncode verify -CAfile "$P/root.pem" -TSA-CAfile "$P/tsa-root.pem" \
        -in "$f" || return 1
    grep -q "^Signature verification: ok" "$f.ossl" || return 1
    if [ "$want_ts" = yes ]; then
        grep -q "Timestamp Server Signature verification: ok" "$f.ossl" || return 1
    fi
    n=$(grep -c "^Signature verification: ok" "$f.ossl")
    [ "$n" -eq "$nsigs" ] || { echo "expected $nsigs signatures, osslsigncode verified $n" >&2; return 1; }
}

# --- the matrix ------------------------------------------------------------------
for bits in 32 64; do
    for kt in rsa ec; do
        k=$(key_of $kt)
        for alg in sha256 sha384 sha512; do
            for ts in no yes; do
                out=$tmp/s$bits-$kt-$alg-ts$ts.exe
                set -- --key "$k.key" --cert "$k.pem" --chain "$P/chain.pem" --alg "$alg" \
                    --name "Qwick interop" --url "https://example.invalid/qwick"
                [ "$ts" = yes ] && set -- "$@" --tsa "$TSA"
                run "$out.sign" "$SIGN" "$@" "$tmp/app$bits.exe" "$out" ||
                    fail "qk-testsign PE$bits $kt $alg timestamp=$ts"
                verify_ossl "$out" "$ts" ||
                    fail "osslsigncode verify PE$bits $kt $alg timestamp=$ts"
                ok "PE$bits $kt $alg timestamp=$ts: osslsigncode verify"
                # sbverify knows only SHA-256 image digests.
                if [ "$bits" = 64 ] && [ "$alg" = sha256 ]; then
                    run "$out.sbv" sbverify --cert "$k.pem" "$out" ||
                        fail "sbverify PE$bits $kt $alg timestamp=$ts"
                    ok "PE$bits $kt $alg timestamp=$ts: sbverify --cert"
                fi
            done
        done
    done
done

# --- nested signatures ------------------------------------------------------------
for bits in 32 64; do
    base=$tmp/s$bits-rsa-sha256-tsyes.exe
    n1=$tmp/n$bits-1.exe
    n2=$tmp/n$bits-2.exe
    run "$n1.sign" "$SIGN" --key "$P/ec-leaf.key" --cert "$P/ec-leaf.pem" --chain "$P/chain.pem" \
        --alg sha384 --tsa "$TSA" --append "$base" "$n1" || fail "append to PE$bits"
    verify_ossl "$n1" yes 2 || fail "osslsigncode verify nested PE$bits (2 signatures)"
    ok "PE$bits nested: outer rsa/sha256 + appended ec/sha384, both timestamped"
    run "$n2.sign" "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
        --alg sha512 --append "$n1" "$n2" || fail "second append to PE$bits"
    verify_ossl "$n2" yes 3 || fail "osslsigncode verify nested PE$bits (3 signatures)"
    ok "PE$bits nested: a third signature joins the same nested attribute"
done
run "$tmp/n64-2.sbv" sbverify --cert "$P/leaf.pem" "$tmp/n64-2.exe" ||
    fail "sbverify on a file with nested signatures"
ok "PE64 nested: sbverify still accepts the outer signature"
# Appending to an unsigned file is refused.
if "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --append "$tmp/app64.exe" "$tmp/x.exe" \
    >"$tmp/x.log" 2>&1; then
    fail "--append on an unsigned file succeeded"
fi
ok "append to an unsigned file is refused"

# --- re-signing replaces the old signature ------------------------------------------
resigned=$tmp/resigned.exe
run "$resigned.sign" "$SIGN" --key "$P/ec-leaf.key" --cert "$P/ec-leaf.pem" \
    --chain "$P/chain.pem" "$tmp/n64-2.exe" "$resigned" || fail "re-signing a signed PE"
verify_ossl "$resigned" no 1 || fail "osslsigncode verify after re-signing"
ok "re-signing a file with nested signatures leaves exactly one"

# --- detached CMS -------------------------------------------------------------------
head -c 100000 "$tmp/app64.exe" >"$tmp/payload.bin"
for kt in rsa ec; do
    k=$(key_of $kt)
    for alg in sha256 sha512; do
        p7=$tmp/payload-$kt-$alg.p7s
        run "$p7.sign" "$SIGN" --format cms --key "$k.key" --cert "$k.pem" \
            --chain "$P/chain.pem" --alg "$alg" --tsa "$TSA" "$tmp/payload.bin" "$p7" ||
            fail "qk-testsign --format cms $kt $alg"
        run "$p7.verify" openssl cms -verify -binary -inform DER -in "$p7" \
            -content "$tmp/payload.bin" -CAfile "$P/root.pem" -purpose any -out /dev/null ||
            fail "openssl cms -verify $kt $alg"
        ok "detached CMS $kt $alg: openssl cms -verify"
    done
done
printf 'x' >>"$tmp/payload.bin"
if openssl cms -verify -binary -inform DER -in "$tmp/payload-rsa-sha256.p7s" \
    -content "$tmp/payload.bin" -CAfile "$P/root.pem" -purpose any -out /dev/null \
    >"$tmp/cms-bad.log" 2>&1; then
    fail "openssl cms -verify accepted changed content"
fi
ok "detached CMS: changed content is rejected"

# --- negative cases -------------------------------------------------------------------
for f in s64-rsa-sha256-tsyes s32-ec-sha384-tsno; do
    cp "$tmp/$f.exe" "$tmp/$f-tampered.exe"
    python3 - "$tmp/$f-tampered.exe" <<'EOF'
import sys
# Flip one byte in the first section's raw data (after the headers).
with open(sys.argv[1], "r+b") as fh:
    fh.seek(0x420)
    b = fh.read(1)
    fh.seek(0x420)
    fh.write(bytes([b[0] ^ 0x5a]))
EOF
    if osslsigncode verify -CAfile "$P/root.pem" -TSA-CAfile "$P/tsa-root.pem" \
        -in "$tmp/$f-tampered.exe" >"$tmp/$f-tampered.log" 2>&1; then
        fail "osslsigncode accepted a tampered $f"
    fi
    ok "$f with one byte changed: osslsigncode verify fails"
done

run "$tmp/untrusted.sign" "$SIGN" --key "$P/other-leaf.key" --cert "$P/other-leaf.pem" \
    --chain "$P/other-root.pem" "$tmp/app64.exe" "$tmp/untrusted.exe" || fail "signing (untrusted)"
if osslsigncode verify -CAfile "$P/root.pem" -in "$tmp/untrusted.exe" >"$tmp/untrusted.log" 2>&1; then
    fail "osslsigncode accepted a signature from an untrusted root"
fi
ok "signature under another root: osslsigncode verify fails against root.pem"

# A key that does not match the certificate never produces a signature.
if "$SIGN" --key "$P/ec-leaf.key" --cert "$P/leaf.pem" "$tmp/app64.exe" "$tmp/mismatch.exe" \
    >"$tmp/mismatch.log" 2>&1; then
    fail "signing with a key that does not match the certificate succeeded"
fi
[ ! -e "$tmp/mismatch.exe" ] || fail "a file was written for a mismatched key"
ok "key/certificate mismatch is refused before anything is written"

# --- TSA transport behaviour ------------------------------------------------------------
start_tsa flaky --fail-first 2
run "$tmp/flaky.sign" "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
    --tsa "$tsa_url" "$tmp/app64.exe" "$tmp/flaky.exe" || fail "TSA retry after two 503s"
verify_ossl "$tmp/flaky.exe" yes || fail "verify after TSA retries"
ok "TSA answering 503 twice: retried with backoff, then timestamped"

# Port 1 on loopback refuses connections: the next URL is used.
run "$tmp/fallback.sign" "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
    --tsa "http://127.0.0.1:1/" --tsa "$TSA" "$tmp/app64.exe" "$tmp/fallback.exe" ||
    fail "TSA fallback to the second URL"
verify_ossl "$tmp/fallback.exe" yes || fail "verify after TSA fallback"
ok "first TSA URL refusing connections: the second one is used"

start_tsa badtype --bad-content-type
if "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --tsa "$tsa_url" "$tmp/app64.exe" \
    "$tmp/badtype.exe" >"$tmp/badtype.log" 2>&1; then
    fail "a TSA reply with the wrong content type was accepted"
fi
grep -q "content type" "$tmp/badtype.log" || { cat "$tmp/badtype.log" >&2; fail "no content-type message"; }
ok "TSA reply that is not application/timestamp-reply is refused"

echo "sign_interop: all $checks checks passed"
