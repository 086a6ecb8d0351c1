#!/bin/sh
# qwick sign and symbolic links another user may have planted (issue 7,
# defect 8), against a real qwickd:
#  - --out never writes through a link, whoever owns it; nothing is written
#    and no temporary is left;
#  - in place (a PE file, or FILE.p7s with --detached), a link is followed
#    only where the kernel's fs.protected_symlinks rule would follow it: not
#    when it lies in a sticky world-writable directory and belongs neither to
#    the caller nor to the directory's owner (also as a directory component,
#    at the end of a chain of links, and among other files with -j);
#  - a link planted while a file is being signed (a slow TSA leaves time)
#    does not redirect the write either;
#  - links that rule allows are followed: the target is signed, the link stays;
#  - an --out naming a new or a regular file still works.
# Needs root (links are handed to `nobody` with chown -h).
set -eu
: "${QWICK:?}" "${QWICKD:?}" "${SRC_ROOT:?}"
. "$SRC_ROOT/tests/integration/lib.sh"
if [ "$(id -u)" -ne 0 ] || ! id nobody >/dev/null 2>&1; then
    echo "SKIP: needs root and a user named nobody"
    exit 77
fi
t_init cli_symlink
need osslsigncode

start_qwickd "$tmp/data"
qwick_env
XDG_CONFIG_HOME=$tmp/xdg
export XDG_CONFIG_HOME
osslverify() { ossl_verify "$QWICKD_ROOT_CA" "$QWICKD_TSA_ROOT_CA" "$@"; }
nobody=$(id -u nobody)

build_pe "$tmp/app.exe" x64
cp "$tmp/app.exe" "$tmp/app.copy"
# Root's file outside the shared directory: what a planted link aims at.
mkdir "$tmp/victim"
cp "$tmp/app.exe" "$tmp/victim/target.exe"
cp "$tmp/app.exe" "$tmp/target.copy"
# A shared directory like /tmp: sticky, world-writable, owned by root.
sticky=$(mktemp -d "$tmp/sticky.XXXXXX")
chmod 1777 "$sticky"
plant() { # TARGET LINK: a link made by `nobody`
    ln -s "$1" "$2"
    chown -h nobody "$2"
}

# untouched DESC: the victim is byte-identical and no temporary is left anywhere.
untouched() {
    check "$1: target unchanged" cmp "$tmp/victim/target.exe" "$tmp/target.copy"
    check_eq "$1: temporaries left" "$(find "$tmp" -name '.*.qwick-*' | wc -l)" 0
}

# --- (a) another user's link in a sticky world-writable directory -------------
plant "$tmp/victim/target.exe" "$sticky/evil.exe"
check_status 1 "--out to nobody's link in a sticky dir: refused" \
    "$QWICK" sign --out "$sticky/evil.exe" "$tmp/app.exe"
check_grep "--out to nobody's link: says why" \
    "refusing to write through symlink $sticky/evil.exe" "$tmp/err"
untouched "--out to nobody's link"
[ -L "$sticky/evil.exe" ] && ok "--out to nobody's link: the link stays" ||
    fail "--out to nobody's link: the link was replaced"

check_status 1 "in place through nobody's link in a sticky dir: refused" \
    "$QWICK" sign "$sticky/evil.exe"
check_grep "in place through nobody's link: says why" \
    "refusing to follow symlink $sticky/evil.exe owned by uid $nobody in sticky world-writable directory $sticky" \
    "$tmp/err"
untouched "in place through nobody's link"

# The same link reached through root's own link, and as a directory component.
ln -s "$sticky/evil.exe" "$tmp/chain.exe"
check_status 1 "in place through root's link to nobody's link: refused" "$QWICK" sign "$tmp/chain.exe"
check_grep "chain: names the planted link" "refusing to follow symlink $sticky/evil.exe" "$tmp/err"
untouched "chain"
plant "$tmp/victim" "$sticky/dir"
check_status 1 "in place through nobody's directory link: refused" \
    "$QWICK" sign "$sticky/dir/target.exe"
check_grep "directory link: says why" "refusing to follow symlink $sticky/dir owned by" "$tmp/err"
check_status 1 "--out through nobody's directory link: refused" \
    "$QWICK" sign --out "$sticky/dir/new.exe" "$tmp/app.exe"
[ ! -e "$tmp/victim/new.exe" ] && ok "--out through a directory link: nothing written" ||
    fail "--out through a directory link: wrote $tmp/victim/new.exe"
untouched "directory link"

# Detached signatures: FILE.p7s planted, and --out.
printf 'notes\n' >"$sticky/notes.txt"
plant "$tmp/victim/target.exe" "$sticky/notes.txt.p7s"
check_status 1 "--detached: nobody's FILE.p7s link in a sticky dir: refused" \
    "$QWICK" sign --detached "$sticky/notes.txt"
check_grep "--detached: says why" "refusing to follow symlink $sticky/notes.txt.p7s" "$tmp/err"
check_status 1 "--detached --out to nobody's link: refused" \
    "$QWICK" sign --detached --out "$sticky/evil.exe" "$sticky/notes.txt"
check_grep "--detached --out: says why" "refusing to write through symlink" "$tmp/err"
untouched "--detached"

# Among other files: only the planted link fails.
cp "$tmp/app.exe" "$tmp/b1.exe"
cp "$tmp/app.exe" "$tmp/b2.exe"
check_status 1 "-j 2 with a planted link among good files: exit 1" \
    "$QWICK" sign -j 2 "$tmp/b1.exe" "$sticky/evil.exe" "$tmp/b2.exe"
check_grep "-j 2: the link refused" "evil.exe: refusing to follow symlink" "$tmp/err"
check_grep "-j 2: summary" "signed 2, failed 1" "$tmp/out"
check "-j 2: the others are signed" osslverify "$tmp/b1.exe"
check "-j 2: the others are signed (2)" osslverify "$tmp/b2.exe"
untouched "-j 2"

# --- (b) --out to a link of root's own: refused all the same ------------------
ln -s "$tmp/victim/target.exe" "$tmp/rootlink.exe"
check_status 1 "--out to root's own link: refused" \
    "$QWICK" sign --out "$tmp/rootlink.exe" "$tmp/app.exe"
check_grep "--out to root's own link: says why" \
    "refusing to write through symlink $tmp/rootlink.exe" "$tmp/err"
[ -L "$tmp/rootlink.exe" ] && ok "--out to root's own link: the link stays" ||
    fail "--out to root's own link: the link was replaced"
ln -s "$tmp/victim/target.exe" "$sticky/mine.exe"
check_status 1 "--out to root's own link in the sticky dir: refused" \
    "$QWICK" sign --out "$sticky/mine.exe" "$tmp/app.exe"
untouched "--out to root's own links"
check "--out: the input is never touched" cmp "$tmp/app.exe" "$tmp/app.copy"

# --- a link planted while the file is being signed ----------------------------
# Where to write is decided before the signing round trip; a TSA that answers
# 3 s late (the server's own, behind a slow proxy) leaves time to plant a link
# there, which must not redirect the write either.
cat >"$tmp/slowtsa.py" <<'PYEOF'
import http.server, os, ssl, sys, time, urllib.request
upstream, cafile, portfile = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=cafile)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(3)
        req = urllib.request.Request(upstream, body, {"Content-Type": self.headers["Content-Type"]})
        with urllib.request.urlopen(req, context=ctx) as r:
            data, ctype = r.read(), r.headers["Content-Type"]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(portfile + ".tmp", "w").write(str(s.server_address[1]))
os.replace(portfile + ".tmp", portfile)
s.serve_forever()
PYEOF
python3 "$tmp/slowtsa.py" "$QWICKD_URL/tsa" "$QWICKD_TLS_CA" "$tmp/slowtsa.port" 2>"$tmp/slowtsa.log" &
spid=$!
track_pid "$spid"
wait_port "$spid" "$tmp/slowtsa.port" "the slow TSA proxy" "$tmp/slowtsa.log"
slow="http://127.0.0.1:$port"
# raced DESC LINK QWICK-ARGS...: sign; a second in, `nobody` makes LINK (a
# new name, or nobody's own file) a link to the victim.
raced() {
    _desc=$1
    _link=$2
    shift 2
    _rc=0
    "$QWICK" sign --timestamp-url "$slow" "$@" >"$tmp/out" 2>"$tmp/err" &
    _cpid=$!
    sleep 1
    rm -f "$_link"
    plant "$tmp/victim/target.exe" "$_link"
    wait "$_cpid" || _rc=$?
    check_eq "$_desc: exit status" "$_rc" 1
    check_grep "$_desc: says why" "became a symbolic link while it was being signed" "$tmp/err"
    untouched "$_desc"
}
raced "--out: a link planted during signing" "$sticky/race.exe" \
    --out "$sticky/race.exe" "$tmp/app.exe"
cp "$tmp/app.exe" "$sticky/theirs.exe"
chown nobody "$sticky/theirs.exe"
raced "in place: nobody's file swapped for a link during signing" "$sticky/theirs.exe" \
    "$sticky/theirs.exe"
stop_pid "$spid"

# --- (c) links the rule allows: the target is signed, the link stays ----------
# linked DESC LINK TARGET: sign LINK in place.
linked() {
    check "$1: signed" "$QWICK" sign "$2"
    [ -L "$2" ] && ok "$1: the link is still a link" || fail "$1: the link was replaced"
    check "$1: the target verifies" osslverify "$3"
    check_eq "$1: temporaries left" "$(find "$tmp" -name '.*.qwick-*' | wc -l)" 0
}
cp "$tmp/app.exe" "$tmp/victim/ok1.exe"
ln -s "$tmp/victim/ok1.exe" "$sticky/mine-inplace.exe"
linked "root's own link in the sticky dir" "$sticky/mine-inplace.exe" "$tmp/victim/ok1.exe"
mkdir "$tmp/plain"
cp "$tmp/app.exe" "$tmp/victim/ok2.exe"
plant ../victim/ok2.exe "$tmp/plain/link.exe"
linked "nobody's link in a non-sticky dir" "$tmp/plain/link.exe" "$tmp/victim/ok2.exe"
# Owned by the sticky directory's owner (the kernel's other exception).
owned=$(mktemp -d "$tmp/owned.XXXXXX")
chown nobody "$owned"
chmod 1777 "$owned"
cp "$tmp/app.exe" "$tmp/victim/ok3.exe"
plant "$tmp/victim/ok3.exe" "$owned/dirowner.exe"
linked "the sticky dir owner's link" "$owned/dirowner.exe" "$tmp/victim/ok3.exe"
# A directory link of root's own as a component, with a relative path.
cp "$tmp/app.exe" "$tmp/victim/ok4.exe"
ln -s ../victim "$tmp/plain/vdir"
(cd "$tmp/plain" && "$QWICK" sign vdir/ok4.exe) >"$tmp/last.out" 2>&1 &&
    ok "relative path through a directory link: signed" ||
    fail "relative path through a directory link: $(cat "$tmp/last.out")"
check "relative path through a directory link: verifies" osslverify "$tmp/victim/ok4.exe"
[ -L "$tmp/plain/vdir" ] && ok "directory link stays" || fail "directory link replaced"

# --- (d) --out to a new path, and over a regular file --------------------------
mkdir "$tmp/outdir"
check "--out to a new path" "$QWICK" sign --out "$tmp/outdir/signed.exe" "$tmp/app.exe"
check "--out to a new path: verifies" osslverify "$tmp/outdir/signed.exe"
[ -f "$tmp/outdir/signed.exe" ] && [ ! -L "$tmp/outdir/signed.exe" ] &&
    ok "--out to a new path: a regular file" || fail "--out to a new path: not a regular file"
check "--out over a regular file" "$QWICK" sign --out "$tmp/outdir/signed.exe" "$tmp/app.exe"
check "--out over a regular file: verifies" osslverify "$tmp/outdir/signed.exe"
check "--out to a new name in the sticky dir" "$QWICK" sign --out "$sticky/fresh.exe" "$tmp/app.exe"
check "--out to a new name in the sticky dir: verifies" osslverify "$sticky/fresh.exe"
(cd "$tmp/outdir" && "$QWICK" sign --out rel.exe ../app.exe) >"$tmp/last.out" 2>&1 &&
    ok "--out relative" || fail "--out relative: $(cat "$tmp/last.out")"
check "--out relative: verifies" osslverify "$tmp/outdir/rel.exe"
check "--out: the input is never touched (2)" cmp "$tmp/app.exe" "$tmp/app.copy"
check_eq "temporaries left at the end" "$(find "$tmp" -name '.*.qwick-*' | wc -l)" 0

t_done
