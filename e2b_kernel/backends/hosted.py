"""The kernel's private local service, in a helper process that outlives a kernel restart.

``jupyter_client`` restarts a kernel by starting a new kernel process, but a restart must keep
the sandbox (its files and installed packages), so the service cannot live inside the kernel
process. The kernel starts ``e2b-kernel local --lease FILE`` and holds an exclusive ``flock`` on
that lease file for its whole life: the service stops, killing its sandboxes, once nobody has
held the lease for a few seconds (see ``e2b_kernel.local.service.lease``). On restart the old
process exits and the new one takes the same lease, found through the restart state
(``restart_state``). So a SIGKILLed kernel leaves nothing behind for long.

The service removes its lease file when it stops, and ``stop()`` does too. Only a service that
was itself SIGKILLed leaves one: each launch sweeps those (free lease, dead service).

``launch_early`` starts the service (on a thread) as the kernel process starts, before its
imports, when the environment alone says the kernel will need one; ``launch`` then claims it,
and ``discard_early`` stops it if the kernel's configuration turned out to want none. The
kernel's own ports are held first (``kernel_ports``): the kernel binds them only after its
imports, and the service starting meanwhile could otherwise be given one by chance.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil

from ..config import SessionConfig
from ..errors import ConfigurationError
from . import kernel_ports, restart_state
from .handles import ServiceHandle

__all__ = ["HostedService", "discard_early", "launch_early"]

_STOP_TIMEOUT = 20.0
LEASE_DIR = Path(tempfile.gettempdir()) / "e2b-kernel-leases"
_UNCLAIMED_AGE = 120.0  # a lease file with no service pid yet is still being launched


class HostedService(ServiceHandle):
    """A local service in a helper process, kept alive by this process's lease."""

    survives_process = True

    def __init__(self, info: dict[str, Any], lease_path: str, lease_fd: int) -> None:
        super().__init__(info["url"], info["api_key"], info["isolation"], int(info["pid"]))
        self.lease_path = lease_path
        self._lease_fd: int | None = lease_fd
        self._child: Any = None  # the start_subprocess handle, when this process started it

    @classmethod
    def launch(cls, *, isolation: str = "auto") -> HostedService:
        """Take a new lease and start a helper that serves while it is held (or claim the
        one ``launch_early`` started, when its isolation is the one asked for)."""
        early = _take_early()
        if early is not None:
            if early.isolation == isolation:
                return early.future.result()
            _stop_when_started(early)
        return cls._launch(isolation)

    @classmethod
    def _launch(cls, isolation: str) -> HostedService:
        from ..local import start_subprocess

        sweep_stale_leases()
        fd, lease_path = tempfile.mkstemp(prefix="lease-", suffix=".lock", dir=_lease_dir())
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            # One sandbox, started with the service and never replaced: the kernel needs
            # exactly one (a restart keeps it), and a refill would compete with it for the
            # machine's cores. Its start overlaps the kernel's own until create takes it.
            child = start_subprocess(
                isolation=isolation,
                lease=lease_path,
                pool_size=1,
                pool_refill=False,
            )
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lease_path)
            raise
        os.write(fd, str(child.pid).encode())  # lets a later sweep tell a dead service
        info = {"url": child.url, "api_key": child.api_key, "isolation": child.isolation}
        hosted = cls({**info, "pid": child.pid}, lease_path, fd)
        hosted._child = child
        return hosted

    @classmethod
    def adopt(cls, state: dict[str, Any], timeout: float = 10.0) -> HostedService:
        """Take over the lease of a helper started by a previous kernel process."""
        lease_path = state["lease_path"]
        fd = os.open(lease_path, os.O_RDWR)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        "the previous kernel process still holds the service"
                    ) from None
                time.sleep(0.05)  # the previous process is exiting; its lock goes with it
        if not psutil.pid_exists(int(state["pid"])):
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lease_path)  # it died without removing its lease
            raise RuntimeError("the local service of the previous kernel process has exited")
        return cls(state, lease_path, fd)

    def to_state(self) -> dict[str, Any]:
        """What a restarted kernel process needs to adopt this service."""
        return {
            "url": self.url,
            "api_key": self.api_key,
            "isolation": self.isolation,
            "pid": self.pid,
            "lease_path": self.lease_path,
        }

    def stop(self) -> None:
        """Stop the helper (it kills its sandboxes) and wait for it; idempotent."""
        if self._child is not None:
            self._child.stop()  # our own child: terminate and reap it
        else:
            with contextlib.suppress(psutil.NoSuchProcess):
                helper = psutil.Process(self.pid)
                helper.terminate()
                try:
                    helper.wait(_STOP_TIMEOUT)
                except psutil.TimeoutExpired:
                    helper.kill()
        self.release()
        with contextlib.suppress(OSError):
            os.unlink(self.lease_path)

    def release(self) -> None:
        """Let go of the lease without stopping the helper (the next process adopts it)."""
        if self._lease_fd is not None:
            os.close(self._lease_fd)
            self._lease_fd = None


class _EarlyLaunch:
    """A ``HostedService`` being launched on a thread of its own."""

    def __init__(self, isolation: str) -> None:
        self.isolation = isolation
        self.future: Future[HostedService] = Future()
        threading.Thread(target=self._run, name="e2b-early-service", daemon=True).start()

    def _run(self) -> None:
        try:
            self.future.set_result(HostedService._launch(self.isolation))
        except Exception as exc:  # raised to whoever claims it, as a direct launch would
            self.future.set_exception(exc)


_early: _EarlyLaunch | None = None
_early_lock = threading.Lock()
_held_ports: list[socket.socket] = []  # the kernel's, for the life of the process


def launch_early(connection_file: str | None) -> None:
    """Start the private service now, when the environment alone says the kernel (started
    with ``connection_file``) will need one: its start then overlaps the kernel's imports.

    Not after a restart (the restarted process adopts the previous service). The kernel's
    full configuration may still differ (config files, command line): then ``launch`` is
    asked for another isolation, or never, and this one is stopped.
    """
    global _early
    try:
        config = SessionConfig()
    except ConfigurationError:
        return  # the kernel reports it; it starts no service
    if config.resolved_backend() != "local":
        return
    if connection_file is None or restart_state.state_path(connection_file).exists():
        return
    address = kernel_ports.read(connection_file)
    if address is None:
        return  # the service could be given a port the kernel is about to bind
    with _early_lock:
        if _early is None:
            _held_ports.extend(kernel_ports.hold(*address))
            _early = _EarlyLaunch(str(config.local_isolation))


def discard_early() -> None:
    """Stop the service ``launch_early`` started if nobody claimed it (without waiting)."""
    early = _take_early()
    if early is not None:
        _stop_when_started(early)


def _take_early() -> _EarlyLaunch | None:
    global _early
    with _early_lock:
        early, _early = _early, None
    return early


def _stop_when_started(early: _EarlyLaunch) -> None:
    def stop() -> None:
        with contextlib.suppress(Exception):
            early.future.result().stop()

    threading.Thread(target=stop, name="e2b-early-service-stop", daemon=True).start()


def _lease_dir() -> Path:
    LEASE_DIR.mkdir(mode=0o700, exist_ok=True)
    return LEASE_DIR


def sweep_stale_leases() -> list[Path]:
    """Remove lease files that nobody holds and whose service is dead; return them."""
    removed = []
    # Also the lease files of earlier versions, which lived directly in the temp folder.
    legacy = Path(tempfile.gettempdir()).glob("e2b-kernel-lease-*.lock")
    for path in [*_lease_dir().glob("lease-*.lock"), *legacy]:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a kernel still lives
            text = os.read(fd, 32).decode(errors="replace").strip()
            if text.isdigit():
                stale = not psutil.pid_exists(int(text))
            else:
                stale = time.time() - os.fstat(fd).st_mtime > _UNCLAIMED_AGE
            if stale:
                path.unlink()
                removed.append(path)
        except (BlockingIOError, OSError):
            pass
        finally:
            os.close(fd)
    return removed
