#!/bin/sh
# bench/batch.sh [BUILD_DIR]: signing a batch of PE files.
#   qwick:     one `qwick sign -j N` over the whole set (N = 2 x CPUs): digests
#              locally, signs through qwickd (RSA-3072 dev key), timestamps
#              from the server's /tsa, verifies, replaces.
#   baseline:  what users do today: `osslsigncode sign` once per file with a
#              local RSA-3072 key and `-ts` to the same TSA.
# Both sides sign the same set (see SET below). Prints both times and the
# ratio; the target is qwick >= 10x faster.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
QWICKD=$BUILD/qwickd
SET=${SET:-dlls}
case $SET in dlls) FILES=${FILES:-124} ;; small) FILES=${FILES:-100} ;; *) echo "SET is dlls or small" >&2; exit 2 ;; esac
JOBS=${JOBS:-$(($(nproc) * 2))}
. "$SRC_ROOT/tests/integration/lib.sh"
t_init bench-batch
now() { date +%s.%N; }

# --- server ----------------------------------------------------------------
start_qwickd "$tmp/data"
qwick_env
tlsca=$QWICKD_TLS_CA
tsa="$QWICKD_URL/tsa"

# --- baseline key: the RSA-3072 code-signing leaf of the test PKI -----------
make_pki "$tmp/pki"
cat "$tmp/pki/leaf.pem" "$tmp/pki/chain.pem" >"$tmp/certs.pem"

# --- the file set ----------------------------------------------------------
# SET=dlls (default): real PE files, the mingw-w64 runtime DLLs the project's
# setup installs (libgomp, libquadmath, libgnarl, libgfortran, ...; both
# architectures, those under 10 MB), taken in turn until FILES are copied.
# SET=small: copies of a small mingw-built PE. Either way each copy gets a
# per-file overlay so every digest differs.
mkdir "$tmp/q" "$tmp/o"
build_pe "$tmp/fixture.exe" x64
if [ "$SET" = dlls ]; then
    find /usr/lib/gcc /usr/*-w64-mingw32/lib -path '*mingw32*' -name '*.dll' -size -10000k 2>/dev/null |
        sort >"$tmp/set.txt"
    [ -s "$tmp/set.txt" ] || die "no mingw-w64 runtime DLLs found (run scripts/setup.sh)"
else
    echo "$tmp/fixture.exe" >"$tmp/set.txt"
fi
nset=$(wc -l <"$tmp/set.txt")
for i in $(seq 1 "$FILES"); do
    src=$(sed -n "$(((i - 1) % nset + 1))p" "$tmp/set.txt")
    cp "$src" "$tmp/q/app$i.exe"
    printf 'qwick bench file %06d\n' "$i" >>"$tmp/q/app$i.exe"
    cp "$tmp/q/app$i.exe" "$tmp/o/app$i.exe"
done
size=$(cat "$tmp"/q/*.exe | wc -c | tr -d ' ')

# Warm up both paths once (TLS, page cache) so neither pays first-use costs.
cp "$tmp/fixture.exe" "$tmp/warm.exe"
"$QWICK" sign "$tmp/warm.exe" >/dev/null
osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/pki/leaf.key" -ts "$tsa" -HTTPS-CAfile "$tlsca" \
    -in "$tmp/fixture.exe" -out "$tmp/warm2.exe" >/dev/null

# --- qwick -----------------------------------------------------------------
t0=$(now)
"$QWICK" sign -j "$JOBS" --json "$tmp/q/*.exe" >"$tmp/q.json"
t1=$(now)
qsigned=$(json_get "$tmp/q.json" signed)
[ "$qsigned" = "$FILES" ] || die "qwick signed $qsigned of $FILES"

# --- osslsigncode, once per file --------------------------------------------
t2=$(now)
for i in $(seq 1 "$FILES"); do
    osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/pki/leaf.key" -h sha256 \
        -ts "$tsa" -HTTPS-CAfile "$tlsca" \
        -in "$tmp/o/app$i.exe" -out "$tmp/o/app$i.signed.exe" >/dev/null ||
        die "osslsigncode failed on app$i.exe"
done
t3=$(now)

# Spot-check that both produced valid, timestamped signatures.
ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/q/app1.exe" 1 yes >&2 ||
    die "qwick output does not verify"
ossl_verify "$tmp/pki/root.pem" "$QWICKD_TSA_ROOT_CA" "$tmp/o/app1.signed.exe" 1 yes >&2 ||
    die "osslsigncode output does not verify"

python3 - "$t0" "$t1" "$t2" "$t3" "$FILES" "$JOBS" "$size" "$(nproc)" <<'EOF'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:5])
files, jobs, size, cpus = map(int, sys.argv[5:9])
q, o = t1 - t0, t3 - t2
print(f"batch: {files} PE files, {size / 1e6:.0f} MB in all, {cpus} CPUs, RSA-3072, timestamps from qwickd /tsa")
print(f"  qwick sign -j {jobs}:          {q:7.2f} s  ({files / q:7.1f} files/s)")
print(f"  osslsigncode sign per file:  {o:7.2f} s  ({files / o:7.1f} files/s)")
ratio = o / q
print(f"  speedup: {ratio:.1f}x  (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
EOF
