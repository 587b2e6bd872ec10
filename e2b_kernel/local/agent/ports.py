"""The ``connect`` op: a TCP connection to a sandbox port, opened from inside the sandbox.

E2B's proxy reaches a port of the VM from outside; here the service has no route into the
sandbox's network namespace (and must not give the sandbox one out), so the agent, which
lives in that namespace, opens ``127.0.0.1:port`` itself and then splices bytes both ways
on the very unix connection the request came on. The service sees a plain byte stream after
the reply line, and the sandbox only ever sees a connection from its own loopback.
"""

from __future__ import annotations

import errno
import socket
import threading

from .server import AgentError, Conn, op

_CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


@op("connect")
def connect(conn: Conn, request: dict) -> None:
    """Open 127.0.0.1:port in the sandbox; reply ``{}``, then relay raw bytes until both close.

    A closed port fails before the reply with the errno (ECONNREFUSED), so the service can
    answer E2B's "port is not open".
    """
    port = request["port"]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AgentError(errno.EINVAL, "port must be an integer in 1..65535")
    upstream = socket.create_connection(("127.0.0.1", port), timeout=_CONNECT_TIMEOUT)
    try:
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.reply()
        # Bytes the client sent right after the request line belong to the port already.
        pending = conn.recv_bytes(_CHUNK) if conn.has_pending() else b""
        if pending:
            upstream.sendall(pending)
        back = threading.Thread(
            target=_pump, args=(upstream, conn.sock), kwargs={"quick_ack": True}, daemon=True
        )
        back.start()
        _pump(conn.sock, upstream)
        # The service never half-closes: its EOF means it is done. Close the port's side
        # completely, so a server that ignores a half-close cannot keep this thread forever.
        try:
            upstream.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        back.join()
    finally:
        upstream.close()


def _pump(source: socket.socket, target: socket.socket, *, quick_ack: bool = False) -> None:
    """Copy source to target until EOF, then half-close target so the peer sees the end.

    ``quick_ack``: acknowledge the port's data at once. Servers that leave Nagle's algorithm
    on (tornado's WebSocket, so Jupyter Server's kernel channels) hold each small write until
    the previous one is acknowledged, and Linux delays acknowledgements by up to 40 ms: every
    message burst of a cell would wait that long. The option does not stick, hence per read.
    """
    try:
        while chunk := source.recv(_CHUNK):
            if quick_ack:
                source.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            target.sendall(chunk)
    except OSError:
        pass  # a reset on either side ends this direction; the other ends on its own EOF
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass
