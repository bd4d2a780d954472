"""End-to-end check of start_cs.sh/commit.sh with DIRAC's own client (run by selfcheck.sh, client venv).

    check_client.py WORKDIR PORT PKI_JSON CONTENT2_FILE

Reads the CS as the host (extraCredentials "hosts") and as users (proxies), records the raw DISET reply
payloads, commits CONTENT2_FILE with commit.sh and reads again. Prints one line per finding; exit 1 if an
expectation fails.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib

work, port, pki_json, content2 = sys.argv[1:5]
here = os.path.dirname(os.path.abspath(__file__))
pki = json.load(open(pki_json))
url = f"dips://localhost:{port}/Configuration/Server"

for v in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "X509_USER_PROXY", "DIRACSYSCONFIG"):
    os.environ.pop(v, None)
# Inside the selfcheck's work directory, with the rest of its files, not in the system's temp dir.
root = tempfile.mkdtemp(prefix="dirac-cs-check-", dir=work)
os.makedirs(f"{root}/etc")
with open(f"{root}/etc/dirac.cfg", "w") as f:
    f.write(f"""DIRAC
{{
  Setup = None
  Security
  {{
    CALocation = {pki['ca_dir']}
    CertFile = {pki['host']['cert']}
    KeyFile = {pki['host']['key']}
    UseServerCertificate = no
  }}
}}
""")
os.environ["DIRAC_ROOT_PATH"] = root
os.environ["DIRAC_USE_JSON_ENCODE"] = "yes"
import DIRAC  # noqa: E402

argv, sys.argv = sys.argv, sys.argv[:1]
DIRAC.initialize(require_auth=False)
sys.argv = argv
from DIRAC.ConfigurationSystem.Client.ConfigurationClient import ConfigurationClient  # noqa: E402
from DIRAC.Core.Utilities import MixedEncode  # noqa: E402

raw = []
_decode = MixedEncode.decode


def _spy(data):
    raw.append(bytes(data) if not isinstance(data, str) else data.encode())
    return _decode(data)


MixedEncode.decode = _spy
failed = []


def check(what, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {what}{': ' + detail if detail else ''}")
    if not cond:
        failed.append(what)


def cs(**kw):
    return ConfigurationClient(url=url, timeout=20, **kw)


def text_of(res):
    data = res["Value"]["data"]
    if isinstance(data, str):
        data = data.encode(errors="surrogateescape")
    return zlib.decompress(data).decode()


host = {"useCertificates": True}
proxy = {u: {"proxyLocation": pki["users"][u]["proxy"]} for u in pki["users"]}

# 1. host certificate, extraCredentials "hosts" (DIRAC's default with useCertificates=True)
t0 = time.monotonic()
raw.clear()
r = cs(**host).getCompressedDataIfNewer("0")
dt = time.monotonic() - t0
check("host (extraCredentials=hosts) getCompressedDataIfNewer('0')", r["OK"], f"{dt * 1000:.0f} ms")
v1 = r["Value"]["newestVersion"]
check("version format 'YYYY-MM-DD HH:MM:SS.ffffff'", len(v1) in (19, 26) and v1[10] == " ", repr(v1))
check("data is bytes after DIRAC's decoding", isinstance(r["Value"]["data"], bytes), type(r["Value"]["data"]).__name__)
t1 = text_of(r)
check("content served", "Marker = first-content" in t1)
print("     served CFG /DIRAC/Configuration:", [l.strip() for l in t1.splitlines() if l.strip().startswith(
    ("Name =", "Version =", "Servers =", "MasterServer ="))])
reply = raw[-1]
print("     raw reply payload (JSON request):", reply[:160].decode(errors="replace"), "...")
check("reply is JSON with bytes as {'__dCls':'b64','obj':...}", reply[:1] == b"{" and b'"__dCls": "b64"' in reply)

# 2. same version -> no "data"
r = cs(**host).getCompressedDataIfNewer(v1)
check("same version -> no 'data' key", r["OK"] and "data" not in r["Value"], str(r.get("Value")))
print("     raw reply payload (up to date):", raw[-1].decode(errors="replace"))

# 3. DEncode request: what does the server answer in?
os.environ["DIRAC_USE_JSON_ENCODE"] = "no"
raw.clear()
r = cs(**host).getCompressedDataIfNewer("0")
os.environ["DIRAC_USE_JSON_ENCODE"] = "yes"
check("DEncode request works", r["OK"], f"reply first byte {raw[-1][:1]!r}" if raw else "")

# 4. host certificate without extraCredentials
r = cs(useCertificates=True, extraCredentials="").getCompressedDataIfNewer("0")
print(f"     host cert, extraCredentials='': OK={r['OK']} {r.get('Message', '')}")

# 5. user proxies: registered user of the content's Registry
r = cs(**proxy["tmplain"]).getCompressedDataIfNewer("0")
check("user proxy (tmplain, dirac_user, NormalUser) can read", r["OK"], r.get("Message", ""))

# 6. commit by a NormalUser is refused
t2 = open(content2).read()
import zlib as _z  # noqa: E402

bad = t1.replace("first-content", "by-plain-user")
r = cs(**proxy["tmplain"]).commitNewData(_z.compress(bad.encode(), 9))
check("commitNewData by NormalUser refused", not r["OK"], r.get("Message", ""))

# 7. commit.sh (host certificate, CSAdministrator from start_cs.sh's local Registry)
t0 = time.monotonic()
out = subprocess.run([f"{here}/commit.sh", work, content2, port, pki["host"]["cert"], pki["host"]["key"],
                      pki["ca_dir"]], capture_output=True, text=True)
dt = time.monotonic() - t0
check("commit.sh", out.returncode == 0 and out.stdout.startswith("dirac-cs committed version="),
      f"{out.stdout.strip()} {out.stderr.strip()[-300:]} ({dt:.1f} s)")
v2 = out.stdout.strip().split("version=", 1)[-1]
r = cs(**host).getCompressedDataIfNewer(v1)
check("old version -> newer version + data", r["OK"] and r["Value"]["newestVersion"] == v2 and "data" in r["Value"],
      f"{v1} -> {r['Value']['newestVersion']}")
t3 = text_of(r)
check("new content served", "Marker = second-content" in t3 and "first-content" not in t3)

# 8. commit by a user proxy whose group has CSAdministrator (DIRAC's real-life way: CSAPI.commit)
new = t3.replace("second-content", "third-content")
r = cs(**proxy["tmadmin"]).commitNewData(_z.compress(new.encode(), 9))
check("commitNewData with tmadmin proxy (group with CSAdministrator) of the served text", r["OK"],
      r.get("Message", ""))
r = cs(**host).getCompressedDataIfNewer(v2)
check("third version served", r["OK"] and "Marker = third-content" in text_of(r), r["Value"]["newestVersion"])
v3 = r["Value"]["newestVersion"]

# 9. stale commit (based on an older version) refused
r = cs(**proxy["tmadmin"]).commitNewData(_z.compress(new.encode(), 9))
check("commit based on a stale Version refused", not r["OK"], r.get("Message", ""))

# 10. ping
r = cs(**host).ping()
print(f"     ping name={r['Value'].get('name')!r} version={r['Value'].get('version')!r}" if r["OK"] else r)

print("versions:", v1, "->", v2, "->", v3)
sys.exit(1 if failed else 0)
