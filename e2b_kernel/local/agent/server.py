"""The agent's wire protocol: one JSON request per connection, handled on its own thread.

The service connects to a listening unix socket that the agent inherited as a file
descriptor; the socket has no path inside the sandbox, so sandbox code can neither see it nor
put another in its place. A client sends one JSON line ``{"op": ..., ...}`` (file descriptors
may ride on that first message with SCM_RIGHTS); the agent answers one JSON line, ``{"ok":
true, ...}`` or ``{"ok": false, "errno": N, "error": "..."}``, then whatever the op streams.

Ops register in ``OPS`` with the ``op`` decorator, so process ops and file ops live in their
own modules.
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable

MAX_REQUEST = 1 << 20  # a request line longer than this is refused (requests are small)
MAX_FDS = 8
_RECV = 65536

Handler = Callable[["Conn", dict], None]
OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    """Register a handler for requests whose ``op`` is ``name``."""

    def register(handler: Handler) -> Handler:
        OPS[name] = handler
        return handler

    return register


class AgentError(Exception):
    """A refusal with an errno, sent to the client as ``{"ok": false, ...}``."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.errno = errno
        self.message = message


class Conn:
    """One accepted connection: the request's fds and blocking I/O for the handler."""

    def __init__(self, sock: socket.socket, fds: list[int], pending: bytes) -> None:
        self.sock = sock
        self.fds = fds
        self.replied = False
        self._pending = pending  # bytes the client sent after the request line

    def reply(self, **fields: object) -> None:
        """Send the first line, ``{"ok": true, **fields}``; once per connection."""
        self.reply_with_fds([], **fields)

    def reply_with_fds(self, fds: list[int], **fields: object) -> None:
        """:meth:`reply`, with ``fds`` passed along in the same message (SCM_RIGHTS)."""
        if self.replied:
            raise RuntimeError("reply() called twice")
        self.replied = True
        if not fds:
            self.send_json({"ok": True, **fields})
            return
        line = json.dumps({"ok": True, **fields}, separators=(",", ":")).encode() + b"\n"
        sent = socket.send_fds(self.sock, [line], fds)
        self.sock.sendall(line[sent:])

    def send_json(self, obj: dict) -> None:
        """Send one more JSON line (entries, events, exit codes)."""
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes after the reply (framed by the op, e.g. by a size in the reply)."""
        self.sock.sendall(data)

    def recv_json(self) -> dict | None:
        """The client's next JSON line; None at EOF."""
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_REQUEST:
                raise AgentError(errno.EMSGSIZE, "line too long")
            chunk = self.sock.recv(_RECV)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        value = json.loads(line)
        if not isinstance(value, dict):
            raise AgentError(errno.EINVAL, "expected a JSON object")
        return value

    def recv_bytes(self, n: int) -> bytes:
        """Up to n raw bytes from the client; b"" at EOF."""
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        return self.sock.recv(min(n, _RECV))


def _read_request(sock: socket.socket) -> tuple[dict, list[int], bytes]:
    """Read the request line and the fds sent with it."""
    data = b""
    fds: list[int] = []
    while b"\n" not in data:
        if len(data) > MAX_REQUEST:
            raise AgentError(errno.EMSGSIZE, "request too long")
        chunk, ancillary, _flags, _addr = sock.recvmsg(_RECV, socket.CMSG_SPACE(MAX_FDS * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not chunk:
            raise AgentError(errno.EPIPE, "connection closed before the request")
        data += chunk
    line, rest = data.split(b"\n", 1)
    request = json.loads(line)
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise AgentError(errno.EINVAL, "a request is a JSON object with an op")
    return request, fds, rest


def _error_line(exc: BaseException) -> dict:
    if isinstance(exc, AgentError):
        return {"ok": False, "errno": exc.errno, "error": exc.message}
    if isinstance(exc, OSError) and exc.errno is not None:
        text = exc.strerror or str(exc)
        if exc.filename is not None:
            text = f"{text}: {exc.filename}"
        return {"ok": False, "errno": exc.errno, "error": text}
    if isinstance(exc, (ValueError, TypeError, KeyError)):
        return {"ok": False, "errno": errno.EINVAL, "error": f"bad request: {exc}"}
    return {"ok": False, "errno": errno.EIO, "error": f"{type(exc).__name__}: {exc}"}


def handle(sock: socket.socket) -> None:
    """Serve one connection to its end (runs on its own thread)."""
    conn: Conn | None = None
    fds: list[int] = []
    try:
        request, fds, pending = _read_request(sock)
        handler = OPS.get(request["op"])
        if handler is None:
            raise AgentError(errno.ENOSYS, f"unknown op {request['op']!r}")
        conn = Conn(sock, fds, pending)
        handler(conn, request)
    except Exception as exc:
        if conn is None or not conn.replied:
            try:
                sock.sendall(json.dumps(_error_line(exc)).encode() + b"\n")
            except OSError:
                pass
            if not isinstance(exc, (AgentError, OSError, ValueError, TypeError, KeyError)):
                traceback.print_exc(file=sys.stderr)
        elif not isinstance(exc, OSError):  # a failure mid-stream: the client sees EOF
            traceback.print_exc(file=sys.stderr)
    finally:
        # A handler that keeps an fd takes it out of conn.fds (then closing it is its job).
        for fd in conn.fds if conn is not None else fds:
            try:
                os.close(fd)
            except OSError:
                pass
        sock.close()


def serve(listen_fd: int) -> None:
    """Accept connections on an inherited listening socket forever, a thread for each."""
    listener = socket.socket(fileno=listen_fd)
    while True:
        try:
            sock, _addr = listener.accept()
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of fds for a moment: answer later connections instead of dying.
                threading.Event().wait(0.05)
                continue
            raise
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


@op("ping")
def _ping(conn: Conn, request: dict) -> None:
    """Health check: the agent answers, with its pid and uid as it sees them."""
    conn.reply(pid=os.getpid(), uid=os.getuid())
