"""The service's side of the agent protocol (see ``local/agent/server.py``), over asyncio.

Each call is one connection: the request line goes out in one ``sendmsg`` carrying any file
descriptors, the first line back says ok or gives an errno, and the connection then stays open
for whatever the op streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import json
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

_LINE_LIMIT = 1 << 20
_MAX_FDS = 4  # more than any answer carries: a longer list is refused, not cut


class AgentGone(ConnectionError):
    """The sandbox's agent is not there (it died, or the sandbox is gone)."""


class AgentCallError(OSError):
    """The agent refused the request; ``errno`` and ``strerror`` say why."""


_BUSY = (errno_codes.ENOTCONN, errno_codes.EAGAIN, errno_codes.ECONNREFUSED)


class AgentStream:
    """An open connection after the agent's first reply line."""

    def __init__(
        self,
        reply: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        quick_ack: bool = False,
    ) -> None:
        self.reply = reply
        self._reader = reader
        self._writer = writer
        # See AgentClient.connect_port: acknowledge what was read at once.
        self._quick_ack = writer.get_extra_info("socket") if quick_ack else None

    async def read_json(self) -> dict[str, Any] | None:
        """The next JSON line the op streams; None at EOF.

        Always lets the event loop run first: ``readline()`` returns at once while lines are
        buffered, and a consumer of a long burst (a listing of 100,000 entries, a busy
        recursive watch) would otherwise keep every other sandbox waiting until it drained.
        """
        await asyncio.sleep(0)
        line = await self._reader.readline()
        if not line:
            return None
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError(f"the agent sent a non-object line: {line[:100]!r}")
        return value

    async def read_bytes(self, n: int) -> bytes:
        """Exactly n bytes, or fewer at EOF."""
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as short:
            return short.partial

    async def read_chunk(self, max_bytes: int = 65536) -> bytes:
        """Whatever bytes are there (up to max_bytes); b"" at EOF.

        Always lets the event loop run first, as :meth:`read_json` does: while bytes are
        buffered ``read`` returns at once, and a reader that parses what a sandbox server
        floods it with would otherwise keep every other sandbox waiting."""
        await asyncio.sleep(0)
        data = await self._reader.read(max_bytes)
        if self._quick_ack is not None and data:
            with contextlib.suppress(OSError):  # the option does not stick: once per read
                self._quick_ack.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def write_nowait(self, data: bytes) -> None:
        """Queue bytes without waiting (see :meth:`buffered` and :meth:`drain`)."""
        self._writer.write(data)

    def buffered(self) -> int:
        """Bytes queued and not yet sent."""
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._writer.drain()

    def close_nowait(self) -> None:
        self._writer.close()

    async def write_json(self, obj: dict[str, Any]) -> None:
        await self.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # the agent went first; nothing is left to flush

    async def __aenter__(self) -> AgentStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class AgentClient:
    """Calls to one sandbox's agent through its host-side socket path."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    async def call(self, op: str, fds: Sequence[int] = (), **params: Any) -> AgentStream:
        """Send one request; the open stream after an ok reply.

        Raises AgentCallError (an OSError with the agent's errno) when the agent refuses and
        AgentGone when it cannot be reached or hangs up before answering.
        """
        sock = await self._send(op, fds, params)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_LIMIT)
        except BaseException:
            sock.close()
            raise
        try:
            reply = _reply(await reader.readline())
        except (ConnectionError, OSError) as exc:
            writer.close()
            if isinstance(exc, (AgentGone, AgentCallError)):
                raise
            raise AgentGone(errno_codes.ECONNRESET, f"the sandbox agent hung up: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        return AgentStream(reply, reader, writer)

    async def connect_port(self, port: int) -> AgentStream:
        """A byte stream to ``127.0.0.1:port`` inside the sandbox.

        The agent opens the connection in the sandbox's network namespace and hands the
        socket over with its reply, so the service reads and writes the port itself (see
        ``local/agent/ports.py``). What is read is acknowledged at once: servers that leave
        Nagle's algorithm on (tornado's WebSocket, so Jupyter Server's kernel channels) hold
        each small write until the previous one is acknowledged, and Linux delays
        acknowledgements by up to 40 ms: every message burst of a cell would wait that long.
        Raises as :meth:`call` (AgentCallError with ECONNREFUSED for a closed port).
        """
        loop = asyncio.get_running_loop()
        sock = await self._send("connect", (), {"port": port})
        try:
            line, fds = await _receive_with_fds(loop, sock)
        finally:
            sock.close()
        try:
            reply = _reply(line)
            port_socket = _one_tcp_socket(fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        try:
            reader, writer = await asyncio.open_connection(sock=port_socket, limit=_LINE_LIMIT)
        except BaseException:
            port_socket.close()
            raise
        return AgentStream(reply, reader, writer, quick_ack=True)

    async def _send(self, op: str, fds: Sequence[int], params: dict[str, Any]) -> socket.socket:
        """A new connection to the agent with the request (and its fds) sent."""
        line = json.dumps({"op": op, **params}, separators=(",", ":")).encode() + b"\n"
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                await loop.sock_connect(sock, self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentGone(
                    errno_codes.ECONNREFUSED, f"the sandbox agent is gone: {exc}"
                ) from exc
            # The request and its fds travel in one message; later data needs no fds.
            try:
                sent = await _send_fds(loop, sock, line, list(fds))
                if sent < len(line):
                    await loop.sock_sendall(sock, line[sent:])
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
                # A full accept backlog: asyncio's connect reported success all the same.
                raise AgentCallError(
                    errno_codes.EAGAIN, "the sandbox agent is busy (too many connections)"
                ) from None
        except BaseException:
            sock.close()
            raise
        return sock

    async def request(self, op: str, fds: Sequence[int] = (), **params: Any) -> dict[str, Any]:
        """A call whose whole answer is its reply line."""
        async with await self.call(op, fds, **params) as stream:
            return stream.reply


def _reply(first: bytes) -> dict[str, Any]:
    """The agent's first line as a dict without ``ok``; raises when it is a refusal."""
    if not first.endswith(b"\n"):
        raise AgentGone(errno_codes.ECONNRESET, "the sandbox agent hung up before answering")
    reply = json.loads(first)
    if not reply.get("ok"):
        code = int(reply.get("errno") or errno_codes.EIO)
        raise AgentCallError(code, str(reply.get("error") or "agent error"))
    reply.pop("ok", None)
    return dict(reply)


async def _receive_with_fds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> tuple[bytes, list[int]]:
    """The agent's whole answer (one line; it closes after it) and the fds that came with it."""
    data = b""
    fds: list[int] = []
    while True:
        try:
            chunk, received, _flags, _addr = socket.recv_fds(sock, _LINE_LIMIT, _MAX_FDS)
        except BlockingIOError:
            await _ready(loop, sock, loop.add_reader, loop.remove_reader)
            continue
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise AgentGone(errno_codes.ECONNRESET, f"the sandbox agent hung up: {exc}") from exc
        fds += received
        data += chunk
        # More than one fd is refused anyway: no reason to take in more of them.
        if not chunk or data.endswith(b"\n") or len(data) > _LINE_LIMIT or len(fds) > 1:
            return data, fds


def _one_tcp_socket(fds: list[int]) -> socket.socket:
    """The one TCP socket the agent handed over (taken out of ``fds``).

    Whatever runs in the sandbox may have taken over the agent, so anything else is refused:
    the service reads and writes this fd as the port's connection."""
    if len(fds) != 1:
        raise AgentCallError(errno_codes.EPROTO, "the agent's reply did not carry one socket")
    try:
        taken = socket.socket(fileno=fds[0])
    except OSError:
        raise AgentCallError(errno_codes.EPROTO, "the agent handed over a non-socket") from None
    fds.clear()
    if taken.type != socket.SOCK_STREAM or taken.family not in (socket.AF_INET, socket.AF_INET6):
        taken.close()
        raise AgentCallError(errno_codes.EPROTO, "the agent handed over a non-TCP socket")
    return taken


async def _send_fds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, fds: list[int]
) -> int:
    """sendmsg with SCM_RIGHTS on a non-blocking socket, waiting while it is full."""
    while True:
        try:
            return socket.send_fds(sock, [data], fds) if fds else sock.send(data)
        except BlockingIOError:
            await _ready(loop, sock, loop.add_writer, loop.remove_writer)


async def _ready(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    watch: Callable[..., Any],
    unwatch: Callable[[int], Any],
) -> None:
    """Until ``sock`` is readable or writable (``watch``: the loop's add_reader/add_writer)."""
    ready = loop.create_future()
    watch(sock.fileno(), ready.set_result, None)
    try:
        await ready
    finally:
        unwatch(sock.fileno())
