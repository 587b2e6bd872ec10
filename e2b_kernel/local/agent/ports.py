"""The ``connect`` op: a TCP connection to a sandbox port, opened from inside the sandbox.

E2B's proxy reaches a port of the VM from outside; here the service has no route into the
sandbox's network namespace (and must not give the sandbox one out), so the agent, which
lives in that namespace, opens ``127.0.0.1:port`` itself and hands the connected socket to
the service with its reply (SCM_RIGHTS). The service then reads and writes the port itself:
no process in between copies every message, and the sandbox only ever sees a connection from
its own loopback. A connected socket is only that connection: it gives the service no route
into the namespace, and the sandbox none out.
"""

from __future__ import annotations

import errno
import socket

from .server import AgentError, Conn, op

_CONNECT_TIMEOUT = 5.0


@op("connect")
def connect(conn: Conn, request: dict) -> None:
    """Open 127.0.0.1:port in the sandbox; reply ``{}`` with the connected socket.

    A closed port fails before the reply with the errno (ECONNREFUSED), so the service can
    answer E2B's "port is not open".
    """
    port = request["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AgentError(errno.EINVAL, "port must be an integer in 1..65535")
    upstream = socket.create_connection(("127.0.0.1", port), timeout=_CONNECT_TIMEOUT)
    try:
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.reply_with_fds([upstream.fileno()])
    finally:
        upstream.close()  # the service holds the connection now
