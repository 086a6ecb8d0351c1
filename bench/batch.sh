#!/bin/sh
# bench/batch.sh [BUILD_DIR]: signing a batch of PE files.
#   qwick:     one `qwick sign -j N` over the whole set (N: the CLI's default): digests
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
ROUNDS=${ROUNDS:-3}
case $SET in dlls) FILES=${FILES:-124} ;; small) FILES=${FILES:-100} ;; *) echo "SET is dlls or small" >&2; exit 2 ;; esac
# The CLI's default worker count (min(3 x CPUs, 8)), unless JOBS says otherwise.
JOBS=${JOBS:-$(n=$(($(nproc) * 3)); [ "$n" -le 8 ] && echo "$n" || echo 8)}
. "$SRC_ROOT/tests/integration/lib.sh"
t_init bench-batch
now() { date +%s.%N; }

# --- server ----------------------------------------------------------------
qwickd_init "$tmp/data"
# The loop's POST /tsa must not meet the per-address limit (default 20/s,
# burst 100) either: neither side is throttled.
python3 - "$tmp/data/qwickd.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c.setdefault("tsa", {}).update({"rate_per_ip_per_second": 100000, "burst_per_ip": 100000})
json.dump(c, open(sys.argv[1], "w"), indent=2)
EOF
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
mkdir "$tmp/src"
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
    cp "$src" "$tmp/src/app$i.exe"
    printf 'qwick bench file %06d\n' "$i" >>"$tmp/src/app$i.exe"
done
size=$(cat "$tmp"/src/*.exe | wc -c | tr -d ' ')

# Warm up both paths once (TLS, page cache) so neither pays first-use costs.
cp "$tmp/fixture.exe" "$tmp/warm.exe"
"$QWICK" sign "$tmp/warm.exe" >/dev/null
osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/pki/leaf.key" -ts "$tsa" -HTTPS-CAfile "$tlsca" \
    -in "$tmp/fixture.exe" -out "$tmp/warm2.exe" >/dev/null

# --- ROUNDS rounds (default 3), each on fresh copies: qwick, then the loop ---
: >"$tmp/times"
for r in $(seq 1 "$ROUNDS"); do
    rm -rf "$tmp/q" "$tmp/o"
    cp -r "$tmp/src" "$tmp/q"
    cp -r "$tmp/src" "$tmp/o"
    sync
    t0=$(now)
    "$QWICK" sign -j "$JOBS" --json "$tmp/q/*.exe" >"$tmp/q.json"
    t1=$(now)
    qsigned=$(json_get "$tmp/q.json" signed)
    [ "$qsigned" = "$FILES" ] || die "qwick signed $qsigned of $FILES"

    t2=$(now)
    for i in $(seq 1 "$FILES"); do
        osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/pki/leaf.key" -h sha256 \
            -ts "$tsa" -HTTPS-CAfile "$tlsca" \
            -in "$tmp/o/app$i.exe" -out "$tmp/o/app$i.signed.exe" >/dev/null ||
            die "osslsigncode failed on app$i.exe"
    done
    t3=$(now)
    echo "$t0 $t1 $t2 $t3" >>"$tmp/times"

    # Spot-check that both produced valid, timestamped signatures.
    n=$(((r * 37) % FILES + 1))
    ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$tmp/q/app$n.exe" 1 yes >&2 ||
        die "qwick output does not verify"
    ossl_verify "$tmp/pki/root.pem" "$QWICKD_TSA_ROOT_CA" "$tmp/o/app$n.signed.exe" 1 yes >&2 ||
        die "osslsigncode output does not verify"
done

python3 - "$tmp/times" "$FILES" "$JOBS" "$size" "$(nproc)" <<'EOF'
import statistics, sys
rounds = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
files, jobs, size, cpus = map(int, sys.argv[2:6])
print(f"batch: {files} PE files, {size / 1e6:.0f} MB in all, {cpus} CPUs, RSA-3072; qwick's timestamps")
print("  from qwickd's TSA within the signing request, osslsigncode's from POST /tsa")
ratios = []
for i, (t0, t1, t2, t3) in enumerate(rounds, 1):
    q, o = t1 - t0, t3 - t2
    ratios.append(o / q)
    print(f"  round {i}: qwick sign -j {jobs} {q:5.2f} s ({files / q:5.1f} files/s), "
          f"osslsigncode per file {o:5.2f} s ({files / o:4.1f} files/s): {o / q:4.1f}x")
ratio = statistics.median(ratios)
print(f"  speedup (median of {len(ratios)} rounds): {ratio:.1f}x  "
      f"(target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
EOF
