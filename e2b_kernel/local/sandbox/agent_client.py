"""The service's side of the agent protocol (see ``local/agent/server.py``), over asyncio.

Each call is one connection: the request line goes out in one ``sendmsg`` carrying any file
descriptors, the first line back says ok or gives an errno, and the connection then stays open
for whatever the op streams.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import json
import socket
from collections.abc import Sequence
from typing import Any

_LINE_LIMIT = 1 << 20


class AgentGone(ConnectionError):
    """The sandbox's agent is not there (it died, or the sandbox is gone)."""


class AgentCallError(OSError):
    """The agent refused the request; ``errno`` and ``strerror`` say why."""


class AgentStream:
    """An open connection after the agent's first reply line."""

    def __init__(
        self, reply: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reply = reply
        self._reader = reader
        self._writer = writer

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
        """Whatever bytes are there (up to max_bytes); b"" at EOF."""
        return await self._reader.read(max_bytes)

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
            sent = await _send_fds(loop, sock, line, list(fds))
            if sent < len(line):
                await loop.sock_sendall(sock, line[sent:])
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_LIMIT)
        except BaseException:
            sock.close()
            raise
        try:
            first = await reader.readline()
        except (ConnectionError, OSError) as exc:
            writer.close()
            raise AgentGone(errno_codes.ECONNRESET, f"the sandbox agent hung up: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        if not first.endswith(b"\n"):
            writer.close()
            raise AgentGone(errno_codes.ECONNRESET, "the sandbox agent hung up before answering")
        reply = json.loads(first)
        if not reply.get("ok"):
            writer.close()
            code = int(reply.get("errno") or errno_codes.EIO)
            raise AgentCallError(code, str(reply.get("error") or "agent error"))
        reply.pop("ok", None)
        return AgentStream(reply, reader, writer)

    async def request(self, op: str, fds: Sequence[int] = (), **params: Any) -> dict[str, Any]:
        """A call whose whole answer is its reply line."""
        async with await self.call(op, fds, **params) as stream:
            return stream.reply


async def _send_fds(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, fds: list[int]
) -> int:
    """sendmsg with SCM_RIGHTS on a non-blocking socket, waiting while it is full."""
    while True:
        try:
            return socket.send_fds(sock, [data], fds) if fds else sock.send(data)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(sock.fileno())
