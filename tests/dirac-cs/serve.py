"""`dirac-service Configuration/Server`, bound to loopback only (run by start_cs.sh with the server venv's python).

DISET's ServiceReactor always listens on ("", port), i.e. every interface (an AF_INET6 dual-stack socket).
This wrapper changes only that address, to 127.0.0.1 (as the IPv4-mapped "::ffff:127.0.0.1" on the
dual-stack socket), then runs DIRAC's own dirac-service entry point unchanged. Set DIRAC_CS_BIND_ALL=1 to
keep DIRAC's default.
"""
import os
import socket
import sys

if os.environ.get("DIRAC_CS_BIND_ALL", "") not in ("1", "yes", "true"):
    from M2Crypto import SSL

    _bind = SSL.Connection.bind

    def _loopback_bind(self, addr):
        host, rest = addr[0], tuple(addr[1:])
        if host in ("", "::", "0.0.0.0"):
            host = "::ffff:127.0.0.1" if self.socket.family == socket.AF_INET6 else "127.0.0.1"
        return _bind(self, (host,) + rest)

    SSL.Connection.bind = _loopback_bind

from DIRAC.Core.scripts.dirac_service import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["dirac-service"] + sys.argv[1:]
    sys.exit(main())
