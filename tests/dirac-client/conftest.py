"""DIRAC-client compatibility tests: DIRAC's own Python client (PyPI DIRAC 9.1.22) against our server.

Run (after tests/dirac-client/setup.sh, with our server running and the fixture written):

    TM_DIRAC_FIXTURE=/path/fixture.json $venv/bin/pytest tests/dirac-client -q

Without TM_DIRAC_FIXTURE every test is skipped (pytest still exits 0 with "N skipped").

Fixture file (JSON; README.md in this folder is the reference the Rust writer follows):

    {
      "https_url": "https://localhost:PORT/Framework/TokenManager",   # either URL may be null -> its tests skip
      "dips_url":  "dips://localhost:PORT/Framework/TokenManager",
      "ca_dir": "/abs/hashed/CA/dir",              # c_rehash/openssl rehash layout, signs server + client certs
      "vo": "dirac",                               # VO of every group below (client /DIRAC/VirtualOrganization)
      "dirac_cfg": null,                           # optional: a complete client cfg to use instead of client_cfg.py
      "callers": {                                 # RFC 3820 proxies with the DIRAC group extension (OID 1.2.42.42)
        "admin": {"proxy": "/abs/admin-proxy.pem", # cert + key + EEC in one PEM
                  "dn": "/C=ch/O=DIRAC/CN=admin",  # EEC subject, OpenSSL oneline format
                  "username": "tmadmin", "group": "dirac_admin",
                  "properties": ["FullDelegation", "ProxyManagement", ...],   # the group's, as in the Registry
                  "user_id": "admin-sub"},         # Registry DN list of tmadmin also has /O=DIRAC/CN=admin-sub
        "plain": {"proxy": ..., "dn": ..., "username": "tmplain", "group": "dirac_user",
                  "properties": ["NormalUser"]}    # no ProxyManagement, no *Delegation
      },
      "host": {"cert": ..., "key": ..., "dn": ..., "hostname": "localhost",  # optional; /Registry/Hosts/<hostname>
               "properties": ["FullDelegation", "TrustedHost"]},
      "idp": {"name": "test-idp", "issuer": "http://127.0.0.1:PORT", "client_id": "tm-basic",
              "audience": "https://aud.example"},  # audience: optional; the IdP must then issue JWT access tokens
      "token_user": {"username": ..., "group": ..., "user_id": ...,       # optional: getToken user tests
                     "token": {"access_token": ..., "refresh_token": ..., "token_type": "Bearer",
                               "expires_in": 3600, "scope": "..."}},     # a fresh, unused IdP grant
      "client_token": {"group": "dirac_pilot", "scope": ["compute.create"]},  # optional: client-token tests
      "groups": {"<group>": {"idp_role": "..."}},  # optional, client-side cache key only
      "expect": {"version": "…", "ping_name": "Framework/TokenManager",     # all optional; also
                 "token_info_extra_keys": [], "token_values_exposed": true,  # ping_name_https/_dips,
                 "dips_reply_mirrors_encoding": true}                          # ping_url_https/_dips
    }

How callers are selected: every client object gets ``proxyLocation=<proxy>`` (or ``useCertificates=True``
for the host). DIRAC keeps no per-process credential cache for these paths (TornadoBaseClient passes the
file to ``requests`` per call; DISET builds an M2Crypto context per transport), so one process serves all
callers. ``DIRAC_USE_JSON_ENCODE`` is read by ``MixedEncode.encode`` at every call (``os.getenv``), so the
DEncode variant only sets the variable for the test (monkeypatch) and a spy checks the bytes on the wire.
"""
import atexit
import datetime
import json
import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FIXTURE_PATH = os.environ.get("TM_DIRAC_FIXTURE")
FX = None
if FIXTURE_PATH:
    with open(FIXTURE_PATH) as _f:
        FX = json.load(_f)

# --- process environment, before DIRAC is imported ----------------------------------------------
# requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override the CA directory DIRAC passes as `verify`
# (docs/DIRAC.md#requests_ca_bundle-breaks-diracs-https-client): with them set, every https call
# fails with CERTIFICATE_VERIFY_FAILED.
for _v in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "X509_USER_PROXY", "GRID_PROXY_FILE", "BEARER_TOKEN",
           "BEARER_TOKEN_FILE", "DIRAC_USE_ACCESS_TOKEN", "DIRACSYSCONFIG", "DIRAC_X509_HOST_CERT",
           "DIRAC_X509_HOST_KEY"):
    os.environ.pop(_v, None)

DIRAC_READY = False
if FX is not None:
    import client_cfg

    # DIRAC's root (its etc/dirac.cfg) beside the fixture, in the directory of whoever wrote it
    # (tests/it/dirac_client.rs: the test's own temp dir): if this process dies before atexit,
    # nothing is left in the system's temp dir.
    _root = tempfile.mkdtemp(prefix="tm-dirac-client-", dir=os.path.dirname(os.path.abspath(FIXTURE_PATH)))
    atexit.register(shutil.rmtree, _root, ignore_errors=True)
    os.makedirs(f"{_root}/etc")
    if FX.get("dirac_cfg"):
        with open(FX["dirac_cfg"]) as _f:
            _cfg = _f.read()
    else:
        _cfg = client_cfg.render(FX)
    with open(f"{_root}/etc/dirac.cfg", "w") as _f:
        _f.write(_cfg)
    os.environ["DIRAC_ROOT_PATH"] = _root
    os.environ["X509_CERT_DIR"] = FX["ca_dir"]
    os.environ["DIRAC_USE_JSON_ENCODE"] = "yes"
    import DIRAC  # noqa: E402

    # LocalConfiguration parses sys.argv: hide pytest's own arguments from it.
    _argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        DIRAC.initialize(require_auth=False)  # docs/DIRAC.md#no-configuration-server
    finally:
        sys.argv = _argv
    DIRAC_READY = True

TRANSPORTS = ("https", "dips-json", "dips-dencode")
DIRAC_TOKEN_INFO_KEYS = {
    "id", "kid", "user_id", "provider", "expires_at", "access_token", "refresh_token", "rt_expires_at",
    "client_id", "token_type", "scope", "issued_at", "access_token_revoked_at", "refresh_token_revoked_at",
    "expires_in",
}
PING_KEYS = {"version", "time", "host uptime", "service start time", "service uptime", "load", "name", "URL",
             "cpu times"}
CPU_TIMES_KEYS = {"user time", "system time", "children user time", "children system time", "elapsed real time"}


def pytest_collection_modifyitems(config, items):
    if FX is None:
        skip = pytest.mark.skip(reason="TM_DIRAC_FIXTURE not set (see tests/dirac-client/README.md)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fx():
    return FX


def expect(key, default=None):
    return (FX.get("expect") or {}).get(key, default)


class Transport:
    """One way of reaching the service: https (Tornado), or dips with JSON or DEncode payloads."""

    def __init__(self, name):
        self.name = name
        self.https = name == "https"
        self.url = FX["https_url"] if self.https else FX["dips_url"]
        self.sent = []  # first byte of every DISET payload we sent
        self.received = []  # ... and received

    def __repr__(self):
        return self.name

    def kwargs(self, caller=None, host=False):
        if host:
            return {"useCertificates": True}
        return {"proxyLocation": caller["proxy"]}

    def client(self, caller=None, host=False):
        """DIRAC's generic ``Client(url=...)`` (what every DIRAC *Client class builds on)."""
        from DIRAC.Core.Base.Client import Client

        return WithProxyEnv(Client(url=self.url, **self.kwargs(caller, host)), caller)

    def raw(self, caller=None, host=False):
        """The protocol's own client: ``TornadoClient`` (https) or ``RPCClient`` (dips)."""
        if self.https:
            from DIRAC.Core.Tornado.Client.TornadoClient import TornadoClient

            return WithProxyEnv(TornadoClient(self.url, **self.kwargs(caller, host)), caller)
        from DIRAC.Core.DISET.RPCClient import RPCClient

        return WithProxyEnv(RPCClient(self.url, **self.kwargs(caller, host)), caller)

    def tm(self, caller=None, host=False):
        """``TokenManagerClient``; it ignores ``url=``
        (docs/DIRAC.md#tokenmanagerclient-ignores-url), hence ``setServer``."""
        from DIRAC.FrameworkSystem.Client.TokenManagerClient import TokenManagerClient

        tm = TokenManagerClient(**self.kwargs(caller, host))
        tm.setServer(self.url)
        return WithProxyEnv(tm, caller)

    def refused(self):
        """The exact result DIRAC's client returns when the server refuses the caller for a method."""
        if self.https:
            return {"OK": False, "Errno": 13, "Message": f"Permission denied ( 13 : No access to {self.url})"}
        return {"OK": False, "Errno": 1111, "Message": "Unauthorized query ( 1111 : Unauthorized query)"}


class WithProxyEnv:
    """Calls the wrapped DIRAC client with X509_USER_PROXY set to the caller's proxy (unset for the host).

    DIRAC 9 honours ``proxyLocation=`` everywhere, but DIRAC 8.0's TornadoBaseClient ignores it and reads
    ``Locations.getProxyLocation()`` (GRID_PROXY_FILE, X509_USER_PROXY, /tmp/x509up_u<uid>) at every
    request ("No proxy found" otherwise). Setting the variable around each call serves both.
    """

    def __init__(self, inner, caller):
        self._inner, self._proxy = inner, caller["proxy"] if caller else None

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            saved = os.environ.pop("X509_USER_PROXY", None)
            if self._proxy:
                os.environ["X509_USER_PROXY"] = self._proxy
            try:
                return attr(*args, **kwargs)
            finally:
                os.environ.pop("X509_USER_PROXY", None)
                if saved is not None:
                    os.environ["X509_USER_PROXY"] = saved

        return call


def _first(data):
    if isinstance(data, str):
        return data[:1]
    return bytes(data[:1]).decode("latin-1")


@pytest.fixture(params=TRANSPORTS)
def transport(request, monkeypatch):
    name = request.param
    if FX is None:
        pytest.skip("no fixture")
    if not FX.get("https_url" if name == "https" else "dips_url"):
        pytest.skip(f"fixture has no URL for {name}")
    t = Transport(name)
    monkeypatch.setenv("DIRAC_USE_JSON_ENCODE", "no" if name == "dips-dencode" else "yes")
    if not t.https:
        from DIRAC.Core.Utilities import MixedEncode

        real_encode, real_decode = MixedEncode.encode, MixedEncode.decode

        def encode(obj):
            out = real_encode(obj)
            t.sent.append(_first(out))
            return out

        def decode(data):
            t.received.append(_first(data))
            return real_decode(data)

        # BaseTransport calls MixedEncode.encode/decode through the module: patching it is enough.
        monkeypatch.setattr(MixedEncode, "encode", encode)
        monkeypatch.setattr(MixedEncode, "decode", decode)
    yield t
    if not t.https and t.sent:
        want = "d" if name == "dips-dencode" else "{"
        assert set(t.sent) == {want}, f"client sent {t.sent}, expected only {want!r} payloads"
        if t.received and expect("dips_reply_mirrors_encoding", True):
            assert set(t.received) == {want}, f"server replied {t.received} to {want!r} requests"


@pytest.fixture(scope="session")
def admin():
    return FX["callers"]["admin"]


@pytest.fixture(scope="session")
def plain():
    return FX["callers"]["plain"]


@pytest.fixture(scope="session")
def host():
    if not FX.get("host"):
        pytest.skip("fixture has no host certificate")
    return FX["host"]


def ok(result):
    """The Value of an S_OK, with a readable failure otherwise."""
    assert isinstance(result, dict), result
    assert result.get("OK") is True, f"expected S_OK, got {err(result)}"
    return result["Value"]


def err(result):
    """An S_ERROR without DIRAC's client-side decorations (rpcStub, CallStack), for exact comparison."""
    assert isinstance(result, dict), result
    assert result.get("OK") is False, f"expected S_ERROR, got {result}"
    return {k: v for k, v in result.items() if k in ("OK", "Errno", "Message")}


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
