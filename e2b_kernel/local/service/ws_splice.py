"""WebSocket upgrades to sandbox ports, passed through as bytes, as E2B's proxy passes them.

E2B's proxy hands an upgrade request to the sandbox's server and, once that server has
switched protocols, copies bytes both ways without reading a frame. Here too: the connection
layer (``connections.GuardedH11Protocol``) takes an upgrade for a sandbox port away from the
WebSocket implementation, the request goes into the sandbox (with the proxy's header rules:
hop-by-hop headers and E2B's credentials out, ``mask_request_host`` applied), and the server's
answer is read as HTTP. Only a ``101`` turns the connection into a byte pipe (the 101 reaches
the caller with its subprotocol and extensions, and a frame is never parsed or re-encoded, so
a message costs the service one read and one write). Any other answer is relayed as one
response that closes the connection: were the connection spliced before the server agreed,
a server that refused with an ordinary keep-alive answer would receive the caller's next
requests on it, credentials and all (HTTP clients and reverse proxies reuse such a connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import h11

from .errors import ServiceError
from .proxy import Tunnel, forwarded_upgrade, open_tunnel, relay_response
from .registry import Entry

log = logging.getLogger("e2b_kernel.local")

Headers = list[tuple[bytes, bytes]]
# Given an upgrade's headers: the sandbox and port it is relayed to, or None when the ASGI
# app answers it; raises ServiceError for E2B's proxy errors (unknown sandbox, closed port,
# missing traffic token).
Target = Callable[[Headers], "tuple[Entry, int] | None"]

_CHUNK = 65536
_MAX_ANSWER_HEAD = 64 << 10  # the largest answer head read from the sandbox's server
_HELD_MAX = 64 << 10  # caller bytes held before a 101; reading pauses past it
_LINGER = 2.0  # seconds a refused caller may take to read the refusal before the close
_HIGH_WATER = 1 << 20  # bytes queued towards one side before the other side is paused
_splices: set[asyncio.Task[None]] = set()  # referenced until done


def start(
    client: asyncio.Transport, method: bytes, target: bytes, headers: Headers, trailing: bytes,
    entry: Entry, port: int,
) -> None:  # fmt: skip
    """Relay this upgrade to ``port`` in ``entry``'s sandbox on ``client``'s connection."""
    try:
        request = forwarded_upgrade(entry, port, method, target, headers)
    except h11.LocalProtocolError as exc:  # e.g. an HTTP/1.0 upgrade without a Host
        client.write(error_response(ServiceError(400, f"a malformed upgrade request: {exc}")))
        client.close()
        return
    # The caller's side is read from now on: what it sends before the sandbox's server has
    # switched protocols is held (it is for that server only after a 101), and its hang-up
    # ends the wait for an answer (a paused socket would not see it).
    inward = _Inward(client, trailing)
    client.set_protocol(inward)
    client.resume_reading()
    task = asyncio.get_running_loop().create_task(_splice(client, inward, request, entry, port))
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


async def _splice(
    client: asyncio.Transport, inward: _Inward, request: h11.Request, entry: Entry, port: int
) -> None:
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
    refused = False
    try:
        inward.opened(tunnel)  # a hang-up from now on closes the tunnel, ending every wait
        answer = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_ANSWER_HEAD)
        await tunnel.write(answer.send(request) or b"")
        try:
            switched = await relay_response(answer, tunnel, _Answer(client, inward).send)
        except ServiceError as exc:  # no valid answer
            if not client.is_closing():
                client.write(error_response(exc))
            return
        if switched is None:  # refused, and relayed: the caller's next bytes are not for it
            refused = True
            return
        client.write(_head(switched))
        already, _ = answer.trailing_data  # what the server sent after its 101
        if already:
            client.write(already)
        inward.splice()  # what the caller sent after its request (its first frames) goes in
        while chunk := await tunnel.read_chunk(_CHUNK):
            if client.is_closing():
                break
            client.write(chunk)
            if client.get_write_buffer_size() > _HIGH_WATER:
                await inward.drained()
    except (ConnectionError, OSError) as exc:
        log.debug("sandbox %s port %d: relay ended: %r", entry.sandbox_id, port, exc)
    finally:
        if refused:
            await inward.linger()
        client.close()
        await tunnel.close()


def _head(event: h11.InformationalResponse) -> bytes:
    """The server's 101 as it sent it (header names in its own case)."""
    lines = [b"HTTP/1.1 %d %s" % (event.status_code, event.reason)]
    lines += [name + b": " + value for name, value in event.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Answer:
    """A refused upgrade's answer, from ``relay_response``'s ASGI messages to the caller as
    HTTP/1.1 that ends the connection (its body close-delimited when no length was given)."""

    def __init__(self, client: asyncio.Transport, inward: _Inward) -> None:
        self._client = client
        self._inward = inward

    async def send(self, message: dict[str, Any]) -> None:
        if self._client.is_closing():
            raise ConnectionError("the caller went away")
        if message["type"] == "http.response.start":
            status = message["status"]
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:  # a code of the server's own
                phrase = ""
            lines = [f"HTTP/1.1 {status} {phrase}".encode("latin-1")]
            # Framed by the close alone: a length the server sent beside its own chunking
            # would not match the body relayed decoded.
            kept = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
            lines += [name + b": " + value for name, value in kept]
            lines.append(b"connection: close")
            self._client.write(b"\r\n".join(lines) + b"\r\n\r\n")
        elif message.get("body"):
            self._client.write(message["body"])
            if self._client.get_write_buffer_size() > _HIGH_WATER:
                await self._inward.drained()


class _Inward(asyncio.Protocol):
    """The caller's side. Until the sandbox's server switches protocols its bytes are held
    (reading pauses past ``_HELD_MAX``); after, they go into the sandbox as they come."""

    def __init__(self, client: asyncio.Transport, held: bytes) -> None:
        self._client = client
        self._tunnel: Tunnel | None = None
        self._mode = "hold"  # then "splice" after a 101, or "drop" after a refusal
        self._held = bytearray(held)
        self._writable = asyncio.Event()
        self._writable.set()
        self._lost = asyncio.Event()
        self._resuming: asyncio.Task[None] | None = None

    def opened(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        if self._lost.is_set():
            tunnel.close_nowait()

    def splice(self) -> None:
        assert self._tunnel is not None
        self._mode = "splice"
        if self._held:
            self._tunnel.write_nowait(bytes(self._held))
            self._held.clear()
        if not self._client.is_closing():
            self._client.resume_reading()

    async def linger(self) -> None:
        """After a refusal: end our side, and take what the caller still sends for a moment
        (dropped), so that closing does not reset the connection before it has read ours."""
        self._held.clear()
        self._mode = "drop"
        if self._client.is_closing():
            return
        if self._client.can_write_eof():
            self._client.write_eof()
        self._client.resume_reading()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._lost.wait(), _LINGER)

    def data_received(self, data: bytes) -> None:
        if self._mode == "drop":
            return
        if self._mode == "hold":
            self._held += data  # never dropped: past the bound, reading pauses instead
            if len(self._held) >= _HELD_MAX:
                self._client.pause_reading()
            return
        assert self._tunnel is not None
        self._tunnel.write_nowait(data)
        if self._tunnel.buffered() > _HIGH_WATER and self._resuming is None:
            self._client.pause_reading()
            self._resuming = asyncio.get_running_loop().create_task(self._resume_when_sent())

    async def _resume_when_sent(self) -> None:
        assert self._tunnel is not None
        try:
            await self._tunnel.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._resuming = None
        if not self._client.is_closing():
            self._client.resume_reading()

    def eof_received(self) -> bool:
        # The caller is done (a hang-up, seen as its end of stream): so is the relay, also
        # while it waits for an answer, which would reach no one.
        if self._tunnel is not None:
            self._tunnel.close_nowait()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.set()
        if self._tunnel is not None:
            self._tunnel.close_nowait()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        """Until the caller's side takes more bytes (or is gone)."""
        await self._writable.wait()
