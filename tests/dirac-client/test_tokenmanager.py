"""DIRAC's own client (DIRAC 9.1.22 from PyPI) against our TokenManager, over https and dips.

Every test takes the ``transport`` fixture: ``https`` (TornadoClient), ``dips-json`` and ``dips-dencode``
(RPCClient; DIRAC_USE_JSON_ENCODE=yes/no, checked on the wire by a spy). Fixture schema: conftest.py and
README.md. Expected values follow DIRAC's behaviour (docs/DIRAC.md#the-methods, docs/DIRAC.md#token-info-dictionaries,
docs/DIRAC.md#whoami, docs/DIRAC.md#https-replies-and-status-codes).
"""
import datetime
import time
import uuid

import pytest

from conftest import (
    CPU_TIMES_KEYS,
    DIRAC_TOKEN_INFO_KEYS,
    FX,
    PING_KEYS,
    Transport,
    err,
    expect,
    ok,
    utcnow,
)

CLIENT_KINDS = ("client", "raw", "tm")  # Client(url=...), TornadoClient/RPCClient, TokenManagerClient
WHOAMI_PROXY_KEYS = {"subject", "issuer", "secondsLeft", "isProxy", "isLimitedProxy", "validDN", "validGroup", "DN",
                     "identity", "group", "VO", "properties", "username"}
WHOAMI_HOST_KEYS = {"subject", "issuer", "secondsLeft", "isProxy", "isLimitedProxy", "validDN", "validGroup", "DN",
                    "extraCredentials", "group", "username", "properties"}
USER_TOKEN_KEYS = {"access_token", "token_type", "expires_in", "expires_at", "scope"}
CLIENT_TOKEN_KEYS = USER_TOKEN_KEYS | {"client_id", "provider"}


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def dead_url(transport):
    """Same service path on a closed port: what the client cache tests point at after the first call."""
    scheme = "https" if transport.https else "dips"
    return f"{scheme}://localhost:1/{transport.url.split('/', 3)[3]}"


# --- ping / echo / whoami ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_ping(transport, admin, kind):
    v = ok(getattr(transport, kind)(admin).ping())
    assert set(v) == PING_KEYS
    assert isinstance(v["version"], str) and v["version"]
    if expect("version"):
        assert v["version"] == expect("version")
    now = utcnow()
    assert isinstance(v["time"], datetime.datetime), type(v["time"])
    assert isinstance(v["service start time"], datetime.datetime), type(v["service start time"])
    assert abs((v["time"] - now).total_seconds()) < 60, (v["time"], now)
    assert v["service start time"] <= v["time"]
    assert is_int(v["host uptime"]) and v["host uptime"] >= v["service uptime"] >= 0
    assert abs(v["service uptime"] - (v["time"] - v["service start time"]).total_seconds()) <= 2
    load = v["load"].split(" ")
    assert len(load) == 3 and all(float(x) >= 0 for x in load), v["load"]
    proto = "https" if transport.https else "dips"
    assert v["name"] == expect("ping_name_" + proto, expect("ping_name", "Framework/TokenManager"))
    assert v["URL"] == expect("ping_url_" + proto, transport.url)
    assert set(v["cpu times"]) == CPU_TIMES_KEYS
    assert all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v["cpu times"].values())


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_echo_string(transport, admin, kind):
    s = "hello from DIRAC client, h\u00e9llo \u2713"
    assert ok(getattr(transport, kind)(admin).echo(s)) == s


def test_echo_dict_https(transport, admin):
    if not transport.https:
        pytest.skip("DISET type-checks echo(str) (types_echo = [str]); only Tornado echoes any value")
    d = {"a": [1, 2.5, "x"], "b": None, "c": True, "d": {"e": ""}}
    assert ok(transport.client(admin).echo(d)) == d


def check_whoami_proxy(v, caller):
    assert set(v) == WHOAMI_PROXY_KEYS, sorted(v)
    assert v["subject"].startswith(caller["dn"] + "/CN="), v["subject"]
    assert v["issuer"] == caller["dn"]
    assert v["DN"] == caller["dn"] and v["identity"] == caller["dn"]
    assert v["isProxy"] is True and v["isLimitedProxy"] is False
    assert v["validDN"] is False and v["validGroup"] is False
    assert is_int(v["secondsLeft"]) and v["secondsLeft"] > 0
    assert v["group"] == caller["group"]
    assert v["VO"] == FX.get("vo", "dirac")
    assert v["username"] == caller["username"]
    assert sorted(v["properties"]) == sorted(caller["properties"])


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_whoami_admin(transport, admin, kind):
    check_whoami_proxy(ok(getattr(transport, kind)(admin).whoami()), admin)


def test_whoami_plain(transport, plain):
    check_whoami_proxy(ok(transport.client(plain).whoami()), plain)


@pytest.mark.parametrize("kind", ("client", "raw"))
def test_whoami_host_certificate(transport, host, kind):
    """useCertificates=True: the host cert/key from /DIRAC/Security, extraCredentials "hosts"."""
    v = ok(getattr(transport, kind)(host=True).whoami())
    assert set(v) == WHOAMI_HOST_KEYS, sorted(v)
    assert v["subject"] == host["dn"] and v["DN"] == host["dn"]
    assert v["isProxy"] is False and v["isLimitedProxy"] is False
    assert v["validDN"] is False and v["validGroup"] is False
    assert is_int(v["secondsLeft"]) and v["secondsLeft"] > 0
    assert v["extraCredentials"] == "hosts"
    assert v["group"] == "hosts"
    assert v["username"] == host["hostname"]
    assert sorted(v["properties"]) == sorted(host["properties"])


def test_unknown_method(transport, admin):
    r = err(transport.client(admin).noSuchMethod())
    if transport.https:  # HTTP 501 -> ENOSYS, client side
        assert r == {"OK": False, "Errno": 38, "Message": "Function not implemented ( 38 : noSuchMethod is not implemented)"}
    else:  # DISET: authorised by Authorization/Default, then no export_ method
        assert r == {"OK": False, "Errno": 0, "Message": "Unknown method noSuchMethod"}


# --- stored tokens: updateToken, getTokensByUserID, getUserTokensInfo, getUsersTokensInfo, deleteToken ---


def fake_token(now):
    tag = uuid.uuid4().hex
    return {
        "access_token": f"fake-access-token-{tag}",
        "refresh_token": f"fake-refresh-token-{tag}",
        "token_type": "Bearer",
        "expires_in": 3600,
        "expires_at": now + 3600,
        "rt_expires_at": now + 86400,
        "scope": "openid profile offline_access",
    }


def check_token_info(info, token, uid, provider, username=None):
    """One element of getTokensByUserID & co: DIRAC's TokenDB row, every column a string but expires_at."""
    exposed = expect("token_values_exposed", True)
    keys = set(DIRAC_TOKEN_INFO_KEYS) | set(expect("token_info_extra_keys", []))
    if not exposed:
        keys -= {"access_token", "refresh_token"}
    if username is not None:
        keys.add("username")
        assert info["username"] == username
    assert set(info) == keys, sorted(info)
    assert info["user_id"] == uid
    assert info["provider"] == provider
    assert is_int(info["expires_at"]) and info["expires_at"] == token["expires_at"]
    assert info["rt_expires_at"] == str(token["rt_expires_at"])
    assert info["token_type"] == token["token_type"]
    assert info["scope"] == token["scope"]
    assert info["expires_in"] == str(token["expires_in"])
    # DIRAC never sets kid ("None"); ours names the keyring key that encrypts the row.
    assert isinstance(info["kid"], str) and info["kid"] != ""
    assert info["client_id"] == "None"
    assert info["access_token_revoked_at"] == "0" and info["refresh_token_revoked_at"] == "0"
    assert isinstance(info["id"], str) and info["id"].isdigit()
    assert isinstance(info["issued_at"], str) and abs(int(info["issued_at"]) - time.time()) < 600
    if exposed:
        assert info["access_token"] == token["access_token"]
        assert info["refresh_token"] == token["refresh_token"]


def test_stored_token_lifecycle(transport, admin, plain):
    uid, provider = admin["user_id"], FX["idp"]["name"]
    tm = transport.tm(admin)
    assert ok(tm.deleteToken(uid)) == "Token successfully removed"  # clean slate (succeeds when empty)
    assert ok(tm.getTokensByUserID(uid)) == []

    now = int(time.time())
    first = fake_token(now)
    stored = ok(tm.updateToken(dict(first), uid, provider, 86400))  # 4 args, as the seed documents
    assert len(stored) == 1, stored
    check_token_info(stored[0], first, uid, provider)

    second = fake_token(now)
    stored = ok(tm.updateToken(dict(second), uid, provider))  # 3 args, as DIRAC's AuthServer calls it
    assert len(stored) == 1, stored  # only the new token remains
    check_token_info(stored[0], second, uid, provider)

    by_id = ok(tm.getTokensByUserID(uid))
    assert len(by_id) == 1
    check_token_info(by_id[0], second, uid, provider)

    mine = ok(tm.getUserTokensInfo())  # 0 args (DIRAC's DISET handler wrongly wants 1; docs/DIRAC.md#diracs-diset-type-lists)
    assert mine == by_id

    users = ok(tm.getUsersTokensInfo([admin["username"]]))
    assert len(users) == 1
    check_token_info(users[0], second, uid, provider, username=admin["username"])

    # a caller without ProxyManagement
    assert err(transport.tm(plain).getUsersTokensInfo([admin["username"]])) == transport.refused()
    assert err(transport.tm(plain).deleteToken(uid)) == {"OK": False, "Errno": 0, "Message": "You aren't allowed!"}
    assert len(ok(tm.getTokensByUserID(uid))) == 1

    assert ok(tm.deleteToken(uid)) == "Token successfully removed"
    assert ok(tm.getTokensByUserID(uid)) == []
    assert ok(tm.getUserTokensInfo()) == []


def test_get_tokens_by_unknown_user_id(transport, admin):
    assert ok(transport.client(admin).getTokensByUserID(f"nobody-{uuid.uuid4().hex}")) == []


# --- getToken ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def token_user(admin):
    """Stores the fixture's fresh IdP grant for token_user once, through DIRAC's client (updateToken)."""
    tu = FX.get("token_user")
    if not tu:
        pytest.skip("fixture has no token_user")
    t = Transport("https" if FX.get("https_url") else "dips-json")
    ok(t.tm(admin).updateToken(dict(tu["token"]), tu["user_id"], FX["idp"]["name"]))
    return tu


@pytest.fixture(scope="session")
def client_token():
    ct = FX.get("client_token")
    if not ct:
        pytest.skip("fixture has no client_token")
    return ct


def check_access_token(v, client):
    assert set(v) == (CLIENT_TOKEN_KEYS if client else USER_TOKEN_KEYS), sorted(v)
    assert isinstance(v["access_token"], str) and v["access_token"]
    assert v["token_type"].lower() == "bearer"
    assert is_int(v["expires_in"]) and v["expires_in"] > 0
    assert is_int(v["expires_at"]) and abs(v["expires_at"] - (time.time() + v["expires_in"])) < 30
    assert isinstance(v["scope"], str)
    if client:
        assert v["provider"] == FX["idp"]["name"]
        if FX["idp"].get("client_id"):
            assert v["client_id"] == FX["idp"]["client_id"]


@pytest.mark.parametrize("kind", ("tm", "client"))
def test_get_token_user(transport, admin, token_user, kind):
    if kind == "tm":
        r = transport.tm(admin).getToken(username=token_user["username"], userGroup=token_user["group"], useCache=False)
    else:  # the 6 positional arguments TokenManagerClient sends (docs/DIRAC.md#gettoken)
        r = transport.client(admin).getToken(token_user["username"], token_user["group"], None, None,
                                             FX["idp"]["name"], 0)
    check_access_token(ok(r), client=False)


@pytest.mark.parametrize("kind", ("tm", "client"))
def test_get_token_client(transport, admin, client_token, kind):
    scope = client_token.get("scope")
    if kind == "tm":
        r = transport.tm(admin).getToken(userGroup=client_token["group"], scope=scope, useCache=False)
    else:
        r = transport.client(admin).getToken(None, client_token["group"], scope, None, FX["idp"]["name"], 0)
    v = ok(r)
    check_access_token(v, client=True)
    if scope:
        assert set(scope) <= set(v["scope"].split())


def _cached_round(transport, admin, **kw):
    """TokenManagerClient.getToken with its cache (useCache=True, the default): the first call reaches the
    server; the second is answered from the client's DictCache, proven by pointing it at a closed port."""
    aud = FX["idp"].get("audience")
    if not aud:
        pytest.skip("fixture idp has no audience: the client cache needs JWT access tokens"
                    " (docs/DIRAC.md#the-clients-token-cache-wants-jwts)")
    tm = transport.tm(admin)
    first = ok(tm.getToken(audience=aud, **kw))
    tm.setServer(dead_url(transport))
    second = ok(tm.getToken(audience=aud, **kw))
    assert second["access_token"] == first["access_token"]
    assert not tm.getToken(audience=aud, useCache=False, **kw)["OK"]  # really no server behind dead_url
    return first


def test_get_token_client_cached(transport, admin, client_token):
    v = _cached_round(transport, admin, userGroup=client_token["group"], scope=client_token.get("scope"))
    check_access_token(v, client=True)


def test_get_token_user_cached(transport, admin, token_user):
    v = _cached_round(transport, admin, username=token_user["username"], userGroup=token_user["group"])
    check_access_token(v, client=False)


def test_get_token_refused_without_delegation(transport, plain, client_token):
    r = transport.tm(plain).getToken(userGroup=client_token["group"], useCache=False)
    assert err(r) == {"OK": False, "Errno": 0, "Message": "You can't get tokens!"}


def test_get_user_token_refused_without_delegation(transport, plain, token_user):
    r = transport.tm(plain).getToken(username=token_user["username"], userGroup=token_user["group"], useCache=False)
    assert err(r) == {"OK": False, "Errno": 0, "Message": "You can't get tokens!"}


def test_get_token_client_host_certificate(transport, host, client_token):
    """What SiteDirector does: a client token, authenticated with the host certificate."""
    if not {"FullDelegation", "LimitedDelegation"} & set(host["properties"]):
        pytest.skip("host has no FullDelegation/LimitedDelegation")
    r = transport.tm(host=True).getToken(userGroup=client_token["group"], scope=client_token.get("scope"),
                                         useCache=False)
    check_access_token(ok(r), client=True)
