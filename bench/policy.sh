#!/bin/sh
# bench/policy.sh [BUILD_DIR]: what a signing policy costs.
#   One qwickd (SQLite, RSA-3072 dev key), driven by wrk with CONNS keep-alive
#   connections on POST /api/v1/sign/digest, in alternating slices:
#     none:    profile "default" without a policy;
#     policy:  the same profile with a policy of 50 rules and 1,000 allowlist
#              entries (loopback listed last, so every request scans them all):
#              signing hours (every day, all day, Europe/Berlin), formats,
#              algorithms, require_justification and 46 file name patterns
#              (the request matches the last).
#   The policy is set and cleared with `qwickd policy set|clear` between slices
#   (the server sees the change on the next request), so background load hits
#   both sides alike. Prints requests/s of each and the cost of the policy;
#   the target is under 5%.
# Environment: DURATION (seconds of load per side, 20), ROUNDS (4), CONNS.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
SRC_ROOT=$(cd "$(dirname "$0")/.." && pwd)
QWICK=$BUILD/qwick
QWICKD=$BUILD/qwickd
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-4}
CONNS=${CONNS:-$(($(nproc) * 8))}
. "$SRC_ROOT/tests/integration/lib.sh"
t_init bench-policy
for t in wrk python3; do
    command -v "$t" >/dev/null || die "bench/policy.sh needs $t (scripts/setup.sh installs it)"
done

start_qwickd "$tmp/data"
python3 - "$tmp/policy.json" <<'EOF'
import json, sys
allow = [f"10.{i // 250}.{i % 250}.0/24" for i in range(999)] + ["127.0.0.1/32"]
names = [f"*.ext{i:02d}" for i in range(45)] + ["*.exe"]
doc = {
    "ip_allowlist": allow,
    "signing_hours": {"days": "mon-sun", "from": "00:00", "to": "24:00", "timezone": "Europe/Berlin"},
    "formats": ["authenticode-pe"],
    "algorithms": ["sha256", "sha384"],
    "require_justification": True,
    "filenames": names,
}
json.dump(doc, open(sys.argv[1], "w"))
print(f"policy: {len(allow)} allowlist entries, {len(names) + 4} rules", file=sys.stderr)
EOF
digest=$(head -c 32 /dev/urandom | base64 -w0)
cat >"$tmp/sign.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"digest":"$digest","algorithm":"sha256","format":"authenticode-pe","profile":"default","metadata":{"filename":"bench.exe","justification":"bench"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $QWICKD_API_KEY"
done = function(summary, latency, requests)
    io.write(string.format("WRK %d %.3f %.2f %d\n", summary.requests, summary.duration / 1e6,
        latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect +
        summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
slice() { # SIDE SECONDS: appends "SIDE requests seconds p99 errors" to $tmp/slices
    wrk -t "$(nproc)" -c "$CONNS" -d "${2}s" -s "$tmp/sign.lua" "$QWICKD_URL/api/v1/sign/digest" \
        >"$tmp/wrk.out" 2>&1 || die "wrk failed" "$tmp/wrk.out"
    line=$(grep '^WRK ' "$tmp/wrk.out") || die "no summary from wrk" "$tmp/wrk.out"
    echo "$1 ${line#WRK }" >>"$tmp/slices"
}
per=$((DURATION / ROUNDS))
[ "$per" -ge 1 ] || per=1
: >"$tmp/slices"
# Warm up: the signer cache, TLS, the policy cache.
"$QWICKD" policy set --data "$QWICKD_DATA" --profile default "$tmp/policy.json" >/dev/null
slice warm 2
for r in $(seq 1 "$ROUNDS"); do
    "$QWICKD" policy clear --data "$QWICKD_DATA" --profile default >/dev/null
    slice none "$per"
    "$QWICKD" policy set --data "$QWICKD_DATA" --profile default "$tmp/policy.json" >/dev/null
    slice policy "$per"
done
# The policy was really applied: a request it denies is denied.
curl -sS --cacert "$QWICKD_TLS_CA" -o "$tmp/deny.json" -w '%{http_code}' \
    -H "Authorization: Bearer $QWICKD_API_KEY" -H 'Content-Type: application/json' \
    --data-binary "{\"digest\":\"$digest\",\"algorithm\":\"sha256\",\"metadata\":{\"filename\":\"x.msi\",\"justification\":\"j\"}}" \
    "$QWICKD_URL/api/v1/sign/digest" >"$tmp/deny.status"
[ "$(cat "$tmp/deny.status")" = 403 ] || die "the policy did not deny x.msi" "$tmp/deny.json"

python3 - "$tmp/slices" "$CONNS" "$(nproc)" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tot = {}
for side, n, secs, p99, errs in rows:
    if side == "warm":
        continue
    if int(errs):
        sys.exit(f"{side}: {errs} errors or non-2xx answers")
    t = tot.setdefault(side, [0, 0.0, 0.0])
    t[0] += int(n); t[1] += float(secs); t[2] = max(t[2], float(p99))
none, pol = tot["none"], tot["policy"]
rn, rp = none[0] / none[1], pol[0] / pol[1]
cost = (rn - rp) / rn * 100
print(f"policy cost: {sys.argv[3]} CPUs, {sys.argv[2]} connections, RSA-3072, SQLite")
print(f"  no policy:                       {rn:8.1f} req/s  (p99 {none[2]:.1f} ms)")
print(f"  50 rules, 1,000 allowlist ranges: {rp:8.1f} req/s  (p99 {pol[2]:.1f} ms)")
print(f"  cost: {cost:.1f}%  (target < 5%: {'met' if cost < 5 else 'NOT met'})")
EOF
