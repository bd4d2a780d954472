"""A stand-in server that checks the client-side plumbing of the harness without our Rust server.

    <venv>/bin/python selfcheck/fake_server.py PKI_JSON      (PKI_JSON: output of make_pki.py)

Listens on 127.0.0.1 (two free ports) with the host certificate, *requires* a client certificate that
verifies against the CA directory with RFC 3820 proxies allowed (X509_V_FLAG_ALLOW_PROXY_CERTS), and
prints one line ``fake-server https=<port> dips=<port>``. Every call gets
``S_OK({"peer": <leaf subject>, "method": ..., "args": ..., "extraCredentials": ..., "encoding": ...})``:
https answers form-encoded POSTs the way Tornado does (HTTP 200, JSON), dips runs DISET's conversation
(proposal -> S_OK() -> args -> result) and replies in the encoding the client used (DEncode or JSON).
Exits when stdin closes.
"""
import json
import socket
import ssl
import sys
import threading
import urllib.parse

from DIRAC.Core.Utilities import DEncode, JEncode

X509_V_FLAG_ALLOW_PROXY_CERTS = 0x40


def context(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["host"]["cert"], pki["host"]["key"])
    ctx.load_verify_locations(capath=pki["ca_dir"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= X509_V_FLAG_ALLOW_PROXY_CERTS
    return ctx


def peer(conn):
    cert = conn.getpeercert()
    return "".join(f"/{k}={v}" for rdn in cert["subject"] for k, v in rdn)


def result(conn, method, args, extra, encoding):
    return {"OK": True, "Value": {"peer": peer(conn), "method": method, "args": list(args),
                                  "extraCredentials": extra, "encoding": encoding}}


def serve_https(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += conn.recv(65536)
    form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
    args = json.loads(form.get("args", "[]"))
    extra = json.loads(form["extraCredentials"]) if "extraCredentials" in form else None
    out = JEncode.encode(result(conn, form["method"], args, extra, "json"))
    out = out if isinstance(out, bytes) else out.encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(out), out))


def read_frame(conn, buf):
    while b":" not in buf:
        buf += conn.recv(16384)
    n, rest = buf.split(b":", 1)
    while len(rest) < int(n):
        rest += conn.recv(16384)
    payload = rest[: int(n)]
    enc = "dencode" if payload[:1] == b"d" else "json"
    obj = DEncode.decode(payload)[0] if enc == "dencode" else JEncode.decode(payload)[0]
    return obj, enc, rest[int(n):]


def send_frame(conn, obj, enc):
    out = DEncode.encode(obj) if enc == "dencode" else JEncode.encode(obj)
    out = out if isinstance(out, bytes) else out.encode()
    conn.sendall(b"%d:%s" % (len(out), out))


def serve_dips(conn):
    proposal, enc, buf = read_frame(conn, b"")
    (_service, _action, extra, *_rest) = proposal["Value"]
    send_frame(conn, {"OK": True, "Value": None}, enc)
    args, _, _ = read_frame(conn, buf)
    send_frame(conn, result(conn, proposal["Value"][1][1], args["Value"], extra, enc), enc)


def listener(ctx, handler):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)

    def loop():
        while True:
            raw, _ = sock.accept()

            def one(raw=raw):
                try:
                    with ctx.wrap_socket(raw, server_side=True) as conn:
                        handler(conn)
                except Exception as e:  # a refused handshake is part of what is checked
                    print(f"fake-server: {handler.__name__}: {e!r}", file=sys.stderr, flush=True)

            threading.Thread(target=one, daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def main():
    with open(sys.argv[1]) as f:
        pki = json.load(f)
    ctx = context(pki)
    print(f"fake-server https={listener(ctx, serve_https)} dips={listener(ctx, serve_dips)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
