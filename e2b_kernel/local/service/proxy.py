"""Sandbox ports, as E2B's proxy serves them: HTTP and WebSocket relayed to a port inside.

The service has no route into a sandbox's network namespace, and the sandbox gets none out:
each relayed connection is an agent ``connect`` call (``local/agent/ports.py``), which opens
``127.0.0.1:port`` from inside the sandbox and then carries raw bytes on the agent's unix
connection. Over that byte stream:

- HTTP/1.1 is framed by h11 (one request per tunnel, ``Connection: close``); request and
  response bodies stream chunk by chunk, headers pass through except hop-by-hop ones and the
  E2B credentials, which are the proxy's business and never reach the sandbox;
- a sandbox created with ``maskRequestHost`` gets that Host (``${PORT}`` replaced by the port)
  on every relayed request, HTTP and WebSocket, and the caller's in ``X-Forwarded-Host``, as
  E2B's proxy does;
- WebSocket is spoken by ``websockets``' sans-I/O client towards the sandbox while uvicorn
  speaks it towards the caller; text and binary messages, close codes and the negotiated
  ``Sec-WebSocket-Protocol`` (e.g. Jupyter's ``v1.kernel.websocket.jupyter.org``) go through.

Errors are E2B's: a port nothing listens on is the proxy's 502 "port is not open".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from websockets.client import ClientProtocol
from websockets.frames import EXTERNAL_CLOSE_CODES, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ..sandbox.agent_client import AgentCallError, AgentGone, AgentStream
from ..sandbox.jupyter import JUPYTER_PORT
from .errors import ServiceError, port_not_open, proxy_not_found
from .registry import Entry

log = logging.getLogger("e2b_kernel.local")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus E2B's credentials.
_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
    b"trailer", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
}  # fmt: skip
_CREDENTIALS = {b"x-access-token", b"e2b-traffic-access-token"}
# WebSocket handshake headers the inner handshake makes itself.
_HANDSHAKE = {
    b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept",
}  # fmt: skip
# The largest WebSocket message relayed (Jupyter messages with buffers can be large).
MAX_MESSAGE = 64 * 1024 * 1024
_CHUNK = 65536


async def open_tunnel(entry: Entry, port: int) -> AgentStream:
    """A byte stream to 127.0.0.1:port inside the sandbox, or E2B's proxy error."""
    jupyter = getattr(entry.sandbox, "jupyter", None)
    if port == JUPYTER_PORT and jupyter is not None:
        # On E2B the template's Jupyter Server already listens when create returns; here it
        # starts behind create, so its first callers wait for it rather than see a closed
        # port. If it failed, the connect below answers as for any closed port.
        with contextlib.suppress(Exception):
            await jupyter.ready()
    try:
        return await entry.sandbox.agent.call("connect", port=port)
    except AgentGone:
        raise proxy_not_found(entry.sandbox_id) from None
    except AgentCallError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH):
            log.info("sandbox %s: port %d: %s", entry.sandbox_id, port, exc)
        raise port_not_open(entry.sandbox_id) from None


# ----- HTTP --------------------------------------------------------------------------------


async def proxy_http(entry: Entry, port: int, scope: dict, receive: Receive, send: Send) -> None:
    """Relay one HTTP request to the sandbox port and stream the answer back."""
    tunnel = await open_tunnel(entry, port)
    async with tunnel:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        headers = _forwarded(entry, port, scope["headers"])
        names = {name for name, _ in scope["headers"]}
        if b"content-length" not in names and b"transfer-encoding" in names:
            headers.append((b"transfer-encoding", b"chunked"))  # h11 frames the chunks
        headers.append((b"connection", b"close"))
        if not any(name == b"host" for name, _ in headers):
            headers.append((b"host", b"localhost"))  # HTTP/1.1 requires one
        request = h11.Request(method=scope["method"], target=_target(scope), headers=headers)
        await tunnel.write(conn.send(request) or b"")
        if not await _send_body(conn, tunnel, receive):
            return  # the caller went away before its request was complete
        relay = asyncio.ensure_future(_relay_response(conn, tunnel, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():  # the caller left: stop reading from the sandbox
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
        relay.result()


def _target(scope: dict) -> bytes:
    path: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
    query: bytes = scope.get("query_string") or b""
    return path + b"?" + query if query else path


def _forwarded(
    entry: Entry, port: int, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The caller's headers as the sandbox's server gets them (with the masked Host)."""
    kept = [(k, v) for k, v in headers if k not in _HOP_BY_HOP and k not in _CREDENTIALS]
    mask = entry.network.request_host(port) if entry.network is not None else None
    if mask is None:
        return kept
    caller = [v for k, v in kept if k == b"host"]
    kept = [(k, v) for k, v in kept if k not in (b"host", b"x-forwarded-host")]
    kept.append((b"host", mask.encode("ascii")))
    return kept + [(b"x-forwarded-host", host) for host in caller[:1]]


async def _send_body(conn: h11.Connection, tunnel: AgentStream, receive: Receive) -> bool:
    """Stream the request body; False if the caller disconnected first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        body = message.get("body", b"")
        if body:
            await tunnel.write(conn.send(h11.Data(data=body)) or b"")
        if not message.get("more_body"):
            break
    await tunnel.write(conn.send(h11.EndOfMessage()) or b"")
    return True


async def _relay_response(conn: h11.Connection, tunnel: AgentStream, send: Send) -> None:
    started = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if started:  # abort mid-body: the caller must not see a clean end
                raise ConnectionError(f"the sandbox server broke the response: {exc}") from None
            message = f"the server in the sandbox sent no valid answer: {exc}"
            raise ServiceError(502, message) from None
        if event is h11.NEED_DATA:
            conn.receive_data(await tunnel.read_chunk(_CHUNK))
        elif isinstance(event, h11.Response):
            headers = [(k, v) for k, v in event.headers if k not in _HOP_BY_HOP]
            start = {"type": "http.response.start", "status": event.status_code}
            await send({**start, "headers": headers})
            started = True
        elif isinstance(event, h11.Data):
            await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
        elif isinstance(event, h11.EndOfMessage):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the sandbox server closed the connection mid-answer")
        # InformationalResponse (100 Continue): uvicorn already answered it to the caller.


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


# ----- WebSocket ---------------------------------------------------------------------------


async def proxy_websocket(
    entry: Entry, port: int, scope: dict, receive: Receive, send: Send
) -> None:
    """Relay a WebSocket to the sandbox port: handshake inside first, then accept outside."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    tunnel = await open_tunnel(entry, port)
    async with tunnel:
        offered = [Subprotocol(name) for name in scope.get("subprotocols") or []]
        protocol = ClientProtocol(
            parse_uri("ws://localhost/"), subprotocols=offered or None, max_size=MAX_MESSAGE
        )
        request = protocol.connect()
        request = dataclasses.replace(request, path=_target(scope).decode("latin-1"))
        del request.headers["Host"]
        headers = _forwarded(entry, port, scope["headers"])
        for name, value in headers:
            if name not in _HANDSHAKE:
                request.headers[name.decode("latin-1")] = value.decode("latin-1")
        host = dict(headers).get(b"host", b"localhost")
        request.headers["Host"] = host.decode("latin-1")
        protocol.send_request(request)
        await _flush(protocol, tunnel)
        response, early = await _handshake(protocol, tunnel)
        if protocol.handshake_exc is not None:
            await _deny(send, response)
            return
        await send({"type": "websocket.accept", "subprotocol": protocol.subprotocol})
        inward = asyncio.ensure_future(_caller_to_sandbox(protocol, tunnel, receive))
        outward = asyncio.ensure_future(_sandbox_to_caller(protocol, tunnel, send, early))
        try:
            await asyncio.wait({inward, outward}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inward, outward):
                task.cancel()
            await asyncio.gather(inward, outward, return_exceptions=True)


async def _handshake(
    protocol: ClientProtocol, tunnel: AgentStream
) -> tuple[Response | None, list[Any]]:
    """Read until the inner server's handshake answer (None if it closed without one), and
    the frames read with it: a server may send its first message right behind the answer."""
    while True:
        data = await tunnel.read_chunk(_CHUNK)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, Response):
                return event, events[index + 1 :]
        if not data:
            return None, []


async def _deny(send: Send, response: Response | None) -> None:
    """Pass the inner server's refusal (e.g. 403, 404) on, or E2B's 502 if it gave none."""
    if response is None:
        status, headers, body = 502, [(b"content-type", b"text/plain")], b"no WebSocket answer"
    else:
        status, body = response.status_code, bytes(response.body or b"")
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.raw_items()
            if k.lower().encode("latin-1") not in _HOP_BY_HOP | {b"content-length"}
        ]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def _flush(protocol: ClientProtocol, tunnel: AgentStream) -> None:
    # Taken and written with no await in between, so frames from both directions never mix.
    data = b"".join(protocol.data_to_send())
    if data:
        await tunnel.write(data)


async def _caller_to_sandbox(
    protocol: ClientProtocol, tunnel: AgentStream, receive: Receive
) -> None:
    while True:
        message = await receive()
        if protocol.state is not State.OPEN:
            return
        if message["type"] == "websocket.receive":
            if message.get("text") is not None:
                protocol.send_text(message["text"].encode())
            else:
                protocol.send_binary(message.get("bytes") or b"")
        elif message["type"] == "websocket.disconnect":
            code = message.get("code", 1000)
            if code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000:
                protocol.send_close(code, message.get("reason") or "")
            else:
                protocol.send_close()  # 1005/1006 describe a missing close, never sent
            await _flush(protocol, tunnel)
            return
        await _flush(protocol, tunnel)


async def _sandbox_to_caller(
    protocol: ClientProtocol, tunnel: AgentStream, send: Send, early: list[Any]
) -> None:
    # The sans-I/O protocol yields frames; a fragmented message is put back together here.
    parts: list[bytes] = []
    opcode: Opcode | None = None
    events, ended = early, False  # first the frames read with the handshake's answer
    await _flush(protocol, tunnel)
    while True:
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.CLOSE:
                await _close_caller(protocol, send)
                return
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                opcode, parts = event.opcode, [bytes(event.data)]
            elif event.opcode is Opcode.CONT:
                parts.append(bytes(event.data))
            else:
                continue  # ping and pong: the protocol answers pings itself
            if event.fin and opcode is not None:
                payload = b"".join(parts)
                if opcode is Opcode.TEXT:
                    await send({"type": "websocket.send", "text": payload.decode()})
                else:
                    await send({"type": "websocket.send", "bytes": payload})
                parts, opcode = [], None
        if ended:
            await _close_caller(protocol, send)
            return
        data = await tunnel.read_chunk(_CHUNK)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        await _flush(protocol, tunnel)  # pongs and the answer to a close
        events = protocol.events_received()
        ended = not data or protocol.state is State.CLOSED


async def _close_caller(protocol: ClientProtocol, send: Send) -> None:
    received = protocol.close_rcvd
    code = received.code if received is not None else protocol.close_code
    if code is None or (code not in EXTERNAL_CLOSE_CODES and not 3000 <= code < 5000):
        code = 1000 if code in (None, 1005) else 1011
    reason = received.reason if received is not None else ""
    with contextlib.suppress(Exception):  # the caller may be gone already
        await send({"type": "websocket.close", "code": code, "reason": reason})
