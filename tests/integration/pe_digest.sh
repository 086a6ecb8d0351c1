#!/bin/sh
# Authenticode digests of real mingw-built PEs against osslsigncode, the
# `qwick digest` command line contract, and files written by libqwick
# (through tests/fixtures/pe-restrip) against osslsigncode and a Python
# reference (tests/fixtures/peref.py).
#
# Environment (from tests/integration/meson.build): QWICK, BUILD_ROOT, SRC_ROOT.
set -eu
: "${QWICK:?}" "${BUILD_ROOT:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init pe_digest

FIX=$BUILD_ROOT/fixtures
RESTRIP=$BUILD_ROOT/tests/fixtures/pe-restrip
PEREF=$SRC_ROOT/tests/fixtures/peref.py

need osslsigncode openssl python3 cmp
[ -x "$RESTRIP" ] || die "$RESTRIP not built"

sh "$SRC_ROOT/tests/fixtures/gen.sh" "$FIX" || die "fixture generation failed"
set -- "$FIX"/*.exe "$FIX"/*.dll
[ $# -ge 20 ] || die "only $# fixtures in $FIX"

# A throwaway code-signing certificate; verify against it as the only root.
make_cert "$tmp/cert" "qwick pe_digest test"
osl_digest() { ossl_digest "$1" -CAfile "$tmp/cert.pem"; } # FILE: fails unless verification succeeds

# --- 1. digests vs osslsigncode, every fixture, every algorithm ---------------
for f in "$@"; do
    b=$(basename "$f")
    for alg in sha256 sha1 sha384 sha512; do
        s=$tmp/$alg-$b
        if ! osslsigncode sign -certs "$tmp/cert.pem" -key "$tmp/cert.key" -h "$alg" -in "$f" -out "$s" \
            >"$tmp/osl.log" 2>&1; then
            fail "osslsigncode sign -h $alg $b: $(cat "$tmp/osl.log")"
            continue
        fi
        want=$(osl_digest "$s") || { fail "osslsigncode verify $alg $b: $(cat "$tmp/ossl.out")"; continue; }
        [ -n "$want" ] || { fail "no calculated digest for $alg $b"; continue; }
        # The signed file: digest up to the table.
        check_eq "qwick digest --alg $alg (signed) $b" "$(qdigest "$alg" "$s")" "$want"
        # The unsigned file: the signer's zero padding to 8 is hashed too.
        check_eq "qwick digest --alg $alg (unsigned) $b" "$(qdigest "$alg" "$f")" "$want"
        if [ "$alg" = sha256 ]; then
            check_eq "peref digest $alg $b" "$(python3 "$PEREF" digest "$alg" "$f")" "$want"
        fi
    done
done

# --- 2. files written by the library ------------------------------------------
for f in "$@"; do
    b=$(basename "$f")
    s=$tmp/sha256-$b
    [ -f "$s" ] || continue
    want=$(qdigest sha256 "$f")
    osslsigncode extract-signature -in "$s" -out "$tmp/$b.p7" >/dev/null 2>&1 ||
        { fail "extract-signature $b"; continue; }
    osslsigncode extract-signature -in "$tmp/sha1-$b" -out "$tmp/$b.sha1.p7" >/dev/null 2>&1 ||
        { fail "extract-signature sha1 $b"; continue; }

    # Signing the unsigned file with osslsigncode's own signature gives
    # osslsigncode's file, byte for byte (padding, dwLength, directory, checksum).
    "$RESTRIP" "$f" "$tmp/r1" "$tmp/$b.p7" || { fail "pe-restrip sign $b"; continue; }
    check "pe-restrip output equals osslsigncode's for $b" cmp "$tmp/r1" "$s"
    check "layout of signed $b" python3 "$PEREF" check-signed "$tmp/r1" "$tmp/$b.p7"
    check_eq "osslsigncode digest of library-signed $b" "$(osl_digest "$tmp/r1")" "$want"

    # Re-signing a signed file truncates at the old table.
    "$RESTRIP" "$tmp/sha1-$b" "$tmp/r2" "$tmp/$b.p7" || { fail "pe-restrip re-sign $b"; continue; }
    check "re-signed $b equals a fresh signature" cmp "$tmp/r2" "$s"

    # Two entries in one table: layout and digest (osslsigncode reads one only).
    "$RESTRIP" "$f" "$tmp/r3" "$tmp/$b.p7" "$tmp/$b.sha1.p7" || { fail "pe-restrip two entries $b"; continue; }
    check "layout of two-entry $b" python3 "$PEREF" check-signed "$tmp/r3" "$tmp/$b.p7" "$tmp/$b.sha1.p7"
    check_eq "qwick digest of two-entry $b" "$(qdigest sha256 "$tmp/r3")" "$want"

    # Stripping (n = 0): directory cleared, checksum recomputed, digest kept;
    # what is left is the unsigned file padded to 8.
    "$RESTRIP" "$s" "$tmp/r4" || { fail "pe-restrip strip $b"; continue; }
    check "stripped $b" python3 "$PEREF" check-unsigned "$tmp/r4"
    check_eq "qwick digest of stripped $b" "$(qdigest sha256 "$tmp/r4")" "$want"
    len=$(wc -c <"$f")
    check_eq "size of stripped $b" "$(wc -c <"$tmp/r4" | tr -d ' ')" "$(((len + 7) / 8 * 8))"
    rm -f "$tmp/r1" "$tmp/r2" "$tmp/r3" "$tmp/r4"
done

# The unmodified linker output: GNU ld's checksum equals the Python reference.
for f in "$FIX"/x86-hello.exe "$FIX"/x64-hello.exe "$FIX"/x86-dll.dll "$FIX"/x64-dll.dll \
    "$FIX"/x86-bigdata.exe "$FIX"/x64-bigdata.exe; do
    set -- $(python3 "$PEREF" checksum "$f")
    check_eq "ld checksum vs reference, $(basename "$f")" "${1:-}" "${2:-}"
done

# --- 2b. ARM64: clang + lld-link, no CRT (gen.sh) -----------------------------
# Digests are covered above with every fixture; here the machine type, and a
# signature made by libqwick (qk-testsign) that qwick verify and osslsigncode
# accept.
A64=$FIX/arm64-nocrt.dll
machine=$(python3 -c 'import struct, sys
d = open(sys.argv[1], "rb").read()
print(hex(struct.unpack_from("<H", d, struct.unpack_from("<I", d, 0x3C)[0] + 4)[0]))' "$A64")
check_eq "arm64-nocrt.dll machine" "$machine" 0xaa64
for f in "$A64" "$FIX/arm64-nocrt-oddlen7.dll"; do
    b=$(basename "$f")
    check "qk-testsign $b" "$BUILD_ROOT/tests/tools/qk-testsign" --key "$tmp/cert.key" \
        --cert "$tmp/cert.pem" --chain "$tmp/cert.pem" "$f" "$tmp/lib-$b"
    check "qwick verify of library-signed $b" "$QWICK" verify --ca "$tmp/cert.pem" "$tmp/lib-$b"
    check_eq "osslsigncode digest of library-signed $b" "$(osl_digest "$tmp/lib-$b")" \
        "$(qdigest sha256 "$f")"
done

# --- 3. the command line contract ---------------------------------------------
A=$FIX/x64-hello.exe
B=$FIX/x86-dll-oddlen7.dll
da=$(qdigest sha256 "$A")
db=$(qdigest sha256 "$B")
check_eq "sha256 length" "${#da}" 64

check_status 0 "two files: exit" "$QWICK" digest "$A" "$B"
check_eq "two files: output like sha256sum" "$(cat "$tmp/out")" "$(printf '%s  %s\n%s  %s' "$da" "$A" "$db" "$B")"

# A relative name is printed as given.
check_eq "relative name" "$(cd "$FIX" && "$QWICK" digest x64-hello.exe)" "$da  x64-hello.exe"

printf 'MZ but not much else' >"$tmp/notpe.exe"
check_status 1 "non-PE among valid files: exit" "$QWICK" digest "$A" "$tmp/notpe.exe" "$B"
check_eq "non-PE among valid files: stdout" "$(cat "$tmp/out")" \
    "$(printf '%s  %s\n%s  %s' "$da" "$A" "$db" "$B")"
check_eq "non-PE: one stderr line" "$(wc -l <"$tmp/err" | tr -d ' ')" 1
case $(cat "$tmp/err") in
"qwick: $tmp/notpe.exe: "?*) ok "non-PE stderr names the file" ;;
*) fail "non-PE stderr: $(cat "$tmp/err")" ;;
esac

check_status 1 "missing file: exit" "$QWICK" digest "$tmp/missing.exe" "$A"
check_eq "missing file: stdout" "$(cat "$tmp/out")" "$da  $A"
case $(cat "$tmp/err") in
"qwick: $tmp/missing.exe: "?*) ok "missing file stderr names the file" ;;
*) fail "missing file stderr: $(cat "$tmp/err")" ;;
esac

for pair in sha1:40 sha256:64 sha384:96 sha512:128 SHA-256:64; do
    alg=${pair%%:*}
    n=${pair#*:}
    d=$(qdigest "$alg" "$A")
    check_eq "--alg $alg length" "${#d}" "$n"
    case $d in *[!0-9a-f]*) fail "--alg $alg: not lowercase hex: $d" ;; *) ok "--alg $alg: lowercase hex" ;; esac
done
check_eq "-a sha256 equals the default" "$("$QWICK" digest -a sha256 "$A")" "$da  $A"
check_eq "--alg=sha256 equals the default" "$("$QWICK" digest --alg=sha256 "$A")" "$da  $A"
check_eq "SHA-256 alias" "$(qdigest SHA-256 "$A")" "$da"

check_status 2 "unknown alg: exit" "$QWICK" digest --alg md5 "$A"
check_eq "unknown alg: no stdout" "$(cat "$tmp/out")" ""
[ -s "$tmp/err" ] && ok "unknown alg: message on stderr" || fail "unknown alg: no message on stderr"

check_status 2 "unknown option: exit" "$QWICK" digest --bogus "$A"

check_status 0 "--help: exit" "$QWICK" digest --help
check_grep "--help: usage line" '^Usage: qwick digest' "$tmp/out"

check_status 2 "no args: exit" "$QWICK" digest
check_eq "no args: no stdout" "$(cat "$tmp/out")" ""

t_done
