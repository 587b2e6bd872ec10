"""The front of a sandbox's code-interpreter plane (port 49999): token and input checks.

/execute runs code, so it needs the sandbox's envd access token, which the SDK sends there.
The SDK (e2b-code-interpreter 2.11.5) does not send it to /contexts; newer versions do, so
/contexts refuses a wrong token but accepts none. Bodies are checked before the interpreter
parses them.
"""

from __future__ import annotations

from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from ..interpreter.app import SandboxKilledDuringExecution, route_path
from ..sandbox import SandboxKilled
from .auth import ACCESS_TOKEN_HEADER
from .bodies import read_body
from .envd import _ENTRY, _Asgi, _header, require_access_token
from .guards import check_interpreter_body
from .registry import Entry


class InterpreterPlane:
    """Routes code-interpreter requests of one live sandbox after checking them."""

    def __init__(self) -> None:
        self.router = Router(
            [Route("/execute", _Asgi(self._execute))],
            redirect_slashes=False,
            default=_Asgi(self._other),
        )

    async def __call__(self, entry: Entry, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router({**scope, _ENTRY: entry}, receive, send)

    async def _execute(self, scope: Scope, receive: Receive, send: Send) -> None:
        require_access_token(scope, scope[_ENTRY])
        await self._forward(scope, receive, send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_path(scope["path"]) == "/execute":  # "/execute/" runs code as well
            await self._execute(scope, receive, send)
            return
        if _header(scope, ACCESS_TOKEN_HEADER) is not None:
            require_access_token(scope, scope[_ENTRY])
        await self._forward(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, receive = await read_body(receive)
            check_interpreter_body(scope["path"], body)
        try:
            await scope[_ENTRY].interpreter(scope, receive, send)
        except SandboxKilledDuringExecution as exc:
            raise SandboxKilled(str(exc)) from None  # broken off as every plane's (app.py)
