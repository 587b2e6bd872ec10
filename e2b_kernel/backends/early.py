"""The kernel's private local service, launched as the kernel process starts.

With the default local backend, the kernel's first result waits for the service to start its
sandbox, and the service can start only once it is launched. So ``python -m e2b_kernel`` calls
:func:`launch_early` before anything else, and this module imports nothing that the launch
does not need (no asyncio, traitlets, psutil or E2B SDK: about 0.15 s on a small machine): it
decides from the environment alone, holds the kernel's ports, takes a lease and starts the
service on a thread, while the kernel imports ipykernel. ``HostedService.launch`` then claims
it (:func:`take_early`), or the kernel stops it unclaimed (:func:`discard_early`) when its full
configuration (config files, command line) wants another backend or isolation.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..local.host_dirs import user_folder, user_root
from . import kernel_ports, restart_state

if TYPE_CHECKING:
    from ..local import RunningService

__all__ = [
    "LEASE_DIR",
    "EarlyLaunch",
    "LeasedService",
    "discard_early",
    "launch_early",
    "lease_dir",
    "private_service_isolation",
    "start_leased",
    "stop_when_started",
    "take_early",
]

# This user's own (host_dirs): a lease another user could plant or remove would stop services.
LEASE_DIR = user_root() / "leases"


@dataclass
class LeasedService:
    """A started private service and the lease (file and held ``flock``) that keeps it alive."""

    child: RunningService
    lease_path: str
    lease_fd: int

    def stop(self) -> None:
        """Stop the service, let go of the lease and remove its file."""
        self.child.stop()
        with contextlib.suppress(OSError):
            os.close(self.lease_fd)
        with contextlib.suppress(OSError):
            os.unlink(self.lease_path)


def lease_dir() -> Path:
    """:data:`LEASE_DIR`, made and checked to be this user's alone."""
    return user_folder(LEASE_DIR.name, 0o700)


def start_leased(isolation: str) -> LeasedService:
    """Take a new lease and start a service that serves while it is held."""
    from ..local import start_subprocess

    fd, lease_path = tempfile.mkstemp(prefix="lease-", suffix=".lock", dir=lease_dir())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # One sandbox, started with the service and never replaced: the kernel needs exactly
        # one (a restart keeps it), and a refill would compete with it for the machine's
        # cores. Its start overlaps the kernel's own until create takes it.
        child = start_subprocess(
            isolation=isolation, lease=lease_path, pool_size=1, pool_refill=False
        )
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(lease_path)
        raise
    os.write(fd, str(child.pid).encode())  # lets a later sweep tell a dead service
    return LeasedService(child, lease_path, fd)


def private_service_isolation(environ: Mapping[str, str]) -> str | None:
    """The isolation of the private service a kernel started in ``environ`` will want, judged
    from its variables alone (``SessionConfig`` reads the same ones, and may read more); None
    when it will want none, or when a value is invalid (the kernel then reports it)."""
    backend = (environ.get("E2B_KERNEL_BACKEND") or "auto").lower()
    if backend == "auto":
        backend = "cloud" if environ.get("E2B_API_KEY") else "local"
    isolation = (environ.get("E2B_KERNEL_LOCAL_ISOLATION") or "auto").lower()
    return isolation if backend == "local" and isolation in ("auto", "none") else None


class EarlyLaunch:
    """A private service being started on a thread of its own."""

    def __init__(self, isolation: str) -> None:
        self.isolation = isolation
        self.future: Future[LeasedService] = Future()
        threading.Thread(target=self._run, name="e2b-early-service", daemon=True).start()

    def _run(self) -> None:
        try:
            self.future.set_result(start_leased(self.isolation))
        except Exception as exc:  # raised to whoever claims it, as a direct launch would
            self.future.set_exception(exc)


_early: EarlyLaunch | None = None
_early_lock = threading.Lock()
_held_ports: list[socket.socket] = []  # the kernel's, for the life of the process


def launch_early(connection_file: str | None) -> None:
    """Start the private service now, when the environment alone says the kernel (started
    with ``connection_file``) will need one: its start then overlaps the kernel's imports.

    Not after a restart (the restarted process adopts the previous service).
    """
    global _early
    isolation = private_service_isolation(os.environ)
    if isolation is None:
        return
    if connection_file is None or restart_state.state_path(connection_file).exists():
        return
    address = kernel_ports.read(connection_file)
    if address is None:
        return  # the service could be given a port the kernel is about to bind
    with _early_lock:
        if _early is None:
            _held_ports.extend(kernel_ports.hold(*address))
            _early = EarlyLaunch(isolation)


def take_early() -> EarlyLaunch | None:
    """The launch ``launch_early`` began, now the caller's (None when there is none)."""
    global _early
    with _early_lock:
        early, _early = _early, None
    return early


def discard_early() -> None:
    """Stop the service ``launch_early`` started if nobody claimed it (without waiting)."""
    early = take_early()
    if early is not None:
        stop_when_started(early)


def stop_when_started(early: EarlyLaunch) -> None:
    """Stop an unclaimed service once its start ends, on a thread (the caller goes on)."""

    def stop() -> None:
        with contextlib.suppress(Exception):
            early.future.result().stop()

    threading.Thread(target=stop, name="e2b-early-service-stop", daemon=True).start()
