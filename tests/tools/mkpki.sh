#!/bin/sh
# mkpki.sh OUTDIR — builds the test PKI used by the signing interop tests.
#
#   root.pem / root.key         code-signing root CA
#   inter.pem / inter.key       intermediate CA under root
#   leaf.pem / leaf.key         RSA-3072 code-signing leaf (EKU codeSigning) under inter
#   ec-leaf.pem / ec-leaf.key   ECDSA P-256 code-signing leaf under inter
#   chain.pem                   inter + root (what a signer ships besides its leaf)
#   other-root.pem, other-leaf.pem/.key   an unrelated root and a leaf under it (untrusted case)
#   tsa-root.pem / tsa-root.key TSA root CA
#   tsa.pem / tsa.key           TSA leaf (critical EKU timeStamping) under tsa-root
#   tsa.cnf                     config for `openssl ts -reply`
#
# Certificates are issued with `openssl ca` so notBefore can be set a day in the
# past: a test machine whose clock is a little behind (or a verifier that
# compares against a timestamp from another host) must still see them as valid.
# Idempotent: does nothing when OUTDIR/done exists.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=$1
[ -f "$OUT/done" ] && exit 0
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="$OUT/.ca"
rm -rf "$WORK"
mkdir -p "$WORK"

OSSL=${OPENSSL:-openssl}
START=$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)
END=$(date -u -d '2 years' +%Y%m%d%H%M%SZ)

cat >"$WORK/ext.cnf" <<'CNF'
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[codesign_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[tsa_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF

# ca_conf NAME: a minimal `openssl ca` configuration with its own database.
ca_conf() {
    d="$WORK/$1"
    mkdir -p "$d/new"
    : >"$d/index.txt"
    # Random serials: two runs of this script never issue colliding serials.
    "$OSSL" rand -hex 16 >"$d/serial"
    cat >"$d/ca.cnf" <<CNF
[ca]
default_ca = this_ca
[this_ca]
dir = $d
database = $d/index.txt
new_certs_dir = $d/new
serial = $d/serial
default_md = sha256
policy = any_policy
unique_subject = no
copy_extensions = none
email_in_dn = no
# The policy's order is the issued DN's order: O before CN, as requested.
[any_policy]
countryName = optional
organizationName = optional
commonName = supplied
CNF
}

rsa_key() { "$OSSL" genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$2" -out "$OUT/$1" 2>/dev/null; }
ec_key() { "$OSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$OUT/$1" 2>/dev/null; }

# selfsign NAME KEY SUBJECT: a root CA.
selfsign() {
    ca_conf "$1"
    "$OSSL" req -new -key "$OUT/$2" -subj "$3" -out "$WORK/$1.csr"
    "$OSSL" ca -batch -notext -selfsign -config "$WORK/$1/ca.cnf" -keyfile "$OUT/$2" \
        -startdate "$START" -enddate "$END" -extfile "$WORK/ext.cnf" -extensions ca_ext \
        -in "$WORK/$1.csr" -out "$OUT/$1.pem" 2>/dev/null
}

# issue CA_NAME CA_KEY OUTNAME KEY SUBJECT EXT
issue() {
    "$OSSL" req -new -key "$OUT/$4" -subj "$5" -out "$WORK/$3.csr"
    "$OSSL" ca -batch -notext -config "$WORK/$1/ca.cnf" -cert "$OUT/$1.pem" -keyfile "$OUT/$2" \
        -startdate "$START" -enddate "$END" -extfile "$WORK/ext.cnf" -extensions "$6" \
        -in "$WORK/$3.csr" -out "$OUT/$3.pem" 2>/dev/null
}

rsa_key root.key 2048
selfsign root root.key "/O=Qwick Test/CN=Qwick Test Root CA"

rsa_key inter.key 2048
issue root root.key inter inter.key "/O=Qwick Test/CN=Qwick Test Code Signing CA" ca_ext
ca_conf inter

rsa_key leaf.key 3072
issue inter inter.key leaf leaf.key "/O=Qwick Test/CN=Qwick Test Signer RSA" codesign_ext

ec_key ec-leaf.key
issue inter inter.key ec-leaf ec-leaf.key "/O=Qwick Test/CN=Qwick Test Signer ECDSA" codesign_ext

cat "$OUT/inter.pem" "$OUT/root.pem" >"$OUT/chain.pem"

rsa_key other-root.key 2048
selfsign other-root other-root.key "/O=Qwick Other/CN=Qwick Untrusted Root CA"
rsa_key other-leaf.key 3072
issue other-root other-root.key other-leaf other-leaf.key "/O=Qwick Other/CN=Qwick Untrusted Signer" codesign_ext

rsa_key tsa-root.key 2048
selfsign tsa-root tsa-root.key "/O=Qwick Test/CN=Qwick Test TSA Root"
rsa_key tsa.key 2048
issue tsa-root tsa-root.key tsa tsa.key "/O=Qwick Test/CN=Qwick Test TSA" tsa_ext

mkdir -p "$OUT/tsa"
"$OSSL" rand -hex 8 >"$OUT/tsa/serial"
cat >"$OUT/tsa.cnf" <<CNF
# openssl ts -reply configuration of the test TSA.
[tsa]
default_tsa = qwick_test_tsa
[qwick_test_tsa]
dir = $OUT
serial = $OUT/tsa/serial
signer_cert = $OUT/tsa.pem
certs = $OUT/tsa-root.pem
signer_key = $OUT/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1.1
other_policies = 1.3.6.1.4.1.99999.1.2
digests = sha1, sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
CNF

# Sanity: the chains verify with the intended purposes.
"$OSSL" verify -CAfile "$OUT/root.pem" -untrusted "$OUT/inter.pem" -purpose any \
    "$OUT/leaf.pem" "$OUT/ec-leaf.pem" >/dev/null
"$OSSL" verify -CAfile "$OUT/tsa-root.pem" -purpose timestampsign "$OUT/tsa.pem" >/dev/null

touch "$OUT/done"
