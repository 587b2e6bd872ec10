"""The service's single ASGI app: routes each request to a plane by E2B's proxy headers.

No ``E2b-Sandbox-Port`` header means the control plane; port 49983 is the sandbox's envd
(plain HTTP plus Connect-RPC); 49999 is its code interpreter; anything else is answered as
E2B's proxy answers a closed port. Unknown, killed or paused sandboxes get the proxy's 502.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .control import ControlPlane, error_response
from .envd_http import MAX_FILE_BYTES, handle_envd_http
from .registry import Entry, Registry
from .sandbox import SandboxKilled

log = logging.getLogger("e2b_kernel.local")

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
_RPC_PREFIXES = ("/process.Process/", "/filesystem.Filesystem/")
_SMALL_BODY = 16 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request body passed the limit for its route."""


def proxy_error(sandbox_id: str, message: str) -> JSONResponse:
    """E2B's proxy error: 502 with the sandbox id (no retries)."""
    body = {"sandboxId": sandbox_id, "message": message, "code": 502}
    return JSONResponse(body, 502, headers={"Should-Retry": "false"})


class ServiceApp:
    """ASGI callable for the whole service."""

    def __init__(self, registry: Registry, *, api_key: str | None = None) -> None:
        self.registry = registry
        self.control = ControlPlane(registry, api_key=api_key)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = MAX_FILE_BYTES + 1024 * 1024 if scope["path"] == "/files" else _SMALL_BODY
        started = completed = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise BodyTooLarge
            await self._route(scope, _limited(receive, limit), tracking_send, headers)
        except SandboxKilled:
            # Returning mid-response makes uvicorn drop the connection: the client sees the
            # stream break off, as with E2B, and asks /health, which now answers 502.
            log.info("aborted a response of a killed sandbox: %s", scope.get("path"))
        except BodyTooLarge:
            if not started:
                message = f"request body too large (limit {limit} bytes)"
                await error_response(413, message)(scope, receive, send)
        except Exception:
            if completed:  # e.g. connectrpc answers an internal error, then re-raises
                log.warning("error after answering %s", scope.get("path"), exc_info=True)
                return
            if started:
                raise  # abort the response mid-stream: the client must not see a clean end
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            response = error_response(500, "internal error in the local E2B service (logged)")
            await response(scope, receive, send)

    async def _route(self, scope: dict, receive: Any, send: Any, headers: dict[str, str]) -> None:
        port = headers.get("e2b-sandbox-port")
        if port is None:
            response = await self.control.handle(Request(scope, receive))
            await response(scope, receive, send)
            return
        sandbox_id = headers.get("e2b-sandbox-id", "")
        entry = self._live_entry(sandbox_id)
        if entry is None:
            await proxy_error(sandbox_id, "The sandbox was not found")(scope, receive, send)
            return
        if port == str(ENVD_PORT):
            await self._envd(entry, scope, receive, send)
        elif port == str(INTERPRETER_PORT) and entry.interpreter is not None:
            await entry.interpreter(scope, receive, send)
        else:
            message = "The sandbox is running but port is not open"
            await proxy_error(sandbox_id, message)(scope, receive, send)

    def _live_entry(self, sandbox_id: str) -> Entry | None:
        entry = self.registry.get(sandbox_id)
        if entry is None:
            return None
        if entry.sandbox.paused:
            if not entry.auto_resume:
                return None
            self.registry.resume(entry, None)  # E2B's proxy resumes on traffic (autoResume)
        return entry

    async def _envd(self, entry: Entry, scope: dict, receive: Any, send: Any) -> None:
        if scope["path"].startswith(_RPC_PREFIXES):
            from .envd_rpc import rpc_app_for

            await rpc_app_for(entry)(scope, receive, send)
            return
        response: Response = await handle_envd_http(Request(scope, receive), entry.sandbox)
        await response(scope, receive, send)

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


def _limited(receive: Any, limit: int) -> Any:
    """Wrap receive so a body (chunked or not) longer than limit raises BodyTooLarge."""
    total = 0

    async def limited_receive() -> dict[str, Any]:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise BodyTooLarge
        return message

    return limited_receive
