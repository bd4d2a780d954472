"""Client-side plumbing check against selfcheck/fake_server.py (run by selfcheck/run.sh).

    TM_DIRAC_FIXTURE=fx.json <venv>/bin/python selfcheck/plumbing_check.py

For {https, dips-json, dips-dencode} x {admin proxy, plain proxy, host certificate} x {Client,
TornadoClient/RPCClient, TokenManagerClient}: one whoami through the harness' own Transport helpers,
then checks what the fake server saw: the TLS client certificate (proxy leaf / host), the
extraCredentials ("hosts" only for the host), the method, and the payload encoding on the wire.
Exits non-zero on any mismatch.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import conftest  # noqa: E402  (renders the client cfg and initialises DIRAC from TM_DIRAC_FIXTURE)

FX = conftest.FX


def oneline(dn):  # the fake server prints long attribute names
    for short, long in (("C", "countryName"), ("O", "organizationName"), ("OU", "organizationalUnitName"),
                        ("CN", "commonName")):
        dn = dn.replace(f"/{short}=", f"/{long}=")
    return dn


failures = 0
for name in conftest.TRANSPORTS:
    os.environ["DIRAC_USE_JSON_ENCODE"] = "no" if name == "dips-dencode" else "yes"
    t = conftest.Transport(name)
    for who in ("admin", "plain", "host"):
        caller = FX["callers"].get(who)
        for kind in ("client", "raw", "tm"):
            c = getattr(t, kind)(host=True) if who == "host" else getattr(t, kind)(caller)
            r = c.whoami()
            problems = []
            if not r["OK"]:
                problems.append(r["Message"])
            else:
                v = r["Value"]
                if who == "host":
                    want_peer, want_extra = oneline(FX["host"]["dn"]), "hosts"
                    if v["peer"] != want_peer:
                        problems.append(f"peer {v['peer']} != {want_peer}")
                else:
                    want_peer, want_extra = oneline(caller["dn"]) + "/commonName=", None if t.https else ""
                    if not v["peer"].startswith(want_peer):
                        problems.append(f"peer {v['peer']} is not a proxy of {want_peer}")
                if v["extraCredentials"] != want_extra:
                    problems.append(f"extraCredentials {v['extraCredentials']!r} != {want_extra!r}")
                if v["method"] != "whoami" or v["args"] != []:
                    problems.append(f"call {v['method']}{v['args']}")
                want_enc = "dencode" if name == "dips-dencode" else "json"
                if v["encoding"] != want_enc:
                    problems.append(f"encoding {v['encoding']} != {want_enc}")
            print(f"{'FAIL' if problems else 'ok  '} {name:12} {who:5} {kind:6} {'; '.join(problems)}")
            failures += bool(problems)
print(f"{27 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
