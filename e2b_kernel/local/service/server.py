"""Build and run the service: its sandboxes (``sandboxes.py``), ASGI app and uvicorn server."""

from __future__ import annotations

import asyncio
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from .aborts import install_log_filter
from .app import ServiceApp
from .auth import new_api_key
from .connections import IDLE_KEEP_ALIVE, GuardedH11Protocol
from .registry import Registry
from .sandboxes import SandboxOptions, ServiceSandboxes
from .settings import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, check_server_settings

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11


class CannotListen(RuntimeError):
    """The server could not bind its address (uvicorn logged the system's error)."""


class _Server(uvicorn.Server):
    """uvicorn's server, killing every sandbox as soon as a stop signal arrives."""

    registry: Registry
    closing: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Open command/execute streams would otherwise hold the graceful shutdown open.
        if self.closing is None:
            self.closing = asyncio.get_event_loop().create_task(self.registry.close())
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after serving, which would kill us before the
        # state directory is removed; we exit normally (status 0) instead.
        self._captured_signals.clear()


class ServiceCore:
    """One service instance: created, then served on the current thread's event loop.

    ``sandbox_options`` (isolation, limits, pool) make its ``ServiceSandboxes``, unless
    ``sandboxes`` gives one already made (and perhaps started: see ``cli.py``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        sandboxes: ServiceSandboxes | None = None,
        **sandbox_options: Unpack[SandboxOptions],
    ) -> None:
        check_server_settings(header_timeout, max_connections)
        self.sandboxes = sandboxes or ServiceSandboxes(**sandbox_options)
        self.registry: Registry = self.sandboxes.registry
        # A fresh random key per start unless one is given: no fixed key anyone could guess.
        self.api_key = api_key or new_api_key()
        self.app = ServiceApp(self.registry, api_key=self.api_key)
        install_log_filter()
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            lifespan="on",
            log_level="warning",
            log_config=None,  # leave the host program's logging alone (in-process use)
            timeout_graceful_shutdown=5,
            # Upgrades to sandbox ports are passed through as bytes by the connection layer
            # (service/ws_splice.py); uvicorn's own WebSocket support only sees the others,
            # which the app refuses (no plane of the service speaks WebSocket).
            ws="websockets-sansio",
            http=GuardedH11Protocol,  # header-read deadline and connection bound
            timeout_keep_alive=IDLE_KEEP_ALIVE,
        )
        config.guard_settings = {  # type: ignore[attr-defined]  # read by GuardedH11Protocol
            "header_timeout": header_timeout,
            "max_connections": max_connections,
            "websocket_target": self.app.websocket_target,
        }
        self.server = _Server(config)
        self.server.registry = self.registry
        self.host, self.port = host, port

    @property
    def isolation(self) -> str:
        """Human description of the isolation every sandbox gets."""
        return self.sandboxes.isolation

    def bound_port(self) -> int:
        """The TCP port actually listened on (after `--port 0`)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def url(self) -> str:
        """Base URL for both E2B_API_URL and E2B_SANDBOX_URL (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port()}"

    async def serve(self) -> None:
        """Serve until asked to exit; every sandbox is killed on the way out."""
        self.sandboxes.start()  # warm sandboxes start (unless started) while the server comes up
        try:
            await self.server.serve()
        except SystemExit:
            # uvicorn ends the process when it cannot bind, after logging the system's error;
            # its starter reports this instead, and the sandboxes are still cleaned up.
            raise CannotListen(f"cannot listen on {self.host} port {self.port}") from None
        finally:
            if self.server.closing is not None:
                await self.server.closing
            await self.sandboxes.close()

    async def shutdown(self) -> None:
        """Kill every sandbox, then make serve() return."""
        await self.registry.close()
        self.server.should_exit = True
