"""Makes a throw-away PKI for the self-check of the DIRAC-client harness (no server of ours needed).

    <venv>/bin/python selfcheck/make_pki.py OUTDIR

Writes, with openssl (CA, EECs) and DIRAC's own X509Chain (RFC 3820 proxies carrying the DIRAC
group extension, OID 1.2.42.42, exactly what `dirac-proxy-init` makes, but offline):

    OUTDIR/certificates/        hashed CA directory (ca.pem + <hash>.0)
    OUTDIR/host{cert,key}.pem   CN=localhost, SAN DNS:localhost + IP:127.0.0.1, EKU server+client
    OUTDIR/<user>{cert,key}.pem user EECs
    OUTDIR/<user>-proxy.pem     cert + key + EEC in one PEM (what DIRAC's proxyLocation expects)

and prints a JSON object {"ca_dir", "host": {...}, "users": {"<user>": {"dn", "proxy", ...}}}.
"""
import json
import os
import subprocess
import sys

OUT = os.path.abspath(sys.argv[1])
USERS = {"tmadmin": "dirac_admin", "tmplain": "dirac_user"}
SUBJ = "/C=ch/O=DIRAC/OU=TokenManager Test"


def sh(*args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def main():
    os.makedirs(f"{OUT}/certificates", exist_ok=True)
    ca_key, ca_pem = f"{OUT}/ca.key", f"{OUT}/certificates/ca.pem"
    if not os.path.exists(ca_pem):
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_pem,
           "-days", "30", "-subj", f"{SUBJ}/CN=Test CA",
           "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        sh("openssl", "rehash", f"{OUT}/certificates")

    def eec(name, cn, ext):
        key, cert, csr, extf = (f"{OUT}/{name}key.pem", f"{OUT}/{name}cert.pem", f"{OUT}/{name}.csr",
                                f"{OUT}/{name}.ext")
        if not os.path.exists(cert):
            sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
               "-subj", f"{SUBJ}/CN={cn}")
            with open(extf, "w") as f:
                f.write(ext)
            sh("openssl", "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
               "-days", "30", "-out", cert, "-extfile", extf)
            os.chmod(key, 0o400)
        return cert, key

    host_cert, host_key = eec("host", "localhost",
                              "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                              "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    from DIRAC.Core.Security.X509Chain import X509Chain  # pylint: disable=import-outside-toplevel

    users = {}
    for user, group in USERS.items():
        cert, key = eec(user, user, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                                    "extendedKeyUsage=clientAuth\n")
        proxy = f"{OUT}/{user}-proxy.pem"
        chain = X509Chain()
        for r in (chain.loadChainFromFile(cert), chain.loadKeyFromFile(key),
                  chain.generateProxyToFile(proxy, 7 * 86400, diracGroup=group)):
            if not r["OK"]:
                raise SystemExit(f"proxy for {user}: {r['Message']}")
        users[user] = {"dn": f"{SUBJ}/CN={user}", "group": group, "proxy": proxy, "cert": cert, "key": key}
    print(json.dumps({"ca_dir": f"{OUT}/certificates",
                      "host": {"cert": host_cert, "key": host_key, "dn": f"{SUBJ}/CN=localhost"},
                      "users": users}, indent=1))


if __name__ == "__main__":
    main()
