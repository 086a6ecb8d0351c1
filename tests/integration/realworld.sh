#!/bin/sh
# Real-world PE files, signed by others: Debian's Microsoft/Debian-signed UEFI
# binaries (shim carries two WIN_CERTIFICATE entries, which osslsigncode cannot
# parse) and the unsigned mingw-w64 runtime DLLs. Checks:
#  - qwick digest equals osslsigncode's calculated digest wherever osslsigncode
#    can parse the file;
#  - qwick verify finds every signature and each one is cryptographically sound
#    (digest_ok, message_digest_ok, signature_ok), even where osslsigncode fails.
# The .deb files come from Debian's archive (apt-get download), cached in the
# build tree.
set -eu
: "${QWICK:?}" "${BUILD_ROOT:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init realworld
cache="$BUILD_ROOT/realworld"
mkdir -p "$cache"

if [ ! -f "$cache/extracted" ]; then
    (cd "$cache" && apt-get download shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed \
        >/dev/null 2>&1) || die "could not download the real-world packages"
    for d in "$cache"/*.deb; do dpkg-deb -x "$d" "$cache/x"; done
    touch "$cache/extracted"
fi

signed=$(find "$cache/x" -name '*.efi.signed' | sort)
unsigned=$(find /usr/lib/gcc/x86_64-w64-mingw32 /usr/lib/gcc/i686-w64-mingw32 \
    /usr/x86_64-w64-mingw32/lib /usr/i686-w64-mingw32/lib -name '*.dll' 2>/dev/null | sort | head -40)
[ -n "$signed" ] || die "no signed UEFI binaries found"
[ -n "$unsigned" ] || die "no mingw DLLs found"

# Unsigned: osslsigncode's digest of a file it signs is the padded image digest.
make_cert "$tmp/c" realworld
for f in $unsigned; do
    if osslsigncode sign -certs "$tmp/c.pem" -key "$tmp/c.key" -h sha256 -in "$f" -out "$tmp/s" \
        >/dev/null 2>&1; then
        check_eq "$f: qwick digest = osslsigncode's" "$(qdigest sha256 "$f")" "$(ossl_digest "$tmp/s" || true)"
    else
        fail "osslsigncode cannot sign $f"
    fi
    rm -f "$tmp/s"
done

for f in $signed; do
    o=$(ossl_digest "$f" || true)
    if [ -n "$o" ]; then
        check_eq "$f: qwick digest = osslsigncode's" "$(qdigest sha256 "$f")" "$o"
    else
        echo "note: osslsigncode cannot parse $(basename "$f"); qwick alone checks it"
    fi
    "$QWICK" verify --json "$f" >"$tmp/v.json" 2>/dev/null || true
    check_py "$(basename "$f"): every signature sound" "$tmp/v.json" '
sigs = d["files"][0]["signatures"]
assert sigs, "no signatures found"
for s in sigs:
    for k in ("digest_ok", "message_digest_ok", "signature_ok"):
        assert s[k] is True, (s["index"], k, s)
'
done

# shim carries two WIN_CERTIFICATE entries: both must be reported.
shim=$(echo "$signed" | grep 'shimx64.efi.signed' || true)
if [ -n "$shim" ]; then
    "$QWICK" verify --json "$shim" >"$tmp/v.json" 2>/dev/null || true
    check_py "shimx64: both signatures reported" "$tmp/v.json" '
n = len(d["files"][0]["signatures"])
assert n >= 2, n'
fi

t_done
