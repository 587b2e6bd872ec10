"""The kernel's own TCP ports, held before its private service is launched early.

``jupyter_client`` picks a kernel's five ports (it binds port 0 and closes the socket) and
writes them into the connection file; the kernel binds them only after its imports, about
0.4 s later. Whatever binds or connects in that window may be given one of them by the system,
and the kernel then dies at start with "Address already in use". The private service launched
early (``hosted.launch_early``) does a lot in that window: its listening socket, its
connections, its sandbox's network.

A socket bound with ``SO_REUSEADDR`` that never listens holds its port against the system's
choice of a free port, for ``bind(port 0)`` and for ``connect`` alike, yet lets the kernel bind
and listen on it: ZeroMQ binds with ``SO_REUSEADDR`` too, and Linux lets one listening socket
join bound ones that do not listen. The holders stay open for the kernel process's life.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

__all__ = ["hold", "read"]


def read(connection_file: str) -> tuple[str, frozenset[int]] | None:
    """The address and TCP ports the kernel will bind, from its connection file (written
    before the kernel was launched); None when the file cannot be read."""
    try:
        info = json.loads(Path(connection_file).read_text())
        if info.get("transport", "tcp") != "tcp":
            return "", frozenset()
        # Every "<channel>_port" the file names (jupyter_client's connect.port_names, not
        # imported here: jupyter_client takes 0.1 s to import, and this runs before that).
        ports = (int(value or 0) for key, value in info.items() if key.endswith("_port"))
        return str(info.get("ip") or "127.0.0.1"), frozenset(ports) - {0}
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def hold(ip: str, ports: frozenset[int]) -> list[socket.socket]:
    """Sockets bound (not listening) to each of ``ports`` on ``ip``; a port something else
    already holds is skipped (the kernel will report it when it binds)."""
    host = "0.0.0.0" if ip in ("*", "") else ip  # ZeroMQ's wildcard
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    holders = []
    for port in sorted(ports):
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind((host, port))
        except OSError:
            holder.close()
            continue
        holders.append(holder)
    return holders
