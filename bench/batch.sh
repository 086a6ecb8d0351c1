#!/bin/sh
# bench/batch.sh [BUILD_DIR]: signing a batch of PE files.
#   qwick:     one `qwick sign -j N` over the whole set (N = 2 x CPUs): digests
#              locally, signs through qwickd (RSA-3072 dev key), timestamps
#              from the server's /tsa, verifies, replaces.
#   baseline:  what users do today: `osslsigncode sign` once per file with a
#              local RSA-3072 key and `-ts` to the same TSA.
# Both sets are the same FILES (default 100) copies of a mingw-built PE, each
# with a small per-file overlay so every digest differs. Prints both times and
# the ratio; the target is qwick >= 5x faster.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
QWICKD=$BUILD/qwickd
FILES=${FILES:-100}
JOBS=${JOBS:-$(($(nproc) * 2))}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwick-bench.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
now() { date +%s.%N; }

# --- server ----------------------------------------------------------------
"$QWICKD" init --data "$tmp/data" --json >"$tmp/init.json"
QWICK_API_KEY=$(jget "$tmp/init.json" api_key)
tlsca=$(jget "$tmp/init.json" tls_ca)
root=$(jget "$tmp/init.json" root_ca)
tsaroot=$(jget "$tmp/init.json" tsa_root_ca)
"$QWICKD" serve --data "$tmp/data" --listen 127.0.0.1:0 --port-file "$tmp/port" \
    2>"$tmp/server.log" &
pid=$!
i=0
while [ ! -s "$tmp/port" ]; do
    i=$((i + 1))
    [ "$i" -le 100 ] && kill -0 "$pid" 2>/dev/null ||
        { echo "bench: qwickd did not start" >&2; cat "$tmp/server.log" >&2; exit 1; }
    sleep 0.1
done
sleep 0.1
port=$(sed 's/.*://' "$tmp/port" | tr -d ' \n')
server="https://127.0.0.1:$port"
tsa="$server/tsa"
export QWICK_API_KEY
QWICK_SERVER=$server
QWICK_CACERT=$tlsca
export QWICK_SERVER QWICK_CACERT

# --- baseline key: a local RSA-3072 code-signing cert from a throwaway PKI ----
openssl req -x509 -newkey rsa:3072 -nodes -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days 2 \
    -subj "/CN=Bench Root" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
openssl req -newkey rsa:3072 -nodes -keyout "$tmp/leaf.key" -out "$tmp/leaf.csr" \
    -subj "/CN=Bench Signer" >/dev/null 2>&1
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' \
    >"$tmp/leaf.ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 2 -extfile "$tmp/leaf.ext" -out "$tmp/leaf.pem" >/dev/null 2>&1
cat "$tmp/leaf.pem" "$tmp/ca.pem" >"$tmp/certs.pem"

# --- the file set ----------------------------------------------------------
x86_64-w64-mingw32-gcc -O2 -o "$tmp/fixture.exe" "$SRC/demo/hello.c"
mkdir "$tmp/q" "$tmp/o"
for i in $(seq 1 "$FILES"); do
    cp "$tmp/fixture.exe" "$tmp/q/app$i.exe"
    printf 'qwick bench file %06d\n' "$i" >>"$tmp/q/app$i.exe"
    cp "$tmp/q/app$i.exe" "$tmp/o/app$i.exe"
done
size=$(wc -c <"$tmp/fixture.exe" | tr -d ' ')

# Warm up both paths once (TLS, page cache) so neither pays first-use costs.
cp "$tmp/fixture.exe" "$tmp/warm.exe"
"$QWICK" sign "$tmp/warm.exe" >/dev/null
osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/leaf.key" -ts "$tsa" -HTTPS-CAfile "$tlsca" \
    -in "$tmp/fixture.exe" -out "$tmp/warm2.exe" >/dev/null

# --- qwick -----------------------------------------------------------------
t0=$(now)
"$QWICK" sign -j "$JOBS" --json "$tmp/q/*.exe" >"$tmp/q.json"
t1=$(now)
qsigned=$(jget "$tmp/q.json" signed)
[ "$qsigned" = "$FILES" ] || { echo "bench: qwick signed $qsigned of $FILES" >&2; exit 1; }

# --- osslsigncode, once per file --------------------------------------------
t2=$(now)
for i in $(seq 1 "$FILES"); do
    osslsigncode sign -certs "$tmp/certs.pem" -key "$tmp/leaf.key" -h sha256 \
        -ts "$tsa" -HTTPS-CAfile "$tlsca" \
        -in "$tmp/o/app$i.exe" -out "$tmp/o/app$i.signed.exe" >/dev/null ||
        { echo "bench: osslsigncode failed on app$i.exe" >&2; exit 1; }
done
t3=$(now)

# Spot-check that both produced valid, timestamped signatures.
osslsigncode verify -CAfile "$root" -TSA-CAfile "$tsaroot" -in "$tmp/q/app1.exe" >/dev/null ||
    { echo "bench: qwick output does not verify" >&2; exit 1; }
osslsigncode verify -CAfile "$tmp/ca.pem" -TSA-CAfile "$tsaroot" -in "$tmp/o/app1.signed.exe" \
    >/dev/null || { echo "bench: osslsigncode output does not verify" >&2; exit 1; }

python3 - "$t0" "$t1" "$t2" "$t3" "$FILES" "$JOBS" "$size" "$(nproc)" <<'EOF'
import sys
t0, t1, t2, t3 = map(float, sys.argv[1:5])
files, jobs, size, cpus = map(int, sys.argv[5:9])
q, o = t1 - t0, t3 - t2
print(f"batch: {files} PE files of {size} bytes, {cpus} CPUs, RSA-3072, timestamps from qwickd /tsa")
print(f"  qwick sign -j {jobs}:          {q:7.2f} s  ({files / q:7.1f} files/s)")
print(f"  osslsigncode sign per file:  {o:7.2f} s  ({files / o:7.1f} files/s)")
ratio = o / q
print(f"  speedup: {ratio:.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
EOF
