"""WebSocket upgrades to sandbox ports, passed through as bytes, as E2B's proxy passes them.

E2B's proxy hands an upgrade request to the sandbox's server and, once that server answers,
copies bytes both ways without reading a frame. Here too: the connection layer
(``connections.GuardedH11Protocol``) takes an upgrade for a sandbox port away from the
WebSocket implementation, the request head goes into the sandbox (with the proxy's header
rules: hop-by-hop headers and E2B's credentials out, ``mask_request_host`` applied), and from
then on each chunk is copied as it arrives. Whatever the sandbox's server answers (101, or a
refusal) reaches the caller unchanged, subprotocol and extensions included. A frame is never
parsed or re-encoded, so a message costs the service one read and one write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

from .errors import ServiceError
from .proxy import Tunnel, forwarded_upgrade_head, open_tunnel
from .registry import Entry

log = logging.getLogger("e2b_kernel.local")

Headers = list[tuple[bytes, bytes]]
# Given an upgrade's headers: the sandbox and port it is relayed to, or None when the ASGI
# app answers it; raises ServiceError for E2B's proxy errors (unknown sandbox, closed port,
# missing traffic token).
Target = Callable[[Headers], "tuple[Entry, int] | None"]

_CHUNK = 65536
_HIGH_WATER = 1 << 20  # bytes queued towards one side before the other side is paused
_splices: set[asyncio.Task[None]] = set()  # referenced until done


def start(
    client: asyncio.Transport, method: bytes, target: bytes, headers: Headers, trailing: bytes,
    entry: Entry, port: int,
) -> None:  # fmt: skip
    """Relay this upgrade to ``port`` in ``entry``'s sandbox on ``client``'s connection."""
    client.pause_reading()  # until the sandbox side is there to take the bytes
    head = forwarded_upgrade_head(entry, port, method, target, headers)
    task = asyncio.get_running_loop().create_task(_splice(client, head + trailing, entry, port))
    _splices.add(task)
    task.add_done_callback(_splices.discard)


def error_response(exc: ServiceError) -> bytes:
    """``exc`` as a complete HTTP/1.1 answer that closes the connection."""
    response = exc.response()
    phrase = HTTPStatus(response.status_code).phrase
    lines = [f"HTTP/1.1 {response.status_code} {phrase}".encode("latin-1")]
    lines += [name + b": " + value for name, value in response.raw_headers]
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(response.body)


async def _splice(client: asyncio.Transport, head: bytes, entry: Entry, port: int) -> None:
    try:
        tunnel = await open_tunnel(entry, port)
    except Exception as exc:
        if not isinstance(exc, ServiceError):
            log.exception("sandbox %s port %d: could not relay", entry.sandbox_id, port)
            exc = ServiceError(502, "could not reach the sandbox port", sandbox_id=entry.sandbox_id)
        if not client.is_closing():
            client.write(error_response(exc))
        client.close()
        return
    except BaseException:  # cancelled: the service is closing
        client.close()
        raise
    try:
        await tunnel.write(head)
        inward = _Inward(client, tunnel)
        client.set_protocol(inward)
        client.resume_reading()
        while chunk := await tunnel.read_chunk(_CHUNK):
            if client.is_closing():
                break
            client.write(chunk)
            if client.get_write_buffer_size() > _HIGH_WATER:
                await inward.drained()
    except (ConnectionError, OSError) as exc:
        log.debug("sandbox %s port %d: relay ended: %r", entry.sandbox_id, port, exc)
    finally:
        client.close()
        await tunnel.close()


class _Inward(asyncio.Protocol):
    """The caller's side after the upgrade: its bytes go into the sandbox as they come."""

    def __init__(self, client: asyncio.Transport, tunnel: Tunnel) -> None:
        self._client = client
        self._tunnel = tunnel
        self._writable = asyncio.Event()
        self._writable.set()
        self._resuming: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        self._tunnel.write_nowait(data)
        if self._tunnel.buffered() > _HIGH_WATER and self._resuming is None:
            self._client.pause_reading()
            self._resuming = asyncio.get_running_loop().create_task(self._resume_when_sent())

    async def _resume_when_sent(self) -> None:
        try:
            await self._tunnel.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._resuming = None
        if not self._client.is_closing():
            self._client.resume_reading()

    def eof_received(self) -> bool:
        self._tunnel.close_nowait()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.close_nowait()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        """Until the caller's side takes more bytes (or is gone)."""
        await self._writable.wait()
