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
- a port in the sandbox's ``httpsPorts`` is reached over TLS (``tls_tunnel``), its
  certificate unchecked, as E2B's proxy re-encrypts that hop; the caller still speaks plain
  HTTP to the service, and everything above runs unchanged over the TLS stream;
- a WebSocket upgrade is passed through as bytes (``ws_splice``): its head goes in with the
  same header rules, and from the sandbox server's answer on nothing is parsed, so
  subprotocols (Jupyter's ``v1.kernel.websocket.jupyter.org``), extensions, messages and close
  codes are whatever the two ends agree on.

Errors are E2B's: a port nothing listens on is the proxy's 502 "port is not open"; an
https port whose server does not complete a TLS handshake (or a server that breaks off before
answering) is a 502 that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import h11

from ..sandbox.agent_client import AgentCallError, AgentGone, AgentStream
from ..sandbox.jupyter import JUPYTER_PORT
from .errors import ServiceError, port_not_open, proxy_not_found
from .registry import Entry
from .tls_tunnel import TlsHandshakeError, TlsStream

log = logging.getLogger("e2b_kernel.local")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Headers that describe one hop, not the message (RFC 9110 7.6.1), plus E2B's credentials.
_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
    b"trailer", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
}  # fmt: skip
_CREDENTIALS = {b"x-access-token", b"e2b-traffic-access-token"}
_CHUNK = 65536
_EVENTS_PER_TURN = 256  # h11 events parsed between two turns of the loop (a few ms)
_MAX_INFORMATIONAL = 8

Tunnel = AgentStream | TlsStream  # a byte stream to a port in the sandbox


async def open_tunnel(entry: Entry, port: int) -> Tunnel:
    """A byte stream to 127.0.0.1:port inside the sandbox (TLS for its httpsPorts), or E2B's
    proxy error."""
    jupyter = getattr(entry.sandbox, "jupyter", None)
    if port == JUPYTER_PORT and jupyter is not None:
        # On E2B the template's Jupyter Server already listens when create returns; here it
        # starts behind create, so its first callers wait for it rather than see a closed
        # port. If it failed, the connect below answers as for any closed port.
        with contextlib.suppress(Exception):
            await jupyter.ready()
    try:
        raw = await entry.sandbox.agent.connect_port(port)
    except AgentGone:
        raise proxy_not_found(entry.sandbox_id) from None
    except AgentCallError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH):
            log.info("sandbox %s: port %d: %s", entry.sandbox_id, port, exc)
        raise port_not_open(entry.sandbox_id) from None
    if entry.network is None or not entry.network.https_port(port):
        return raw
    try:
        return await TlsStream.connect(raw)
    except TlsHandshakeError as exc:
        message = (
            f"port {port} is in https_ports, but its server did not complete a TLS handshake: {exc}"
        )
        raise ServiceError(502, message, sandbox_id=entry.sandbox_id) from None


# ----- HTTP --------------------------------------------------------------------------------


async def proxy_http(entry: Entry, port: int, scope: dict, receive: Receive, send: Send) -> None:
    """Relay one HTTP request to the sandbox port and stream the answer back."""
    tunnel = await open_tunnel(entry, port)
    async with tunnel:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        headers = _forwarded(entry, port, scope["headers"])
        names = {name for name, _ in scope["headers"]}
        if b"transfer-encoding" in names:
            # h11 frames the chunks; a Content-Length beside them (which h11 ignored when it
            # read the request) would contradict that framing: it goes.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
            headers.append((b"transfer-encoding", b"chunked"))
        headers.append((b"connection", b"close"))
        if not any(name == b"host" for name, _ in headers):
            headers.append((b"host", b"localhost"))  # HTTP/1.1 requires one
        request = h11.Request(method=scope["method"], target=_target(scope), headers=headers)
        await tunnel.write(conn.send(request) or b"")
        if not await _send_body(conn, tunnel, receive):
            return  # the caller went away before its request was complete
        relay = asyncio.ensure_future(relay_response(conn, tunnel, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not relay.done():  # the caller left: stop reading from the sandbox
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
        if not relay.cancelled():  # (cancelled: the caller left, nothing to answer or log)
            relay.result()


def _target(scope: dict) -> bytes:
    path: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
    query: bytes = scope.get("query_string") or b""
    return path + b"?" + query if query else path


def forwarded_upgrade(
    entry: Entry, port: int, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> h11.Request:
    """An upgrade request as the sandbox's server gets it: the forwarded headers, and the
    upgrade's own (``Connection``/``Upgrade``, hop-by-hop but the point of this hop)."""
    upgrade = [(k, v) for k, v in headers if k in (b"connection", b"upgrade")]
    return h11.Request(
        method=method, target=target, headers=_forwarded(entry, port, headers) + upgrade
    )


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


async def _send_body(conn: h11.Connection, tunnel: Tunnel, receive: Receive) -> bool:
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


async def relay_response(
    conn: h11.Connection, tunnel: Tunnel, send: Send
) -> h11.InformationalResponse | None:
    """The sandbox server's answer, event by event, to the caller; or, when the request asked
    for an upgrade and the server switched protocols, its ``101`` (sent nowhere: the caller
    splices the connection).

    Parsing costs per event, not per byte: a server that sends one-byte chunks or endless
    1xx heads made h11 hold the service's one loop for seconds at a time. So the loop gets a
    turn every ``_EVENTS_PER_TURN`` events, the body parts one read brought go to the caller
    as one, and more than ``_MAX_INFORMATIONAL`` 1xx answers end the request (502)."""
    started = False
    body = bytearray()  # Data events not yet sent: sent as one before anything else
    informational = 0
    events = 0
    while True:
        events += 1
        if events % _EVENTS_PER_TURN == 0:
            await asyncio.sleep(0)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if started:  # abort mid-body: the caller must not see a clean end
                raise ConnectionError(f"the sandbox server broke the response: {exc}") from None
            message = f"the server in the sandbox sent no valid answer: {exc}"
            raise ServiceError(502, message) from None
        if isinstance(event, h11.Data):
            body += event.data
            continue
        if body:
            await send({"type": "http.response.body", "body": bytes(body), "more_body": True})
            body.clear()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(await tunnel.read_chunk(_CHUNK))
            except ConnectionError as exc:  # the TCP or TLS hop broke off
                if started:
                    raise
                message = f"the server in the sandbox broke off before answering: {exc}"
                raise ServiceError(502, message) from None
        elif isinstance(event, h11.Response):
            headers = [(k, v) for k, v in event.headers if k not in _HOP_BY_HOP]
            start = {"type": "http.response.start", "status": event.status_code}
            await send({**start, "headers": headers})
            started = True
        elif isinstance(event, h11.EndOfMessage):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return None
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the sandbox server closed the connection mid-answer")
        elif isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return event
            # 100 Continue: uvicorn already answered it to the caller; 102/103 are hints.
            informational += 1
            if informational > _MAX_INFORMATIONAL:
                message = f"the server in the sandbox sent over {_MAX_INFORMATIONAL} 1xx answers"
                raise ServiceError(502, message)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
