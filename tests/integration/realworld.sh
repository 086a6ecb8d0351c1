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
: "${QWICK:?}" "${BUILD_ROOT:?}"
cache="$BUILD_ROOT/realworld"
mkdir -p "$cache"
fails=0
checked=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

if [ ! -f "$cache/extracted" ]; then
    (cd "$cache" && apt-get download shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed \
        >/dev/null 2>&1) || { echo "FAIL: could not download the real-world packages"; exit 1; }
    for d in "$cache"/*.deb; do dpkg-deb -x "$d" "$cache/x"; done
    touch "$cache/extracted"
fi

signed=$(find "$cache/x" -name '*.efi.signed' | sort)
unsigned=$(find /usr/lib/gcc/x86_64-w64-mingw32 /usr/lib/gcc/i686-w64-mingw32 \
    /usr/x86_64-w64-mingw32/lib /usr/i686-w64-mingw32/lib -name '*.dll' 2>/dev/null | sort | head -40)
[ -n "$signed" ] || { echo "FAIL: no signed UEFI binaries found"; exit 1; }
[ -n "$unsigned" ] || { echo "FAIL: no mingw DLLs found"; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Unsigned: osslsigncode's digest of a file it signs is the padded image digest.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/k.pem" -out "$tmp/c.pem" \
    -subj /CN=realworld -days 1 >/dev/null 2>&1
for f in $unsigned; do
    checked=$((checked + 1))
    q=$("$QWICK" digest "$f" | cut -d' ' -f1)
    osslsigncode sign -certs "$tmp/c.pem" -key "$tmp/k.pem" -h sha256 -in "$f" -out "$tmp/s" \
        >/dev/null 2>&1 || { fail "osslsigncode cannot sign $f"; continue; }
    o=$(osslsigncode verify "$tmp/s" 2>&1 | sed -n 's/^Calculated message digest *: *\([0-9A-F]*\).*/\1/p' |
        head -1 | tr 'A-F' 'a-f')
    [ "$q" = "$o" ] || fail "$f: qwick $q, osslsigncode $o"
    rm -f "$tmp/s"
done

for f in $signed; do
    checked=$((checked + 1))
    q=$("$QWICK" digest "$f" | cut -d' ' -f1)
    o=$(osslsigncode verify "$f" 2>&1 | sed -n 's/^Calculated message digest *: *\([0-9A-F]*\).*/\1/p' |
        head -1 | tr 'A-F' 'a-f')
    if [ -n "$o" ]; then
        [ "$q" = "$o" ] || fail "$f: qwick $q, osslsigncode $o"
    else
        echo "note: osslsigncode cannot parse $(basename "$f"); qwick alone checks it"
    fi
    "$QWICK" verify --json "$f" >"$tmp/v.json" 2>/dev/null || true
    python3 - "$f" "$tmp/v.json" <<'PY' || fail "$f: signatures not sound"
import json, sys
name, path = sys.argv[1], sys.argv[2]
doc = json.load(open(path))
sigs = doc["files"][0]["signatures"]
assert sigs, "no signatures found"
for s in sigs:
    for k in ("digest_ok", "message_digest_ok", "signature_ok"):
        assert s[k] is True, (s["index"], k, s)
print("ok: %s: %d signature(s), all sound" % (name.rsplit("/", 1)[-1], len(sigs)))
PY
done

# shim carries two WIN_CERTIFICATE entries: both must be reported.
shim=$(echo "$signed" | grep 'shimx64.efi.signed' || true)
if [ -n "$shim" ]; then
    "$QWICK" verify --json "$shim" >"$tmp/v.json" 2>/dev/null || true
    n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["files"][0]["signatures"]))' "$tmp/v.json")
    [ "$n" -ge 2 ] || fail "shimx64: expected 2 signatures, got $n"
fi

echo "realworld: $checked files checked, $fails failures"
[ "$fails" -eq 0 ]
