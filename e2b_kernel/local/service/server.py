"""Build and run the service: isolation policy, registry, ASGI app and uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn

from ..sandbox import completion_seed, staging
from ..sandbox.bwrap import RUNTIME_ROOT
from ..sandbox.disk import unmount_disk
from ..sandbox.isolation import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_PIDS,
    DEFAULT_MEMORY_MB,
    CgroupSet,
    Isolation,
    resolve_isolation,
)
from .app import ServiceApp
from .auth import new_api_key
from .connections import GuardedH11Protocol
from .registry import Registry
from .settings import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_SIZE

log = logging.getLogger("e2b_kernel.local")

STATE_ROOT = Path(tempfile.gettempdir()) / "e2b-kernel-local"


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
    """One service instance: created, then served on the current thread's event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        isolation: str = "auto",
        api_key: str | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        max_pids: int = DEFAULT_MAX_PIDS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        disk_mb: int = DEFAULT_DISK_MB,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_refill: bool = True,
    ) -> None:
        if header_timeout <= 0 or max_connections < 1:
            raise ValueError("--header-timeout and --max-connections must be positive")
        self.policy = resolve_isolation(
            isolation, memory_mb=memory_mb, max_pids=max_pids, disk_mb=disk_mb
        )
        STATE_ROOT.mkdir(mode=0o700, exist_ok=True)
        sweep_stale_state(self.policy)
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"svc-{os.getpid()}-", dir=STATE_ROOT))
        if pool_size < 0:
            raise ValueError(f"--pool-size must be 0 or more, got {pool_size}")
        self.registry = Registry(
            self.policy, self.state_dir, pool_size=pool_size, pool_refill=pool_refill
        )
        # A fresh random key per start unless one is given: no fixed key anyone could guess.
        self.api_key = api_key or new_api_key()
        self.app = ServiceApp(self.registry, api_key=self.api_key)
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
            timeout_keep_alive=5,
        )
        config.guard_settings = {  # type: ignore[attr-defined]  # read by GuardedH11Protocol
            "header_timeout": header_timeout,
            "max_connections": max_connections,
            "websocket_target": self.app.websocket_target,
        }
        self.server = _Server(config)
        self.server.registry = self.registry
        self.host = host

    @property
    def isolation(self) -> str:
        """Human description of the isolation every sandbox gets."""
        return self.policy.describe()

    def bound_port(self) -> int:
        """The TCP port actually listened on (after `--port 0`)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def url(self) -> str:
        """Base URL for both E2B_API_URL and E2B_SANDBOX_URL (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port()}"

    async def serve(self) -> None:
        """Serve until asked to exit; every sandbox is killed on the way out."""
        self.registry.pool.start()  # warm sandboxes start while the server comes up
        seeding = asyncio.create_task(completion_seed.keep_built())
        try:
            await self.server.serve()
        finally:
            seeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await seeding
            if self.server.closing is not None:
                await self.server.closing
            await self.registry.close()
            await asyncio.to_thread(shutil.rmtree, self.state_dir, ignore_errors=True)
            # Unmount the staged Python copies: no mount of ours outlives the service.
            await asyncio.to_thread(staging.release_all, RUNTIME_ROOT)

    async def shutdown(self) -> None:
        """Kill every sandbox, then make serve() return."""
        await self.registry.close()
        self.server.should_exit = True


def sweep_stale_state(policy: Isolation) -> None:
    """Remove what services that died without cleaning up (SIGKILL) left behind.

    Their sandboxes died with them (bwrap --die-with-parent), but directories, socket dirs
    and empty cgroups remain. A service's state dir is named after its pid.
    """
    for service_dir in STATE_ROOT.glob("svc-*-*"):
        try:
            pid = int(service_dir.name.split("-")[1])
        except ValueError:
            continue
        if _alive(pid):
            continue
        for sandbox_dir in service_dir.iterdir():
            marker = sandbox_dir / "socket_dir"
            with contextlib.suppress(OSError):
                shutil.rmtree(marker.read_text().strip(), ignore_errors=True)
            with contextlib.suppress(OSError):  # its capped disk (a tmpfs) is still mounted
                unmount_disk(sandbox_dir / "disk")
            cgroups = CgroupSet(policy, sandbox_dir.name)
            cgroups.kill_all()
            cgroups.remove()
        shutil.rmtree(service_dir, ignore_errors=True)
        log.info("removed the leftovers of a dead local service (pid %d)", pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
