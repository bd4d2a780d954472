"""Renders the *client-side* dirac.cfg that DIRAC's Python client needs to talk to our server.

The client reads very little configuration when it is given URLs directly:

* ``/DIRAC/Security``: CA directory (``CALocation``) and, for host-certificate calls
  (``useCertificates=True``), ``CertFile``/``KeyFile``.
* ``/DIRAC/VirtualOrganization``: sent as ``clientVO`` (HTTPS) / in the DISET proposal, and used by
  ``Registry.getVOForGroup`` for every group.
* ``/Registry/VO/<vo>/IdProvider`` and ``/Resources/IdProviders/<name>``: ``TokenManagerClient.getToken``
  resolves the IdP *client side* (group -> VO -> IdP name, then builds an ``OAuth2IdProvider`` from
  the section, without any network access) and sends the IdP name as the 5th positional argument.
* ``/Registry/Groups/<g>/IdPRole``: only used client side for the cache key of
  ``TokenManagerClient.getTokenWithCache``.
* ``/DiracX/DisabledVOs``: keeps v9 clients from trying DiracX.
* ``/Systems/Framework/URLs/TokenManager``: TokenManagerClient's default URL (the tests always
  call ``setServer(url)`` anyway; docs/DIRAC.md#tokenmanagerclient-ignores-url).

Nothing here has to match the server's configuration except the VO name, the IdP name and the group
names. Usable as a script: ``python client_cfg.py FIXTURE.json > dirac.cfg``.
"""
import json
import sys


def render(fx: dict) -> str:
    vo = fx.get("vo", "dirac")
    idp = fx.get("idp") or {}
    lines = []
    w = lines.append
    w("DIRAC")
    w("{")
    w(f"  VirtualOrganization = {vo}")
    w("  Setup = None")
    w("  Security")
    w("  {")
    w(f"    CALocation = {fx['ca_dir']}")
    host = fx.get("host")
    if host:
        w(f"    CertFile = {host['cert']}")
        w(f"    KeyFile = {host['key']}")
    w("    UseServerCertificate = no")
    w("  }")
    w("}")
    w("DiracX")
    w("{")
    w(f"  DisabledVOs = {vo}")
    w("}")
    w("Systems")
    w("{")
    w("  Framework")
    w("  {")
    w("    URLs")
    w("    {")
    w(f"      TokenManager = {fx.get('https_url') or fx.get('dips_url')}")
    w("    }")
    w("  }")
    w("}")
    w("Registry")
    w("{")
    w("  Groups")
    w("  {")
    groups = {}
    for c in (fx.get("callers") or {}).values():
        groups.setdefault(c["group"], {})
    for key in ("token_user", "client_token"):
        if fx.get(key, {}).get("group"):
            groups.setdefault(fx[key]["group"], {})
    for name, spec in (fx.get("groups") or {}).items():
        groups.setdefault(name, {}).update(spec)
    for name, spec in groups.items():
        w(f"    {name}")
        w("    {")
        w(f"      VO = {vo}")
        if spec.get("idp_role"):
            w(f"      IdPRole = {spec['idp_role']}")
        w("    }")
    w("  }")
    w("  VO")
    w("  {")
    w(f"    {vo}")
    w("    {")
    if idp.get("name"):
        w(f"      IdProvider = {idp['name']}")
    w("    }")
    w("  }")
    w("}")
    if idp.get("name"):
        w("Resources")
        w("{")
        w("  IdProviders")
        w("  {")
        w(f"    {idp['name']}")
        w("    {")
        w(f"      ProviderType = {idp.get('provider_type', 'OAuth2')}")
        w(f"      issuer = {idp.get('issuer', 'http://127.0.0.1:1')}")
        if idp.get("client_id"):
            w(f"      client_id = {idp['client_id']}")
        w("    }")
        w("  }")
        w("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.stdout.write(render(json.load(f)))
