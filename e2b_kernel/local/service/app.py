"""The service's single ASGI app: routes each request to a plane by E2B's proxy headers.

No ``E2b-Sandbox-Port`` header means the control plane (API key required); port 49983 is the
sandbox's envd (plain HTTP plus Connect-RPC, access token required); 49999 is its code
interpreter; any other port is relayed, HTTP and WebSocket, to that port inside the sandbox
(``proxy.py``), and a closed one answers as E2B's proxy does. A host of E2B's form
``{port}-{sandbox_id}.localhost`` routes like the headers, so a browser can open a sandbox
port with no DNS set up (``*.localhost`` is loopback). Unknown, killed or paused sandboxes
get the proxy's 502. A signed /files URL (``download_url()``) carries no
sandbox header: its signature names the sandbox.

Errors are ServiceError wherever they arise, answered here, once, in E2B's shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from ..envd.http import MAX_FILE_BYTES
from ..sandbox import SandboxKilled
from .aborts import mark_aborted_on_purpose
from .auth import TRAFFIC_TOKEN_HEADER, file_operation, find_signer, require_api_key, same_secret
from .connections import REFUSED
from .control import ControlPlane
from .envd import ENVD_PORT, EnvdPlane
from .errors import ServiceError, port_not_open, proxy_not_found
from .interpreter_front import InterpreterPlane
from .proxy import proxy_http
from .registry import Entry, Registry

log = logging.getLogger("e2b_kernel.local")

INTERPRETER_PORT = 49999
_SMALL_BODY = 16 * 1024 * 1024
# What of a request's body is read before an early error answer (see _LimitedBody.drain).
_DRAIN_BYTES = 1024 * 1024
_DRAIN_SECONDS = 2.0
# E2B's host form, {port}-{sandbox_id}.{domain}, with the loopback domain `localhost`.
_PORT_HOST = re.compile(r"^(\d{1,5})-([a-z0-9]+)\.localhost(?::\d+)?$")


class BodyTooLarge(Exception):
    """The request body passed the limit for its route."""


class ServiceApp:
    """ASGI callable for the whole service."""

    def __init__(self, registry: Registry, *, api_key: str) -> None:
        self.registry = registry
        self.api_key = api_key
        self.control = ControlPlane(registry)
        self.envd = EnvdPlane()
        self.interpreter = InterpreterPlane()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] not in ("http", "websocket"):
            return
        headers = _routing_headers(scope["headers"])
        large = scope["path"] == "/files" or _proxied(headers.get("e2b-sandbox-port"))
        limit = MAX_FILE_BYTES + 1024 * 1024 if large else _SMALL_BODY
        started = completed = False
        body = _LimitedBody(receive, limit)

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started, completed
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept", "websocket.http.response.start"):
                started = True
            elif kind.endswith("http.response.body") and not message.get("more_body"):
                completed = True
            elif kind == "websocket.close":
                completed = True
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            await self._route(scope, body, tracking_send, headers)
        except SandboxKilled:
            # Returning mid-response makes uvicorn drop the connection: the client sees the
            # stream break off, as with E2B, and asks /health, which now answers 502.
            mark_aborted_on_purpose()
            log.info("aborted a response of a killed sandbox: %s", scope.get("path"))
        except (BodyTooLarge, ServiceError) as exc:
            if started:
                return  # nothing sensible can follow a started answer; the client sees it end
            if isinstance(exc, BodyTooLarge):
                exc = ServiceError(413, f"request body too large (limit {limit} bytes)")
            elif scope["type"] == "http":
                client = tuple(scope.get("client") or ())
                REFUSED.add(client)  # closed first if the connections run out meanwhile
                try:
                    await body.drain()
                finally:
                    REFUSED.discard(client)
            await exc.response()(scope, receive, send)
        except Exception:
            if completed:  # e.g. connectrpc answers an internal error, then re-raises
                log.warning("error after answering %s", scope.get("path"), exc_info=True)
                return
            if started:
                raise  # abort the response mid-stream: the client must not see a clean end
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            error = ServiceError(500, "internal error in the local E2B service (logged)")
            await error.response()(scope, receive, send)

    async def _route(self, scope: dict, receive: Any, send: Any, headers: dict[str, str]) -> None:
        port = headers.get("e2b-sandbox-port")
        if port is None:
            entry = self._signed_url_entry(scope)
            if entry is not None:
                await self.envd(entry, scope, receive, send)
                return
            require_api_key(headers.get("x-api-key"), self.api_key)
            await self.control(scope, receive, send)
            return
        plane, entry = self._sandbox_plane(headers, websocket=scope["type"] != "http")
        if plane == "envd":
            await self.envd(entry, scope, receive, send)
        elif plane == "interpreter":
            await self.interpreter(entry, scope, receive, send)
        elif scope["type"] == "http":
            await proxy_http(entry, int(port), scope, receive, send)
        else:  # the connection layer relays sandbox-port upgrades itself (ws_splice)
            raise port_not_open(entry.sandbox_id)

    def _sandbox_plane(self, headers: dict[str, str], *, websocket: bool) -> tuple[str, Entry]:
        """Which plane a request with E2B's routing headers goes to (envd, the interpreter,
        or a relayed port) and its sandbox; raises E2B's proxy errors."""
        sandbox_id = headers.get("e2b-sandbox-id", "")
        port = headers["e2b-sandbox-port"]
        entry = self._live_entry(sandbox_id)
        if entry is None:
            raise proxy_not_found(sandbox_id)
        if port == str(ENVD_PORT):
            return "envd", entry
        # E2B's proxy guards every port but envd's with the traffic token, when there is one.
        if entry.traffic_token is not None:
            _check_traffic_token(headers.get(TRAFFIC_TOKEN_HEADER), entry)
        if port == str(INTERPRETER_PORT) and entry.interpreter is not None:
            if websocket:
                raise port_not_open(sandbox_id)  # the code interpreter serves no WebSocket
            return "interpreter", entry
        if not _proxied(port):
            raise port_not_open(sandbox_id)
        return "port", entry

    def websocket_target(self, raw_headers: list[tuple[bytes, bytes]]) -> tuple[Entry, int] | None:
        """For the connection layer: the sandbox port an upgrade is relayed to as bytes, or
        None when this app answers it; raises E2B's proxy errors."""
        headers = _routing_headers(raw_headers)
        if "e2b-sandbox-port" not in headers:
            return None
        plane, entry = self._sandbox_plane(headers, websocket=True)
        return (entry, int(headers["e2b-sandbox-port"])) if plane == "port" else None

    def _live_entry(self, sandbox_id: str) -> Entry | None:
        entry = self.registry.get(sandbox_id)
        if entry is None:
            return None
        if entry.sandbox.paused:
            if not entry.auto_resume:
                return None
            self.registry.resume(entry, None)  # E2B's proxy resumes on traffic (autoResume)
        return entry

    def _signed_url_entry(self, scope: dict) -> Entry | None:
        """The sandbox whose token signed this /files URL, for URLs without sandbox headers."""
        if scope["path"] != "/files":
            return None
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if "signature" not in query:
            return None
        candidates = [(e, e.access_token) for e in self.registry.entries() if e.access_token]
        signer = find_signer(candidates, query, file_operation(scope["method"]))
        if signer is None:
            raise ServiceError(401, "invalid signature")
        entry = self._live_entry(signer.sandbox_id)
        if entry is None:
            raise proxy_not_found(signer.sandbox_id)
        return entry

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.registry.close()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def _proxied(port: str | None) -> bool:
    """Whether a routed port is one the proxy relays into the sandbox."""
    if port is None or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False
    return int(port) not in (ENVD_PORT, INTERPRETER_PORT)


def _routing_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """A request's headers by lower-case name, with a ``{port}-{id}.localhost`` host turned
    into E2B's routing headers (the ASGI app and the connection layer route alike)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
    _route_by_host(headers)
    return headers


def _route_by_host(headers: dict[str, str]) -> None:
    """Turn a ``{port}-{id}.localhost`` host into E2B's routing headers (headers win)."""
    if "e2b-sandbox-port" in headers:
        return
    match = _PORT_HOST.match(headers.get("host", "").lower())
    if match is not None:
        headers["e2b-sandbox-port"], headers["e2b-sandbox-id"] = match.groups()


def _check_traffic_token(given: str | None, entry: Entry) -> None:
    """E2B's proxy answer on a restricted sandbox: 403, missing or invalid token alike."""
    assert entry.traffic_token is not None
    if not given:
        detail = f"Token header '{TRAFFIC_TOKEN_HEADER}' is missing"
    elif not same_secret(given, entry.traffic_token):
        detail = f"Provided token in header '{TRAFFIC_TOKEN_HEADER}' is invalid"
    else:
        return
    message = f"Sandbox is secured with traffic access token. {detail}"
    raise ServiceError(403, message, sandbox_id=entry.sandbox_id)


class _LimitedBody:
    """Wrap receive so a body (chunked or not) longer than limit raises BodyTooLarge, and
    remember whether the body has been read to its end."""

    def __init__(self, receive: Any, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._total = 0
        self.ended = False

    async def __call__(self) -> dict[str, Any]:
        message = await self._receive()
        if message["type"] == "http.request":
            self._total += len(message.get("body", b""))
            if self._total > self._limit:
                raise BodyTooLarge
        self._note_end(message)
        return message

    def _note_end(self, message: dict[str, Any]) -> None:
        # Any other message than a body part means the client went.
        more = message["type"] == "http.request" and message.get("more_body", False)
        self.ended = not more

    async def drain(self) -> None:
        """Read what is left of a small body before an early answer: uvicorn closes a
        connection whose body was not read, and closing a socket with unread bytes sends a
        reset, which can reach the client before the answer does (it then sees a connection
        error instead of, say, a 400). A body of over 1 MiB, or one that is slow to come, is
        left unread."""
        try:
            await asyncio.wait_for(self._read_rest(), _DRAIN_SECONDS)
        except asyncio.TimeoutError:
            pass

    async def _read_rest(self) -> None:
        left = _DRAIN_BYTES
        while not self.ended and left > 0:
            message = await self._receive()
            left -= len(message.get("body", b""))
            self._note_end(message)
