#!/bin/sh
# Regenerates the committed seed corpora (tests/fuzz/corpus/fuzz_*/) and the
# fuzzing trust anchor (tests/fuzz/fuzz-ca.pem) from scratch:
#
#   sh tests/fuzz/make-corpus.sh BUILD_DIR
#
# BUILD_DIR must hold a normal build (tests/fixtures/pe-restrip and
# tests/fuzz/fuzz_tsp-replay). Needs mingw-w64, osslsigncode, openssl,
# python3. A fresh throwaway PKI (100-year validity) is made on each run, so
# every signed seed changes; files named regress-* (inputs that once found a
# bug) are kept as they are.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
RESTRIP=$BUILD/tests/fixtures/pe-restrip
TSP_REPLAY=$BUILD/tests/fuzz/fuzz_tsp-replay
for f in "$RESTRIP" "$TSP_REPLAY"; do
    [ -x "$f" ] || { echo "make-corpus: $f not built" >&2; exit 1; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/qk-corpus.XXXXXX")
trap 'rm -rf "$W"' EXIT INT TERM
sh "$SRC/tests/fixtures/gen.sh" "$W/fx"
FX=$W/fx
C=$HERE/corpus
for d in fuzz_pe fuzz_certtable fuzz_verify fuzz_tsp; do
    mkdir -p "$C/$d"
    find "$C/$d" -type f ! -name 'regress-*' -delete
done

# --- PKI: one CA issuing a code-signing leaf and a TSA certificate ------------
cat >"$W/ext.cnf" <<'EOF'
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
[tsa]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, timeStamping
EOF
q() { "$@" >/dev/null 2>&1 || { echo "make-corpus: failed: $*" >&2; exit 1; }; }
q openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/ca.key" -out "$W/ca.pem" -days 36500 \
    -subj "/O=Qwick Test/CN=Qwick Fuzz CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for who in leaf tsa; do
    q openssl req -newkey rsa:2048 -nodes -keyout "$W/$who.key" -out "$W/$who.csr" \
        -subj "/O=Qwick Test/CN=Qwick Fuzz $who"
    q openssl x509 -req -in "$W/$who.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -days 36500 \
        -set_serial "0x$(openssl rand -hex 8)" -extfile "$W/ext.cnf" -extensions "$who" \
        -out "$W/$who.pem"
done
cat "$W/leaf.pem" "$W/ca.pem" >"$W/leaf-chain.pem"
cat "$W/tsa.pem" "$W/ca.pem" >"$W/tsa-chain.pem"
cp "$W/ca.pem" "$HERE/fuzz-ca.pem"

TSA_TIME=$(date +%s) # not before the certificates made just above
sign() { # in out alg [extra osslsigncode args...]
    in=$1; out=$2; alg=$3; shift 3
    q osslsigncode sign -certs "$W/leaf-chain.pem" -key "$W/leaf.key" -h "$alg" \
        -n "Qwick fuzz seed" -i "https://example.invalid/qwick" "$@" -in "$in" -out "$out"
}
sign "$FX/x86-dll.dll" "$W/dll-sha256.dll" sha256
sign "$FX/x86-dll.dll" "$W/dll-sha1.dll" sha1
q osslsigncode extract-signature -in "$W/dll-sha256.dll" -out "$W/sig256.der"
q osslsigncode extract-signature -in "$W/dll-sha1.dll" -out "$W/sig1.der"

# --- fuzz_pe: real headers (truncated to 4 KiB), signed variants, synthetic edges
P=$C/fuzz_pe
for f in x86-hello.exe x64-hello.exe x86-dll.dll x64-dll.dll x86-gui.exe x64-gui.exe; do
    head -c 4096 "$FX/$f" >"$P/hdr-$f"
done
{ head -c 4096 "$FX/x64-hello.exe"; printf 'abc'; } >"$P/hdr-odd-length-x64-hello.exe"
q "$RESTRIP" "$P/hdr-x64-hello.exe" "$P/signed-hdr-x64-hello.exe" "$W/sig256.der"
q "$RESTRIP" "$P/hdr-x86-gui.exe" "$P/signed-hdr-two-entries-x86-gui.exe" "$W/sig256.der" "$W/sig1.der"
cp "$W/dll-sha256.dll" "$P/signed-x86-dll.dll"
cc -std=c17 -O1 -I"$SRC/tests/unit" -o "$W/seedgen" "$HERE/seedgen.c" "$SRC/tests/unit/pe_builder.c"
"$W/seedgen" "$P"

# --- fuzz_certtable: option byte + raw certificate table ----------------------
python3 - "$C/fuzz_certtable" "$W/sig256.der" "$W/sig1.der" <<'EOF'
import os, struct, sys
out, s256, s1 = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()

def entry(der, pad=True, length=None):
    n = 8 + len(der)
    p = -n % 8 if pad else 0
    return struct.pack("<IHH", length if length is not None else n + p, 0x0200, 0x0002) + der + bytes(p)

small = bytes([0x30, 0x06]) + bytes(range(6))
seeds = {
    "one-real-entry": b"\x00" + entry(s256),
    "two-real-entries-pe32plus": b"\x01" + entry(s256) + entry(s1),
    "three-last-unpadded": b"\x07" + entry(small) + entry(s1[:200]) + entry(small + b"x", pad=False),
    "zero-tail": b"\x02" + entry(small) + bytes(5),
    "empty-table": b"\x00",
    "sixty-four-entries": b"\x1d" + entry(small) * 64,
    "length-too-big": b"\x00" + entry(small, length=0x1000),
    "length-below-header": b"\x01" + entry(small, length=4),
    "junk-after-entry": b"\x00" + entry(small) + b"\x01\x02\x03",
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
EOF

# --- fuzz_verify: whole signed files ------------------------------------------
V=$C/fuzz_verify
cp "$W/dll-sha256.dll" "$V/sha256-chain.dll"
sign "$FX/x64-dll.dll" "$V/sha1-x64.dll" sha1
sign "$FX/x86-dll.dll" "$V/timestamped.dll" sha256 \
    -TSA-certs "$W/tsa-chain.pem" -TSA-key "$W/tsa.key" -TSA-time "$TSA_TIME"
sign "$W/dll-sha256.dll" "$V/nested.dll" sha1 -nest
q "$RESTRIP" "$FX/x86-dll.dll" "$V/two-entries.dll" "$W/sig256.der" "$W/sig1.der"
cp "$FX/x86-dll.dll" "$V/unsigned.dll"
# Signed, then one byte of section data changed: the digest check must fail.
python3 - "$W/dll-sha256.dll" "$V/digest-mismatch.dll" <<'EOF'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
d[0x600] ^= 0xff
open(sys.argv[2], "wb").write(d)
EOF

# --- fuzz_tsp: replies to the harness's fixed request -------------------------
T=$C/fuzz_tsp
: >"$W/empty"
QK_FUZZ_TSP_REQUEST_OUT=$W/req.tsq "$TSP_REPLAY" "$W/empty" >/dev/null
openssl rand -hex 8 >"$W/tsaserial"
tsa_conf() { # ess_cert_id_alg extra-line
    cat <<EOF
[tsa]
default_tsa = t
[t]
serial = $W/tsaserial
signer_cert = $W/tsa.pem
certs = $W/ca.pem
signer_key = $W/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha1, sha256, sha384, sha512
accuracy = secs:1, millisecs:500
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = $1
$2
EOF
}
tsa_conf sha256 "" >"$W/tsa1.cnf"
tsa_conf sha1 "ess_cert_id_chain = yes" >"$W/tsa2.cnf"
q openssl ts -reply -config "$W/tsa1.cnf" -queryfile "$W/req.tsq" -out "$T/granted-certid-sha256.tsr"
q openssl ts -reply -config "$W/tsa2.cnf" -queryfile "$W/req.tsq" -out "$T/granted-certid-sha1.tsr"
# A reply to some other request (nonce and imprint differ).
q openssl ts -query -data "$W/ext.cnf" -sha256 -cert -out "$W/other.tsq"
q openssl ts -reply -config "$W/tsa1.cnf" -queryfile "$W/other.tsq" -out "$T/other-request.tsr"
python3 - "$T" <<'EOF'
import os, sys

def tlv(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(ln)]) + ln + body

def status(code, text=None, fail_bits=None):
    body = tlv(0x02, bytes([code]))
    if text is not None:
        body += tlv(0x30, tlv(0x0C, text.encode()))
    if fail_bits is not None:
        body += tlv(0x03, fail_bits)
    return tlv(0x30, tlv(0x30, body))

seeds = {
    "rejection": status(2, "request rejected", bytes([7, 0x80])),  # badAlg
    "waiting": status(3),
    "granted-without-token": status(0),
}
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], name), "wb") as f:
        f.write(data)
EOF

du -sh "$C" "$HERE/fuzz-ca.pem"
