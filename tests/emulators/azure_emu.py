#!/usr/bin/env python3
"""Emulator of the Azure services behind qwickd's Azure Trusted Signing backend.

Azure cannot be reached from the test machines, so one HTTPS server on
127.0.0.1 plays the three services qwickd talks to, told apart by path:

  Entra ID  POST /{tenant}/oauth2/v2.0/token        client_credentials, refresh_token
  Graph     GET  /v1.0/applications/{objectId}      (also ?$select=...)
            POST /v1.0/applications/{objectId}/addPassword
            POST /v1.0/applications/{objectId}/removePassword
  Signing   POST /codesigningaccounts/{a}/certificateprofiles/{p}/sign?api-version=2022-06-15-preview
            POST /codesigningaccounts/{a}/certificateprofiles/{p}:sign?api-version=2024-06-15
            GET  /codesigningaccounts/{a}/certificateprofiles/{p}/sign/{opId}?api-version=...
  Control   POST /_emu/faults   GET /_emu/faults   GET /_emu/state   POST /_emu/reset-stats
            (plain JSON, no auth, loopback only)

At start it writes into --state-dir: tls-ca.pem (trust it to talk to the
emulator), tls-server.pem/.key, codesign-root.pem and codesign-chain.pem (leaf,
intermediate, root), then the chosen port into --port-file. Needs the
`cryptography` package: run it with /usr/bin/python3.

  azure_emu.py --state-dir DIR --port-file FILE [--tenant T] [--client-id ID] ...

See --help for the options and tests/emulators/test_azure_emu.py for usage.
"""
import argparse
import base64
import binascii
import datetime as dt
import http.server
import ipaddress
import json
import os
import random
import re
import secrets
import signal
import socket
import ssl
import string
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_BODY = 64 * 1024
TOKEN_EXPIRES_IN = 3599
CODESIGN_SCOPE = "https://codesigning.azure.net/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
AUDIENCES = {"codesigning": "https://codesigning.azure.net",
             "graph": "https://graph.microsoft.com"}
API_VERSIONS = ("2022-06-15-preview", "2024-06-15")
SIGN_ALGS = {"RS256": (hashes.SHA256, False), "RS384": (hashes.SHA384, False),
             "RS512": (hashes.SHA512, False), "PS256": (hashes.SHA256, True),
             "PS384": (hashes.SHA384, True), "PS512": (hashes.SHA512, True)}
SIGN_BODY_KEYS = ("signatureAlgorithm", "digest", "fileHashList", "authenticodeHashList")
SECRET_ALPHABET = string.ascii_letters + string.digits + "~._-"

ENTRA_CT = "application/json; charset=utf-8"
GRAPH_CT = ("application/json;odata.metadata=minimal;odata.streaming=true;"
            "IEEE754Compatible=false;charset=utf-8")
JSON_CT = "application/json; charset=utf-8"
PROBLEM_CT = "application/problem+json; charset=utf-8"

# Fault names accepted by POST /_emu/faults, by kind.
FAULT_COUNTERS = ("token_429", "graph_429", "sign_429", "sign_500", "sign_503",
                  "bare_403", "op_fail")
FAULT_FLAGS = ("nested_result", "shuffle_chain")
FAULT_INTS = ("op_delay_ms", "retry_after")
STATUS_CASES = ("normal", "lower", "upper", "spaced")


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _seconds(v):
    return (_count(v) or isinstance(v, float)) and v >= 0


FAULT_CHECKS = dict([(k, _count) for k in FAULT_COUNTERS + FAULT_INTS]
                    + [(k, lambda v: isinstance(v, bool)) for k in FAULT_FLAGS]
                    + [("status_case", lambda v: v in STATUS_CASES),
                       ("aadsts7000215_seconds", _seconds),
                       ("token_lifetime_seconds", lambda v: v is None or _seconds(v))])
COUNTERS = ("token_requests", "tokens_issued", "graph_requests", "add_password",
            "remove_password", "graph_get", "sign_posts", "sign_submitted", "sign_polls",
            "sign_succeeded", "sign_failed", "ops_in_flight", "max_ops_in_flight",
            "rejected_401", "throttled_429", "server_errors")


def log(msg):
    sys.stderr.write("azure_emu: " + msg + "\n")


# ---------------------------------------------------------------- time and ids

def utcnow():
    return dt.datetime.now(dt.timezone.utc)


def graph_time(t):
    """Graph's rendering: 2025-01-02T03:04:05.1234560Z (fraction only if any)."""
    s = t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        s += ".%07d" % (t.microsecond * 10)
    return s + "Z"


def parse_iso(s):
    """ISO-8601 date-time (no zone means UTC) -> aware UTC datetime, or None."""
    try:
        t = dt.datetime.fromisoformat(s.strip())
    except (AttributeError, ValueError):
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(
        dt.timezone.utc)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_strict(s):
    """Standard, padded base64 -> bytes, or None."""
    if not isinstance(s, str) or not s or len(s) % 4:
        return None
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None


def new_secret():
    """40 characters shaped like Entra's secrets ("xyz8Q~..."): '~' and '.'
    included, so a client that does not form-encode them is caught."""
    head = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    return head + "8Q~" + "".join(secrets.choice(SECRET_ALPHABET) for _ in range(34))


# ---------------------------------------------------------------- PKI

def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Qwick Test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, not_before, not_after, ca, eku=None, san=None):
    """issuer is None for a self-signed certificate."""
    ku = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=ca,
              crl_sign=ca, encipher_only=False, decipher_only=False)
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.subject if issuer else subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before)
         .not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(**ku), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(*certs):
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write(path, data, mode=0o644):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Pki:
    """The TLS certificates of the server and the code-signing chain."""

    def __init__(self, state_dir):
        now = utcnow()
        # TLS: EC keys, quick to make; the client trusts tls-ca.pem.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        tls_ca = _cert(_name("Qwick Emulator TLS CA"), ca_key, None, ca_key,
                       now - dt.timedelta(hours=1), now + dt.timedelta(days=30), True)
        srv_key = ec.generate_private_key(ec.SECP256R1())
        srv = _cert(_name("localhost"), srv_key, tls_ca, ca_key,
                    now - dt.timedelta(minutes=5), now + dt.timedelta(days=30), False,
                    eku=[ExtendedKeyUsageOID.SERVER_AUTH],
                    san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                         x509.DNSName("localhost")])
        self.tls_cert = os.path.join(state_dir, "tls-server.pem")
        self.tls_key = os.path.join(state_dir, "tls-server.key")
        _write(os.path.join(state_dir, "tls-ca.pem"), _pem(tls_ca))
        _write(self.tls_cert, _pem(srv))
        _write(self.tls_key, srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)

        # Code signing: root -> intermediate -> leaf, RSA-3072, like Trusted
        # Signing's short-lived (72 h) leaf certificates.
        root_key = rsa.generate_private_key(65537, 3072)
        root = _cert(_name("Qwick Emulator Root"), root_key, None, root_key,
                     now - dt.timedelta(days=1), now + dt.timedelta(days=3650), True)
        inter_key = rsa.generate_private_key(65537, 3072)
        inter = _cert(_name("Qwick Emulator Intermediate"), inter_key, root, root_key,
                      now - dt.timedelta(days=1), now + dt.timedelta(days=1825), True)
        self.leaf_key = rsa.generate_private_key(65537, 3072)
        leaf = _cert(_name("Qwick Emulator Signing"), self.leaf_key, inter, inter_key,
                     now - dt.timedelta(minutes=5), now + dt.timedelta(hours=72), False,
                     eku=[ExtendedKeyUsageOID.CODE_SIGNING])
        self.chain = [leaf, inter, root]
        _write(os.path.join(state_dir, "codesign-root.pem"), _pem(root))
        _write(os.path.join(state_dir, "codesign-chain.pem"), _pem(*self.chain))
        self._blob = self._certs_blob(self.chain)

    @staticmethod
    def _certs_blob(certs):
        """signingCertificate: base64 of the base64 text of a certs-only PKCS#7."""
        der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
        return base64.b64encode(base64.b64encode(der)).decode()

    def signing_certificate(self, shuffle=False):
        if not shuffle:
            return self._blob
        order = list(self.chain)
        while order == self.chain:
            random.shuffle(order)
        return self._certs_blob(order)

    def sign(self, alg, digest):
        h, pss = SIGN_ALGS[alg]
        pad = (padding.PSS(mgf=padding.MGF1(h()), salt_length=h.digest_size)
               if pss else padding.PKCS1v15())
        return self.leaf_key.sign(digest, pad, utils.Prehashed(h()))

    def tls_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls_cert, self.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


# ---------------------------------------------------------------- HTTP values

class Request:
    def __init__(self, method, target, headers, body, client):
        parts = urllib.parse.urlsplit(target)
        self.method = method
        self.path = urllib.parse.unquote(parts.path)
        self.query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.client = client

    def q(self, name):
        """A query parameter given exactly once, else None."""
        v = self.query.get(name)
        return v[0] if v and len(v) == 1 else None

    def ctype(self):
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self):
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body.decode("utf-8"))


class Reply:
    def __init__(self, status, body=b"", ctype=None, headers=()):
        self.status, self.body, self.ctype, self.headers = status, body, ctype, list(headers)


def json_reply(status, obj, ctype=JSON_CT, headers=()):
    return Reply(status, json.dumps(obj).encode(), ctype, headers)


# ---------------------------------------------------------------- shared state

class Emulator:
    """Everything the three services share, under one lock."""

    def __init__(self, args, pki):
        self.args, self.pki = args, pki
        self.port = 0
        self.lock = threading.RLock()
        self.faults = self.default_faults()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.tokens = {}                 # access token -> (audience, client id, issued)
        self.refresh_token = args.refresh_token
        self.spent_refresh = set()
        self.credentials = []            # in creation order, removed ones kept
        self.max_alive = self.max_alive_qwick = 0
        self.ops = {}                    # operation id -> dict
        year = utcnow() + dt.timedelta(days=365)
        for name in args.existing_credential:
            self.add_credential(name, year)

    def default_faults(self):
        f = dict.fromkeys(FAULT_COUNTERS, 0)
        f.update(dict.fromkeys(FAULT_FLAGS, False))
        f.update(status_case="normal", op_delay_ms=self.args.op_delay_ms,
                 retry_after=self.args.retry_after, aadsts7000215_seconds=0,
                 token_lifetime_seconds=None)
        return f

    def bump(self, name, n=1):
        with self.lock:
            self.counters[name] += n

    def take(self, fault):
        """Consume one unit of a counted fault; True if it fires."""
        with self.lock:
            if self.faults[fault] > 0:
                self.faults[fault] -= 1
                return True
            return False

    def retry_after(self):
        return str(self.faults["retry_after"])

    def note_status(self, status):
        name = {401: "rejected_401", 429: "throttled_429"}.get(status)
        if name is None and status >= 500:
            name = "server_errors"
        if name:
            self.bump(name)

    # tokens
    def issue_token(self, audience, client_id):
        iat = int(time.time())
        head = b64url(b'{"typ":"JWT","alg":"RS256","kid":"qwick-emu"}')
        claims = {"aud": AUDIENCES[audience], "iss": "https://sts.windows.net/%s/"
                  % self.args.tenant, "iat": iat, "nbf": iat, "exp": iat + TOKEN_EXPIRES_IN,
                  "appid": client_id, "tid": self.args.tenant,
                  "uti": secrets.token_urlsafe(16)}
        token = "%s.%s.%s" % (head, b64url(json.dumps(claims).encode()),
                              b64url(secrets.token_bytes(256)))
        with self.lock:
            self.tokens[token] = (audience, client_id, time.monotonic())
            self.counters["tokens_issued"] += 1
        return token

    def check_bearer(self, req, audience):
        """None if the request carries a live token for audience, else why not."""
        auth = req.headers.get("Authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        if not auth.strip():
            return "missing"
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed"
        with self.lock:
            info = self.tokens.get(token.strip())
        if info is None:
            return "invalid"
        aud, _client, issued = info
        age = time.monotonic() - issued
        early = self.faults["token_lifetime_seconds"]
        if age > TOKEN_EXPIRES_IN or (early is not None and age > early):
            return "expired"
        return None if aud == audience else "audience"

    # credentials
    @staticmethod
    def alive(cred, now):
        return not cred["removed"] and cred["end"] > now

    def alive_counts(self):
        now = utcnow()
        with self.lock:
            live = [c for c in self.credentials if self.alive(c, now)]
            return len(live), sum(1 for c in live
                                  if (c["displayName"] or "").startswith("qwick-"))

    def add_credential(self, display_name, end):
        secret = new_secret()
        cred = {"keyId": str(uuid.uuid4()), "displayName": display_name,
                "secretText": secret, "hint": secret[:3], "start": utcnow(), "end": end,
                "created": time.monotonic(), "removed": False}
        with self.lock:
            self.credentials.append(cred)
            alive, alive_qwick = self.alive_counts()
            self.max_alive = max(self.max_alive, alive)
            self.max_alive_qwick = max(self.max_alive_qwick, alive_qwick)
        return cred

    def present_credentials(self):
        with self.lock:
            return [c for c in self.credentials if not c["removed"]]

    def reset_stats(self):
        alive, alive_qwick = self.alive_counts()
        with self.lock:
            in_flight = self.counters["ops_in_flight"]
            self.counters = dict.fromkeys(COUNTERS, 0)
            self.counters["ops_in_flight"] = self.counters["max_ops_in_flight"] = in_flight
            self.max_alive, self.max_alive_qwick = alive, alive_qwick

    def state(self):
        now = utcnow()
        alive, alive_qwick = self.alive_counts()
        with self.lock:
            return {
                "credentials": [{"keyId": c["keyId"], "displayName": c["displayName"],
                                 "hint": c["hint"],
                                 "startDateTime": graph_time(c["start"]),
                                 "endDateTime": graph_time(c["end"]),
                                 "alive": self.alive(c, now), "removed": c["removed"]}
                                for c in self.credentials],
                "alive": alive, "alive_qwick": alive_qwick,
                "max_alive": self.max_alive, "max_alive_qwick": self.max_alive_qwick,
                "credential_limit": self.args.credential_limit,
                "refresh_token_valid": self.refresh_token,
                "operations": len(self.ops),
                "faults": dict(self.faults),
                "counters": dict(self.counters),
            }


# ---------------------------------------------------------------- Entra ID

# Entra errors by name: (HTTP status, error, AADSTS code, description template).
AADSTS = {
    "method": (400, "invalid_request", 900561,
               "The endpoint only accepts POST requests. Received a {} request."),
    "throttled": (429, "temporarily_unavailable", 90055,
                  "TenantThrottlingError: there are too many incoming requests."),
    "tenant": (400, "invalid_request", 90002, "Tenant '{}' not found. Check to make sure you "
               "have the correct tenant ID and are signing into the correct cloud."),
    "missing": (400, "invalid_request", 900144,
                "The request body must contain the following parameter: '{}'."),
    "malformed": (400, "invalid_request", 9002313,
                  "Invalid request. Request is malformed or invalid."),
    "grant_type": (400, "unsupported_grant_type", 70003,
                   "The app requested an unsupported grant type '{}'."),
    "unknown_client": (400, "unauthorized_client", 700016, "Application with identifier '{}' "
                       "was not found in the directory '{}'."),
    "no_secret": (401, "invalid_client", 7000218, "The request body must contain the "
                  "following parameter: 'client_assertion' or 'client_secret'."),
    "bad_secret": (401, "invalid_client", 7000215, "Invalid client secret provided. Ensure "
                   "the secret being sent in the request is the client secret value, not the "
                   "client secret ID, for a secret added to app '{}'."),
    "bad_scope": (400, "invalid_scope", 70011, "The provided value for the input parameter "
                  "'scope' ('{}') is not valid."),
    "bad_grant": (400, "invalid_grant", 70000, "Provided grant is invalid or malformed."),
    "spent_grant": (400, "invalid_grant", 700082, "The refresh token has expired or was "
                    "already redeemed (the emulator rotates refresh tokens on every use)."),
}
NO_CACHE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
# Why Emulator.check_bearer refused a token, as told to Graph and Signing clients.
AUTH_MSG = {"missing": "Access token is empty.",
            "malformed": "The Authorization header is not a Bearer token.",
            "invalid": "IDX14100: JWT is not well formed: the token is unknown.",
            "expired": "Lifetime validation failed, the token is expired.",
            "audience": "Invalid audience: the token is not for this service."}


class Entra:
    PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")

    def __init__(self, emu):
        self.emu, self.a = emu, emu.args

    def error(self, req, kind, *args):
        status, error, code, text = AADSTS[kind]
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%SZ")
        trace = str(uuid.uuid4())
        corr = req.headers.get("client-request-id") or str(uuid.uuid4())
        headers = NO_CACHE + ([("Retry-After", self.emu.retry_after())] if status == 429 else [])
        return json_reply(status, {
            "error": error, "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "error_description": "AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s"
                                 % (code, text.format(*args), trace, corr, stamp),
            "correlation_id": corr,
            "error_uri": "https://login.microsoftonline.com/error?code=%d" % code},
            ENTRA_CT, headers)

    def granted(self, audience, client_id, scope=None, refresh=None):
        body = {"token_type": "Bearer", "expires_in": TOKEN_EXPIRES_IN,
                "ext_expires_in": TOKEN_EXPIRES_IN,
                "access_token": self.emu.issue_token(audience, client_id)}
        if scope is not None:           # Entra sends scope (and a refresh token) for
            body["scope"] = scope       # delegated grants, not for client credentials
        if refresh is not None:
            body["refresh_token"] = refresh
        return json_reply(200, body, ENTRA_CT, NO_CACHE)

    def handle(self, req, m):
        self.emu.bump("token_requests")
        if req.method != "POST":
            return self.error(req, "method", req.method)
        if self.emu.take("token_429"):
            return self.error(req, "throttled")
        if m.group(1) != self.a.tenant:
            return self.error(req, "tenant", m.group(1))
        if req.ctype() != "application/x-www-form-urlencoded":
            return self.error(req, "missing", "grant_type")
        try:
            pairs = urllib.parse.parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return self.error(req, "malformed")
        form = dict(pairs)
        if len(form) != len(pairs):                 # a parameter given twice
            return self.error(req, "malformed")
        for param in ("grant_type", "client_id"):
            if not form.get(param):
                return self.error(req, "missing", param)
        if form["grant_type"] == "client_credentials":
            return self.client_credentials(req, form)
        if form["grant_type"] == "refresh_token":
            return self.refresh(req, form)
        return self.error(req, "grant_type", form["grant_type"])

    def client_credentials(self, req, form):
        cid, secret, scope = form["client_id"], form.get("client_secret"), form.get("scope")
        if cid not in (self.a.client_id, self.a.manager_client_id, self.a.graph_client_id):
            return self.error(req, "unknown_client", cid, self.a.tenant)
        if not secret or cid == self.a.graph_client_id:     # a public client has none
            return self.error(req, "no_secret")
        if scope is None:
            return self.error(req, "missing", "scope")
        if cid == self.a.manager_client_id:
            if secret != self.a.manager_secret:
                return self.error(req, "bad_secret", cid)
            if scope != GRAPH_SCOPE:
                return self.error(req, "bad_scope", scope)
            return self.granted("graph", cid)
        # The signing app: the secret must be a live password credential that
        # has had time to replicate (fault aadsts7000215_seconds).
        now, mono = utcnow(), time.monotonic()
        young = self.emu.faults["aadsts7000215_seconds"]
        if not any(c["secretText"] == secret and c["end"] > now and mono - c["created"] >= young
                   for c in self.emu.present_credentials()):
            return self.error(req, "bad_secret", cid)
        if scope != CODESIGN_SCOPE:
            return self.error(req, "bad_scope", scope)
        return self.granted("codesigning", cid)

    def refresh(self, req, form):
        cid, rt, scope = form["client_id"], form.get("refresh_token"), form.get("scope")
        if cid in (self.a.client_id, self.a.manager_client_id):
            return self.error(req, "bad_grant")     # not the client the token was issued to
        if cid != self.a.graph_client_id:
            return self.error(req, "unknown_client", cid, self.a.tenant)
        for param in ("refresh_token", "scope"):
            if not form.get(param):
                return self.error(req, "missing", param)
        scopes = scope.split()
        if GRAPH_SCOPE not in scopes or not set(scopes) <= {GRAPH_SCOPE, "offline_access",
                                                            "openid", "profile"}:
            return self.error(req, "bad_scope", scope)
        with self.emu.lock:
            if rt != self.emu.refresh_token:
                return self.error(req, "spent_grant" if rt in self.emu.spent_refresh
                                  else "bad_grant")
            # Strict rotation: the old token dies as the new one is born.
            self.emu.spent_refresh.add(rt)
            new = self.emu.refresh_token = ("0.A" + secrets.token_urlsafe(180) + "."
                                            + secrets.token_urlsafe(60))
        granted = "https://graph.microsoft.com/Application.ReadWrite.All"
        if "offline_access" in scopes:
            granted += " offline_access"
        return self.granted("graph", cid, granted, new)


# ---------------------------------------------------------------- Microsoft Graph

class Graph:
    PATH = re.compile(r"/v1\.0/applications/([^/]+?)(?:/(addPassword|removePassword))?")
    SELECTABLE = ("id", "appId", "displayName", "passwordCredentials")

    def __init__(self, emu):
        self.emu, self.a = emu, emu.args

    def error(self, req, status, code, message, headers=()):
        inner = {"date": graph_time(utcnow().replace(microsecond=0)),
                 "request-id": str(uuid.uuid4()),
                 "client-request-id": req.headers.get("client-request-id")
                 or str(uuid.uuid4())}
        return json_reply(status, {"error": {"code": code, "message": message,
                                             "innerError": inner}}, JSON_CT, headers)

    def bad(self, req, message):
        return self.error(req, 400, "Request_BadRequest", message)

    def handle(self, req):
        m = self.PATH.fullmatch(req.path)
        if not m:
            return self.error(req, 400, "BadRequest",
                              "Resource not found for the segment '%s'."
                              % req.path.rsplit("/", 1)[-1])
        self.emu.bump("graph_requests")
        if self.emu.take("graph_429"):
            return self.error(req, 429, "TooManyRequests",
                              "Too many requests are being made for this application. "
                              "Please try again later.",
                              [("Retry-After", self.emu.retry_after())])
        why = self.emu.check_bearer(req, "graph")
        if why:
            return self.error(req, 401, "InvalidAuthenticationToken", AUTH_MSG[why],
                              [("WWW-Authenticate", 'Bearer realm="", authorization_uri='
                                '"https://login.microsoftonline.com/common/oauth2/authorize",'
                                ' client_id="00000003-0000-0000-c000-000000000000"')])
        object_id, action = m.groups()
        if object_id != self.a.app_object_id:
            return self.error(req, 404, "Request_ResourceNotFound",
                              "Resource '%s' does not exist or one of its queried "
                              "reference-property objects are not present." % object_id)
        if req.method != ("GET" if action is None else "POST"):
            return self.error(req, 405, "Request_BadRequest",
                              "Specified HTTP method is not allowed for the request target.")
        if action is None:
            return self.get(req)
        if req.ctype() != "application/json":
            return self.error(req, 415, "Request_BadRequest",
                              "A supported MIME type could not be found that matches the "
                              "content type of the request payload.")
        try:
            body = req.json()
        except ValueError:
            return self.bad(req, "Unable to read JSON request payload. Please ensure "
                                 "Content-Type header is set and payload is of valid JSON "
                                 "format.")
        if action == "addPassword":
            return self.add_password(req, body)
        return self.remove_password(req, body)

    @staticmethod
    def view(cred, secret=False):
        return {"customKeyIdentifier": None, "displayName": cred["displayName"],
                "endDateTime": graph_time(cred["end"]), "hint": cred["hint"],
                "keyId": cred["keyId"],
                "secretText": cred["secretText"] if secret else None,
                "startDateTime": graph_time(cred["start"])}

    def get(self, req):
        self.emu.bump("graph_get")
        full = {"id": self.a.app_object_id, "appId": self.a.client_id,
                "displayName": "qwick-emulated-app",
                "passwordCredentials": [self.view(c)
                                        for c in self.emu.present_credentials()]}
        ctx = "https://graph.microsoft.com/v1.0/$metadata#applications"
        select = req.q("$select")
        if select is not None:
            fields = [f.strip() for f in select.split(",") if f.strip()]
            for f in fields:
                if f not in self.SELECTABLE:
                    return self.bad(req, "Could not find a property named '%s' on type "
                                         "'microsoft.graph.application'." % f)
            full = {k: v for k, v in full.items() if k == "id" or k in fields}
            ctx += "(%s)" % ",".join(fields)
        return json_reply(200, dict({"@odata.context": ctx + "/$entity"}, **full), GRAPH_CT)

    def add_password(self, req, body):
        if not isinstance(body, dict):
            return self.bad(req, "The request body must be a JSON object.")
        for k in body:
            if k != "passwordCredential":
                return self.bad(req, "Property '%s' does not exist as a declared property "
                                     "or extension property." % k)
        pc = body.get("passwordCredential")
        pc = {} if pc is None else pc
        if not isinstance(pc, dict):
            return self.bad(req, "Invalid value for property 'passwordCredential'.")
        for k in pc:
            if k not in ("displayName", "endDateTime"):
                return self.bad(req, "Property '%s' of 'microsoft.graph.passwordCredential' "
                                     "is not supported by addPassword." % k)
        name = pc.get("displayName")
        if name is not None and not isinstance(name, str):
            return self.bad(req, "Invalid value specified for property 'displayName' of "
                                 "resource 'PasswordCredential'.")
        now = utcnow()
        end = now + dt.timedelta(days=730)
        if pc.get("endDateTime") is not None:
            end = parse_iso(pc["endDateTime"])
            if end is None or end <= now:
                return self.bad(req, "Invalid value specified for property 'endDateTime' of "
                                     "resource 'PasswordCredential'.")
        with self.emu.lock:
            if len(self.emu.present_credentials()) >= self.a.credential_limit:
                return self.error(req, 400, "TooManyAppPasswords",
                                  "The application already has the maximum number of "
                                  "password credentials (%d). Remove an existing password "
                                  "before adding a new one." % self.a.credential_limit)
            cred = self.emu.add_credential(name, end)
            self.emu.counters["add_password"] += 1
        log("addPassword %r -> keyId %s" % (name, cred["keyId"]))
        ctx = "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.passwordCredential"
        return json_reply(200, dict({"@odata.context": ctx}, **self.view(cred, True)),
                          GRAPH_CT)

    def remove_password(self, req, body):
        key = body.get("keyId") if isinstance(body, dict) and len(body) == 1 else None
        try:
            key = str(uuid.UUID(key)) if isinstance(key, str) else None
        except ValueError:
            key = None
        if key is None:
            return self.bad(req, "Invalid request: the body must be {\"keyId\": <guid>}.")
        with self.emu.lock:
            for c in self.emu.present_credentials():
                if c["keyId"] == key:
                    c["removed"] = True
                    self.emu.counters["remove_password"] += 1
                    break
            else:
                return self.bad(req, "No password credential found with keyId %s." % key)
        log("removePassword %s" % key)
        return Reply(204)


# ---------------------------------------------------------------- Trusted Signing

class Signing:
    SUBMIT = re.compile(r"/codesigningaccounts/([^/]+)/certificateprofiles/([^/:]+)(?:/|:)sign")
    POLL = re.compile(r"/codesigningaccounts/([^/]+)/certificateprofiles/([^/:]+)/sign/([^/]+)")
    # fault: (status, error code, message); no code means an empty body
    FAULTS = (("bare_403", 403, None, None),
              ("sign_429", 429, "TooManyRequests", "Rate limit exceeded."),
              ("sign_503", 503, "ServiceUnavailable", "The service is busy."),
              ("sign_500", 500, "InternalServerError", "An internal error occurred."))

    def __init__(self, emu):
        self.emu, self.a = emu, emu.args

    def status(self, s):
        case = self.emu.faults["status_case"]
        return {"lower": s.lower(), "upper": s.upper(), "spaced": " %s " % s}.get(case, s)

    @staticmethod
    def not_found(what):
        return json_reply(404, {"errorDetail": {"code": "NotFound", "message": what,
                                                "target": None}})

    @staticmethod
    def problem(status, title, detail):
        return json_reply(status, {
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.%d"
                    % (16 if status == 415 else 1),
            "title": title, "status": status, "detail": detail,
            "traceId": "00-%s-%s-00" % (secrets.token_hex(16), secrets.token_hex(8))},
            PROBLEM_CT)

    def handle(self, req):
        poll = self.POLL.fullmatch(req.path)
        submit = None if poll else self.SUBMIT.fullmatch(req.path)
        if not poll and not submit:
            return self.not_found("No such resource: %s" % req.path)
        version = req.q("api-version")
        if version not in API_VERSIONS:
            return json_reply(400, {"error": {
                "code": "UnsupportedApiVersion",
                "message": "The HTTP resource that matches the request URI does not support "
                           "the API version '%s'. Supported: %s."
                           % (version, ", ".join(API_VERSIONS))}})
        why = self.emu.check_bearer(req, "codesigning")
        if why:
            return json_reply(401, {"error": {"code": "Unauthorized",
                                              "message": AUTH_MSG[why]}},
                              headers=[("WWW-Authenticate", 'Bearer authorization_uri="https:'
                                        '//login.microsoftonline.com/%s", resource_id="%s"'
                                        % (self.a.tenant, AUDIENCES["codesigning"]))])
        if poll:
            if req.method != "GET":
                return self.problem(405, "Method Not Allowed", "Poll with GET.")
            return self.poll(req, version, *poll.groups())
        if req.method != "POST":
            return self.problem(405, "Method Not Allowed", "Submit with POST.")
        return self.submit(req, version, *submit.groups())

    def submit(self, req, version, account, profile):
        self.emu.bump("sign_posts")
        ra = [("Retry-After", self.emu.retry_after())]
        for fault, status, code, message in self.FAULTS:
            if self.emu.take(fault):
                if code is None:
                    return Reply(status)
                return json_reply(status, {"error": {"code": code, "message": message}},
                                  headers=ra if status in (429, 503) else ())
        if account != self.a.account:
            return self.not_found("Code signing account '%s' not found." % account)
        if profile != self.a.cert_profile:
            return self.not_found("Certificate profile '%s' not found in account '%s'."
                                  % (profile, account))
        if req.ctype() != "application/json":
            return self.problem(415, "Unsupported Media Type",
                                "Content-Type must be application/json.")
        try:
            body = req.json()
        except ValueError:
            return self.problem(400, "One or more validation errors occurred.",
                                "The request body is not valid JSON.")
        err = self.validate(body)
        if err:
            return self.problem(400, "One or more validation errors occurred.", err)
        opid = str(uuid.uuid4())
        op = {"id": opid, "account": account, "profile": profile,
              "alg": body["signatureAlgorithm"], "digest": b64_strict(body["digest"]),
              "done_at": time.monotonic() + self.emu.faults["op_delay_ms"] / 1000.0,
              "fail": self.emu.take("op_fail"), "signature": None, "delivered": False}
        with self.emu.lock:
            self.emu.ops[opid] = op
            c = self.emu.counters
            c["sign_submitted"] += 1
            c["ops_in_flight"] += 1
            c["max_ops_in_flight"] = max(c["max_ops_in_flight"], c["ops_in_flight"])
        loc = ("https://127.0.0.1:%d/codesigningaccounts/%s/certificateprofiles/%s/sign/%s"
               "?api-version=%s" % (self.emu.port, urllib.parse.quote(account),
                                    urllib.parse.quote(profile), opid, version))
        return json_reply(202, {"id": opid, "status": self.status("InProgress")},
                          headers=[("Operation-Location", loc)] + ra)

    @staticmethod
    def validate(body):
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        for k in body:
            if k not in SIGN_BODY_KEYS:
                return "The JSON property '%s' is not supported." % k
        alg = body.get("signatureAlgorithm")
        if not isinstance(alg, str) or alg not in SIGN_ALGS:
            return "signatureAlgorithm must be one of %s." % ", ".join(SIGN_ALGS)
        digest = b64_strict(body.get("digest"))
        if digest is None:
            return "digest must be standard, padded base64."
        want = SIGN_ALGS[alg][0].digest_size
        if len(digest) != want:
            return "digest is %d bytes; %s needs %d." % (len(digest), alg, want)
        for k in ("fileHashList", "authenticodeHashList"):
            if k in body and (not isinstance(body[k], list)
                              or any(b64_strict(x) is None for x in body[k])):
                return "%s must be an array of base64 strings." % k
        return None

    def poll(self, req, version, account, profile, opid):
        with self.emu.lock:
            op = self.emu.ops.get(opid)
        if op is None or op["account"] != account or op["profile"] != profile:
            return self.not_found("Operation '%s' not found." % opid)
        self.emu.bump("sign_polls")
        if time.monotonic() < op["done_at"]:
            return json_reply(200, {"id": opid, "status": self.status("InProgress")},
                              headers=[("Retry-After", self.emu.retry_after())])
        if op["fail"]:
            body = {"id": opid, "status": self.status("Failed"),
                    "error": {"code": "SigningFailed",
                              "message": "The signing operation failed (emulated fault)."}}
        else:
            if op["signature"] is None:
                op["signature"] = base64.b64encode(
                    self.emu.pki.sign(op["alg"], op["digest"])).decode()
            result = {"signature": op["signature"],
                      "signingCertificate": self.emu.pki.signing_certificate(
                          self.emu.faults["shuffle_chain"])}
            body = {"id": opid, "status": self.status("Succeeded")}
            if self.emu.faults["nested_result"]:
                body["result"] = result
            else:
                body.update(result)
        with self.emu.lock:
            if not op["delivered"]:
                op["delivered"] = True
                c = self.emu.counters
                c["ops_in_flight"] -= 1
                c["sign_failed" if op["fail"] else "sign_succeeded"] += 1
        return json_reply(200, body)


# ---------------------------------------------------------------- control API

class Control:
    def __init__(self, emu):
        self.emu = emu

    def handle(self, req):
        if req.client != "127.0.0.1":
            return json_reply(403, {"error": "control API is loopback only"})
        route = (req.method, req.path)
        if route == ("GET", "/_emu/state"):
            return json_reply(200, self.emu.state())
        if route == ("GET", "/_emu/faults"):
            with self.emu.lock:
                return json_reply(200, dict(self.emu.faults))
        if route == ("POST", "/_emu/faults"):
            try:
                changes = req.json()
            except ValueError:
                return json_reply(400, {"error": "body is not JSON"})
            err = self.set_faults(changes)
            if err:
                return json_reply(400, {"error": err})
            log("faults %s" % json.dumps(changes, sort_keys=True))
            with self.emu.lock:
                return json_reply(200, dict(self.emu.faults))
        if route == ("POST", "/_emu/reset-stats"):
            self.emu.reset_stats()
            return json_reply(200, self.emu.state())
        return json_reply(404, {"error": "unknown control endpoint %s %s" % route})

    def set_faults(self, changes):
        """Validate everything, then apply it all at once; an error message or None."""
        if not isinstance(changes, dict):
            return "expected a JSON object of fault settings"
        reset = changes.get("reset", False)
        if not isinstance(reset, bool):
            return "reset must be true or false"
        with self.emu.lock:
            new = self.emu.default_faults() if reset else dict(self.emu.faults)
        for k, v in changes.items():
            if k == "reset":
                continue
            if k not in FAULT_CHECKS:
                return "unknown fault %r (known: %s)" % (k, ", ".join(sorted(new)))
            if not FAULT_CHECKS[k](v):
                return "bad value for %s: %r" % (k, v)
            new[k] = v
        with self.emu.lock:
            self.emu.faults = new
        return None


# ---------------------------------------------------------------- HTTP plumbing

class Router:
    def __init__(self, emu):
        self.entra, self.graph = Entra(emu), Graph(emu)
        self.signing, self.control = Signing(emu), Control(emu)

    def route(self, req):
        p = req.path
        if p.startswith("/_emu/"):
            return self.control.handle(req)
        if p.startswith("/v1.0/"):
            return self.graph.handle(req)
        if p.startswith("/codesigningaccounts/"):
            return self.signing.handle(req)
        m = Entra.PATH.fullmatch(p)
        if m:
            return self.entra.handle(req, m)
        return json_reply(404, {"error": {"code": "NotFound",
                                          "message": "No emulated service at %s" % p}})


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "QwickAzureEmu/1"
    disable_nagle_algorithm = True
    timeout = 120                        # idle keep-alive connections

    def log_message(self, fmt, *args):
        log(fmt % args)

    def log_request(self, code="-", size="-"):
        path = self.path.split("?", 1)[0]
        if len(path) > 120:
            path = path[:117] + "..."
        log("%s %s -> %s" % (self.command, path, getattr(code, "value", code)))

    def _serve(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._send(json_reply(411, {"error": "send a Content-Length"}), True)
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            # Read (and drop) a body of modest size first: answering while the
            # client is still sending makes its send fail with a reset instead
            # of it reading the 413 (a flaky self-test, seen under load).
            left = n if 0 < n <= 16 * MAX_BODY else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            return self._send(json_reply(413, {"error": "body too large (max %d bytes)"
                                                        % MAX_BODY}), True)
        body = self.rfile.read(n) if n else b""
        if len(body) != n:
            self.close_connection = True
            return None
        req = Request(self.command, self.path, self.headers, body, self.client_address[0])
        try:
            reply = self.server.router.route(req)
        except Exception:            # an emulator bug: say so, keep serving
            log("internal error:\n" + traceback.format_exc())
            reply = json_reply(500, {"error": {"code": "EmulatorBug",
                                               "message": "see the emulator's stderr"}})
        return self._send(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _send(self, reply, close=False):
        self.server.emu.note_status(reply.status)
        self.send_response(reply.status)
        if reply.ctype and reply.body:
            self.send_header("Content-Type", reply.ctype)
        for k, v in reply.headers:
            self.send_header(k, v)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(reply.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if reply.body and reply.status != 204:
            self.wfile.write(reply.body)


class EmuServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, ssl_ctx, router, emu):
        self.ssl_ctx, self.router, self.emu = ssl_ctx, router, emu
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, so a
        # slow client cannot stall accept().
        try:
            request.settimeout(10)
            conn = self.ssl_ctx.wrap_socket(request, server_side=True)
        except OSError as e:
            log("TLS handshake from %s failed: %s" % (client_address[0], e))
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout, ssl.SSLError)):
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description="Emulated Entra ID + Graph + Azure Trusted "
                                             "Signing on https://127.0.0.1 for tests.")
    ap.add_argument("--state-dir", required=True,
                    help="where tls-ca.pem, codesign-root.pem, codesign-chain.pem go")
    ap.add_argument("--port-file", help="write the listening port here once ready")
    ap.add_argument("--existing-credential", action="append", default=[], metavar="NAME",
                    help="pre-create a credential with this displayName (repeatable)")
    for opt, default, text in (
            ("--port", 0, "0 picks a free one"),
            ("--tenant", "tenant-1", "the one known tenant"),
            ("--client-id", "app-1", "the signing app's appId"),
            ("--app-object-id", "obj-1", "the signing app's Graph object id"),
            ("--account", "acct", "code signing account"),
            ("--cert-profile", "prof", "certificate profile"),
            ("--graph-client-id", "graph-cli", "public client of the refresh-token grant"),
            ("--refresh-token", "rt-initial", "the one valid Graph refresh token at start"),
            ("--manager-client-id", "mgr-1", "app allowed to manage credentials"),
            ("--manager-secret", "mgr-secret", "its client secret"),
            ("--credential-limit", 10, "max password credentials on the app"),
            ("--op-delay-ms", 300, "time from sign submission until the result is ready"),
            ("--retry-after", 1, "seconds sent in Retry-After")):
        ap.add_argument(opt, default=default, type=type(default),
                        help="%s [%s]" % (text, default))
    a = ap.parse_args()

    os.makedirs(a.state_dir, exist_ok=True)
    t0 = time.monotonic()
    pki = Pki(a.state_dir)
    emu = Emulator(a, pki)
    srv = EmuServer(("127.0.0.1", a.port), pki.tls_context(), Router(emu), emu)
    emu.port = srv.server_address[1]

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    if a.port_file:
        # Atomically, so a waiting test never reads a partial file.
        _write(a.port_file, b"%d\n" % emu.port)
    log("listening on https://127.0.0.1:%d (tenant %s, app %s/%s, account %s/%s; "
        "PKI made in %.1f s)" % (emu.port, a.tenant, a.client_id, a.app_object_id,
                                 a.account, a.cert_profile, time.monotonic() - t0))
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        log("stopped")


if __name__ == "__main__":
    main()
