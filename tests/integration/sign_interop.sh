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
# Exits non-zero when any check failed.
set -eu
: "${BUILD_ROOT:?BUILD_ROOT not set}"
: "${SRC_ROOT:?SRC_ROOT not set}"
. "$SRC_ROOT/tests/integration/lib.sh"
SIGN=$BUILD_ROOT/tests/tools/qk-testsign

t_init sign_interop
need osslsigncode sbverify openssl python3 x86_64-w64-mingw32-gcc i686-w64-mingw32-gcc
[ -x "$SIGN" ] || die "$SIGN not built"

# --- PKI, sample PEs, TSA ------------------------------------------------------
P=$tmp/pki
make_pki "$P"
echo "info: test PKI in $P"

cat >"$tmp/app.c" <<'CEOF'
#include <stdio.h>
static const char banner[] = "qwick sign interop sample";
int main(int argc, char **argv)
{
    (void)argv;
    printf("%s %d\n", banner, argc);
    return 0;
}
CEOF
build_pe "$tmp/app64.exe" x64 "$tmp/app.c"
build_pe "$tmp/app32.exe" x86 "$tmp/app.c"
echo "info: built PE32+ app64.exe and PE32 app32.exe"

start_tsa "$P"
TSA=$TSA_URL/
echo "info: TSA at $TSA"

key_of() { if [ "$1" = rsa ]; then echo "$P/leaf"; else echo "$P/ec-leaf"; fi; }
verify_ossl() { ossl_verify "$P/root.pem" "$P/tsa-root.pem" "$1" "${3:-1}" "${2:-no}"; } # FILE [WANT_TS] [NSIGS]
# sign_verify DESC OUT WANT_TS NSIGS qk-testsign-ARGS...: signs into OUT, then
# the result must pass osslsigncode verify with NSIGS signatures.
sign_verify() {
    _what=$1
    _out=$2
    _ts=$3
    _nsigs=$4
    shift 4
    if "$SIGN" "$@" >"$_out.sign" 2>&1; then
        check "$_what" verify_ossl "$_out" "$_ts" "$_nsigs"
    else
        fail "$_what: qk-testsign failed"
        _show "$_out.sign"
    fi
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
                sign_verify "PE$bits $kt $alg timestamp=$ts: osslsigncode verify" "$out" "$ts" 1 \
                    "$@" "$tmp/app$bits.exe" "$out"
                # sbverify knows only SHA-256 image digests.
                if [ "$bits" = 64 ] && [ "$alg" = sha256 ]; then
                    check "PE$bits $kt $alg timestamp=$ts: sbverify --cert" sbverify --cert "$k.pem" "$out"
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
    sign_verify "PE$bits nested: outer rsa/sha256 + appended ec/sha384, both timestamped" "$n1" yes 2 \
        --key "$P/ec-leaf.key" --cert "$P/ec-leaf.pem" --chain "$P/chain.pem" \
        --alg sha384 --tsa "$TSA" --append "$base" "$n1"
    sign_verify "PE$bits nested: a third signature joins the same nested attribute" "$n2" yes 3 \
        --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
        --alg sha512 --append "$n1" "$n2"
done
check "PE64 nested: sbverify still accepts the outer signature" sbverify --cert "$P/leaf.pem" "$tmp/n64-2.exe"
check_fails "append to an unsigned file is refused" \
    "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --append "$tmp/app64.exe" "$tmp/x.exe"

# --- re-signing replaces the old signature ------------------------------------------
sign_verify "re-signing a file with nested signatures leaves exactly one" "$tmp/resigned.exe" no 1 \
    --key "$P/ec-leaf.key" --cert "$P/ec-leaf.pem" --chain "$P/chain.pem" "$tmp/n64-2.exe" "$tmp/resigned.exe"

# --- detached CMS -------------------------------------------------------------------
head -c 100000 "$tmp/app64.exe" >"$tmp/payload.bin"
cms_verify() { # P7S
    openssl cms -verify -binary -inform DER -in "$1" -content "$tmp/payload.bin" \
        -CAfile "$P/root.pem" -purpose any -out /dev/null
}
for kt in rsa ec; do
    k=$(key_of $kt)
    for alg in sha256 sha512; do
        p7=$tmp/payload-$kt-$alg.p7s
        if "$SIGN" --format cms --key "$k.key" --cert "$k.pem" --chain "$P/chain.pem" --alg "$alg" \
            --tsa "$TSA" "$tmp/payload.bin" "$p7" >"$p7.sign" 2>&1; then
            check "detached CMS $kt $alg: openssl cms -verify" cms_verify "$p7"
        else
            fail "qk-testsign --format cms $kt $alg"
            _show "$p7.sign"
        fi
    done
done
printf 'x' >>"$tmp/payload.bin"
check_fails "detached CMS: changed content is rejected" cms_verify "$tmp/payload-rsa-sha256.p7s"

# --- negative cases -------------------------------------------------------------------
for f in s64-rsa-sha256-tsyes s32-ec-sha384-tsno; do
    cp "$tmp/$f.exe" "$tmp/$f-tampered.exe"
    python3 - "$tmp/$f-tampered.exe" <<'PYEOF'
import sys
# Flip one byte in the first section's raw data (after the headers).
with open(sys.argv[1], "r+b") as fh:
    fh.seek(0x420)
    b = fh.read(1)
    fh.seek(0x420)
    fh.write(bytes([b[0] ^ 0x5a]))
PYEOF
    check_fails "$f with one byte changed: osslsigncode verify fails" \
        osslsigncode verify -CAfile "$P/root.pem" -TSA-CAfile "$P/tsa-root.pem" -in "$tmp/$f-tampered.exe"
done

if "$SIGN" --key "$P/other-leaf.key" --cert "$P/other-leaf.pem" --chain "$P/other-root.pem" \
    "$tmp/app64.exe" "$tmp/untrusted.exe" >"$tmp/untrusted.sign" 2>&1; then
    check_fails "signature under another root: osslsigncode verify fails against root.pem" \
        osslsigncode verify -CAfile "$P/root.pem" -in "$tmp/untrusted.exe"
else
    fail "signing (untrusted)"
    _show "$tmp/untrusted.sign"
fi

# A key that does not match the certificate never produces a signature.
check_fails "key/certificate mismatch is refused" \
    "$SIGN" --key "$P/ec-leaf.key" --cert "$P/leaf.pem" "$tmp/app64.exe" "$tmp/mismatch.exe"
[ ! -e "$tmp/mismatch.exe" ] && ok "key/certificate mismatch: nothing is written" ||
    fail "a file was written for a mismatched key"

# --- TSA transport behaviour ------------------------------------------------------------
start_tsa "$P" flaky --fail-first 2
sign_verify "TSA answering 503 twice: retried with backoff, then timestamped" "$tmp/flaky.exe" yes 1 \
    --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
    --tsa "$TSA_URL/" "$tmp/app64.exe" "$tmp/flaky.exe"

# Port 1 on loopback refuses connections: the next URL is used.
sign_verify "first TSA URL refusing connections: the second one is used" "$tmp/fallback.exe" yes 1 \
    --key "$P/leaf.key" --cert "$P/leaf.pem" --chain "$P/chain.pem" \
    --tsa "http://127.0.0.1:1/" --tsa "$TSA" "$tmp/app64.exe" "$tmp/fallback.exe"

start_tsa "$P" badtype --bad-content-type
check_fails "TSA reply that is not application/timestamp-reply is refused" \
    "$SIGN" --key "$P/leaf.key" --cert "$P/leaf.pem" --tsa "$TSA_URL/" "$tmp/app64.exe" "$tmp/badtype.exe"
check_grep "TSA reply with the wrong content type: message" "content type" "$tmp/last.out"

t_done
