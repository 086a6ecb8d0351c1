#!/usr/bin/python3
"""An independent checker of qwickd's transparency log, written from the
specifications only (RFC 6962/9162 Merkle trees, C2SP signed notes and
checkpoints), sharing no code with qwick:

  tlog_check.py checkpoint VKEY NOTE_FILE      -> prints "ORIGIN SIZE ROOT_HEX"
  tlog_check.py tree ENTRIES_JSON SIZE         -> prints the root (hex) of the
                                                  first SIZE leaves
  tlog_check.py inclusion PROOF_JSON LEAF_B64 ROOT_HEX
  tlog_check.py consistency PROOF_JSON ROOT1_HEX ROOT2_HEX
Exit 0 when the check holds, 1 otherwise (with the reason on stderr).
Uses /usr/bin/python3 with python3-cryptography (Ed25519)."""
import base64
import hashlib
import json
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def die(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def h_leaf(b):
    return hashlib.sha256(b"\x00" + b).digest()


def h_node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(leaves):
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return h_node(mth(leaves[:k]), mth(leaves[k:]))


def checkpoint(vkey, note_path):
    name, keyid, key = vkey.strip().split("+", 2)
    raw = base64.b64decode(key)
    if raw[0] != 1 or len(raw) != 33:
        die("not an Ed25519 verifier key")
    pub = raw[1:]
    want_id = hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4]
    if want_id.hex() != keyid:
        die("key id mismatch")
    note = open(note_path, "rb").read()
    body, sep, sigs = note.partition(b"\n\n")
    if not sep:
        die("no signature block")
    body += b"\n"
    ok = False
    for line in sigs.decode().splitlines():
        if not line.startswith("\u2014 "):
            die("bad signature line")
        lname, b64 = line[2:].split(" ")
        sig = base64.b64decode(b64)
        if lname == name and sig[:4] == want_id:
            Ed25519PublicKey.from_public_bytes(pub).verify(sig[4:], body)
            ok = True
    if not ok:
        die("no signature by the key")
    origin, size, root = body.decode().split("\n")[:3]
    print(origin, int(size), base64.b64decode(root).hex())


def tree(entries_path, size):
    es = json.load(open(entries_path))["entries"]
    leaves = [h_leaf(base64.b64decode(e["leaf"])) for e in es]
    if [e["index"] for e in es][:size] != list(range(size)):
        die("entries are not 0..size-1")
    # Each leaf must decode to the fields shown beside it (version tag, seq).
    for e in es[:size]:
        b = base64.b64decode(e["leaf"])
        tag = b[:14]
        if tag not in (b"qwick-audit-v1", b"qwick-audit-v2"):
            die("unknown leaf tag")
        org, seq = struct.unpack(">qq", b[14:30])
        if seq != e["index"] + 1:
            die("leaf seq does not match its index")
    print(mth(leaves[:size]).hex())


def verify_inclusion(index, size, leaf_hash, path, root):
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = h_node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = h_node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, path, r1, r2):
    if first == second:
        return not path and r1 == r2
    if not path:
        return False
    if first & (first - 1) == 0:
        path = [r1] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = h_node(c, fr)
            sr = h_node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = h_node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == r1 and sr == r2


def main():
    cmd = sys.argv[1]
    if cmd == "checkpoint":
        checkpoint(sys.argv[2], sys.argv[3])
    elif cmd == "tree":
        tree(sys.argv[2], int(sys.argv[3]))
    elif cmd == "inclusion":
        p = json.load(open(sys.argv[2]))
        hashes = [base64.b64decode(x) for x in p["hashes"]]
        lh = h_leaf(base64.b64decode(sys.argv[3]))
        if not verify_inclusion(p["index"], p["size"], lh, hashes, bytes.fromhex(sys.argv[4])):
            die("inclusion proof does not verify")
    elif cmd == "consistency":
        p = json.load(open(sys.argv[2]))
        hashes = [base64.b64decode(x) for x in p["hashes"]]
        if not verify_consistency(p["from"], p["to"], hashes, bytes.fromhex(sys.argv[3]),
                                  bytes.fromhex(sys.argv[4])):
            die("consistency proof does not verify")
    else:
        die("unknown command")


if __name__ == "__main__":
    main()
