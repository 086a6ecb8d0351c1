#!/bin/sh
# qwickd's durable signing queue (docs/api.md "Asynchronous signing: the
# queue") driven over raw HTTP, against the local signer and the Azure
# emulator (tests/emulators/azure_emu.py) as a slow or failing backend:
#  1. async happy path: 20 CMS requests answered 202 with Location, signed by
#     the workers, each signature checked by openssl cms -verify; GET shows
#     attempts, chain and digest; the list is newest first and pages with
#     nextCursor (7, 7, 6); the audit log verifies;
#  2. Idempotency-Key: a repeat gets the same request and status, 10
#     concurrent first uses make one request, another body is 422, a
#     synchronous request with a key is 200 and so is its repeat (same
#     signature), another API key's same key string is another request, and
#     after 24 hours (QWICKD_TEST_CLOCK_OFFSET) the key is free again;
#  3. cancel: with one worker and a slow backend, a QUEUED request is
#     cancelled and never signed; PROCESSING and SIGNED ones are 409;
#     audited as sign.cancel;
#  4. retries and dead letters: throttling (Azure 429) and an unavailable
#     backend (Azure 503) are retried up to max_attempts, a refused operation
#     fails at once; they are dead letters (API and `qwickd queue
#     dead-letters`, with the server running and stopped); retry by an admin
#     (API and CLI) signs them, a signer may not, a SIGNED request is not
#     retryable; /metrics counts retries and dead letters;
#  5. fairness, with one worker and with four: a second org's few requests
#     are signed while most of a first org's earlier flood is still waiting;
#  6. org isolation: another org's request is 404 for GET, DELETE and retry,
#     and absent from its lists.
# On SQLite, or on PostgreSQL with QWICK_TEST_STORE=pg. Fields of single
# answers are read with sed (jstr), not a python3 each: on a loaded machine a
# python3 start costs a second, and the cancel and fairness checks race the
# workers (their timing-critical parts run inside one python3, q.py).
set -eu
: "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
t_init queue
need openssl curl
if store_is_pg; then need psql; else need sqlite3; fi
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import cryptography' 2>/dev/null ||
    die "Debian's python3-cryptography is missing (make setup installs it)"

# The emulator: operations ready after 100 ms unless a section slows them;
# Retry-After 0, so the backend's own retries take 100 ms each.
start_azure_emu "$tmp/emu" --op-delay-ms 100 --retry-after 0
emu_root="$tmp/emu/codesign-root.pem"

# jstr NAME [FILE]: a string member of a one-line JSON object (qwickd's
# answers; default $tmp/body), for members that occur once.
jstr() { sed -n "s/^.*\"$1\" *: *\"\([^\"]*\)\".*\$/\1/p" "${2:-$tmp/body}" | head -n 1; }

# --- data directory, orgs, profiles, keys -----------------------------------------
data="$tmp/data"
qwickd_init "$data"
admin_key=$QWICKD_API_KEY
root=$QWICKD_ROOT_CA
db="$data/qwick.db"
# One query on the store, rows as sqlite3 prints them: sqlite3 on qwick.db, or
# psql as PostgreSQL's superuser (which row-level security does not bind).
dbq() {
    if store_is_pg; then pg_store_sql -c "$1"; else sqlite3 "$db" "$1"; fi
}
# queue_config CONCURRENCY: the queue's settings, small so the test is quick.
queue_config() {
    python3 - "$data/qwickd.json" "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["queue"] = {"concurrency": int(sys.argv[2]), "max_attempts": 3, "lease_seconds": 30,
              "backoff_ms": 200, "backoff_max_ms": 400, "poll_ms": 100,
              "sync_wait_seconds": 10}
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
}
queue_config 1

# Two more orgs: A signs through Azure (the emulator), B with a local key.
# Only A has an Azure profile: the reaper (azure_creds.c, reap_with) revokes
# the app's qwick secrets on which its own org holds no lease, so two orgs
# had better not share one Azure application.
"$QWICKD" org create --data "$data" qa >/dev/null || die "org create qa"
"$QWICKD" org create --data "$data" qb >/dev/null || die "org create qb"
azure_profile_json "$tmp/az.json"
# The Graph grant by client secret (the emulator's manager app): a refresh
# token would rotate at each use, and this test restarts qwickd.
sed 's/"graph": {[^}]*}/"graph": {"clientId": "mgr-1", "clientSecret": "mgr-secret"}/' \
    "$tmp/az.json" >"$tmp/az2.json"
grep -q mgr-secret "$tmp/az2.json" || die "Azure profile: graph client secret not set"
"$QWICKD" profile create --data "$data" --org qa --name az --config "$tmp/az2.json" >/dev/null ||
    die "profile create az (org qa)"
make_cert "$tmp/rel" "Org B Release"
printf '{"backend":"local","key":"%s","chain":"%s"}\n' "$tmp/rel.key" "$tmp/rel.pem" >"$tmp/rel.json"
"$QWICKD" profile create --data "$data" --org qb --name rel --config "$tmp/rel.json" >/dev/null ||
    die "profile create rel (org qb)"
newkey() { # ORG ROLE: prints a new API key
    "$QWICKD" apikey create --data "$data" --org "$1" --role "$2" --json >"$tmp/key.json" ||
        die "apikey create --org $1 --role $2"
    jstr api_key "$tmp/key.json"
}
a_admin=$(newkey qa admin)
a_signer=$(newkey qa signer)
b_admin=$(newkey qb admin)
b_signer=$(newkey qb signer)
d_signer=$(newkey default signer)

# --- HTTP -------------------------------------------------------------------------------
# call METHOD PATH KEY [curl args...]: body in $tmp/body, status in $tmp/status,
# headers (CR stripped) in $tmp/headers.
call() {
    _m=$1
    _p=$2
    _k=$3
    shift 3
    curl -sS --cacert "$QWICKD_TLS_CA" -X "$_m" -H "Authorization: Bearer $_k" \
        -o "$tmp/body" -D "$tmp/headers.raw" -w '%{http_code}' "$@" "$QWICKD_URL$_p" \
        >"$tmp/status" 2>"$tmp/curl.err" || true
    tr -d '\r' <"$tmp/headers.raw" >"$tmp/headers"
}
# sign KEY BODY [curl args...]: POST /api/v1/sign/digest.
sign() {
    _k=$1
    _b=$2
    shift 2
    call POST /api/v1/sign/digest "$_k" -H 'Content-Type: application/json' \
        --data-binary "$_b" "$@"
}
get() { call GET "/api/v1/sign/requests/$2" "$1"; } # KEY ID
header() { sed -n "s/^$1: *//Ip" "$tmp/headers" | tail -n 1; }
st() { cat "$tmp/status"; }
# expect_status STATUS DESC: the last response had that status.
expect_status() {
    if [ "$(st)" = "$1" ]; then ok "$2"; else
        fail "$2: want $1, got $(st): $(head -c 300 "$tmp/body")"
    fi
}
# expect_error STATUS CODE DESC: the last response is that JSON error.
expect_error() {
    if [ "$(st)" = "$1" ] && [ "$(jstr code)" = "$2" ]; then ok "$3 -> $1 $2"; else
        fail "$3: want $1 $2, got $(st): $(head -c 300 "$tmp/body")"
    fi
}
# cms_body FILE PROFILE [EXTRA]: a CMS request over FILE's SHA-256.
cms_body() {
    printf '{"digest":"%s","algorithm":"sha256","format":"cms","profile":"%s","metadata":{"filename":"%s"}%s}' \
        "$(openssl dgst -sha256 -binary "$1" | base64 -w0)" "$2" "${1##*/}" "${3:-}"
}
# status_of KEY ID: the request's status now.
status_of() {
    get "$1" "$2"
    _s=$(jstr status)
    echo "${_s:-HTTP $(st)}"
}
# wait_for KEY ID STATUS SECONDS: polls until the request has STATUS (its
# GET in $tmp/body).
wait_for() {
    _end=$(($(date +%s) + $4))
    while [ "$(status_of "$1" "$2")" != "$3" ] && [ "$(date +%s)" -le "$_end" ]; do
        sleep 0.1
    done
    [ "$(jstr status)" = "$3" ]
}
metrics() {
    curl -sS --fail --cacert "$QWICKD_TLS_CA" -H "Authorization: Bearer $QWICKD_OPERATOR_TOKEN" \
        -o "$tmp/metrics.txt" "$QWICKD_URL/metrics"
}

# The bulk work (many requests, polling, threads) in one python3 each:
#   submit KEY PROFILE OUT FILE...   async CMS requests, one per file, in order
#   wait KEY WANT SECONDS OUT ID...  GET each until it is final; OUT: {id: body};
#                                    fails unless every one is WANT
#   sigs DONE SUBMITTED DIR          DIR/NAME.p7s: each signed file's signature
#   pages KEY LIMIT OUT              the list, page by page: [[summary...]...]
#   race KEY IDEM N BODY OUT         N threads POST BODY with one Idempotency-Key
#   fair KEYA PROFA NA KEYB PROFB NB SECONDS OUT   A submits NA async requests,
#        then B NB; polls both orgs' lists until B's are all SIGNED and says
#        how many of A's were not signed then; then waits for A's; and the
#        most requests of one org seen PROCESSING at once
cat >"$tmp/q.py" <<'PY'
import base64, hashlib, json, os, ssl, sys, threading, time, urllib.error, urllib.request

URL, CTX = os.environ["QURL"], ssl.create_default_context(cafile=os.environ["QCA"])
FINAL = ("SIGNED", "FAILED", "CANCELLED", "REJECTED")

def call(method, path, key, body=None, headers=None):
    h = {"Authorization": "Bearer " + key}
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    req = urllib.request.Request(URL + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, context=CTX, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")

def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)

def post_async(key, profile, digest, name):
    body = json.dumps({"digest": digest, "algorithm": "sha256", "format": "cms",
                       "profile": profile, "async": True,
                       "metadata": {"filename": name}}).encode()
    code, h, j = call("POST", "/api/v1/sign/digest", key, body)
    return {"digest": digest, "code": code, "location": h.get("Location"),
            "retryAfter": h.get("Retry-After"), "body": j}

def submit(key, profile, out, *files):
    res = []
    for f in files:
        digest = base64.b64encode(hashlib.sha256(open(f, "rb").read()).digest()).decode()
        res.append(dict(post_async(key, profile, digest, os.path.basename(f)), file=f))
    dump(res, out)

def wait(key, want, seconds, out, *ids):
    end, last, pending = time.time() + float(seconds), {}, list(ids)
    while pending and time.time() < end:
        for i in list(pending):
            code, _, j = call("GET", "/api/v1/sign/requests/" + i, key)
            last[i] = j if code == 200 else {"httpStatus": code, "body": j}
            if code == 200 and j["status"] in FINAL:
                pending.remove(i)
        if pending:
            time.sleep(0.1)
    dump(last, out)
    bad = {i: last.get(i, {}).get("status") for i in ids if last.get(i, {}).get("status") != want}
    if bad:
        sys.exit("not %s: %s" % (want, json.dumps(bad)[:2000]))

def sigs(done, submitted, outdir):
    done = json.load(open(done))
    for s in json.load(open(submitted)):
        r = done.get(s["body"].get("requestId"), {})
        if "signature" in r:
            with open("%s/%s.p7s" % (outdir, os.path.basename(s["file"])), "wb") as f:
                f.write(base64.b64decode(r["signature"]))

def pages(key, limit, out):
    res, cursor = [], None
    while len(res) < 100:
        code, _, j = call("GET", "/api/v1/sign/requests?limit=%s%s"
                          % (limit, "&cursor=" + cursor if cursor else ""), key)
        if code != 200:
            sys.exit("list: %d %s" % (code, j))
        res.append(j["requests"])
        cursor = j["nextCursor"]
        if cursor is None:
            break
    dump(res, out)

def race(key, idem, n, body, out):
    res, go = [None] * int(n), threading.Barrier(int(n))
    data = open(body, "rb").read()
    def one(k):
        go.wait()
        code, _, j = call("POST", "/api/v1/sign/digest", key, data, {"Idempotency-Key": idem})
        res[k] = {"code": code, "body": j}
    ts = [threading.Thread(target=one, args=(k,)) for k in range(int(n))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dump(res, out)

def statuses(key):
    code, _, j = call("GET", "/api/v1/sign/requests?limit=200", key)
    return {r["requestId"]: r["status"] for r in j["requests"]} if code == 200 else {}

def counts(st, ids): # "Q36 P4 S0": how many of ids are QUEUED, PROCESSING, SIGNED
    return " ".join("%s%d" % (x[0], sum(st.get(i) == x for i in ids))
                    for x in ("QUEUED", "PROCESSING", "SIGNED"))

def processing(st): # one org's list is one snapshot; two orgs' lists are not
    return sum(x == "PROCESSING" for x in st.values())

def fair(key_a, prof_a, na, key_b, prof_b, nb, seconds, out):
    rand = lambda: base64.b64encode(os.urandom(32)).decode()
    t_submit = time.time()
    a = [None] * int(na) # A's flood from 8 threads: quicker than the workers
    def post_some(k):
        for i in range(k, int(na), 8):
            a[i] = post_async(key_a, prof_a, rand(), "a%d.bin" % i)
    ts = [threading.Thread(target=post_some, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    b = [post_async(key_b, prof_b, rand(), "b%d.bin" % i) for i in range(int(nb))]
    ids_a = [r["body"].get("requestId") for r in a]
    ids_b = [r["body"].get("requestId") for r in b]
    t0, busy = time.time(), 0
    timeline = ["%.2fs to submit A's and B's requests" % (t0 - t_submit)]
    while True:
        sa, sb = statuses(key_a), statuses(key_b)
        b_signed = sum(sb.get(i) == "SIGNED" for i in ids_b)
        a_open = sum(sa.get(i) != "SIGNED" for i in ids_a)
        busy = max(busy, processing(sa), processing(sb))
        timeline.append("%.2fs A %s, B %s" % (time.time() - t0, counts(sa, ids_a),
                                               counts(sb, ids_b)))
        if b_signed == len(ids_b) or time.time() > t0 + float(seconds):
            break
        time.sleep(0.05)
    res = {"codes": sorted({r["code"] for r in a + b}), "bSigned": b_signed,
           "aNotSigned": a_open, "seconds": round(time.time() - t0, 2), "timeline": timeline}
    while time.time() < t0 + 3 * float(seconds):
        sa = statuses(key_a)
        busy = max(busy, processing(sa))
        if all(sa.get(i) == "SIGNED" for i in ids_a):
            break
        time.sleep(0.2)
    res["aSignedAtEnd"] = sum(sa.get(i) == "SIGNED" for i in ids_a)
    res["maxProcessing"] = busy
    res["ids_a"], res["ids_b"] = ids_a, ids_b
    dump(res, out)

globals()[sys.argv[1]](*sys.argv[2:])
PY
qpy() { QURL=$QWICKD_URL QCA=$QWICKD_TLS_CA python3 "$tmp/q.py" "$@"; }

# === first run: one worker =================================================================
start_qwickd "$data"
echo "qwickd on $QWICKD_URL (concurrency 1)"

# --- 1. async happy path -----------------------------------------------------------------
mkdir "$tmp/files" "$tmp/sigs"
for n in $(seq 1 20); do
    head -c $((1000 + n * 37)) /dev/urandom >"$tmp/files/f$(printf %02d "$n").bin"
done
qpy submit "$admin_key" default "$tmp/sub.json" "$tmp"/files/f*.bin || die "submitting 20 requests"
sed -n 's/.*"requestId": "\(req_[0-9a-f]*\)".*/\1/p' "$tmp/sub.json" >"$tmp/ids"
check_py "async: 20 x 202 QUEUED, Location names the request, Retry-After" "$tmp/sub.json" "
assert len(d) == 20
for r in d:
    b = r['body']
    assert r['code'] == 202 and b['status'] == 'QUEUED', r
    assert re.fullmatch(r'req_[0-9a-f]{32}', b['requestId']), r
    assert r['location'] == '/api/v1/sign/requests/' + b['requestId'], r
    assert r['retryAfter'] is not None and r['retryAfter'].isdigit(), r
assert [b['body']['requestId'] for b in d] == open('$tmp/ids').read().split()"
# shellcheck disable=SC2046 # request ids: no spaces
if qpy wait "$admin_key" SIGNED 60 "$tmp/done.json" $(cat "$tmp/ids") 2>"$tmp/wait.err"; then
    ok "async: all 20 SIGNED"
else fail "async: all 20 SIGNED: $(cat "$tmp/wait.err")"; fi
check_py "async: GET shows attempts 1, the chain, the digest sent, the file name" "$tmp/done.json" "
for s in json.load(open('$tmp/sub.json')):
    r = d[s['body']['requestId']]
    assert r['status'] == 'SIGNED' and r['attempts'] == 1, r
    assert r['digest'] == s['digest'], (r['digest'], s['digest'])
    assert len(r['certificateChain']) >= 2 and r['signature'], r['requestId']
    assert (r['format'], r['profile'], r['algorithm']) == ('cms', 'default', 'sha256'), r
    assert r['metadata']['filename'] == s['file'].rsplit('/', 1)[1], r['metadata']
    assert r['completedAt'] >= r['createdAt'] > 0 and 'error' not in r, r"
qpy sigs "$tmp/done.json" "$tmp/sub.json" "$tmp/sigs"
nver=0
for f in "$tmp"/files/f*.bin; do
    if openssl cms -verify -binary -inform DER -in "$tmp/sigs/${f##*/}.p7s" -content "$f" \
        -CAfile "$root" -purpose any -out /dev/null 2>"$tmp/cms.err"; then
        nver=$((nver + 1))
    else
        echo "openssl cms -verify ${f##*/}:"
        _show "$tmp/cms.err"
    fi
done
check_eq "async: openssl cms -verify accepts each of the 20 signatures" "$nver" 20
check_fails "async: a signature does not verify over another file" openssl cms -verify -binary \
    -inform DER -in "$tmp/sigs/f01.bin.p7s" -content "$tmp/files/f02.bin" -CAfile "$root" \
    -purpose any -out /dev/null
check "list: every page" qpy pages "$admin_key" 7 "$tmp/pages.json"
check_py "list: newest first, pages of 7, 7, 6, each request once, no signatures" "$tmp/pages.json" "
sub = open('$tmp/ids').read().split()
assert [len(p) for p in d] == [7, 7, 6], [len(p) for p in d]
ids = [r['requestId'] for p in d for r in p]
assert ids == sub[::-1], (ids, sub)
assert all(r['status'] == 'SIGNED' and 'signature' not in r and 'certificateChain' not in r
           for p in d for r in p)"
call GET "/api/v1/sign/requests?limit=7&status=SIGNED" "$admin_key"
check_eq "list: status filter; nextCursor is the page's last (the 7th newest)" \
    "$(jstr nextCursor)" "$(sed -n 14p "$tmp/ids")"
call GET "/api/v1/sign/requests?status=QUEUED" "$admin_key"
check_eq "list: nothing QUEUED any more" "$(tr -d ' \n' <"$tmp/body")" '{"requests":[],"nextCursor":null}'
check "audit verify after the queued signatures" "$QWICKD" audit verify --data "$data"
check_eq "audit: one sign.submit and one sign.digest per request" \
    "$(dbq "SELECT count(*) FROM audit WHERE action IN ('sign.submit', 'sign.digest') AND filename LIKE 'f%.bin'")" 40

# --- 2. Idempotency-Key ----------------------------------------------------------------------
head -c 5000 /dev/urandom >"$tmp/idem.bin"
body1=$(cms_body "$tmp/idem.bin" default ',"async":true')
sign "$admin_key" "$body1" -H 'Idempotency-Key: build-4711'
expect_status 202 "idempotency: first use 202"
id1=$(jstr requestId)
sign "$admin_key" "$body1" -H 'Idempotency-Key: build-4711'
expect_status 202 "idempotency: repeat 202"
check_eq "idempotency: repeat names the same request" "$(jstr requestId)" "$id1"
check_eq "idempotency: repeat's Location" "$(header Location)" "/api/v1/sign/requests/$id1"
check "idempotency: the request is signed" wait_for "$admin_key" "$id1" SIGNED 20
sign "$admin_key" "$body1" -H 'Idempotency-Key: build-4711'
if [ "$(st)" = 202 ] && [ "$(jstr requestId)" = "$id1" ]; then
    ok "idempotency: repeat after signing: 202, same request (an async request's answer)"
else fail "idempotency: repeat after signing: $(st) $(head -c 300 "$tmp/body")"; fi
sign "$admin_key" "$(cms_body "$tmp/files/f01.bin" default ',"async":true')" \
    -H 'Idempotency-Key: build-4711'
expect_error 422 idempotency_key_reused "idempotency: same key, another body"
head -c 4000 /dev/urandom >"$tmp/race.bin"
cms_body "$tmp/race.bin" default ',"async":true' >"$tmp/race.json"
qpy race "$admin_key" "race-$$" 10 "$tmp/race.json" "$tmp/race.out" || die "race"
check_py "idempotency: 10 concurrent first uses: all 202, one request" "$tmp/race.out" '
assert all(r["code"] == 202 for r in d), [(r["code"], r["body"]) for r in d]
ids = {r["body"]["requestId"] for r in d}
assert len(ids) == 1, ids'
check_eq "idempotency: the race queued one request (one sign.submit)" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.submit' AND filename = 'race.bin'")" 1
# Synchronous (no "async") with a key: queued, and answered 200 once signed.
head -c 3000 /dev/urandom >"$tmp/sync.bin"
body2=$(cms_body "$tmp/sync.bin" default)
sign "$admin_key" "$body2" -H 'Idempotency-Key: sync-1'
expect_status 200 "idempotency: synchronous request with a key: 200"
cp "$tmp/body" "$tmp/sync1.json"
sync_id=$(jstr requestId "$tmp/sync1.json")
check_eq "idempotency: synchronous answer: SIGNED" "$(jstr status "$tmp/sync1.json")" SIGNED
jstr signature "$tmp/sync1.json" | base64 -d >"$tmp/sync.p7s"
check "idempotency: the synchronous signature verifies" openssl cms -verify -binary -inform DER \
    -in "$tmp/sync.p7s" -content "$tmp/sync.bin" -CAfile "$root" -purpose any -out /dev/null
sign "$admin_key" "$body2" -H 'Idempotency-Key: sync-1'
expect_status 200 "idempotency: synchronous repeat: 200"
check_eq "idempotency: synchronous repeat: same request" "$(jstr requestId)" "$sync_id"
check_eq "idempotency: synchronous repeat: same signature" "$(jstr signature)" \
    "$(jstr signature "$tmp/sync1.json")"
check_eq "idempotency: the synchronous request was queued (sign.submit)" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.submit' AND request_id = '$sync_id'")" 1
# Another API key (credential) of the same org, the same key string.
sign "$d_signer" "$body1" -H 'Idempotency-Key: build-4711'
expect_status 202 "idempotency: another API key, same key string: 202"
id_other=$(jstr requestId)
if [ -n "$id_other" ] && [ "$id_other" != "$id1" ]; then
    ok "idempotency: another API key's same key string is another request"
else fail "idempotency: another API key got '$id_other' (first key: $id1)"; fi
sign "$admin_key" "$body1" -H "Idempotency-Key: $(printf 'bad\001key')"
expect_error 400 invalid_idempotency_key "idempotency: a key with a control character"
# The key in the body (idempotencyKey) works as the header does.
head -c 3000 /dev/urandom >"$tmp/idem3.bin"
body3=$(cms_body "$tmp/idem3.bin" default ',"async":true,"idempotencyKey":"body-key-1"')
sign "$admin_key" "$body3"
expect_status 202 "idempotency: idempotencyKey in the body: 202"
id3=$(jstr requestId)
sign "$admin_key" "$body3"
check_eq "idempotency: the body's key repeated: same request" "$(jstr requestId)" "$id3"
sign "$admin_key" "$body3" -H 'Idempotency-Key: body-key-1'
check_eq "idempotency: header and body naming the same key: same request" "$(jstr requestId)" "$id3"
sign "$admin_key" "$body3" -H 'Idempotency-Key: another'
expect_error 400 invalid_idempotency_key "idempotency: header and body keys differ"

# --- 3. cancel -------------------------------------------------------------------------------
# One worker (concurrency 1) and an Azure backend slowed to 2 s a signature:
# the first request holds the worker, the second waits QUEUED.
emu_faults '{"op_delay_ms": 2000}'
head -c 2000 /dev/urandom >"$tmp/c1.bin"
head -c 2000 /dev/urandom >"$tmp/c2.bin"
sign "$a_signer" "$(cms_body "$tmp/c1.bin" az ',"async":true')"
expect_status 202 "cancel: first request queued"
c1=$(jstr requestId)
check "cancel: the first request is PROCESSING" wait_for "$a_signer" "$c1" PROCESSING 10
sign "$a_signer" "$(cms_body "$tmp/c2.bin" az ',"async":true')"
expect_status 202 "cancel: second request queued"
c2=$(jstr requestId)
check_eq "cancel: the second waits QUEUED behind the one worker" "$(status_of "$a_signer" "$c2")" QUEUED
check_eq "cancel: QUEUED carries Retry-After" "$(header Retry-After)" 1
call DELETE "/api/v1/sign/requests/$c1" "$a_signer"
expect_error 409 not_cancellable "cancel: a PROCESSING request"
call DELETE "/api/v1/sign/requests/$c2" "$a_signer"
expect_status 200 "cancel: the QUEUED request"
check_eq "cancel: answer" "$(tr -d ' \n' <"$tmp/body")" "{\"requestId\":\"$c2\",\"status\":\"CANCELLED\"}"
call DELETE "/api/v1/sign/requests/$c2" "$a_signer"
expect_error 409 not_cancellable "cancel: twice"
check "cancel: the first request is signed" wait_for "$a_signer" "$c1" SIGNED 20
sleep 1 # ten polls of the free worker
get "$a_signer" "$c2"
check_py "cancel: the cancelled request stays CANCELLED, never signed" "$tmp/body" '
assert d["status"] == "CANCELLED" and d["attempts"] == 0, d
assert "signature" not in d and "certificateChain" not in d and d.get("error"), d'
call DELETE "/api/v1/sign/requests/$c1" "$a_signer"
expect_error 409 not_cancellable "cancel: a SIGNED request"
check_eq "cancel: audited (sign.cancel)" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.cancel' AND request_id = '$c2' AND outcome = 0")" 1
check_eq "cancel: no signature audited for it" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.digest' AND request_id = '$c2'")" 0
emu_faults '{"reset": true}'

# --- 5a. fairness with one worker -----------------------------------------------------------
# A floods 24 requests onto a slow backend (0.2 s a signature), then B asks
# for 2 (B's profile is local and fast: what B waits for is the one worker).
# Every claim takes one request; a fair claim gives B's 2 their turns among
# A's (with any fair choice between the two orgs, B's 2 are in within a few
# claims), so at least half of A's flood is still unsigned when B's are
# signed. A FIFO claim (oldest first, or always the same org first) hands
# the worker to A's older requests until A's queue is empty: B's 2 are
# signed last, when at most one of A's is unsigned.
emu_faults '{"op_delay_ms": 200}'
qpy fair "$a_signer" az 24 "$b_signer" rel 2 30 "$tmp/fair1.json" || die "fairness run (one worker)"
check_py "fairness, one worker: B's 2 SIGNED while at least half of A's 24 are not" "$tmp/fair1.json" '
assert d["codes"] == [202], d["codes"]
assert d["bSigned"] == 2 and d["aNotSigned"] >= 12, "\n".join(d["timeline"])'
check_py "fairness, one worker: A's flood is signed in the end" "$tmp/fair1.json" '
assert d["aSignedAtEnd"] == 24, d["aSignedAtEnd"]'
check_py "concurrency 1: never more than one of an org's requests PROCESSING" "$tmp/fair1.json" '
assert d["maxProcessing"] <= 1, d["maxProcessing"]'
emu_faults '{"reset": true}'
stop_qwickd
check_eq "first run: clean stop" "$stopped" 0

# === second run: four workers ==================================================================
queue_config 4
start_qwickd "$data"
echo "qwickd on $QWICKD_URL (concurrency 4)"

# --- 4. retries and dead letters --------------------------------------------------------------
# failing FAULTS FILE: an async request of org A's while the emulator has
# FAULTS; waits until it is FAILED (its GET in $tmp/FILE.json); sets $rid.
failing() {
    emu_faults '{"reset": true}'
    emu_faults "$1"
    head -c 2000 /dev/urandom >"$tmp/$2.bin"
    sign "$a_signer" "$(cms_body "$tmp/$2.bin" az ',"async":true')"
    rid=$(jstr requestId)
    check "dead letters: $2: FAILED in the end" wait_for "$a_signer" "$rid" FAILED 40
    cp "$tmp/body" "$tmp/$2.json"
    emu_faults '{"reset": true}'
}
# Throttled: the emulator answers 429 to every signing request; the Azure
# backend retries 8 times and reports 503 (throttled), a transient failure
# the queue tries 3 times (max_attempts) with backoff.
failing '{"sign_429": 1000, "retry_after": 0}' t1
t1=$rid
check_py "dead letters: throttled: 3 attempts, the reason says so" "$tmp/t1.json" '
assert d["attempts"] == 3, d
assert "3 attempts" in d["error"] and "429" in d["error"], d["error"]
assert "signature" not in d, d'
# Unavailable: 503 on every try. docs/api.md: "A transient failure (the
# backend or the database unavailable) puts the request back".
failing '{"sign_503": 1000, "retry_after": 0}' u1
u1=$rid
check_py "dead letters: Azure 503 on every try is transient: 3 attempts" "$tmp/u1.json" '
assert d["attempts"] == 3, (d["attempts"], d["error"])'
# Refused: the operation fails (a permanent failure): FAILED after 1 attempt.
failing '{"op_fail": 1}' p1
p1=$rid
check_py "dead letters: permanent failure after 1 attempt, with Azure's reason" "$tmp/p1.json" '
assert d["attempts"] == 1 and "SigningFailed" in d["error"], d'
call GET /api/v1/sign/dead-letters "$a_signer"
expect_status 200 "dead letters: GET /api/v1/sign/dead-letters"
cp "$tmp/body" "$tmp/dl-api.json"
# The CLI beside the running server.
check_status 0 "dead letters: qwickd queue dead-letters --json (server running)" \
    "$QWICKD" queue dead-letters --data "$data" --org qa --json
cp "$tmp/out" "$tmp/dl-cli.json"
check_py "dead letters: API and CLI list the three, newest first, with attempts and reason" \
    "$tmp/dl-api.json" "
ids = [r['requestId'] for r in d['requests']]
assert ids == ['$p1', '$u1', '$t1'], ids
assert all(r['status'] == 'FAILED' and r.get('error') for r in d['requests']), d
cli = json.load(open('$tmp/dl-cli.json'))
assert [r['requestId'] for r in cli] == ids, cli
by = {r['requestId']: r for r in cli}
assert by['$t1']['attempts'] == 3 and '3 attempts' in by['$t1']['error'], by['$t1']
assert by['$p1']['attempts'] == 1 and 'SigningFailed' in by['$p1']['error'], by['$p1']"
check_status 0 "queue status --json" "$QWICKD" queue status --data "$data" --org qa --json
check_py "queue status: the org's three FAILED, none QUEUED" "$tmp/out" '
assert d["org"] == "qa" and d["FAILED"] == 3 and d["QUEUED"] == 0, d'
# Retry: admin only, FAILED only.
call POST "/api/v1/sign/requests/$t1/retry" "$a_signer"
expect_error 403 forbidden "retry: a signer key"
call POST "/api/v1/sign/requests/$t1/retry" "$a_admin"
expect_status 200 "retry: an admin key"
check_eq "retry: answer" "$(tr -d ' \n' <"$tmp/body")" "{\"requestId\":\"$t1\",\"status\":\"QUEUED\"}"
check "retry: the request is signed now" wait_for "$a_signer" "$t1" SIGNED 20
cp "$tmp/body" "$tmp/t1b.json"
check_py "retry: attempts start again (1), no error, a signature" "$tmp/t1b.json" '
assert d["attempts"] == 1 and "error" not in d and d["signature"], d'
jstr signature "$tmp/t1b.json" | base64 -d >"$tmp/t1.p7s"
check "retry: the signature verifies (the emulator's root)" openssl cms -verify -binary \
    -inform DER -in "$tmp/t1.p7s" -content "$tmp/t1.bin" -CAfile "$emu_root" -purpose any \
    -out /dev/null
call POST "/api/v1/sign/requests/$t1/retry" "$a_admin"
expect_error 409 not_retryable "retry: a SIGNED request"
check_eq "retry: audited (sign.retry)" \
    "$(dbq "SELECT count(*) FROM audit WHERE action = 'sign.retry' AND request_id = '$t1'")" 1
check_status 0 "retry: qwickd queue retry (server running)" \
    "$QWICKD" queue retry --data "$data" --org qa "$p1" --json
check "retry: the running server signs what the CLI put back" wait_for "$a_signer" "$p1" SIGNED 20
check_status 1 "retry: qwickd queue retry of a SIGNED request fails" \
    "$QWICKD" queue retry --data "$data" --org qa "$p1"
check_grep "retry: the CLI says why" "only a FAILED request" "$tmp/err"
check "metrics" metrics
check_grep "metrics: retries counted" '^qwickd_queue_retries_total [1-9]' "$tmp/metrics.txt"
if awk '/^qwickd_queue_dead_letters_total / {n = $2} END {exit !(n >= 2)}' "$tmp/metrics.txt"; then
    ok "metrics: dead letters counted (>= 2)"
else fail "metrics: $(grep '^qwickd_queue_dead_letters_total' "$tmp/metrics.txt")"; fi
check_grep "metrics: queue depth" '^qwickd_queue_depth{status="QUEUED"} [0-9]' "$tmp/metrics.txt"
check_grep "metrics: FAILED depth" '^qwickd_queue_depth{status="FAILED"} [1-9]' "$tmp/metrics.txt"
check_grep "metrics: completions" '^qwickd_queue_completed_total{status="SIGNED"} [1-9]' "$tmp/metrics.txt"

# --- 5b. fairness with four workers ------------------------------------------------------------
# A floods 40 requests onto a slow backend (0.5 s a signature) with 4 workers;
# then B asks for 4 (B's profile is local and fast: what B waits for is a
# worker). The claim takes the oldest ready request of every org before the
# second of any, so B's 4 go to the next free workers and are signed within
# about one signature's time, while most of A's flood still waits. A FIFO
# dequeue (oldest first over all orgs) would give every free worker to A's
# older requests until A's queue is empty (about 40 / 4 x 0.6 s), so B would
# wait behind the whole flood, and A would have at most its last 4 requests
# unsigned when B's are signed.
emu_faults '{"op_delay_ms": 500}'
qpy fair "$a_signer" az 40 "$b_signer" rel 4 30 "$tmp/fair.json" || die "fairness run"
check_py "fairness, four workers: B's 4 SIGNED while at least half of A's 40 are not" "$tmp/fair.json" '
assert d["codes"] == [202], d["codes"]
assert d["bSigned"] == 4, d
assert d["aNotSigned"] >= 20, "\n".join(d["timeline"])'
check_py "fairness, four workers: A's flood is signed in the end" "$tmp/fair.json" '
assert d["aSignedAtEnd"] == 40, d["aSignedAtEnd"]'
check_py "concurrency 4: never more than four of an org's requests PROCESSING" "$tmp/fair.json" '
assert d["maxProcessing"] <= 4, d["maxProcessing"]'
emu_faults '{"reset": true}'

# --- 6. org isolation ------------------------------------------------------------------------
for r in "$c1" "$u1"; do
    get "$b_admin" "$r"
    expect_error 404 not_found "isolation: B reads A's request"
    call DELETE "/api/v1/sign/requests/$r" "$b_admin"
    expect_error 404 not_found "isolation: B cancels A's request"
    call POST "/api/v1/sign/requests/$r/retry" "$b_admin"
    expect_error 404 not_found "isolation: B retries A's request"
done
b1=$(sed -n '/"ids_b"/,$s/.*"\(req_[0-9a-f]*\)".*/\1/p' "$tmp/fair.json" | head -n 1)
get "$a_admin" "$b1"
expect_error 404 not_found "isolation: A reads B's request"
get "$b_admin" "$b1"
expect_status 200 "isolation: B reads its own request"
call GET "/api/v1/sign/requests?limit=200" "$b_admin"
check_py "isolation: B's list has B's 6 requests only" "$tmp/body" "
ids = {r['requestId'] for r in d['requests']}
b = set(json.load(open('$tmp/fair1.json'))['ids_b'] + json.load(open('$tmp/fair.json'))['ids_b'])
assert ids == b and len(b) == 6, (ids, b)"
call GET /api/v1/sign/dead-letters "$b_admin"
check_eq "isolation: B has no dead letters (A has)" "$(tr -d ' \n' <"$tmp/body")" '{"requests":[],"nextCursor":null}'
call GET "/api/v1/sign/requests?limit=200" "$admin_key"
check_py "isolation: the default org sees none of A's requests" "$tmp/body" "
ids = {r['requestId'] for r in d['requests']}
assert len(ids) == 25 and not ids & {'$c1', '$c2', '$t1', '$p1', '$u1'}, ids"
check_status 1 "isolation: qwickd queue retry of A's request as org qb" \
    "$QWICKD" queue retry --data "$data" --org qb "$u1"
stop_qwickd
check_eq "second run: clean stop" "$stopped" 0
check_status 0 "dead letters: qwickd queue dead-letters --json (server stopped)" \
    "$QWICKD" queue dead-letters --data "$data" --org qa --json
check_grep "dead letters: the unavailable backend's request is still one" "$u1" "$tmp/out"

# === third run: a day later ========================================================================
# QWICKD_TEST_CLOCK_OFFSET: 25 hours on; the Idempotency-Key of section 2 is
# free again, so the same key and body make a new request.
QWICKD_TEST_CLOCK_OFFSET=90000
export QWICKD_TEST_CLOCK_OFFSET
start_qwickd "$data"
unset QWICKD_TEST_CLOCK_OFFSET
sign "$admin_key" "$body1" -H 'Idempotency-Key: build-4711'
expect_status 202 "idempotency: 25 hours later: 202"
id_new=$(jstr requestId)
if [ -n "$id_new" ] && [ "$id_new" != "$id1" ]; then
    ok "idempotency: 25 hours later the key makes a new request"
else fail "idempotency: 25 hours later: '$id_new' (first: $id1)"; fi
sign "$admin_key" "$body1" -H 'Idempotency-Key: build-4711'
check_eq "idempotency: ... which the key names from then on" "$(jstr requestId)" "$id_new"
check "idempotency: the new request is signed" wait_for "$admin_key" "$id_new" SIGNED 20
stop_qwickd
check_eq "third run: clean stop" "$stopped" 0
check "audit verify at the end" "$QWICKD" audit verify --data "$data"

t_done
