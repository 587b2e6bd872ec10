"""The front of a sandbox's envd plane (port 49983): authentication and input checks.

As envd does: /health is open; /files takes the X-Access-Token header or a valid signed URL;
every other route (the Connect-RPC services, /envs) needs the header. Then the request goes
on to ``envd.http`` (plain HTTP) or ``envd.rpc`` (Connect-RPC), which do the work.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from ..envd.http import handle_envd_http
from .auth import ACCESS_TOKEN_HEADER, check_signed_url, file_operation, same_secret
from .bodies import read_body, read_first_envelope
from .errors import ServiceError
from .guards import check_path, check_rpc_message
from .registry import Entry

ENVD_PORT = 49983
_ENTRY = "e2b.entry"  # scope key: the sandbox this request is for


class _Asgi:
    """Make a bound method a plain ASGI app, so starlette's Route does not wrap it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope["headers"]:
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _without_header(scope: Scope, name: str) -> Scope:
    wanted = name.encode()
    return {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != wanted]}


def require_access_token(scope: Scope, entry: Entry, *, connect: bool = False) -> None:
    """401, as envd answers, unless X-Access-Token is the sandbox's token."""
    if entry.access_token is None:
        return
    if not same_secret(_header(scope, ACCESS_TOKEN_HEADER), entry.access_token):
        message = "unauthorized: missing or invalid X-Access-Token for this sandbox"
        raise ServiceError(401, message, connect=connect)


class EnvdPlane:
    """Routes envd requests of one live sandbox (given per call) after checking them."""

    def __init__(self) -> None:
        self._rpc_loaded: asyncio.Future[Any] | None = None
        self.router = Router(
            [
                Route("/health", _Asgi(self._plain)),
                Route("/files", _Asgi(self._files)),
                Route("/process.Process/{method}", _Asgi(self._rpc)),
                Route("/filesystem.Filesystem/{method}", _Asgi(self._rpc)),
            ],
            redirect_slashes=False,
            default=_Asgi(self._other),
        )

    async def __call__(self, entry: Entry, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router({**scope, _ENTRY: entry}, receive, send)

    async def _plain(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await handle_envd_http(Request(scope, receive), scope[_ENTRY].sandbox)
        await response(scope, receive, send)

    async def _files(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry: Entry = scope[_ENTRY]
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        if entry.access_token is not None:
            if _header(scope, ACCESS_TOKEN_HEADER) is not None:
                require_access_token(scope, entry)
            else:  # envd accepts a signed URL instead of the header, on /files only
                check_signed_url(query, file_operation(scope["method"]), entry.access_token)
                # The signature covers ?username= (empty: the default user); envd takes the
                # user from nowhere else, so a Basic header cannot make the URL root's.
                scope = _without_header(scope, "authorization")
        check_path(query.get("path"), "path")  # ENAMETOOLONG would surface as a 500
        await self._plain(scope, receive, send)

    async def _rpc_module(self) -> Any:
        """``envd.rpc``, imported on a worker thread the first time it is needed: it imports
        the SDK's generated Connect code (about 0.5 s), which on the event loop would stall
        every other sandbox's requests meanwhile. Later calls find it loaded."""
        if self._rpc_loaded is None:
            self._rpc_loaded = asyncio.ensure_future(
                asyncio.to_thread(importlib.import_module, "..envd.rpc", __package__)
            )
        return await asyncio.shield(self._rpc_loaded)

    async def _rpc(self, scope: Scope, receive: Receive, send: Send) -> None:
        rpc = await self._rpc_module()
        entry: Entry = scope[_ENTRY]
        require_access_token(scope, entry, connect=True)
        content_type = (_header(scope, "content-type") or "").split(";")[0].strip()
        first: bytes | None
        if content_type == "application/connect+json":
            first, receive = await read_first_envelope(receive)
        elif content_type == "application/json":
            first, receive = await read_body(receive)
        else:
            first = None  # protobuf or unknown: connectrpc answers it
        if first is not None:
            check_rpc_message(scope["path"], first)
        app: Any = rpc.rpc_app_for(entry)
        await app(scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        require_access_token(scope, scope[_ENTRY])
        await self._plain(scope, receive, send)
