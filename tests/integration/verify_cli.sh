#!/bin/sh
# qwick verify against files signed by independent tools:
#  - mingw-built PE32+ (and PE32 when i686 mingw is installed) signed by
#    osslsigncode with an RFC 3161 timestamp from the test TSA
#    (tests/tools/tsa_server.py, i.e. `openssl ts -reply`), nested signatures;
#  - exit codes 0 (all valid) / 1 (any invalid) / 2 (usage), --help;
#  - the --json schema, checked with python3, for good and bad files mixed;
#  - unknown root (digest and signature ok, chain not), tampered image,
#    untrusted TSA root, unsigned and non-PE input among good files;
#  - --detached over `openssl cms -sign -binary` signatures (DER and PEM).
set -eu
: "${QWICK:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
skip_unless osslsigncode openssl python3 x86_64-w64-mingw32-gcc
t_init verify_cli

# --- PKI, TSA ------------------------------------------------------------
pki="$tmp/pki"
make_pki "$pki"
cat "$pki/leaf.pem" "$pki/inter.pem" >"$tmp/leaf-chain.pem"
cat "$pki/ec-leaf.pem" "$pki/inter.pem" >"$tmp/ec-chain.pem"
cat "$pki/root.pem" "$pki/tsa-root.pem" >"$tmp/both-roots.pem"
start_tsa "$pki"
tsa=$TSA_URL

# --- fixtures -------------------------------------------------------------
cat >"$tmp/hello.c" <<'EOF'
#include <stdio.h>
static const char banner[] = "qwick verify fixture";
int main(void) { puts(banner); return 0; }
EOF
build_pe "$tmp/hello64.exe" x64 "$tmp/hello.c" -s
pes="hello64"
if command -v i686-w64-mingw32-gcc >/dev/null 2>&1; then
    build_pe "$tmp/hello32.exe" x86 "$tmp/hello.c" -s
    pes="hello64 hello32"
fi

S="osslsigncode sign"
for p in $pes; do
    $S -certs "$tmp/leaf-chain.pem" -key "$pki/leaf.key" -h sha256 -ts "$tsa" \
        -in "$tmp/$p.exe" -out "$tmp/$p-signed.exe" >/dev/null
done
$S -certs "$tmp/leaf-chain.pem" -key "$pki/leaf.key" -h sha256 -ts "$tsa" \
    -in "$tmp/hello64.exe" -out "$tmp/ts.exe" >/dev/null
$S -certs "$tmp/ec-chain.pem" -key "$pki/ec-leaf.key" -h sha384 -ts "$tsa" -nest \
    -in "$tmp/ts.exe" -out "$tmp/nested.exe" >/dev/null
$S -certs "$pki/other-leaf.pem" -key "$pki/other-leaf.key" -h sha256 \
    -in "$tmp/hello64.exe" -out "$tmp/other.exe" >/dev/null
for h in sha1 sha512; do
    $S -certs "$tmp/leaf-chain.pem" -key "$pki/leaf.key" -h "$h" \
        -in "$tmp/hello64.exe" -out "$tmp/$h.exe" >/dev/null
done
# Tampered: one byte of the code section (0x400 is inside .text for mingw output).
cp "$tmp/ts.exe" "$tmp/tampered.exe"
python3 - "$tmp/tampered.exe" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[0x420] ^= 0xFF
open(p, "wb").write(b)
EOF
echo "not a PE file" >"$tmp/notpe.txt"

# The fixtures are sound by an independent verifier's standard.
check_status 0 "osslsigncode accepts the timestamped fixture" \
    osslsigncode verify -CAfile "$pki/root.pem" -TSA-CAfile "$pki/tsa-root.pem" -in "$tmp/nested.exe"

CA="--ca $pki/root.pem --tsa-ca $pki/tsa-root.pem"

# --- usage ----------------------------------------------------------------
check_status 2 "no arguments is a usage error" "$QWICK" verify
check_status 2 "unknown option is a usage error" "$QWICK" verify --bogus "$tmp/ts.exe"
check_status 2 "--ca without its argument is a usage error" "$QWICK" verify --ca
check_status 2 "--detached takes exactly one file" "$QWICK" verify --detached "$tmp/x" "$tmp/a" "$tmp/b"
check_status 0 "--help" "$QWICK" verify --help
check_grep "--help prints usage" "Usage: qwick verify" "$tmp/out"

# --- valid files ------------------------------------------------------------
for p in $pes; do
    check_status 0 "$p: signed + timestamped verifies" $QWICK verify $CA "$tmp/$p-signed.exe"
    check_grep "$p: verdict valid" "verdict: valid" "$tmp/out"
    check_grep "$p: timestamp shown" "timestamp: *20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-9:]*Z" "$tmp/out"
done
check_status 0 "sha1 and sha512 signatures verify" $QWICK verify $CA "$tmp/sha1.exe" "$tmp/sha512.exe"
check_status 0 "one CA file holding both roots is enough" \
    "$QWICK" verify --ca "$tmp/both-roots.pem" "$tmp/ts.exe"

check_status 0 "nested: --json" $QWICK verify $CA --json "$tmp/nested.exe"
cp "$tmp/out" "$tmp/nested.json"
check_py "nested: JSON schema and values" "$tmp/nested.json" '
assert set(d) == {"files"}, d.keys()
assert len(d["files"]) == 1
f = d["files"][0]
assert f["file"].endswith("nested.exe") and f["valid"] is True and f["error"] is None
sigs = f["signatures"]
assert len(sigs) == 2, sigs
want = {"index", "nested", "digest_algorithm", "digest_ok", "message_digest_ok",
        "signature_ok", "chain_ok", "signer", "issuer", "timestamp"}
for i, s in enumerate(sigs):
    assert want <= set(s), set(s) ^ want
    assert s["index"] == i
    for k in ("digest_ok", "message_digest_ok", "signature_ok", "chain_ok"):
        assert s[k] is True, (k, s)
    assert isinstance(s["signer"], str) and "Qwick Test Signer" in s["signer"], s["signer"]
    assert s["issuer"] == "CN=Qwick Test Code Signing CA, O=Qwick Test", s["issuer"]
    ts = s["timestamp"]
    assert ts["ok"] is True and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ts["time"]), ts
assert sigs[0]["nested"] is False and sigs[0]["digest_algorithm"] == "sha256"
assert sigs[1]["nested"] is True and sigs[1]["digest_algorithm"] == "sha384"
'
check_status 0 "nested: text output" $QWICK verify $CA "$tmp/nested.exe"
check_grep "nested: text marks the nested signature" "signature #1 (nested)" "$tmp/out"
check_grep "nested: text shows the digest algorithm" "digest: *sha384" "$tmp/out"

# --- invalid files ----------------------------------------------------------
check_status 1 "unknown root fails" $QWICK verify $CA --json "$tmp/other.exe"
cp "$tmp/out" "$tmp/other.json"
check_py "unknown root: digest and signature ok, chain not" "$tmp/other.json" '
s = d["files"][0]["signatures"][0]
assert d["files"][0]["valid"] is False
assert s["digest_ok"] and s["message_digest_ok"] and s["signature_ok"], s
assert s["chain_ok"] is False and s["timestamp"] is None, s
assert "certificate chain" in d["files"][0]["error"], d["files"][0]["error"]
'
check_status 1 "TSA root not trusted: timestamp fails" \
    "$QWICK" verify --ca "$pki/root.pem" --json "$tmp/ts.exe"
cp "$tmp/out" "$tmp/tsa.json"
check_py "untrusted TSA: timestamp.ok false, the rest ok" "$tmp/tsa.json" '
s = d["files"][0]["signatures"][0]
assert s["timestamp"]["ok"] is False and s["timestamp"]["time"], s
assert s["digest_ok"] and s["signature_ok"] and s["chain_ok"], s
'
check_status 1 "unreadable CA file fails" "$QWICK" verify --ca "$tmp/nope.pem" "$tmp/ts.exe"
check_grep "unreadable CA file is named" "nope.pem" "$tmp/err"

# Mixed: every file is still processed, in order.
check_status 1 "mixed good and bad files (json)" $QWICK verify $CA --json "$tmp/ts.exe" \
    "$tmp/tampered.exe" "$tmp/notpe.txt" "$tmp/hello64.exe" "$tmp/missing.exe" "$tmp/nested.exe"
cp "$tmp/out" "$tmp/mixed.json"
check_py "mixed: one entry per file with the right verdicts" "$tmp/mixed.json" '
fs = d["files"]
assert [f["file"].rsplit("/", 1)[-1] for f in fs] == ["ts.exe", "tampered.exe", "notpe.txt",
    "hello64.exe", "missing.exe", "nested.exe"], fs
assert [f["valid"] for f in fs] == [True, False, False, False, False, True]
t = fs[1]["signatures"][0]
assert t["digest_ok"] is False and t["signature_ok"] is True and t["chain_ok"] is True, t
assert "image digest mismatch" in fs[1]["error"]
assert fs[2]["error"].startswith("not a PE file") and fs[2]["signatures"] == []
assert fs[3]["error"] == "file is not signed" and fs[3]["signatures"] == []
assert "No such file" in fs[4]["error"]
'
check_status 1 "mixed good and bad files (text)" $QWICK verify $CA "$tmp/ts.exe" "$tmp/notpe.txt" \
    "$tmp/tampered.exe"
check_grep "mixed: non-PE reported on stderr" "^qwick: $tmp/notpe.txt: not a PE file" "$tmp/err"
check_grep "mixed: tampered file verdict" "verdict: INVALID (signature #0: image digest mismatch)" "$tmp/out"
check_grep "mixed: good file still verified" "verdict: valid" "$tmp/out"
check_grep "mixed: failed check marked" "image digest:    FAILED" "$tmp/out"

# --- detached CMS -------------------------------------------------------------
head -c 300000 /dev/urandom >"$tmp/blob.bin"
openssl cms -sign -binary -outform DER -in "$tmp/blob.bin" -signer "$pki/leaf.pem" \
    -inkey "$pki/leaf.key" -certfile "$pki/inter.pem" -out "$tmp/blob.p7s"
openssl cms -sign -binary -outform PEM -md sha512 -in "$tmp/blob.bin" \
    -signer "$pki/ec-leaf.pem" -inkey "$pki/ec-leaf.key" -certfile "$pki/inter.pem" \
    -out "$tmp/blob.pem"
check_status 0 "detached DER verifies" "$QWICK" verify --ca "$pki/root.pem" --detached "$tmp/blob.p7s" "$tmp/blob.bin"
check_grep "detached: verdict valid" "verdict: valid" "$tmp/out"
check_status 0 "detached PEM verifies (json)" "$QWICK" verify --ca "$pki/root.pem" --json \
    --detached "$tmp/blob.pem" "$tmp/blob.bin"
cp "$tmp/out" "$tmp/det.json"
check_py "detached: JSON" "$tmp/det.json" '
f = d["files"][0]
assert f["valid"] is True and len(f["signatures"]) == 1, f
s = f["signatures"][0]
assert s["digest_algorithm"] == "sha512" and s["chain_ok"] and s["signature_ok"], s
assert "Qwick Test Signer ECDSA" in s["signer"]
'
cp "$tmp/blob.bin" "$tmp/blob2.bin"
printf x >>"$tmp/blob2.bin"
check_status 1 "detached: changed content fails" "$QWICK" verify --ca "$pki/root.pem" --json \
    --detached "$tmp/blob.p7s" "$tmp/blob2.bin"
cp "$tmp/out" "$tmp/det2.json"
check_py "detached: digest false, signature true" "$tmp/det2.json" '
s = d["files"][0]["signatures"][0]
assert s["digest_ok"] is False and s["signature_ok"] is True and s["chain_ok"] is True, s
'
check_status 1 "detached: unknown root fails" "$QWICK" verify --ca "$pki/other-root.pem" \
    --detached "$tmp/blob.p7s" "$tmp/blob.bin"
check_status 1 "detached: missing signature file" "$QWICK" verify --detached "$tmp/none.p7s" "$tmp/blob.bin"

t_done
