#!/usr/bin/env python3
"""Self-test of azure_emu.py: start it on a temporary state directory, drive
it over HTTPS with urllib (trusting its tls-ca.pem) and check each service.
Prints TAP ("ok N - ..." / "not ok N - ..."); exits non-zero on any failure.

Run with /usr/bin/python3 (needs `cryptography`). AZURE_EMU overrides the
emulator's path (default: azure_emu.py next to this file).
"""
import base64
import hashlib
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.environ.get("AZURE_EMU", os.path.join(HERE, "azure_emu.py"))
CODESIGN_SCOPE = "https://codesigning.azure.net/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
HASHES = {"256": (hashes.SHA256, hashlib.sha256), "384": (hashes.SHA384, hashlib.sha384),
          "512": (hashes.SHA512, hashlib.sha512)}
SIGN_PATH = "/codesigningaccounts/acct/certificateprofiles/prof/sign?api-version=2022-06-15-preview"
SIGN_PATH_NEW = "/codesigningaccounts/acct/certificateprofiles/prof:sign?api-version=2024-06-15"

n_checks = 0
n_failed = 0


def check(cond, name, detail=""):
    global n_checks, n_failed
    n_checks += 1
    if cond:
        print("ok %d - %s" % (n_checks, name))
    else:
        n_failed += 1
        print("not ok %d - %s" % (n_checks, name))
        # Also on stderr: meson shows a failed test's stderr, not its TAP stream.
        sys.stderr.write("not ok %d - %s\n" % (n_checks, name))
        for line in str(detail).splitlines() or [""]:
            print("#   " + line)
            sys.stderr.write("#   " + line + "\n")
    sys.stdout.flush()
    return cond


class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        try:
            return json.loads(self.body.decode())
        except ValueError:
            return None

    def __repr__(self):
        return "HTTP %d %s" % (self.status, self.body[:400])


class Client:
    def __init__(self, port, cafile):
        self.base = "https://127.0.0.1:%d" % port
        self.port = port
        self.ctx = ssl.create_default_context(cafile=cafile)

    def call(self, method, path, body=None, headers=None, token=None, form=None):
        h = dict(headers or {})
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            h.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif isinstance(body, (bytes, str)):
            data = body.encode() if isinstance(body, str) else body
        elif body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if token:
            h["Authorization"] = "Bearer " + token
        url = path if path.startswith("https://") else self.base + path
        r = urllib.request.Request(url, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(r, context=self.ctx, timeout=30) as resp:
                return Resp(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as e:
            return Resp(e.code, e.headers, e.read())

    def token(self, form, tenant="tenant-1"):
        return self.call("POST", "/%s/oauth2/v2.0/token" % tenant, form=form)

    def faults(self, **kw):
        r = self.call("POST", "/_emu/faults", kw)
        assert r.status == 200, r
        return r.json()

    def state(self):
        return self.call("GET", "/_emu/state").json()


def entra_code(r):
    j = r.json() or {}
    return j.get("error"), (j.get("error_codes") or [None])[0]


def graph_code(r):
    return ((r.json() or {}).get("error") or {}).get("code")


def decode_chain(blob):
    der = base64.b64decode(base64.b64decode(blob))
    return pkcs7.load_der_pkcs7_certificates(der)


def verify_sig(leaf, alg, digest, sig):
    h = HASHES[alg[2:]][0]
    pad = (padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size)
           if alg.startswith("PS") else padding.PKCS1v15())
    try:
        leaf.public_key().verify(sig, digest, pad, utils.Prehashed(h()))
        return True
    except Exception:
        return False


def chain_in_order(certs):
    """Order certs leaf -> ... -> root by issuer links; None if they do not link."""
    by_subject = {c.subject: c for c in certs}
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaves = [c for c in certs if c.subject not in issuers]
    if len(leaves) != 1:
        return None
    out = [leaves[0]]
    while out[-1].issuer != out[-1].subject:
        nxt = by_subject.get(out[-1].issuer)
        if nxt is None or nxt in out:
            return None
        out.append(nxt)
    return out if len(out) == len(certs) else None


def load_pems(path):
    """All certificates of a PEM file (cryptography 38 has no load_pem_x509_certificates)."""
    text = open(path, "rb").read()
    end = b"-----END CERTIFICATE-----"
    return [x509.load_pem_x509_certificate(part + end)
            for part in text.split(end) if part.strip()]


def cn(cert):
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value


# ---------------------------------------------------------------- the checks

def test_pki(d):
    chain = load_pems(os.path.join(d, "codesign-chain.pem"))
    root = x509.load_pem_x509_certificate(open(os.path.join(d, "codesign-root.pem"), "rb")
                                          .read())
    check(os.path.exists(os.path.join(d, "tls-ca.pem")), "tls-ca.pem written")
    check([cn(c) for c in chain] == ["Qwick Emulator Signing", "Qwick Emulator Intermediate",
                                     "Qwick Emulator Root"] and chain[2] == root,
          "codesign-chain.pem is leaf, intermediate, root",
          [cn(c) for c in chain])
    leaf = chain[0]
    ext = leaf.extensions
    ku = ext.get_extension_for_class(x509.KeyUsage)
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    bc = ext.get_extension_for_class(x509.BasicConstraints).value
    life = leaf.not_valid_after - leaf.not_valid_before
    check(ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
          and ExtendedKeyUsageOID.CODE_SIGNING in eku and not bc.ca
          and leaf.public_key().key_size == 3072
          and abs(life.total_seconds() - (72 * 3600 + 300)) < 5,
          "leaf: RSA-3072, KU digitalSignature critical, EKU codeSigning, CA:FALSE, 72 h")
    for ca in chain[1:]:
        b = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        k = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        check(b.critical and b.value.ca and k.key_cert_sign and k.crl_sign
              and ca.signature_hash_algorithm.name == "sha256",
              "%s: CA:TRUE critical, keyCertSign+cRLSign, SHA-256" % cn(ca))

    # An independent verifier: openssl.
    openssl = shutil.which("openssl")
    if not openssl:
        check(False, "openssl CLI available")
        return
    leaf_pem = os.path.join(d, "t-leaf.pem")
    inter_pem = os.path.join(d, "t-inter.pem")
    from cryptography.hazmat.primitives.serialization import Encoding
    open(leaf_pem, "wb").write(chain[0].public_bytes(Encoding.PEM))
    open(inter_pem, "wb").write(chain[1].public_bytes(Encoding.PEM))
    helptext = subprocess.run([openssl, "verify", "-help"], capture_output=True,
                              text=True).stderr
    purpose = "codesign" if "codesign" in helptext else "any"
    p = subprocess.run([openssl, "verify", "-purpose", purpose,
                        "-CAfile", os.path.join(d, "codesign-root.pem"),
                        "-untrusted", inter_pem, leaf_pem], capture_output=True, text=True)
    check(p.returncode == 0 and ": OK" in p.stdout,
          "openssl verify (-purpose %s): leaf chains to codesign-root.pem" % purpose,
          p.stdout + p.stderr)
    p = subprocess.run([openssl, "x509", "-in", leaf_pem, "-noout", "-ext",
                        "extendedKeyUsage,keyUsage"], capture_output=True, text=True)
    check("Code Signing" in p.stdout and "critical" in p.stdout,
          "openssl x509: leaf has Code Signing EKU and critical KU", p.stdout + p.stderr)


def test_entra(c):
    r = c.token({"grant_type": "client_credentials"}, tenant="nope")
    check(r.status == 400 and entra_code(r) == ("invalid_request", 90002)
          and "AADSTS90002" in r.json()["error_description"]
          and all(k in r.json() for k in ("timestamp", "trace_id", "correlation_id")),
          "unknown tenant -> 400 invalid_request AADSTS90002, Entra error shape", r)
    r = c.call("POST", "/tenant-1/oauth2/v2.0/token",
               {"grant_type": "client_credentials", "client_id": "mgr-1"})
    check(r.status == 400 and entra_code(r)[0] == "invalid_request",
          "JSON body on the token endpoint -> 400 invalid_request", r)
    r = c.token({"grant_type": "client_credentials", "client_id": "who",
                 "client_secret": "x", "scope": CODESIGN_SCOPE})
    check(r.status == 400 and entra_code(r) == ("unauthorized_client", 700016),
          "unknown client -> 400 unauthorized_client AADSTS700016", r)
    r = c.token({"grant_type": "password", "client_id": "app-1"})
    check(r.status == 400 and entra_code(r)[0] == "unsupported_grant_type",
          "unsupported grant_type -> 400", r)

    # Manager app: client credentials for Graph.
    r = c.token({"grant_type": "client_credentials", "client_id": "mgr-1",
                 "client_secret": "wrong", "scope": GRAPH_SCOPE})
    check(r.status == 401 and entra_code(r) == ("invalid_client", 7000215),
          "manager with a wrong secret -> 401 AADSTS7000215", r)
    r = c.token({"grant_type": "client_credentials", "client_id": "mgr-1",
                 "client_secret": "mgr-secret", "scope": GRAPH_SCOPE})
    j = r.json() or {}
    check(r.status == 200 and j.get("token_type") == "Bearer" and j.get("expires_in") == 3599
          and len(j.get("access_token", "")) >= 40 and "refresh_token" not in j,
          "manager client_credentials -> Graph token", r)
    mgr_token = j.get("access_token")

    # Refresh grant: strict rotation.
    rt0 = c.state()["refresh_token_valid"]
    check(rt0 == "rt-initial", "initial refresh token is --refresh-token", rt0)
    r = c.token({"grant_type": "refresh_token", "client_id": "graph-cli",
                 "refresh_token": rt0, "scope": "https://codesigning.azure.net/.default"})
    check(r.status == 400 and entra_code(r)[0] == "invalid_scope",
          "refresh grant without the Graph scope -> invalid_scope", r)
    r = c.token({"grant_type": "refresh_token", "client_id": "graph-cli",
                 "refresh_token": rt0, "scope": GRAPH_SCOPE + " offline_access"})
    j = r.json() or {}
    rt1 = j.get("refresh_token")
    check(r.status == 200 and j.get("access_token") and rt1 and rt1 != rt0,
          "refresh grant -> Graph token and a new refresh token", r)
    check(c.state()["refresh_token_valid"] == rt1, "state shows the rotated refresh token")
    r = c.token({"grant_type": "refresh_token", "client_id": "graph-cli",
                 "refresh_token": rt0, "scope": GRAPH_SCOPE})
    check(r.status == 400 and entra_code(r)[0] == "invalid_grant",
          "the old refresh token is spent -> invalid_grant", r)
    r = c.token({"grant_type": "refresh_token", "client_id": "graph-cli",
                 "refresh_token": "made-up", "scope": GRAPH_SCOPE})
    check(r.status == 400 and entra_code(r) == ("invalid_grant", 70000),
          "an unknown refresh token -> invalid_grant AADSTS70000", r)
    r = c.token({"grant_type": "refresh_token", "client_id": "graph-cli",
                 "refresh_token": rt1, "scope": GRAPH_SCOPE})
    check(r.status == 200 and r.json()["refresh_token"] != rt1,
          "the new refresh token works (and rotates again)", r)

    c.faults(token_429=1)
    r = c.token({"grant_type": "client_credentials", "client_id": "mgr-1",
                 "client_secret": "mgr-secret", "scope": GRAPH_SCOPE})
    r2 = c.token({"grant_type": "client_credentials", "client_id": "mgr-1",
                  "client_secret": "mgr-secret", "scope": GRAPH_SCOPE})
    check(r.status == 429 and r.headers.get("Retry-After") == "1" and r2.status == 200,
          "token_429=1: one 429 with Retry-After, then 200", (r, r2))
    return mgr_token


def app_token(c, secret, scope=CODESIGN_SCOPE):
    return c.token({"grant_type": "client_credentials", "client_id": "app-1",
                    "client_secret": secret, "scope": scope})


def add_password(c, tok, name, **extra):
    pc = {"displayName": name}
    pc.update(extra)
    return c.call("POST", "/v1.0/applications/obj-1/addPassword",
                  {"passwordCredential": pc}, token=tok)


def test_graph(c, gtok):
    r = c.call("GET", "/v1.0/applications/obj-1")
    check(r.status == 401 and graph_code(r) == "InvalidAuthenticationToken",
          "Graph without a token -> 401 InvalidAuthenticationToken", r)
    r = c.call("GET", "/v1.0/applications/obj-1", token=gtok)
    j = r.json() or {}
    creds = j.get("passwordCredentials", [])
    check(r.status == 200 and j.get("id") == "obj-1" and j.get("appId") == "app-1"
          and [p["displayName"] for p in creds] == ["legacy-ci"]
          and creds[0]["secretText"] is None and len(creds[0]["hint"]) == 3,
          "GET application lists the non-qwick existing credential", r)
    r = c.call("GET", "/v1.0/applications/obj-1?$select=passwordCredentials", token=gtok)
    j = r.json() or {}
    check(r.status == 200 and "passwordCredentials" in j and j.get("id") == "obj-1"
          and "appId" not in j, "GET application ?$select=passwordCredentials", r)
    r = c.call("GET", "/v1.0/applications/nope", token=gtok)
    check(r.status == 404 and graph_code(r) == "Request_ResourceNotFound",
          "unknown objectId -> 404 Request_ResourceNotFound", r)
    r = add_password(c, gtok, "qwick-x", startDateTime="2020-01-01T00:00:00Z")
    check(r.status == 400 and graph_code(r) == "Request_BadRequest",
          "addPassword with an extra key -> 400 Request_BadRequest", r)
    r = add_password(c, gtok, "qwick-x", endDateTime="2001-01-01T00:00:00Z")
    check(r.status == 400 and graph_code(r) == "Request_BadRequest",
          "addPassword with endDateTime in the past -> 400", r)
    c.faults(graph_429=1)
    r = c.call("GET", "/v1.0/applications/obj-1", token=gtok)
    check(r.status == 429 and graph_code(r) == "TooManyRequests"
          and r.headers.get("Retry-After"), "graph_429=1 -> 429 TooManyRequests", r)

    # A new secret is rejected while Entra "replicates", then accepted.
    c.faults(aadsts7000215_seconds=1.5)
    r = add_password(c, gtok, "qwick-1", endDateTime="2099-01-01T00:00:00Z")
    j = r.json() or {}
    secret = j.get("secretText", "")
    check(r.status == 200 and len(secret) == 40 and j.get("hint") == secret[:3]
          and j.get("displayName") == "qwick-1" and j.get("customKeyIdentifier", 1) is None
          and j.get("endDateTime", "").startswith("2099-01-01T00:00:00")
          and len(j.get("keyId", "")) == 36 and j.get("startDateTime"),
          "addPassword -> 200 with keyId, secretText, hint", r)
    r = app_token(c, secret)
    check(r.status == 401 and entra_code(r) == ("invalid_client", 7000215),
          "a just-created secret -> 401 AADSTS7000215 during the replication window", r)
    time.sleep(1.6)
    r = app_token(c, secret)
    ctok = (r.json() or {}).get("access_token")
    check(r.status == 200 and ctok, "the same secret works after the window", r)
    c.faults(aadsts7000215_seconds=0)
    r = app_token(c, secret + "x")
    check(r.status == 401 and entra_code(r) == ("invalid_client", 7000215),
          "a wrong secret -> 401 AADSTS7000215", r)
    r = app_token(c, secret, scope=GRAPH_SCOPE)
    check(r.status == 400 and entra_code(r) == ("invalid_scope", 70011),
          "signing app with a non-codesigning scope -> 400 invalid_scope", r)

    # Credential limit (4 here: legacy-ci + 3).
    keys = []
    for name in ("qwick-2", "qwick-3"):
        r = add_password(c, gtok, name)
        keys.append((r.json() or {}).get("keyId"))
    r = add_password(c, gtok, "qwick-4")
    check(r.status == 400 and graph_code(r) == "TooManyAppPasswords",
          "addPassword at the credential limit -> 400 TooManyAppPasswords", r)
    st = c.state()
    check(st["max_alive_qwick"] == 3 and st["max_alive"] == 4 and st["alive_qwick"] == 3,
          "state records max_alive_qwick=3, max_alive=4",
          {k: st[k] for k in ("alive_qwick", "max_alive_qwick", "max_alive")})

    # removePassword.
    r = c.call("POST", "/v1.0/applications/obj-1/removePassword",
               {"keyId": "00000000-0000-0000-0000-000000000000"}, token=gtok)
    check(r.status == 400 and "No password credential found" in r.body.decode(),
          "removePassword of an unknown keyId -> 400", r)
    r = c.call("POST", "/v1.0/applications/obj-1/removePassword", {"keyId": "zzz"},
               token=gtok)
    check(r.status == 400, "removePassword with a malformed keyId -> 400", r)
    for k in keys:
        r = c.call("POST", "/v1.0/applications/obj-1/removePassword", {"keyId": k},
                   token=gtok)
        check(r.status == 204 and r.body == b"", "removePassword -> 204", r)
    # Remove one whose secret we know: it must stop working and vanish.
    r = add_password(c, gtok, "qwick-tmp")
    tmp = r.json()
    check(app_token(c, tmp["secretText"]).status == 200, "qwick-tmp secret works")
    r = c.call("POST", "/v1.0/applications/obj-1/removePassword", {"keyId": tmp["keyId"]},
               token=gtok)
    check(r.status == 204, "removePassword qwick-tmp -> 204", r)
    r = app_token(c, tmp["secretText"])
    check(r.status == 401 and entra_code(r)[1] == 7000215,
          "a removed secret no longer works", r)
    r = c.call("GET", "/v1.0/applications/obj-1", token=gtok)
    ids = [p["keyId"] for p in (r.json() or {}).get("passwordCredentials", [])]
    check(tmp["keyId"] not in ids and len(ids) == 2,
          "the removed credential is gone from GET application", ids)
    st = c.state()
    check(st["counters"]["add_password"] == 4 and st["counters"]["remove_password"] == 3,
          "add_password / remove_password counters", st["counters"])
    return ctok


def submit(c, tok, alg="RS256", digest=None, path=SIGN_PATH, **extra):
    n = int(alg[2:]) // 8
    digest = digest if digest is not None else os.urandom(n)
    body = {"signatureAlgorithm": alg, "digest": base64.b64encode(digest).decode()}
    body.update(extra)
    return c.call("POST", path, body, token=tok), digest


def poll_until_done(c, tok, loc, limit=10.0):
    end = time.time() + limit
    while True:
        r = c.call("GET", loc, token=tok)
        st = ((r.json() or {}).get("status") or "").strip().lower()
        if r.status != 200 or st != "inprogress" or time.time() > end:
            return r
        time.sleep(0.05)


def test_signing(c, ctok, gtok, pki_dir):
    root = x509.load_pem_x509_certificate(
        open(os.path.join(pki_dir, "codesign-root.pem"), "rb").read())
    r, _ = submit(c, None)
    check(r.status == 401 and "Bearer" in (r.headers.get("WWW-Authenticate") or "")
          and graph_code(r) == "Unauthorized", "sign without a token -> 401 + WWW-Authenticate",
          r)
    r, _ = submit(c, gtok)
    check(r.status == 401, "sign with a Graph token -> 401", r)
    r, _ = submit(c, ctok, path=SIGN_PATH.replace("2022-06-15-preview", "2020-01-01"))
    check(r.status == 400 and graph_code(r) == "UnsupportedApiVersion",
          "unsupported api-version -> 400 UnsupportedApiVersion", r)
    r, _ = submit(c, ctok, path=SIGN_PATH.replace("/prof/", "/nope/"))
    check(r.status == 404 and (r.json() or {}).get("errorDetail", {}).get("code") == "NotFound",
          "unknown profile -> 404 errorDetail NotFound", r)
    r, _ = submit(c, ctok, digest=os.urandom(31))
    check(r.status == 400 and r.headers.get("Content-Type", "").startswith(
        "application/problem+json"), "RS256 with a 31-byte digest -> 400", r)
    r, _ = submit(c, ctok, alg="RS384", digest=os.urandom(32))
    check(r.status == 400, "RS384 with a 32-byte digest -> 400", r)
    r, _ = submit(c, ctok, extraField=1)
    j = r.json() or {}
    check(r.status == 400 and r.headers.get("Content-Type", "").startswith(
        "application/problem+json") and j.get("status") == 400 and "title" in j
          and "extraField" in j.get("detail", ""),
          "unknown body field -> 400 problem+json", r)
    r = c.call("POST", SIGN_PATH, {"signatureAlgorithm": "RS256",
                                   "digest": base64.urlsafe_b64encode(b"\xfb" * 32)
                                   .decode().rstrip("=")}, token=ctok)
    check(r.status == 400, "unpadded url-safe base64 digest -> 400", r)
    r = c.call("POST", SIGN_PATH, b'{"signatureAlgorithm":"RS256"}', token=ctok,
               headers={"Content-Type": "text/plain"})
    check(r.status == 415, "non-JSON Content-Type -> 415", r)
    r = c.call("POST", SIGN_PATH, b"x" * (65 * 1024), token=ctok,
               headers={"Content-Type": "application/json"})
    check(r.status == 413, "a 65 KiB body -> 413", r)

    # The normal flow, with the emulator's 300 ms delay.
    r, digest = submit(c, ctok, fileHashList=[base64.b64encode(b"a" * 32).decode()],
                       authenticodeHashList=[])
    loc = r.headers.get("Operation-Location") or ""
    check(r.status == 202 and loc.startswith("https://127.0.0.1:%d/codesigningaccounts/acct/"
                                             "certificateprofiles/prof/sign/" % c.port)
          and "api-version=2022-06-15-preview" in loc and r.headers.get("Retry-After") == "1",
          "sign -> 202 + Operation-Location + Retry-After", (r, loc))
    r = c.call("GET", loc, token=ctok)
    check(r.status == 200 and (r.json() or {}).get("status") == "InProgress"
          and r.headers.get("Retry-After") == "1", "immediate poll -> InProgress", r)
    r = c.call("GET", loc)
    check(r.status == 401, "poll without a token -> 401", r)
    time.sleep(0.35)
    r = c.call("GET", loc, token=ctok)
    j = r.json() or {}
    ok = r.status == 200 and j.get("status") == "Succeeded"
    check(ok, "poll after the delay -> Succeeded", r)
    if ok:
        certs = decode_chain(j["signingCertificate"])
        ordered = chain_in_order(certs)
        check([cn(x) for x in certs] == ["Qwick Emulator Signing",
                                         "Qwick Emulator Intermediate", "Qwick Emulator Root"]
              and ordered == certs and certs[-1] == root,
              "signingCertificate: PKCS#7 leaf, intermediate, root; root = codesign-root.pem",
              [cn(x) for x in certs])
        check(verify_sig(certs[0], "RS256", digest, base64.b64decode(j["signature"])),
              "RS256 signature verifies with the leaf key")
    r = c.call("GET", loc.replace("/sign/", "/sign/0"), token=ctok)
    check(r.status == 404, "poll of an unknown operation -> 404", r)

    # All algorithms, both URL forms, no delay.
    c.faults(op_delay_ms=0)
    for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
        for path in (SIGN_PATH, SIGN_PATH_NEW):
            r, digest = submit(c, ctok, alg=alg, path=path)
            loc = r.headers.get("Operation-Location") or ""
            r = poll_until_done(c, tok=ctok, loc=loc)
            j = r.json() or {}
            good = r.status == 200 and j.get("status") == "Succeeded" and verify_sig(
                decode_chain(j["signingCertificate"])[0], alg, digest,
                base64.b64decode(j["signature"]))
            check(good, "%s via %s verifies" % (alg, path.split("?")[0].rsplit("/", 1)[-1]),
                  r)

    def one(**faults):
        c.faults(**faults)
        r, digest = submit(c, ctok)
        r = poll_until_done(c, ctok, r.headers.get("Operation-Location") or "")
        c.faults(reset=True, op_delay_ms=0)
        return r.json() or {}, digest

    j, digest = one(nested_result=True)
    res = j.get("result") or {}
    check(j.get("status") == "Succeeded" and "signature" not in j and res.get("signature")
          and verify_sig(decode_chain(res["signingCertificate"])[0], "RS256", digest,
                         base64.b64decode(res["signature"])),
          "nested_result: signature and signingCertificate under result", j)
    j, digest = one(shuffle_chain=True)
    certs = decode_chain(j.get("signingCertificate", ""))
    ordered = chain_in_order(certs)
    check(ordered is not None and certs != ordered and cn(ordered[0]) == "Qwick Emulator Signing"
          and verify_sig(ordered[0], "RS256", digest, base64.b64decode(j["signature"])),
          "shuffle_chain: same three certs, not in leaf-first order",
          [cn(x) for x in certs])
    for case, want in (("lower", "succeeded"), ("upper", "SUCCEEDED"),
                       ("spaced", " Succeeded ")):
        j, _ = one(status_case=case)
        check(j.get("status") == want, "status_case=%s -> %r" % (case, want), j)
    j, _ = one(op_fail=1)
    check(j.get("status") == "Failed" and (j.get("error") or {}).get("code") == "SigningFailed",
          "op_fail=1 -> Failed with SigningFailed", j)

    for fault, status in (("sign_429", 429), ("sign_503", 503), ("sign_500", 500),
                          ("bare_403", 403)):
        c.faults(**{fault: 1})
        r1, _ = submit(c, ctok)
        r2, _ = submit(c, ctok)
        extra = True
        if status in (429, 503):
            extra = r1.headers.get("Retry-After") == "1"
        if status == 403:
            extra = r1.body == b""
        if status == 429:
            extra = extra and graph_code(r1) == "TooManyRequests"
        check(r1.status == status and extra and r2.status == 202,
              "%s=1 -> one %d, then 202" % (fault, status), (r1, r2))

    # Tokens that die before their expires_in.
    c.faults(token_lifetime_seconds=0.5)
    time.sleep(0.6)
    r, _ = submit(c, ctok)
    check(r.status == 401, "token_lifetime_seconds=0.5: an older token -> 401", r)
    c.faults(reset=True)
    r, _ = submit(c, ctok)
    check(r.status == 202, "after reset the token works again", r)


def test_load(c, ctok):
    """40 keep-alive connections, ~2000 requests: submit + poll each."""
    c.faults(reset=True, op_delay_ms=0)
    before = c.call("POST", "/_emu/reset-stats").json()["counters"]["ops_in_flight"]
    errors, lock = [], threading.Lock()
    per_conn = 25

    def worker():
        conn = http.client.HTTPSConnection("127.0.0.1", c.port, context=c.ctx, timeout=30)
        try:
            for _ in range(per_conn):
                body = json.dumps({"signatureAlgorithm": "PS256",
                                   "digest": base64.b64encode(os.urandom(32)).decode()})
                conn.request("POST", SIGN_PATH, body,
                              {"Content-Type": "application/json",
                               "Authorization": "Bearer " + ctok})
                r = conn.getresponse()
                r.read()
                loc = r.getheader("Operation-Location")
                if r.status != 202 or not loc:
                    raise RuntimeError("submit %d" % r.status)
                conn.request("GET", urllib.parse.urlsplit(loc)._replace(
                    scheme="", netloc="").geturl(), headers={"Authorization": "Bearer " + ctok})
                r = conn.getresponse()
                j = json.loads(r.read())
                if j.get("status") != "Succeeded":
                    raise RuntimeError("poll %r" % j.get("status"))
        except Exception as e:
            with lock:
                errors.append(repr(e))
        finally:
            conn.close()

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    st = c.state()["counters"]
    check(not errors and took < 15 and st["sign_submitted"] == 40 * per_conn
          and st["sign_succeeded"] == 40 * per_conn,
          "load: 40 keep-alive connections x %d submit+poll in %.1f s" % (per_conn, took),
          (errors[:3], st))
    # Earlier checks left a few operations unpolled: they stay in flight.
    check(st["ops_in_flight"] == before and st["max_ops_in_flight"] >= before + 2,
          "ops_in_flight back to %d, max_ops_in_flight=%d" % (before, st["max_ops_in_flight"]),
          st)


def test_control(c):
    r = c.call("POST", "/_emu/faults", {"no_such_fault": 1})
    check(r.status == 400, "unknown fault name -> 400", r)
    r = c.call("POST", "/_emu/faults", {"sign_429": -1})
    check(r.status == 400, "negative fault counter -> 400", r)
    j = c.faults(sign_429=2, status_case="upper")
    check(j["sign_429"] == 2 and j["status_case"] == "upper" and j["op_delay_ms"] == 300,
          "faults merge into the current settings", j)
    j = c.faults(reset=True)
    check(j["sign_429"] == 0 and j["status_case"] == "normal" and j["op_delay_ms"] == 300,
          "reset restores defaults (op_delay_ms from the command line)", j)
    st = c.call("POST", "/_emu/reset-stats").json()
    check(st["counters"]["sign_submitted"] == 0 and st["max_alive_qwick"] == st["alive_qwick"],
          "reset-stats zeroes counters and max_*", st)
    check(isinstance(st["credentials"], list) and all(
        set(x) >= {"keyId", "displayName", "startDateTime", "endDateTime", "alive"}
        for x in st["credentials"]), "state credentials have the documented fields")


def main():
    d = tempfile.mkdtemp(prefix="azure-emu-test-")
    port_file = os.path.join(d, "port")
    err_path = os.path.join(d, "emu.stderr")
    errf = open(err_path, "wb")
    proc = subprocess.Popen([sys.executable, EMU, "--state-dir", os.path.join(d, "state"),
                             "--port-file", port_file, "--credential-limit", "4",
                             "--existing-credential", "legacy-ci"],
                            stdout=subprocess.DEVNULL, stderr=errf)
    ok_exit = False
    try:
        deadline = time.time() + 60
        while not os.path.exists(port_file):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("emulator did not start")
            time.sleep(0.05)
        port = int(open(port_file).read())
        state = os.path.join(d, "state")
        c = Client(port, os.path.join(state, "tls-ca.pem"))
        test_pki(state)
        gtok = test_entra(c)
        ctok = test_graph(c, gtok)
        test_signing(c, ctok, gtok, state)
        test_control(c)
        test_load(c, ctok)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM -> clean exit 0", rc)
        ok_exit = True
    except Exception as e:
        import traceback
        check(False, "unexpected exception", traceback.format_exc() + repr(e))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errf.close()
        if n_failed or not ok_exit:
            print("# emulator stderr (tail):")
            sys.stderr.write("# emulator stderr (tail):\n")
            for line in open(err_path, errors="replace").read().splitlines()[-40:]:
                print("#   " + line)
                sys.stderr.write("#   " + line + "\n")
        shutil.rmtree(d, ignore_errors=True)
    print("1..%d" % n_checks)
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
