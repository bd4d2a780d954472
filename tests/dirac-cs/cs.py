"""Helper of start_cs.sh / commit.sh (run by the DIRAC 9.1.22 server venv's python). See README.md.

    cs.py config  WORKDIR CS_CONTENT_FILE PORT HOSTCERT HOSTKEY CADIR
        writes WORKDIR/etc/dirac.cfg (the server's local cfg), WORKDIR/etc/<Name>.cfg (the master CS data,
        = CS_CONTENT_FILE minus any /DIRAC/Configuration/Version) and WORKDIR/client/etc/dirac.cfg (the cfg of
        the DIRAC client used by `ready` and `commit`); prints the CS Name.
    cs.py ready   WORKDIR PORT SERVER_PID [TIMEOUT_S]
        polls the CS with DIRAC's own client until getCompressedDataIfNewer("0") answers, then prints
        `dirac-cs ready version=<v>` on stdout. On timeout, or if SERVER_PID dies, prints the tail of the
        server log on stderr, kills SERVER_PID (if alive) and exits 1.
    cs.py commit  WORKDIR NEW_CONTENT_FILE PORT HOSTCERT HOSTKEY CADIR
        commits NEW_CONTENT_FILE as the new CS data (commitNewData, host certificate, CSAdministrator),
        prints `dirac-cs committed version=<v>`.
"""
import os
import signal
import socket
import sys
import time
import zlib

DEFAULT_NAME = "DiracCsTest"
RESULT = sys.stdout  # the real stdout (see _stdout_for_result_only)
SELF_HOST = "dirac-cs-self"  # Registry/Hosts entry of the local cfg: the host certificate's DN


def _cfg(text):
    from diraccfg import CFG

    return CFG().loadFromBuffer(text)


def _get(cfg, path):
    levels = [p for p in path.split("/") if p]
    for sec in levels[:-1]:
        if not cfg.isSection(sec):
            return None
        cfg = cfg[sec]
    return cfg.getOption(levels[-1]) if cfg.isOption(levels[-1]) else None


def _set(cfg, path, value):
    levels = [p for p in path.split("/") if p]
    for sec in levels[:-1]:
        if not cfg.isSection(sec):
            cfg.createNewSection(sec)
        cfg = cfg[sec]
    cfg.setOption(levels[-1], value)


def _dn(cert):
    from DIRAC.Core.Security.X509Chain import X509Chain

    chain = X509Chain()
    res = chain.loadChainFromFile(cert)
    if res["OK"]:
        res = chain.getCertInChain(0)
    if res["OK"]:
        res = res["Value"].getSubjectDN()
    if not res["OK"]:
        sys.exit(f"dirac-cs: cannot read the DN of {cert}: {res['Message']}")
    return res["Value"]


def config(work, content_file, port, cert, key, cadir):
    with open(content_file) as f:
        content = _cfg(f.read())
    name = _get(content, "DIRAC/Configuration/Name") or DEFAULT_NAME
    conf = content["DIRAC"]["Configuration"] if content.isSection("DIRAC") and content["DIRAC"].isSection(
        "Configuration") else None
    if conf is not None and conf.isOption("Version"):
        conf.deleteKey("Version")  # DIRAC generates a fresh one at start-up
    url = f"dips://localhost:{port}/Configuration/Server"
    for d in ("etc/csbackup", "logs", "client/etc"):
        os.makedirs(f"{work}/{d}", exist_ok=True)
    with open(f"{work}/etc/{name}.cfg", "w") as f:
        f.write(str(content))
    host_dn = _dn(cert)
    security = f"""  Security
  {{
    CertFile = {cert}
    KeyFile = {key}
    CALocation = {cadir}
    UseServerCertificate = {{use}}
  }}"""
    server_cfg = f"""DIRAC
{{
  Hostname = localhost
  Setup = None
{security.replace('{use}', 'yes')}
  Configuration
  {{
    Name = {name}
    Master = yes
    Servers = {url}
    AutoSlaveSync = no
  }}
}}
Systems
{{
  Configuration
  {{
    Services
    {{
      Server
      {{
        HandlerPath = DIRAC/ConfigurationSystem/Service/ConfigurationHandler.py
        Port = {port}
        Protocol = dips
        # DIRAC's defaults (ConfigurationSystem/ConfigTemplate.cfg, section Server)
        Authorization
        {{
          Default = authenticated
          publishSlaveServer = TrustedHost
          commitNewData = CSAdministrator
          rollbackToVersion = CSAdministrator
          getVersionContents = ServiceAdministrator
          getVersionContents += CSAdministrator
          forceGlobalConfigurationUpdate = CSAdministrator
        }}
      }}
    }}
  }}
}}
# Local only (not part of the served data): lets the host certificate read (authenticated) and commit
# (CSAdministrator). The CS content's own Registry is merged with this one; for a DN listed in several
# Registry/Hosts sections DIRAC takes the first, and the content's sections come first.
Registry
{{
  Hosts
  {{
    {SELF_HOST}
    {{
      DN = {host_dn}
      Properties = TrustedHost, CSAdministrator
    }}
  }}
}}
"""
    with open(f"{work}/etc/dirac.cfg", "w") as f:
        f.write(server_cfg)
    _client_cfg(f"{work}/client", cert, key, cadir)
    print(name)


def _client_cfg(root, cert, key, cadir):
    os.makedirs(f"{root}/etc", exist_ok=True)
    with open(f"{root}/etc/dirac.cfg", "w") as f:
        f.write(f"DIRAC\n{{\n  Setup = None\n  Security\n  {{\n    CertFile = {cert}\n    KeyFile = {key}\n"
                f"    CALocation = {cadir}\n    UseServerCertificate = no\n  }}\n}}\n")


def _client(root):
    """Initialises DIRAC's client (ROOT/etc/dirac.cfg); returns the ConfigurationClient class."""
    for v in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "X509_USER_PROXY", "DIRACSYSCONFIG", "DIRAC_X509_HOST_CERT",
              "DIRAC_X509_HOST_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        os.environ.pop(v, None)
    os.environ["DIRAC_ROOT_PATH"] = root
    import DIRAC

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        DIRAC.initialize(require_auth=False)
    finally:
        sys.argv = argv
    from DIRAC.ConfigurationSystem.Client.ConfigurationClient import ConfigurationClient

    return ConfigurationClient


def _tcp_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": check /proc
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ready(work, port, pid, timeout):
    port, pid = int(port), int(pid)
    deadline = time.monotonic() + float(timeout)
    url = f"dips://localhost:{port}/Configuration/Server"
    client_cls = None
    last = "server not listening"
    while time.monotonic() < deadline and _alive(pid):
        if _tcp_open(port):
            if client_cls is None:
                client_cls = _client(f"{work}/client")
            res = client_cls(url=url, useCertificates=True, timeout=10).getCompressedDataIfNewer("0")
            if res["OK"] and "data" in res["Value"]:
                print(f"dirac-cs ready version={res['Value']['newestVersion']}", file=RESULT, flush=True)
                return 0
            last = res.get("Message") or str(res.get("Value"))
        time.sleep(0.2)
    why = "server process exited" if not _alive(pid) else f"not ready after {timeout} s ({last})"
    try:
        with open(f"{work}/logs/server.log", errors="replace") as f:
            tail = f.readlines()[-40:]
    except OSError:
        tail = []
    sys.stderr.write(f"dirac-cs: {why}; last lines of {work}/logs/server.log:\n{''.join(tail)}")
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
    return 1


def commit(work, content_file, port, cert, key, cadir):
    url = f"dips://localhost:{port}/Configuration/Server"
    _client_cfg(f"{work}/commit-client", cert, key, cadir)
    client_cls = _client(f"{work}/commit-client")
    cs = client_cls(url=url, useCertificates=True, timeout=30)
    res = cs.getCompressedDataIfNewer("0")
    if not res["OK"]:
        sys.exit(f"dirac-cs: cannot read the current CS data: {res['Message']}")
    old_version = res["Value"]["newestVersion"]
    data = res["Value"]["data"]
    if isinstance(data, str):
        data = data.encode(errors="surrogateescape")
    current = _cfg(zlib.decompress(data).decode())
    with open(content_file) as f:
        new = _cfg(f.read())
    # What a CSAPI commit would carry: the CS's own /DIRAC/Configuration bookkeeping, with the Version the
    # commit is based on (the server refuses a commit whose Version differs from its current one).
    for opt in ("Name", "Servers", "MasterServer"):
        val = _get(current, f"DIRAC/Configuration/{opt}")
        if val is not None and _get(new, f"DIRAC/Configuration/{opt}") is None:
            _set(new, f"DIRAC/Configuration/{opt}", val)
    _set(new, "DIRAC/Configuration/Name", _get(current, "DIRAC/Configuration/Name"))
    _set(new, "DIRAC/Configuration/Version", old_version)
    res = cs.commitNewData(zlib.compress(str(new).encode(), 9))
    if not res["OK"]:
        sys.exit(f"dirac-cs: commitNewData failed: {res['Message']}")
    res = cs.getCompressedDataIfNewer(old_version)
    if not res["OK"]:
        sys.exit(f"dirac-cs: cannot read the new version: {res['Message']}")
    print(f"dirac-cs committed version={res['Value']['newestVersion']}", file=RESULT, flush=True)
    return 0


def _stdout_for_result_only():
    """DIRAC's gLogger writes to stdout: send fd 1 to stderr, keep the real stdout for the one result line."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", closefd=False)
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd in ("ready", "commit"):
        RESULT = _stdout_for_result_only()
    if cmd == "config":
        config(*args)
    elif cmd == "ready":
        sys.exit(ready(*args))
    elif cmd == "commit":
        sys.exit(commit(*args))
    else:
        sys.exit(f"unknown command {cmd}")
