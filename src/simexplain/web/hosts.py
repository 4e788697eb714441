"""The host names a server answers to (no web framework needed: the command line imports this
to declare `serve` without FastAPI installed)."""

from __future__ import annotations

import socket
from collections.abc import Sequence

# Names under which a server is always reachable from its own machine.
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def served_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """The host names a server bound to `bind` answers to: localhost forms, the bound name,
    and for a wildcard bind (0.0.0.0, ::) this machine's own names and addresses."""
    names = [*LOCAL_HOSTS, bind, *extra]
    if bind in ("0.0.0.0", "::", ""):
        hostname = socket.gethostname()
        names += [hostname, socket.getfqdn()]
        try:
            names += [str(info[4][0]) for info in socket.getaddrinfo(hostname, None)]
        except OSError:  # a machine without a resolvable name: the others still work
            pass
    return [name for name in dict.fromkeys(names) if name]
