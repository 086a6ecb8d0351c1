#!/bin/sh
# Authenticode digests of real mingw-built PEs against osslsigncode, the
# `qwick digest` command line contract, and files written by libqwick
# (through tests/fixtures/pe-restrip) against osslsigncode and a Python
# reference (tests/fixtures/peref.py).
#
# Environment (from tests/integration/meson.build): QWICK, BUILD_ROOT, SRC_ROOT.
set -u
: "${QWICK:?}" "${BUILD_ROOT:?}" "${SRC_ROOT:?}"

FIX=$BUILD_ROOT/fixtures
RESTRIP=$BUILD_ROOT/tests/fixtures/pe-restrip
PEREF=$SRC_ROOT/tests/fixtures/peref.py

for tool in osslsigncode openssl python3 cmp; do
    command -v "$tool" >/dev/null 2>&1 || { echo "pe_digest: $tool not found (run scripts/setup.sh)" >&2; exit 1; }
done
[ -x "$RESTRIP" ] || { echo "pe_digest: $RESTRIP not built" >&2; exit 1; }

W=$(mktemp -d "${TMPDIR:-/tmp}/qk-pe-digest.XXXXXX")
trap 'rm -rf "$W"' EXIT INT TERM

checks=0
fails=0
pass() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL: $*" >&2; }
expect_eq() { # what got want
    if [ "$2" = "$3" ]; then pass; else fail "$1: got '$2', want '$3'"; fi
}

sh "$SRC_ROOT/tests/fixtures/gen.sh" "$FIX" || { echo "pe_digest: fixture generation failed" >&2; exit 1; }
set -- "$FIX"/*.exe "$FIX"/*.dll
[ $# -ge 20 ] || { echo "pe_digest: only $# fixtures in $FIX" >&2; exit 1; }

# A throwaway code-signing certificate; verify against it as the only root.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/key.pem" -out "$W/cert.pem" -days 2 \
    -subj "/CN=qwick pe_digest test" -addext extendedKeyUsage=codeSigning >/dev/null 2>&1 ||
    { echo "pe_digest: cannot create a test key" >&2; exit 1; }

osl_sign() { # alg in out
    osslsigncode sign -certs "$W/cert.pem" -key "$W/key.pem" -h "$1" -in "$2" -out "$3" >"$W/osl.log" 2>&1
}
# Prints osslsigncode's "Calculated message digest" in lowercase; fails unless
# the whole verification succeeded (so the digest is also the signed one).
osl_digest() { # file
    osslsigncode verify -CAfile "$W/cert.pem" -in "$1" >"$W/verify.log" 2>&1 || return 1
    sed -n 's/^Calculated message digest *: *\([0-9A-Fa-f]*\).*/\1/p' "$W/verify.log" | head -n 1 |
        tr 'A-F' 'a-f'
}
qdigest() { # alg file
    "$QWICK" digest --alg "$1" "$2" | cut -d ' ' -f 1
}

# --- 1. digests vs osslsigncode, every fixture, every algorithm ---------------
for f in "$@"; do
    b=$(basename "$f")
    for alg in sha256 sha1 sha384 sha512; do
        s=$W/$alg-$b
        if ! osl_sign "$alg" "$f" "$s"; then
            fail "osslsigncode sign -h $alg $b: $(cat "$W/osl.log")"
            continue
        fi
        want=$(osl_digest "$s") || { fail "osslsigncode verify $alg $b: $(cat "$W/verify.log")"; continue; }
        [ -n "$want" ] || { fail "no calculated digest for $alg $b"; continue; }
        # The signed file: digest up to the table.
        expect_eq "qwick digest --alg $alg (signed) $b" "$(qdigest "$alg" "$s")" "$want"
        # The unsigned file: the signer's zero padding to 8 is hashed too.
        expect_eq "qwick digest --alg $alg (unsigned) $b" "$(qdigest "$alg" "$f")" "$want"
        if [ "$alg" = sha256 ]; then
            expect_eq "peref digest $alg $b" "$(python3 "$PEREF" digest "$alg" "$f")" "$want"
        fi
    done
done

# --- 2. files written by the library ------------------------------------------
for f in "$@"; do
    b=$(basename "$f")
    s=$W/sha256-$b
    [ -f "$s" ] || continue
    want=$(qdigest sha256 "$f")
    osslsigncode extract-signature -in "$s" -out "$W/$b.p7" >/dev/null 2>&1 ||
        { fail "extract-signature $b"; continue; }
    osslsigncode extract-signature -in "$W/sha1-$b" -out "$W/$b.sha1.p7" >/dev/null 2>&1 ||
        { fail "extract-signature sha1 $b"; continue; }

    # Signing the unsigned file with osslsigncode's own signature gives
    # osslsigncode's file, byte for byte (padding, dwLength, directory, checksum).
    "$RESTRIP" "$f" "$W/r1" "$W/$b.p7" || { fail "pe-restrip sign $b"; continue; }
    if cmp -s "$W/r1" "$s"; then pass; else fail "pe-restrip output differs from osslsigncode's for $b"; fi
    if python3 "$PEREF" check-signed "$W/r1" "$W/$b.p7"; then pass; else fail "layout of signed $b"; fi
    expect_eq "osslsigncode digest of library-signed $b" "$(osl_digest "$W/r1")" "$want"

    # Re-signing a signed file truncates at the old table.
    "$RESTRIP" "$W/sha1-$b" "$W/r2" "$W/$b.p7" || { fail "pe-restrip re-sign $b"; continue; }
    if cmp -s "$W/r2" "$s"; then pass; else fail "re-signed $b differs from a fresh signature"; fi

    # Two entries in one table: layout and digest (osslsigncode reads one only).
    "$RESTRIP" "$f" "$W/r3" "$W/$b.p7" "$W/$b.sha1.p7" || { fail "pe-restrip two entries $b"; continue; }
    if python3 "$PEREF" check-signed "$W/r3" "$W/$b.p7" "$W/$b.sha1.p7"; then pass; else fail "layout of two-entry $b"; fi
    expect_eq "qwick digest of two-entry $b" "$(qdigest sha256 "$W/r3")" "$want"

    # Stripping (n = 0): directory cleared, checksum recomputed, digest kept;
    # what is left is the unsigned file padded to 8.
    "$RESTRIP" "$s" "$W/r4" || { fail "pe-restrip strip $b"; continue; }
    if python3 "$PEREF" check-unsigned "$W/r4"; then pass; else fail "stripped $b"; fi
    expect_eq "qwick digest of stripped $b" "$(qdigest sha256 "$W/r4")" "$want"
    len=$(wc -c <"$f")
    expect_eq "size of stripped $b" "$(wc -c <"$W/r4" | tr -d ' ')" "$(( (len + 7) / 8 * 8 ))"
    rm -f "$W/r1" "$W/r2" "$W/r3" "$W/r4"
done

# The unmodified linker output: GNU ld's checksum equals the Python reference.
for f in "$FIX"/x86-hello.exe "$FIX"/x64-hello.exe "$FIX"/x86-dll.dll "$FIX"/x64-dll.dll \
    "$FIX"/x86-bigdata.exe "$FIX"/x64-bigdata.exe; do
    set -- $(python3 "$PEREF" checksum "$f")
    expect_eq "ld checksum vs reference, $(basename "$f")" "$1" "$2"
done

# --- 3. the command line contract ---------------------------------------------
A=$FIX/x64-hello.exe
B=$FIX/x86-dll-oddlen7.dll
da=$(qdigest sha256 "$A")
db=$(qdigest sha256 "$B")
expect_eq "sha256 length" "${#da}" 64

out=$("$QWICK" digest "$A" "$B")
rc=$?
expect_eq "two files: exit" "$rc" 0
expect_eq "two files: output like sha256sum" "$out" "$(printf '%s  %s\n%s  %s' "$da" "$A" "$db" "$B")"

# A relative name is printed as given.
out=$(cd "$FIX" && "$QWICK" digest x64-hello.exe)
expect_eq "relative name" "$out" "$da  x64-hello.exe"

printf 'MZ but not much else' >"$W/notpe.exe"
"$QWICK" digest "$A" "$W/notpe.exe" "$B" >"$W/out" 2>"$W/err"
rc=$?
expect_eq "non-PE among valid files: exit" "$rc" 1
expect_eq "non-PE among valid files: stdout" "$(cat "$W/out")" \
    "$(printf '%s  %s\n%s  %s' "$da" "$A" "$db" "$B")"
expect_eq "non-PE: one stderr line" "$(wc -l <"$W/err" | tr -d ' ')" 1
case $(cat "$W/err") in
"qwick: $W/notpe.exe: "?*) pass ;;
*) fail "non-PE stderr: $(cat "$W/err")" ;;
esac

"$QWICK" digest "$W/missing.exe" "$A" >"$W/out" 2>"$W/err"
expect_eq "missing file: exit" "$?" 1
expect_eq "missing file: stdout" "$(cat "$W/out")" "$da  $A"
case $(cat "$W/err") in
"qwick: $W/missing.exe: "?*) pass ;;
*) fail "missing file stderr: $(cat "$W/err")" ;;
esac

for pair in sha1:40 sha256:64 sha384:96 sha512:128 SHA-256:64; do
    alg=${pair%%:*}
    n=${pair#*:}
    d=$("$QWICK" digest --alg "$alg" "$A" | cut -d ' ' -f 1)
    expect_eq "--alg $alg length" "${#d}" "$n"
    case $d in *[!0-9a-f]*) fail "--alg $alg: not lowercase hex: $d" ;; *) pass ;; esac
done
expect_eq "-a sha256 equals the default" "$("$QWICK" digest -a sha256 "$A")" "$da  $A"
expect_eq "--alg=sha256 equals the default" "$("$QWICK" digest --alg=sha256 "$A")" "$da  $A"
expect_eq "SHA-256 alias" "$(qdigest SHA-256 "$A")" "$da"

"$QWICK" digest --alg md5 "$A" >"$W/out" 2>"$W/err"
expect_eq "unknown alg: exit" "$?" 2
expect_eq "unknown alg: no stdout" "$(cat "$W/out")" ""
[ -s "$W/err" ] && pass || fail "unknown alg: no message on stderr"

"$QWICK" digest --bogus "$A" >/dev/null 2>&1
expect_eq "unknown option: exit" "$?" 2

"$QWICK" digest --help >"$W/out" 2>&1
expect_eq "--help: exit" "$?" 0
grep -q '^Usage: qwick digest' "$W/out" && pass || fail "--help: no usage line"

"$QWICK" digest >"$W/out" 2>"$W/err"
expect_eq "no args: exit" "$?" 2
expect_eq "no args: no stdout" "$(cat "$W/out")" ""

echo "pe_digest: $checks checks, $fails failed"
[ "$fails" -eq 0 ]
