"""A service's sandboxes without its web server: isolation policy, state dir, registry, pool.

Kept apart from ``server.py`` so that ``e2b-kernel local`` can start its warm pool's first
sandbox before it imports its web stack (uvicorn, starlette, the Connect-RPC apps: about
0.2 s): for a kernel's private service, that sandbox's Jupyter Server is the longest part of
the kernel's start, and it needs nothing from the web stack. Nothing here imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from ..sandbox import completion_seed, staging
from ..sandbox.bwrap import RUNTIME_ROOT, runtime_root
from ..sandbox.disk import unmount_disk
from ..sandbox.isolation import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_PIDS,
    DEFAULT_MEMORY_MB,
    REMOVE_TRIES,
    REMOVE_WAIT,
    CgroupSet,
    Isolation,
    resolve_isolation,
)
from .registry import Registry
from .settings import DEFAULT_POOL_SIZE

__all__ = ["STATE_ROOT", "SandboxOptions", "ServiceSandboxes", "sweep_stale_state"]

log = logging.getLogger("e2b_kernel.local")

STATE_ROOT = RUNTIME_ROOT  # the services' state dirs, svc-<pid>-*, are made in it


class SandboxOptions(TypedDict, total=False):
    """``ServiceSandboxes``' settings, as ``ServiceCore`` passes them on."""

    isolation: str
    memory_mb: int
    max_pids: int
    disk_mb: int
    pool_size: int
    pool_refill: bool


class ServiceSandboxes:
    """The sandboxes side of one service: made, then started and closed on its event loop."""

    def __init__(
        self,
        *,
        isolation: str = "auto",
        memory_mb: int = DEFAULT_MEMORY_MB,
        max_pids: int = DEFAULT_MAX_PIDS,
        disk_mb: int = DEFAULT_DISK_MB,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_refill: bool = True,
    ) -> None:
        if pool_size < 0:
            raise ValueError(f"--pool-size must be 0 or more, got {pool_size}")
        self.policy = resolve_isolation(
            isolation, memory_mb=memory_mb, max_pids=max_pids, disk_mb=disk_mb
        )
        root = runtime_root()  # raises UnsafeHostDir when another user made it
        sweep_stale_state(self.policy)
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"svc-{os.getpid()}-", dir=root))
        self.registry = Registry(
            self.policy, self.state_dir, pool_size=pool_size, pool_refill=pool_refill
        )
        self._seeding: asyncio.Task[None] | None = None

    @property
    def isolation(self) -> str:
        """Human description of the isolation every sandbox gets."""
        return self.policy.describe()

    def start(self) -> None:
        """Begin filling the warm pool, and build the completion seed (call on the loop that
        serves); idempotent."""
        self.registry.pool.start()
        if self._seeding is None:
            self._seeding = asyncio.ensure_future(completion_seed.keep_built())

    async def close(self) -> None:
        """Kill every sandbox and remove the service's state; idempotent."""
        if self._seeding is not None:
            self._seeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._seeding
        await self.registry.close()
        await asyncio.to_thread(shutil.rmtree, self.state_dir, ignore_errors=True)
        # Unmount the staged Python copies: no mount of ours outlives the service.
        await asyncio.to_thread(staging.release_all, RUNTIME_ROOT)


def sweep_stale_state(policy: Isolation) -> None:
    """Remove what services that died without cleaning up (SIGKILL) left behind.

    Their sandboxes died with them (bwrap --die-with-parent), but directories, mounted disks
    and empty cgroups remain. A service's state dir is named after its pid. Only this user
    can write :data:`STATE_ROOT` (``runtime_root`` checks it), so what is found there is ours.
    """
    for service_dir in STATE_ROOT.glob("svc-*-*"):
        try:
            pid = int(service_dir.name.split("-")[1])
        except ValueError:
            continue
        if _alive(pid):
            continue
        for sandbox_dir in service_dir.iterdir():
            with contextlib.suppress(OSError):  # its capped disk (a tmpfs) is still mounted
                unmount_disk(sandbox_dir / "disk")
            cgroups = CgroupSet(policy, sandbox_dir.name)
            cgroups.kill_all()
            _remove_when_empty(cgroups)
        shutil.rmtree(service_dir, ignore_errors=True)
        log.info("removed the leftovers of a dead local service (pid %d)", pid)


def _remove_when_empty(cgroups: CgroupSet) -> None:
    """Remove the groups, waiting a moment for killed processes to leave them (they were
    SIGKILLed just now); one that stays in use is reported and left."""
    for _ in range(REMOVE_TRIES):
        in_use = cgroups.remove_or_kill()
        if not in_use:
            return
        time.sleep(REMOVE_WAIT)  # at a service's start, only where a dead one left processes
    log.warning("cgroups of a dead service's sandbox stay in use: %s", in_use)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
